"""The workflow on a real SLURM cluster (scripts/slurm/up.sh), through the site profile.

1. A tiny phantom config runs with ``--profile <installed profiles/slurm>``; sacct must show
   every workflow job COMPLETED, GPU stages on the GPU partition with ``gres/gpu=1``, CPU stages
   without; its outputs must equal those of a ``--profile profiles/local`` run of the config.
2. An adapt job is ``scancel``-ed mid-training: Snakemake (``retries`` of the profile) must
   resubmit it, and the new job must resume from the checkpoint, not from step 0.
3. The controller is killed hard while an adapt job runs: the same command again cancels the
   orphan job, takes the lock over, and the new adapt job resumes from the checkpoint.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from craft.paths import Layout
from craft.profile import install_profile
from tests.conftest import tiny_cas

from .conftest import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

#: The config.resources entry each rule reads (rules/*.smk: get_resources).
RULE_RESOURCES = {
    "downstream_real": "downstream",
    "train_evaluator": "evaluator",
    "evaluate_oracle": "evaluate",
    "memorization": "evaluate",
    "audit": "evaluate",
    "fidelity": "evaluate",
    "study_export": "report",
    "reward_path": "generate",
}


#: The rules of a run's evaluation group (rules/*.smk: group) and what a group job counts as.
EVALUATION_RULES = {"score", "evaluate_oracle", "audit", "downstream", "fidelity", "memorization"}
EVALUATION_GROUP_JOB = "evaluation group"


def is_evaluation_group(job: dict) -> bool:
    """A sacct line of a group job of a run's evaluations (comment rule_evaluate-<run>_...)."""
    return job["rule"].startswith("evaluate-")


def gpu_rules(cfg) -> set[str]:
    """The rules whose config resources ask for a GPU (the rest are CPU jobs)."""
    from craft.config import validate_config

    res = validate_config(cfg).resources
    rules = {"prepare", "knowledge", "pretrain", "adapt", "align", "generate", "reference"}
    rules |= {"score", "downstream", "report", *RULE_RESOURCES}
    return {r for r in rules if getattr(res, RULE_RESOURCES.get(r, r)).gpu}


MODALITY = "phantom-cxr"
SEED = 0
SACCT_FIELDS = [
    "JobID",
    "JobName",
    "Partition",
    "State",
    "ExitCode",
    "AllocTRES",
    "Elapsed",
    "SubmitLine",
]


# ----------------------------------------------------------------------------- helpers


def tiny_config(results: Path, methods: dict) -> dict:
    """config.yaml's structure at test size: one phantom modality, one seed, tiny steps."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = copy.deepcopy(cfg)
    cfg["results"] = str(results)
    cfg["seeds"] = [SEED]
    mod = copy.deepcopy(cfg["modalities"][MODALITY])
    mod["source"]["n_per_label"] = 20
    cfg["modalities"] = {MODALITY: mod}
    cfg["pretrain"] = {**cfg.get("pretrain", {}), "steps": 10, "batch_size": 8, "n_images": 32}
    cfg["methods"] = methods
    cfg["sampling"] = {**cfg.get("sampling", {}), "steps": 4, "n_per_label": 4, "batch_size": 16}
    cfg["cas"] = tiny_cas()
    cfg["study"] = None  # the study pairs two methods; these tests run one
    # a tiny foundation trained in the workflow: the pretrain rule runs through SLURM too
    cfg["models"]["generator"] = "pretrain"
    return cfg


def write_config(path: Path, cfg: dict, env: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = subprocess.run(
        ["craft", "config", "check", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and ": ok" in r.stdout, f"craft config check: {r.stdout}{r.stderr}"
    return path


def slurm_profile(tmp_path: Path, cluster) -> Path:
    """profiles/slurm as `craft profile install` writes it, with the test cluster's values."""
    dest = install_profile(
        "slurm",
        cluster.account,
        cluster.partition,
        cluster.gpu_partition,
        dest_root=tmp_path / "profiles",
    )
    return dest.parent


def snakemake_cmd(workdir: Path, configfile: Path, *args: str) -> list[str]:
    return [
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        *args,
    ]


def slurm_args(profile: Path, prefix: str) -> list[str]:
    # small-test override: first status check after 2 s, not the profile's 10 s
    return [
        "--profile",
        str(profile),
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-jobname-prefix",
        prefix,
        "--slurm-keep-successful-logs",
    ]


