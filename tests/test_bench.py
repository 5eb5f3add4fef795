"""bench/bench_reward_step.py at tiny size on the CPU, so the GPU benchmark stays working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "bench_reward_step.py"
EAGER = "plain-sample,craft-sample,plain-k1,craft-k1,craft-k1-nockpt,plain-full,craft-full"


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO
    )


def test_every_eager_variant_runs_side_by_side_and_reports(tmp_path):
    out = tmp_path / "r.jsonl"
    p = run(
        *("--sample-steps", "3", "--batch", "2", "--warmup", "1", "--repeats", "1"),
        *("--threads", "1", "--variants", EAGER, "--out", str(out)),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert list(rows) == EAGER.split(","), list(rows)
    bad = {n: r["status"] for n, r in rows.items() if r["status"] != "ok"}
    assert not bad, bad
    assert all(r["s_per_step"] > 0 and r["peak_gib"] > 0 for r in rows.values())
    assert {n: r["k"] for n, r in rows.items()} == {
        "plain-sample": 0,
        "craft-sample": 0,
        "plain-k1": 1,
        "craft-k1": 1,
        "craft-k1-nockpt": 1,
        "plain-full": 3,
        "craft-full": 3,
    }
    assert rows["craft-k1"]["checkpointing"] and not rows["craft-k1-nockpt"]["checkpointing"]
    # the LoRA starts at 0, so every craft variant's first step scores the same images
    first = [rows[n]["first_loss"] for n in ("craft-k1", "craft-k1-nockpt", "craft-full")]
    assert max(first) - min(first) < 1e-5, first
    assert all(rows[n]["first_loss"] is None for n in ("plain-sample", "craft-sample"))
    for pair in ("craft-sample/plain-sample", "craft-k1/plain-k1", "craft-full/plain-full"):
        assert f"ratio {pair}: time " in p.stdout, p.stdout[-2000:]


def test_an_unknown_variant_is_named_in_a_one_line_error():
    p = run("--variants", "plain-k1,craft-k9")
    assert p.returncode == 2
    assert "unknown variants ['craft-k9']" in p.stderr.strip().splitlines()[-1]


def test_the_workflow_profile_sums_each_rules_benchmark_files(tmp_path):
    """bench/profile_workflow.py reads Snakemake's benchmark files (a rule with wildcards, one
    without) and sums wall and CPU time per rule, largest first."""
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = {
        "align/cxr/craft/0.tsv": (300.0, 250.0, 2400.0),
        "align/cxr/craft/1.tsv": (200.0, 190.0, 2500.0),
        "score/cxr/craft/0/clip.tsv": (10.0, 8.0, 900.0),
        "report.tsv": (5.0, 4.0, "NA"),
    }
    for rel, (wall, cpu, rss) in files.items():
        path = tmp_path / "benchmarks" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{wall}\t0:00:00\t{rss}\t0\t0\t0\t0\t0\t0\t{cpu}\n")
    csv_out = tmp_path / "rules.csv"
    p = subprocess.run(
        [sys.executable, str(REPO / "bench" / "profile_workflow.py"), str(tmp_path), "--csv",
         str(csv_out)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = csv_out.read_text().splitlines()
    assert rows[0].startswith("rule,jobs,wall_s,cpu_s")
    assert rows[1:] == [
        "align,2,500.0,440.0,300.0,2500.0",
        "score,1,10.0,8.0,10.0,900.0",
        "report,1,5.0,4.0,5.0,0.0",
    ]
    assert "all jobs               4       515" in p.stdout
    empty = subprocess.run(
        [sys.executable, str(REPO / "bench" / "profile_workflow.py"), str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert empty.returncode == 1 and "does not exist: run the workflow" in empty.stderr
