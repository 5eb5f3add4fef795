"""A run's evaluation jobs as one SLURM job (resources.group_evaluations, the profile's
group-components), on the real cluster of scripts/slurm/up.sh.

One member of the group fails (a `craft` on the PATH that fails `craft fidelity` while a marker
file is there): the group job fails as a whole, yet the outputs of its members that finished
are kept, and the next run submits the failed member alone.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import pytest
import yaml

from craft.paths import Layout

from .test_slurm_workflow import (
    EVALUATION_RULES,
    MODALITY,
    SEED,
    cancel_leftovers,
    failure_report,
    finish,
    job_stats,
    now_for_sacct,
    run_jobs,
    slurm_args,
    slurm_profile,
    snakemake_cmd,
    start,
    tiny_config,
    write_config,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FAILING_CRAFT = """#!/bin/sh
# craft, except that `craft fidelity` fails while {marker} is there
if [ "$1" = fidelity ] && [ -e "{marker}" ]; then
    echo "injected failure of craft fidelity" >&2
    exit 3
fi
exec "{craft}" "$@"
"""


def group_of(job: dict) -> str | None:
    """The group id of a group job's sacct line (its comment names `rule_<group>_<rules>`)."""
    m = re.match(r"(evaluate-.+?-\d+)_", job["rule"])
    return m.group(1) if m else None


def test_a_failed_grouped_evaluation_keeps_the_others_and_reruns_alone(
    tmp_path, slurm_cluster, craft_env
):
    t0 = time.monotonic()
    methods = {"lora": {"kind": "lora", "steps": 3, "batch_size": 8, "lr": 0.002, "rank": 4}}
    workdir = tmp_path / "slurm"
    lay = Layout(workdir / "results")
    data = tiny_config(workdir / "results", methods)
    assert "group_evaluations" not in data.get("resources", {})  # on by default
    cfg = write_config(tmp_path / "tiny.yaml", data, craft_env)
    profile = slurm_profile(tmp_path, slurm_cluster)
    prof = yaml.safe_load((profile / "config.yaml").read_text())
    assert prof["group-components"] == ["evaluate-{modality}-{method}-{seed}=100"]

    marker = tmp_path / "fail-fidelity"
    marker.touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = subprocess.run(
        ["sh", "-c", "command -v craft"], env=craft_env, capture_output=True, text=True
    ).stdout.strip()
    fake = bin_dir / "craft"
    fake.write_text(FAILING_CRAFT.format(marker=marker, craft=real))
    fake.chmod(0o755)
    env = {**craft_env, "PATH": f"{bin_dir}:{craft_env['PATH']}"}

    evaluators = sorted(data["cas"]["evaluators"])
    kept_stages = ["oracle", *(f"cas-{e}" for e in evaluators)]
    kept_stages += ["downstream", "memorization", "audit"]
    kept = [lay.metrics(MODALITY, "lora", SEED, s) for s in kept_stages]
    failed = lay.metrics(MODALITY, "lora", SEED, "fidelity")
    prefix = f"craft-test-{uuid.uuid4().hex[:8]}"
    since = now_for_sacct()

    # 1. everything up to the report; fidelity fails inside the run's evaluation group job
    log1 = tmp_path / "first.log"
    cmd = snakemake_cmd(workdir, cfg, *slurm_args(profile, prefix), "--retries", "0")
    proc = start(cmd, workdir, env, log1)
    try:
        rc = finish(proc, timeout=480)
    finally:
        if proc.poll() is None:
            finish(proc, timeout=1)
        cancel_leftovers(prefix)
    text = log1.read_text()
    assert rc != 0, f"the run did not fail\n{failure_report(log1, workdir)}"
    jobs, table = run_jobs(prefix, since, tmp_path)
    grouped = [j for j in jobs if group_of(j)]
    assert [group_of(j) for j in grouped] == [f"evaluate-{MODALITY}-lora-{SEED}"], table
    assert grouped[0]["State"] == "FAILED", table
    assert not [j for j in jobs if j["rule"] in EVALUATION_RULES], (
        f"an evaluation job alone:\n{table}"
    )
    # the group job is a GPU job (score, downstream) of one GPU, the largest member's
    assert "gres/gpu=1" in grouped[0]["AllocTRES"], table
    assert grouped[0]["Partition"] == slurm_cluster.gpu_partition, table
    assert "cpu=1," in grouped[0]["AllocTRES"] + ",", table
    fidelity_log = lay.root / "logs/fidelity" / MODALITY / "lora" / f"{SEED}.log"
    assert "injected failure of craft fidelity" in fidelity_log.read_text()
    missing = [str(p) for p in kept if not p.is_file()]
    assert not missing, (
        f"outputs of evaluations that finished in the failed group job were removed: "
        f"{missing}\n{text[-3000:]}"
    )
    assert not failed.exists()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept}

    # 2. the failure fixed: the next run plans and submits fidelity alone (and the report)
    marker.unlink()
    dry = subprocess.run(
        snakemake_cmd(workdir, cfg, "--profile", str(profile), "-n"),
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stdout + dry.stderr
    planned = job_stats(dry.stdout + dry.stderr)
    planned.pop("all", None)
    assert planned == {"fidelity": 1, "report": 1}, planned

    since = now_for_sacct()
    prefix2 = f"{prefix}-2"
    log2 = tmp_path / "second.log"
    proc = start(snakemake_cmd(workdir, cfg, *slurm_args(profile, prefix2)), workdir, env, log2)
    try:
        rc = finish(proc, timeout=300)
        assert rc == 0, f"rerun failed (rc {rc})\n{failure_report(log2, workdir)}"
    finally:
        if proc.poll() is None:
            finish(proc, timeout=1)
        cancel_leftovers(prefix2)
    jobs, table = run_jobs(prefix2, since, tmp_path)
    assert len(jobs) == 2, table
    rules = sorted(j["rule"] for j in jobs)
    # the group job of fidelity alone (on the CPU partition: fidelity asks for no GPU)
    assert rules == [f"evaluate-{MODALITY}-lora-{SEED}_fidelity", "report"], table
    assert all(j["State"] == "COMPLETED" for j in jobs), table
    assert failed.is_file()
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept}
    assert after == before, "an evaluation that had finished ran again"
    assert (lay.report() / "summary.csv").is_file()
    print(f"failed group job, then fidelity alone: {time.monotonic() - t0:.0f} s")