def start(cmd: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(proc: subprocess.Popen, timeout: float) -> int:
    """Wait for a snakemake run; on timeout interrupt it (it then cancels its SLURM jobs)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return 124


def cancel_leftovers(prefix: str) -> None:
    """scancel every job of this test run still queued or running (after a failure)."""
    r = subprocess.run(["squeue", "-h", "-o", "%i|%j"], capture_output=True, text=True, timeout=30)
    ids = [ln.split("|")[0] for ln in r.stdout.splitlines() if ln.split("|")[-1].startswith(prefix)]
    if ids:
        subprocess.run(["scancel", *ids], timeout=30)


def failure_report(log: Path, workdir: Path) -> str:
    """Tail of the snakemake output and of every job log that shows an error."""
    parts = [f"--- {log} (tail)", "\n".join(log.read_text().splitlines()[-40:])]
    for f in sorted(workdir.glob("results/logs/**/*.log")) + sorted(
        workdir.glob(".snakemake/slurm_logs/**/*.log")
    ):
        text = f.read_text(errors="replace")
        if re.search(r"Traceback|Error|error:", text):
            parts += [f"--- {f} (tail)", "\n".join(text.splitlines()[-15:])]
    return "\n".join(parts)


def job_stats(log_text: str) -> Counter:
    """{rule: count} of the 'Job stats' table Snakemake prints when it starts."""
    m = re.search(r"Job stats:\n(.*?)\n\s*total\s+\d+", log_text, re.S)
    assert m, "no 'Job stats' table in the snakemake output"
    stats = Counter()
    for line in m.group(1).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            stats[parts[0]] = int(parts[1])
    return stats


def sacct_jobs(prefix: str, since: str) -> list[dict]:
    """This run's SLURM jobs (job name = prefix_<run uuid>), one dict per allocation."""
    r = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", since, "-o", ",".join(SACCT_FIELDS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, f"sacct: {r.stderr}"
    jobs = []
    for line in r.stdout.splitlines():
        values = line.split("|", len(SACCT_FIELDS) - 1)
        if len(values) != len(SACCT_FIELDS):
            continue
        job = dict(zip(SACCT_FIELDS, values, strict=True))
        if not job["JobName"].startswith(prefix + "_"):
            continue
        m = re.search(
            r"--comment\s+'?rule_(.+?)(?:_wildcards_(\S+?))?'?(?:\s|$)", job["SubmitLine"]
        )
        job["rule"] = m.group(1) if m else "?"
        job["wildcards"] = (m.group(2) or "") if m else ""
        jobs.append(job)
    return sorted(jobs, key=lambda j: int(re.sub(r"\D.*", "", j["JobID"]) or 0))


def wait_for_final_states(prefix: str, since: str, timeout: float = 30) -> list[dict]:
    """sacct lines once no job of the run is PENDING/RUNNING any more (accounting lags a bit)."""
    end = time.monotonic() + timeout
    while True:
        jobs = sacct_jobs(prefix, since)
        if all(j["State"] not in ("PENDING", "RUNNING", "REQUEUED") for j in jobs) or (
            time.monotonic() > end
        ):
            return jobs
        time.sleep(1)


def sacct_table(jobs: list[dict]) -> str:
    cols = ["JobID", "rule", "wildcards", "Partition", "State", "ExitCode", "Elapsed", "AllocTRES"]
    rows = [cols] + [[j[c] for c in cols] for j in jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def run_jobs(prefix: str, since: str, out: Path) -> tuple[list[dict], str]:
    """This run's SLURM jobs in their final states and their table (printed, and saved as
    out/sacct.txt)."""
    jobs = wait_for_final_states(prefix, since)
    table = sacct_table(jobs)
    (out / "sacct.txt").write_text(table + "\n")
    print(f"\nsacct of SLURM run {prefix}:\n{table}")
    return jobs, table


def localrules(log_text: str) -> set[str]:
    return set(re.findall(r"^localrule (\w+):", log_text, re.M))


def now_for_sacct() -> str:
    return (dt.datetime.now() - dt.timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S")


def compare_samples(a: Path, b: Path) -> None:
    """Two samples.h5 hold the same images (bitwise), labels, prompts and noise seeds."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa) == sorted(fb), (a, b)
        for name in fa:
            x, y = fa[name][()], fb[name][()]
            assert x.shape == y.shape, f"{name}: {x.shape} != {y.shape}"
            if x.dtype.kind in "iuf" and not np.array_equal(x, y):
                diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
                pytest.fail(
                    f"{a.name} '{name}' differs between SLURM and local runs: "
                    f"{int((diff > 0).sum())} of {diff.size} values, max |diff| {diff.max():g}"
                )
            assert np.array_equal(x, y), f"{a.name} '{name}' differs between SLURM and local runs"


def compare_models(a_root: Path, b_root: Path) -> None:
    """Every model file (weights, tokenizer) of the two runs is the same, tensor by tensor.

    Checked before the samples, so that a difference names the stage that made it first.
    """
    from safetensors.numpy import load_file

    differ = []
    for fa in sorted(a_root.rglob("*.safetensors")):
        rel = fa.relative_to(a_root)
        fb = b_root / rel
        assert fb.is_file(), f"{rel}: made by the SLURM run but not by the local run"
        ta, tb = load_file(fa), load_file(fb)
        if ta.keys() != tb.keys() or any(not np.array_equal(ta[k], tb[k]) for k in ta):
            differ.append(str(rel))
    for fa in sorted(a_root.rglob("tokenizer/*.json")):
        rel = fa.relative_to(a_root)
        if json.loads(fa.read_text()) != json.loads((b_root / rel).read_text()):
            differ.append(str(rel))
    assert not differ, (
        "model files differ between the SLURM and the local run of one config (a stage is "
        f"not deterministic across processes): {', '.join(differ)}"
    )


def compare_summaries(a: Path, b: Path) -> None:
    """The report's numbers (summary.csv) are the same."""
    keys = ["modality", "method", "metric"]
    da = pd.read_csv(a).sort_values(keys).reset_index(drop=True)
    db = pd.read_csv(b).sort_values(keys).reset_index(drop=True)
    assert len(da) > 0
    pd.testing.assert_frame_equal(da, db, check_exact=True)


# ----------------------------------------------------------------------------- tests


def test_workflow_on_slurm_matches_local(tmp_path, slurm_cluster, craft_env):
    """Every job through sbatch, COMPLETED in sacct, GPU stages with gres/gpu; = local run."""
    t0 = time.monotonic()
    methods = {"lora": {"kind": "lora", "steps": 5, "batch_size": 8, "lr": 0.002, "rank": 4}}
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    cfg_slurm = write_config(
        tmp_path / "tiny-slurm.yaml", tiny_config(slurm_dir / "results", methods), craft_env
    )
    cfg_local = write_config(
        tmp_path / "tiny-local.yaml", tiny_config(local_dir / "results", methods), craft_env
    )
    profile = slurm_profile(tmp_path, slurm_cluster)
    prefix = f"craft-test-{uuid.uuid4().hex[:8]}"
    since = now_for_sacct()

    # The local reference run shares the machine with the cluster's jobs: start it alongside
    # on one core, so the two runs together take about as long as the SLURM run alone.
    local_log, slurm_log = tmp_path / "local.log", tmp_path / "slurm.log"
    local = start(
        snakemake_cmd(
            local_dir, cfg_local, "--profile", str(REPO / "profiles/local"), "--cores", "1"
        ),
        local_dir,
        craft_env,
        local_log,
    )
    slurm = start(
        snakemake_cmd(slurm_dir, cfg_slurm, *slurm_args(profile, prefix)),
        slurm_dir,
        craft_env,
        slurm_log,
    )
    try:
        rc = finish(slurm, timeout=420)
        assert rc == 0, f"SLURM run failed (rc {rc})\n{failure_report(slurm_log, slurm_dir)}"
        rc = finish(local, timeout=max(60, 480 - (time.monotonic() - t0)))
        assert rc == 0, f"local run failed (rc {rc})\n{failure_report(local_log, local_dir)}"
    finally:
        for p in (slurm, local):
            if p.poll() is None:
                finish(p, timeout=1)
        cancel_leftovers(prefix)

    # -- sacct: every workflow job went through SLURM and succeeded ------------------------
    log_text = slurm_log.read_text()
    assert "SLURM run ID: " + prefix in log_text
    expected = job_stats(log_text)
    for rule in localrules(log_text):
        expected.pop(rule, None)
    # a run's evaluation jobs are one SLURM job (resources.group_evaluations, the profile's
    # group-components): one per run, named after the group
    for rule in EVALUATION_RULES:
        expected.pop(rule, None)
    expected[EVALUATION_GROUP_JOB] = len(methods)
    jobs, table = run_jobs(prefix, since, tmp_path)
    got = Counter(EVALUATION_GROUP_JOB if is_evaluation_group(j) else j["rule"] for j in jobs)
    assert got == expected, f"jobs in sacct vs planned:\n{table}"
    assert {"prepare", "pretrain", "adapt", "generate", "report"} <= set(expected)
    for j in jobs:
        assert j["State"] == "COMPLETED" and j["ExitCode"] == "0:0", f"{j['JobID']}:\n{table}"
        if is_evaluation_group(j) or j["rule"] in gpu_rules(yaml.safe_load(cfg_slurm.read_text())):
            assert "gres/gpu=1" in j["AllocTRES"], f"GPU stage without a GPU:\n{table}"
            assert j["Partition"] == slurm_cluster.gpu_partition, table
        else:
            assert "gres/gpu" not in j["AllocTRES"], f"CPU stage holding a GPU:\n{table}"
            assert j["Partition"] == slurm_cluster.partition, table

    # -- outputs equal those of the local run ----------------------------------------------
    sl, lo = Layout(slurm_dir / "results"), Layout(local_dir / "results")
    compare_models(sl.root, lo.root)
    for method in methods:
        compare_samples(sl.samples(MODALITY, method, SEED), lo.samples(MODALITY, method, SEED))
    compare_summaries(sl.report() / "summary.csv", lo.report() / "summary.csv")
    print(f"SLURM + local runs: {time.monotonic() - t0:.0f} s")


@dataclass(frozen=True)
class AdaptRun:
    """A tiny config whose lora method trains ``steps`` steps with a checkpoint every ``every``,
    and the command that runs it through the SLURM profile up to the adapted model (prepare ->
    pretrain -> adapt; the rest of the DAG is the other tests')."""

    workdir: Path
    profile: Path
    prefix: str
    since: str
    card: Path
    command: list[str]

    @property
    def checkpoint(self) -> Path:
        return self.card.parent / "checkpoint"


def adapt_run(tmp_path: Path, cluster, env: dict, steps: int, every: int) -> AdaptRun:
    methods = {
        "lora": {
            "kind": "lora",
            "steps": steps,
            "batch_size": 8,
            "lr": 0.002,
            "rank": 4,
            "checkpoint_every": every,
        }
    }
    workdir = tmp_path / "slurm"
    cfg = write_config(tmp_path / "tiny.yaml", tiny_config(workdir / "results", methods), env)
    profile = slurm_profile(tmp_path, cluster)
    prefix = f"craft-test-{uuid.uuid4().hex[:8]}"
    since = now_for_sacct()
    card = Layout(workdir / "results").card(MODALITY, "lora", SEED)
    command = snakemake_cmd(workdir, cfg, *slurm_args(profile, prefix), str(card))
    return AdaptRun(workdir, profile, prefix, since, card, command)


def running_adapt(prefix: str) -> list[str]:
    r = subprocess.run(
        ["squeue", "-h", "-t", "RUNNING", "-o", "%i|%j|%k"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    running = [ln.split("|") for ln in r.stdout.splitlines() if ln.count("|") == 2]
    return [
        i
        for i, name, comment in running
        if name.startswith(prefix + "_") and comment.startswith("rule_adapt_")
    ]


def test_scancel_mid_adapt_is_retried_and_resumes(tmp_path, slurm_cluster, craft_env):
    """scancel an adapt job after its first checkpoint: the retry resumes from that step."""
    t0 = time.monotonic()
    steps = 40
    run = adapt_run(tmp_path, slurm_cluster, craft_env, steps, every=5)
    workdir, prefix, since, card, checkpoint = (
        run.workdir, run.prefix, run.since, run.card, run.checkpoint
    )  # fmt: skip
    prof = yaml.safe_load((run.profile / "config.yaml").read_text())
    assert prof.get("retries", 0) >= 1, "the SLURM profile must retry failed jobs"
    log = tmp_path / "slurm.log"
    proc = start(run.command, workdir, craft_env, log)
    cancelled = None
    try:
        end = time.monotonic() + 240
        while cancelled is None:
            assert proc.poll() is None, (
                f"snakemake ended before the cancel\n{failure_report(log, workdir)}"
            )
            assert time.monotonic() < end, (
                f"no running adapt job with a checkpoint\n{failure_report(log, workdir)}"
            )
            adapt = running_adapt(prefix)
            if adapt and (checkpoint / "state.pt").is_file():
                subprocess.run(["scancel", adapt[0]], check=True, timeout=30)
                cancelled = adapt[0]
            else:
                time.sleep(0.5)
        rc = finish(proc, timeout=max(60, 400 - (time.monotonic() - t0)))
        assert rc == 0, f"run after scancel failed (rc {rc})\n{failure_report(log, workdir)}"
    finally:
        if proc.poll() is None:
            finish(proc, timeout=1)
        cancel_leftovers(prefix)

    jobs, table = run_jobs(prefix, since, tmp_path)
    adapt = [j for j in jobs if j["rule"] == "adapt"]
    assert [j["JobID"] for j in adapt][:1] == [cancelled], table
    assert adapt[0]["State"].startswith("CANCELLED"), table
    assert len(adapt) == 2 and adapt[1]["State"] == "COMPLETED", table
    assert "gres/gpu=1" in adapt[1]["AllocTRES"], table
    for j in jobs:
        if j["JobID"] != cancelled:
            assert j["State"] == "COMPLETED" and j["ExitCode"] == "0:0", table

    # the retry resumed from the checkpoint, not from step 0, and trained to the end
    adapt_path = workdir / "results/logs/adapt" / MODALITY / "lora" / f"{SEED}.log"
    adapt_log = adapt_path.read_text()
    # each attempt kept its own log: the cancelled one says it stopped and saved its checkpoint
    attempts = sorted(adapt_path.with_name(adapt_path.name + ".attempts").iterdir())
    assert len(attempts) == 2, attempts
    assert adapt_path.samefile(attempts[-1])
    first = attempts[0].read_text()
    assert "rerun the same command to resume" in first, first[-2000:]
    m = re.search(r"resumed from \S+ at step (\d+)", adapt_log)
    assert m, f"the retried adapt job did not resume:\n{adapt_log[-2000:]}"
    step = int(m.group(1))
    assert 0 < step < steps, adapt_log[-2000:]
    assert re.search(rf"steps {step}->{steps}", adapt_log), adapt_log[-2000:]
    model = json.loads(card.read_text())
    assert model["steps"] == steps and model["lora_dir"]
    assert not checkpoint.exists(), "the checkpoint must be removed once the weights are written"
    print(
        f"cancelled SLURM job {cancelled}; retry resumed at step {step}/{steps}; "
        f"{time.monotonic() - t0:.0f} s"
    )


def test_a_controller_killed_hard_resumes_with_the_same_command(tmp_path, slurm_cluster, craft_env):
    """SIGKILL to the controller's process group while an adapt job runs on the cluster (what
    a dropped login session does): the job lives on without a controller. The same command
    again clears the stale lock, cancels that orphan (it saves a checkpoint on SIGTERM), and
    submits it again, which resumes from the checkpoint."""
    t0 = time.monotonic()
    steps = 400
    run = adapt_run(tmp_path, slurm_cluster, craft_env, steps, every=5)
    workdir, prefix, since, card, checkpoint, command = (
        run.workdir, run.prefix, run.since, run.card, run.checkpoint, run.command
    )  # fmt: skip
    first = start(command, workdir, craft_env, tmp_path / "killed.log")
    again = None
    try:
        end = time.monotonic() + 240
        while not (running_adapt(prefix) and (checkpoint / "state.pt").is_file()):
            assert first.poll() is None, failure_report(tmp_path / "killed.log", workdir)
            assert time.monotonic() < end, failure_report(tmp_path / "killed.log", workdir)
            time.sleep(0.5)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        orphan = running_adapt(prefix)
        assert orphan, "the adapt job ended with its controller: nothing left to recover"
        again = start(command, workdir, craft_env, tmp_path / "again.log")
        rc = finish(again, timeout=max(60, 600 - (time.monotonic() - t0)))
        out = (tmp_path / "again.log").read_text()
        assert rc == 0, (
            f"the same command failed (rc {rc})\n{failure_report(tmp_path / 'again.log', workdir)}"
        )
    finally:
        for proc in (first, again):
            if proc is not None and proc.poll() is None:
                finish(proc, timeout=1)
        cancel_leftovers(prefix)

    assert "removed the lock left by a controller that was killed" in out, out[-3000:]
    assert f"cancelled 1 SLURM job(s) the killed controller had left running ({orphan[0]})" in out
    jobs, table = run_jobs(prefix, since, tmp_path)
    adapt = [j for j in jobs if j["rule"] == "adapt"]
    assert [j["JobID"] for j in adapt][:1] == orphan, table
    assert adapt[0]["State"].startswith("CANCELLED"), table
    assert len(adapt) == 2 and adapt[1]["State"] == "COMPLETED", table
    adapt_log = (workdir / "results/logs/adapt" / MODALITY / "lora" / f"{SEED}.log").read_text()
    m = re.search(r"resumed from \S+ at step (\d+)", adapt_log)
    assert m and 0 < int(m.group(1)) < steps, adapt_log[-2000:]
    assert json.loads(card.read_text())["steps"] == steps
    print(
        f"killed the controller; orphan {orphan[0]} cancelled; the new job resumed at step "
        f"{m.group(1)}/{steps}; {time.monotonic() - t0:.0f} s"
    )


def test_a_job_killed_for_memory_is_retried_with_more(tmp_path, slurm_cluster, craft_env):
    """A pretrain job asking for less memory than it uses is killed by SLURM (OUT_OF_MEMORY;
    the test cluster enforces --mem, scripts/slurm/up.sh); the profile's retry asks for
    resources.pretrain.retry_growth times more, and that attempt completes."""
    workdir = tmp_path / "slurm"
    lay = Layout(workdir / "results")
    cfg = tiny_config(workdir / "results", {"zero-shot": {"kind": "zero-shot"}})
    first_mb, growth = 150, 8  # python with torch alone holds more than 150 MB
    cfg["resources"] = {
        "pretrain": {"gpu": 1, "runtime": 30, "mem_mb": first_mb, "retry_growth": growth}
    }
    cfg = write_config(tmp_path / "tiny.yaml", cfg, craft_env)
    profile = slurm_profile(tmp_path, slurm_cluster)
    prefix = f"craft-test-{uuid.uuid4().hex[:8]}"
    since = now_for_sacct()
    log = tmp_path / "slurm.log"
    target = str(lay.foundation(MODALITY))
    proc = start(snakemake_cmd(workdir, cfg, *slurm_args(profile, prefix), target), workdir,
                 craft_env, log)  # fmt: skip
    try:
        rc = finish(proc, timeout=420)
        assert rc == 0, f"run failed (rc {rc})\n{failure_report(log, workdir)}"
    finally:
        cancel_leftovers(prefix)
    jobs, table = run_jobs(prefix, since, tmp_path)
    pretrain = [j for j in jobs if j["rule"] == "pretrain"]
    assert len(pretrain) == 2, table
    # cgroups report OUT_OF_MEMORY; the test cluster's accounting plugin kills the job's step
    # (the job then ends FAILED) and logs why
    first = pretrain[0]
    slurmd_log = Path("/var/log/slurm/slurmd.log").read_text(errors="replace")
    assert first["State"] == "OUT_OF_MEMORY" or (
        first["State"] == "FAILED"
        and f"[{first['JobID']}.batch] error: Exceeded job memory limit" in slurmd_log
    ), table
    assert f"mem={first_mb}M" in pretrain[0]["AllocTRES"], table
    assert pretrain[1]["State"] == "COMPLETED", table
    assert f"mem={first_mb * growth}M" in pretrain[1]["AllocTRES"], table
    assert (Path(target) / "model_index.json").is_file()


def test_a_gpu_job_whose_torch_sees_no_gpu_stops_instead_of_running_on_the_cpu(
    tmp_path, slurm_cluster, craft_env
):
    """The test cluster's GPUs are fake: without CRAFT_ALLOW_CPU, a pretrain job SLURM gave a
    GPU fails and its log says why and what to check (what a real site with a CPU build of
    torch, or a driver too old for its CUDA, sees)."""
    workdir = tmp_path / "slurm"
    lay = Layout(workdir / "results")
    cfg = write_config(
        tmp_path / "tiny.yaml",
        tiny_config(workdir / "results", {"zero-shot": {"kind": "zero-shot"}}),
        craft_env,
    )
    env = {k: v for k, v in craft_env.items() if k != "CRAFT_ALLOW_CPU"}
    profile = slurm_profile(tmp_path, slurm_cluster)
    prefix = f"craft-test-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "slurm.log"
    target = str(lay.foundation(MODALITY))
    cmd = snakemake_cmd(workdir, cfg, *slurm_args(profile, prefix), "--retries", "0", target)
    proc = start(cmd, workdir, env, log)
    try:
        rc = finish(proc, timeout=300)
    finally:
        cancel_leftovers(prefix)
    assert rc != 0, failure_report(log, workdir)
    job_log = (workdir / "results/logs/pretrain" / f"{MODALITY}.log").read_text()
    assert "SLURM gave this job GPU(s) (SLURM_" in job_log, job_log[-2000:]
    assert "nvidia-smi" in job_log and not Path(target).exists()


def test_a_two_gpu_align_job_runs_two_processes_and_matches_one_process(
    tmp_path, slurm_cluster, craft_env
):
    """resources.align.gpu: 2 -> sbatch asks for two GPUs on the GPU partition, the job runs
    two DeepSpeed processes (CPU, gloo), and its reward LoRA is the one-process run's."""
    from safetensors.torch import load_file

    from tests.train.test_align_deepspeed import assert_close

    t0 = time.monotonic()
    align = {"window": "draft", "kl_weight": 0.5, "diffusion_weight": 0.5, "eval_every": 0}
    methods = {
        "lora": {"kind": "lora", "steps": 3, "batch_size": 8, "lr": 0.002, "rank": 4},
        "craft": {
            "kind": "craft",
            "init": "lora",
            "prompts": "enriched",
            "steps": 4,
            "batch_size": 4,
            "lr": 0.01,
            "rank": 2,
            "align": {**align, "zero_stage": 2},
        },
    }
    workdir = tmp_path / "slurm"
    lay = Layout(workdir / "results")
    data = tiny_config(workdir / "results", methods)
    data["resources"] = {"align": {"gpu": 2, "threads": 2}}
    cfg = write_config(tmp_path / "two.yaml", data, craft_env)
    profile = slurm_profile(tmp_path, slurm_cluster)
    prefix = f"craft-test-{uuid.uuid4().hex[:8]}"
    since = now_for_sacct()
    card = lay.card(MODALITY, "craft", SEED)
    log = tmp_path / "slurm.log"
    env = {**craft_env, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = start(snakemake_cmd(workdir, cfg, *slurm_args(profile, prefix), str(card)), workdir,
                 env, log)  # fmt: skip
    try:
        rc = finish(proc, timeout=480)
        assert rc == 0, f"SLURM run failed (rc {rc})\n{failure_report(log, workdir)}"
    finally:
        if proc.poll() is None:
            finish(proc, timeout=1)
        cancel_leftovers(prefix)
    jobs, table = run_jobs(prefix, since, tmp_path)
    gpus = gpu_rules(data)
    for j in jobs:
        assert j["State"] == "COMPLETED" and j["ExitCode"] == "0:0", f"{j['JobID']}:\n{table}"
        want = slurm_cluster.gpu_partition if j["rule"] in gpus else slurm_cluster.partition
        assert j["Partition"] == want, f"{j['rule']} on {j['Partition']}:\n{table}"
    aligned = [j for j in jobs if j["rule"] == "align"]
    assert len(aligned) == 1 and "gres/gpu=2" in aligned[0]["AllocTRES"], table
    align_log = (workdir / "results/logs/align" / MODALITY / "craft" / f"{SEED}.log").read_text()
    assert "DeepSpeed ZeRO-2: 2 processes x 2 images" in align_log, align_log[-2000:]

    # the same recipe in one process without DeepSpeed, from the same start and references
    one = copy.deepcopy(data)
    one["resources"] = {"align": {"gpu": 1}}
    one["methods"]["craft"]["align"] = dict(align)
    single = tmp_path / "single" / "model.json"
    cmd = ["craft", "align", "--config", str(write_config(tmp_path / "one.yaml", one, env))]
    cmd += ["-m", MODALITY, "-k", "craft", "-s", str(SEED), "--out", str(single)]
    cmd += ["--threads", "1"]
    p = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    lora = "reward-lora/pytorch_lora_weights.safetensors"
    assert_close(load_file(card.parent / lora), load_file(single.parent / lora))
    print(f"two-GPU align on SLURM and one-process reference: {time.monotonic() - t0:.0f} s")
