"""The Snakemake workflow: DAG shape, validation at parse time, lint, a real tiny run, reruns."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from craft.cas import DIMENSIONS
from tests.conftest import REPO, tiny_config, write_config
from tests.test_docs import undocumented

# Full finetuning and the align methods run in tests/train; the workflow test keeps to the
# methods that exercise every kind of rule input (plain, LoRA, knowledge-dependent).
METHODS = ("zero-shot", "lora", "lora-enriched")


def snakemake(workdir, env, *args, timeout=1500, check=True):
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run."""
    counts = {}
    table = output.split("Job stats:")[1]
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def dry_run_jobs(output: str) -> list[tuple[str, str]]:
    """(rule, its block) of every job a dry run lists. A group job's members (a run's
    evaluations, resources.group_evaluations) are listed indented under "Group job ...", so
    a job's block may start with white space."""
    jobs = []
    for block in re.split(r"\n(?=[ \t]*(?:local)?rule \w+:)", output):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if m:
            jobs.append((m.group(1), block))
    return jobs


def jobs_to_run(output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a dry run lists."""
    jobs = []
    for rule, block in dry_run_jobs(output):
        wc = re.search(r"wildcards: (.*)", block)
        wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        jobs.append((rule, wildcards))
    return jobs


@pytest.fixture
def workdir(tmp_path):
    write_config(tmp_path / "config.yaml", tiny_config())
    return tmp_path


def test_dry_run_expands_modalities_methods_seeds(env):
    out = snakemake(REPO, env, "-n", "--config", "results=/tmp/craft-dryrun-results").stdout
    counts = job_counts(out)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    n_mod, n_meth, n_seed = len(cfg["modalities"]), len(cfg["methods"]), len(cfg["seeds"])
    runs = n_mod * n_meth * n_seed
    assert counts["prepare"] == n_mod
    # The default loads the shipped foundations (assets/); `generator: pretrain` trains them.
    assert counts.get("pretrain", 0) == (n_mod if cfg["models"]["generator"] == "pretrain" else 0)
    assert counts["adapt"] + counts.get("align", 0) == runs
    assert counts["generate"] == counts["evaluate_oracle"] == runs
    assert counts["report"] == 1

    out3 = snakemake(
        REPO, env, "-n", "--config", "seeds=[0,1,2]", "results=/tmp/craft-dryrun-results"
    ).stdout
    assert job_counts(out3)["generate"] == n_mod * n_meth * 3
    seeds = {w["seed"] for rule, w in jobs_to_run(out3) if rule == "generate"}
    assert seeds == {"0", "1", "2"}


def test_the_job_count_the_readme_and_getting_started_give_is_the_default_runs(env, tmp_path):
    """README and docs/getting-started.md say how many jobs `make run` runs: that is what a
    dry run of the default config plans, in one place as in the other."""
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    data["results"] = str(tmp_path / "results")
    write_config(tmp_path / "config.yaml", data)
    (tmp_path / "assets").symlink_to(REPO / "assets")  # the default's foundations, relative
    out = snakemake(tmp_path, env, "-n", "--configfile", str(tmp_path / "config.yaml")).stdout
    planned = sum(job_counts(out).values()) - job_counts(out).get("total", 0)
    readme = re.search(r"`make run`: (\d+) jobs", (REPO / "README.md").read_text())
    started = re.search(
        r"\| `make run` \| [^|]*?\((\d+) jobs\)", (REPO / "docs/getting-started.md").read_text()
    )
    assert readme and started
    assert int(readme.group(1)) == int(started.group(1)) == planned, (
        readme.group(1),
        started.group(1),
        planned,
    )


def test_the_paper_config_plans_every_method_of_the_study(env, tmp_path):
    """configs/craft-paper.yaml (real models, four modalities) plans all six methods, the
    evaluations with real models and the study. The files it names must exist when it is
    planned (here: header-only CSVs and empty image folders where its /data placeholders
    point): three patients of each label, one image each, as the plan reads every row)."""
    text = (REPO / "configs" / "craft-paper.yaml").read_text()
    text = text.replace("/data/", f"{tmp_path}/data/")
    for m in yaml.safe_load(text)["modalities"].values():
        root = Path(m["source"]["image_root"])
        root.mkdir(parents=True, exist_ok=True)
        rows = ["path,label,patient"]
        for label in m["labels"]:
            for p in range(3):
                (root / f"{label}-{p}.png").write_bytes(b"not decoded at plan time")
                rows.append(f"{label}-{p}.png,{label},{label}-{p}")
        Path(m["source"]["manifest"]).write_text("\n".join(rows) + "\n")
    (tmp_path / "paper.yaml").write_text(text)
    out = snakemake(
        REPO,
        env,
        "-n",
        "--configfile",
        str(tmp_path / "paper.yaml"),
        "--config",
        f"results={tmp_path}/results",
    ).stdout
    cfg = yaml.safe_load((REPO / "configs" / "craft-paper.yaml").read_text())
    assert list(cfg["methods"]) == [
        "zero-shot", "lora", "lora-enriched", "full", "generic-reward", "craft"
    ]  # fmt: skip
    runs = len(cfg["modalities"]) * len(cfg["methods"]) * len(cfg["seeds"])
    counts = job_counts(out)
    assert counts["align"] == len(cfg["modalities"]) * 2 * len(cfg["seeds"])
    assert counts["adapt"] + counts["align"] == runs
    for rule in ("generate", "downstream", "memorization", "audit", "fidelity"):
        assert counts[rule] == runs, rule
    assert counts["study_export"] == len(cfg["modalities"]) and "evaluate_oracle" not in counts
    # every align job asks for the paper config's GPU and memory
    asked = re.findall(r"rule align:\n(?:    .*\n)*?    resources: (.*)", out)
    assert len(asked) == counts["align"]
    assert all("gpu=1" in r.split(", ") and "mem_mb=48000" in r.split(", ") for r in asked), asked


@pytest.mark.parametrize("gpus,nodes", [(2, 1), (2, 2)])
def test_a_multi_gpu_align_job_asks_for_its_gpus_and_starts_one_process_per_gpu(
    tmp_path, env, gpus, nodes
):
    """resources.align is all the align rule reads: the GPUs it asks SLURM for, and the
    launcher (torchrun on one node; srun + torchrun with a c10d rendezvous on several)."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    cfg["models"]["generator"] = str(REPO / cfg["models"]["generator"])  # run from tmp_path
    cfg["resources"] = {"align": {"gpu": gpus, "nodes": nodes, "threads": 4}}
    for method in cfg["methods"].values():
        if "align" in method:
            method["align"]["zero_stage"] = 2
    write_config(tmp_path / "config.yaml", cfg)
    out = snakemake(tmp_path, env, "-n", "-p", "--configfile", str(tmp_path / "config.yaml")).stdout
    blocks = [b for rule, b in dry_run_jobs(out) if rule == "align"]
    assert blocks, out[-2000:]
    for block in blocks:
        resources = re.search(r"resources: (.*)", block).group(1).split(", ")
        assert "cpus_per_task=4" in resources, resources
        if nodes == 1:
            assert f"gpu={gpus}" in resources, resources
            assert (
                f"torchrun --standalone --nproc_per_node=${{SLURM_GPUS_ON_NODE:-{gpus}}}" in block
            )
        else:
            assert f"nodes={nodes}" in resources and f"gres=gpu:{gpus}" in resources, resources
            assert f"srun --nodes={nodes} --ntasks-per-node=1" in block, block
            assert "--rdzv_backend=c10d" in block and "$SLURM_JOB_NODELIST" in block, block
        assert "-m craft.cli align --config" in block, block


def test_lint_is_clean(env):
    """Snakemake's linter finds nothing: every rule names its software (envs/craft.yaml), and
    the workflow reads no environment variable behind Snakemake's back."""
    proc = snakemake(
        REPO, env, "--lint", "--config", "results=/tmp/craft-dryrun-results", check=False
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    lints = set(re.findall(r"^    \* (.+?):$", text, re.M))
    assert not lints and "Congratulations" in text, text[-3000:]


def test_invalid_config_stops_before_the_dag_with_one_line(workdir, env):
    cfg = tiny_config()
    cfg["modalities"]["phantom-cxr"]["resolution"] = 100
    write_config(workdir / "config.yaml", cfg)
    proc = snakemake(workdir, env, "-n", check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    lines = [line for line in text.splitlines() if "craft: error" in line]
    assert len(lines) == 1, text
    assert (
        "modalities.phantom-cxr.resolution" in lines[0] and "100 is not a multiple of 8" in lines[0]
    )
    assert "Traceback" not in text


@pytest.mark.slow
def test_tiny_workflow_runs_and_reruns_only_what_a_change_touches(workdir, env):
    snakemake(workdir, env, "--profile", str(REPO / "profiles/local"), "--cores", "2")
    summary = workdir / "results/report/summary.csv"
    rows = list(csv.DictReader(summary.open()))
    assert list(rows[0]) == ["modality", "method", "metric", "mean", "sd", "n_seeds"]
    agreement = {
        (r["modality"], r["method"]) for r in rows if r["metric"] == "oracle_label_agreement"
    }
    assert agreement == {(m, k) for m in ("phantom-cxr", "phantom-derm") for k in METHODS}
    # Every metric the run wrote is explained in docs/evaluation.md.
    missing = undocumented(r["metric"] for r in rows)
    assert not missing, f"metrics not documented in docs/evaluation.md: {missing}"
    # Every run scored by both CAS evaluators and every evaluation stage, under stable names.
    names = {(r["modality"], r["method"], r["metric"]) for r in rows}
    per_run = [
        *(
            f"{metric}__{ev}"
            for ev in ("clip", "siglip")
            for metric in (
                "cas_mean",
                "tail_rate",
                *DIMENSIONS,
                "tail_reduction_points",
            )
        ),
        "downstream_auroc_synthetic",
        "downstream_auroc_mixed",
        "downstream_auroc_real",
        "memorization_rate",
        "fd",
        "kid",
        "audit_pass_rate",
        "oracle_distribution_shift",
    ]
    missing = [
        (m, k, metric)
        for m in ("phantom-cxr", "phantom-derm")
        for k in METHODS
        for metric in per_run
        if (m, k, metric) not in names
    ]
    assert not missing, missing[:10]
    # Undefined values are written as null and left out of the summary: the Spearman rank
    # correlation when a tiny run's CAS or oracle pass rate is constant, the relative tail
    # reduction when the strongest baseline has no tail. Their keys are still written.
    for m in ("phantom-cxr", "phantom-derm"):
        for k in METHODS:
            for ev in ("clip", "siglip"):
                run = workdir / f"results/runs/{m}/{k}/0"
                score = json.loads((run / f"metrics-cas-{ev}.json").read_text())
                assert f"cas_oracle_spearman__{ev}" in score["metrics"], (m, k, ev)
    for ev in ("clip", "siglip"):
        assert any(r["metric"] == f"tail_reduction_relative__{ev}" for r in rows), ev
    for m in ("phantom-cxr", "phantom-derm"):  # the blinded study page, its key apart
        page = (workdir / f"results/study/{m}/study.html").read_text()
        assert "lora-enriched" not in page and (workdir / f"results/study/{m}/key.json").is_file()
    for r in rows:
        if r["metric"] == "oracle_label_agreement":
            assert 0.0 <= float(r["mean"]) <= 1.0
    assert (workdir / "results/report/index.html").stat().st_size > 1000
    # LoRA weights in diffusers format, next to their model cards.
    assert (
        workdir / "results/runs/phantom-cxr/lora/0/lora/pytorch_lora_weights.safetensors"
    ).is_file()

    # Prompts follow the method: label prompts for lora, the enriched bank (cycled) for
    # lora-enriched, as the knowledge file lists it.
    from craft.knowledge.schema import load_knowledge
    from craft.prompts import label_prompt
    from craft.store import read_samples

    bank = load_knowledge(workdir / "results/knowledge/phantom-cxr.json")
    for k in ("lora", "lora-enriched"):
        s = read_samples(workdir / f"results/runs/phantom-cxr/{k}/0/samples.h5")
        for y, name in enumerate(s.label_names):
            got = [p for p, lab in zip(s.prompts, s.labels, strict=True) if lab == y]
            want = [label_prompt(bank.description, name)]
            if k == "lora-enriched":
                want = bank.prompts_for(name)
            assert got == [want[i % len(want)] for i in range(len(got))], (k, name, got)

    # Nothing to do when nothing changed.
    assert "Nothing to be done" in snakemake(workdir, env, "-n").stdout

    # One modality's setting: only that modality's jobs (and the report) rerun.
    cfg = tiny_config()
    cfg["modalities"]["phantom-derm"]["source"]["n_per_label"] = 13
    write_config(workdir / "config.yaml", cfg)
    jobs = jobs_to_run(snakemake(workdir, env, "-n").stdout)
    touched = {w.get("modality") for rule, w in jobs if rule not in ("all", "report")}
    assert touched == {"phantom-derm"}, jobs
    assert {rule for rule, _ in jobs} >= {
        "prepare",
        "adapt",
        "generate",
        "evaluate_oracle",
        "report",
    }
    assert "pretrain" not in {rule for rule, _ in jobs}  # the foundation does not use the data set

    # One method's setting: only that method's runs, in every modality.
    cfg = tiny_config()
    cfg["methods"]["lora"]["steps"] = 4
    write_config(workdir / "config.yaml", cfg)
    jobs = jobs_to_run(snakemake(workdir, env, "-n").stdout)
    runs = {(w["modality"], w["method"]) for rule, w in jobs if "method" in w}
    assert runs == {("phantom-cxr", "lora"), ("phantom-derm", "lora")}, jobs
    assert "prepare" not in {rule for rule, _ in jobs}

    # Settings that change how a job runs, not what it makes: nothing reruns.
    cfg = tiny_config()
    cfg["methods"]["lora"]["checkpoint_every"] = 7
    cfg["resources"] = {"adapt": {"threads": 3, "mem_mb": 999}}
    write_config(workdir / "config.yaml", cfg)
    assert "Nothing to be done" in snakemake(workdir, env, "-n").stdout

    # The report's grid: only the report (the oracle never reads it).
    cfg = tiny_config()
    cfg["report"] = {"grid_per_label": 3}
    write_config(workdir / "config.yaml", cfg)
    jobs = jobs_to_run(snakemake(workdir, env, "-n").stdout)
    assert {rule for rule, _ in jobs} == {"report", "all"}, jobs

    # More images per label: generate and what reads the samples, no training job.
    cfg = tiny_config()
    cfg["sampling"]["n_per_label"] = 3
    write_config(workdir / "config.yaml", cfg)
    rules = {rule for rule, _ in jobs_to_run(snakemake(workdir, env, "-n").stdout)}
    assert {"generate", "score", "downstream", "evaluate_oracle", "report"} <= rules, rules
    assert not rules & {"prepare", "pretrain", "adapt", "knowledge", "reference"}, rules

    # The user's own curated knowledge file, edited in place: its modality's knowledge and
    # what reads it rerun (the file is the knowledge job's input).
    from craft.knowledge.curated import curated_path

    mine = workdir / "my-cxr.yaml"
    shutil.copy(curated_path("phantom-cxr"), mine)
    cfg = tiny_config()
    cfg["knowledge"] = {"curated": {"phantom-cxr": str(mine)}}
    write_config(workdir / "config.yaml", cfg)
    snakemake(workdir, env, "--cores", "2", "results/knowledge/phantom-cxr.json")
    assert (
        "Nothing to be done"
        in snakemake(workdir, env, "-n", "results/knowledge/phantom-cxr.json").stdout
    )
    mine.write_text(mine.read_text().replace("clear lungs", "clear lungs, sharp angles", 1))
    target = "results/knowledge/phantom-cxr.json"
    jobs = jobs_to_run(snakemake(workdir, env, "-n", target).stdout)
    assert ("knowledge", {"modality": "phantom-cxr"}) in jobs, jobs
    jobs = jobs_to_run(snakemake(workdir, env, "-n").stdout)
    touched = {w.get("modality") for rule, w in jobs if rule not in ("all", "report")}
    assert touched == {"phantom-cxr"}, jobs
    record = json.loads((workdir / "results/knowledge/job-phantom-cxr.json").read_text())
    assert str(mine) in record["inputs"]["curated"], record["inputs"]

    # A clinician's review of one modality's knowledge, pinned in the config: only that
    # modality's knowledge-dependent jobs rerun, and so they do after an edit of one item.
    reviews = workdir / "reviews"
    reviews.mkdir()
    pinned = reviews / "cxr.yaml"
    shutil.copy(workdir / "results/knowledge/phantom-cxr.review.yaml", pinned)
    cfg = tiny_config()
    cfg["knowledge"] = {"review": {"phantom-cxr": str(pinned)}}
    write_config(workdir / "config.yaml", cfg)
    snakemake(workdir, env, "--cores", "2", "results/knowledge/phantom-cxr.json")
    review = yaml.safe_load(pinned.read_text())
    review["checklist"][0]["statement"] += " clearly"
    pinned.write_text(yaml.safe_dump(review, sort_keys=False))
    jobs = jobs_to_run(snakemake(workdir, env, "-n").stdout)
    assert ("knowledge", {"modality": "phantom-cxr"}) in jobs, jobs
    touched = {w.get("modality") for rule, w in jobs if rule not in ("all", "report")}
    assert touched == {"phantom-cxr"}, jobs
    rules = {rule for rule, _ in jobs}
    assert {"train_evaluator", "reference", "score"} <= rules, rules
    assert not rules & {"prepare", "pretrain"}, rules


@pytest.mark.slow
def test_killed_generate_resumes_without_duplicates(workdir, env):
    """A generate job killed mid-way leaves a .partial file; the rerun completes it."""
    cfg = tiny_config()
    cfg["modalities"] = {"phantom-cxr": cfg["modalities"]["phantom-cxr"]}
    cfg["methods"] = {"zero-shot": {"kind": "zero-shot"}}
    cfg["study"] = None
    cfg["sampling"] = {"steps": 2, "n_per_label": 6, "batch_size": 4}
    write_config(workdir / "config.yaml", cfg)
    snakemake(workdir, env, "--cores", "2", "results/runs/phantom-cxr/zero-shot/0/model.json")
    samples = workdir / "results/runs/phantom-cxr/zero-shot/0/samples.h5"
    # A full, uninterrupted generation as the reference.
    subprocess.run(
        [
            "craft",
            "generate",
            "-c",
            "config.yaml",
            "-m",
            "phantom-cxr",
            "-k",
            "zero-shot",
            "--out",
            "ref.h5",
        ],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
    )
    # Simulate a kill after the first batch: keep a partial file with 4 of 24 rows.
    import h5py

    shutil.copy(workdir / "ref.h5", samples.with_name("samples.h5.partial"))
    with h5py.File(samples.with_name("samples.h5.partial"), "a") as f:
        f.attrs["rows_done"] = 4
        f["images"][4:] = 0
    proc = subprocess.run(
        ["craft", "generate", "-c", "config.yaml", "-m", "phantom-cxr", "-k", "zero-shot"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "4/24 images already written" in proc.stderr
    from craft.store import read_samples

    a, b = read_samples(workdir / "ref.h5"), read_samples(samples)
    assert (a.images == b.images).all() and (a.seeds == b.seeds).all()
    assert len(set(b.seeds.tolist())) == len(b.seeds)  # no duplicates


@pytest.mark.slow
def test_a_controller_killed_hard_at_any_moment_resumes_with_the_same_command(tmp_path, env):
    """SIGKILL to the whole process group (what a dropped login session or the OOM killer
    does to the controller and its jobs) at random moments, then the README's command again,
    until it finishes: no LockException on the way, and every number in summary.csv equal to
    an uninterrupted run's."""
    import random
    import signal

    cfg = tiny_config()
    cfg["modalities"] = {"phantom-cxr": cfg["modalities"]["phantom-cxr"]}
    cfg["methods"] = {k: cfg["methods"][k] for k in ("zero-shot", "lora-enriched")}
    cfg["study"] = None
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    for d in (ref, killed):
        d.mkdir()
        write_config(d / "config.yaml", cfg)
    profile = ("--profile", str(REPO / "profiles/local"), "--cores", "2")
    t0 = time.monotonic()
    snakemake(ref, env, *profile)
    whole = time.monotonic() - t0
    command = ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(killed), *profile]
    rng, kills, cleared = random.Random(41), 0, 0
    for _ in range(12):
        proc = subprocess.Popen(
            command, env=env, start_new_session=True, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=rng.uniform(0.1, 0.5) * whole)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            kills += 1
        cleared += "removed the lock left by a controller that was killed" in out
        if proc.returncode == -signal.SIGKILL:
            continue
        assert "LockException" not in out and "cannot be locked" not in out, out[-3000:]
        if proc.returncode == 0 and (killed / "results/report/summary.csv").is_file():
            break
        raise AssertionError(f"the same command failed after {kills} kill(s):\n{out[-3000:]}")
    else:
        raise AssertionError(f"not finished after {kills} kills")
    assert kills >= 2 and cleared >= 1, (kills, cleared)
    import pandas as pd

    keys = ["modality", "method", "metric"]
    a, b = (
        pd.read_csv(d / "results/report/summary.csv").sort_values(keys).reset_index(drop=True)
        for d in (ref, killed)
    )
    pd.testing.assert_frame_equal(a, b, check_exact=True)


FAKE_APPTAINER = """#!/bin/sh
# a stand-in for Apptainer (none can be installed here): says its version, "pulls" an image by
# creating the file, records every call, runs nothing
if [ "$1" = "--version" ]; then echo "apptainer version 1.3.4"; exit 0; fi
echo "$@" >> "$FAKE_APPTAINER_LOG"
if [ "$1" = "pull" ]; then
  while [ $# -gt 0 ]; do [ "$1" = "--name" ] && { touch "$2"; break; }; shift; done
fi
exit 0
"""


def test_under_sdm_apptainer_a_job_runs_in_the_configured_image(tmp_path, env):
    """resources.container is every rule's `container`: with --sdm apptainer Snakemake pulls
    that image and runs the job's craft command in it (here a stand-in apptainer that records
    the calls and runs nothing, so the job's output is missing)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(FAKE_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    calls = tmp_path / "apptainer.log"
    site = {**env, "PATH": f"{bin_dir}:{env['PATH']}", "FAKE_APPTAINER_LOG": str(calls)}
    cfg = tiny_config()
    cfg["modalities"] = {"phantom-cxr": cfg["modalities"]["phantom-cxr"]}
    image = "docker://example.org/craft:0.2.0"
    cfg["resources"] = {"container": image}
    write_config(tmp_path / "config.yaml", cfg)
    target = "results/data/phantom-cxr.h5"
    out = snakemake(tmp_path, site, "--cores", "1", target, "--sdm", "apptainer", check=False)
    assert out.returncode != 0 and "MissingOutputException" in out.stdout + out.stderr
    pull, run = calls.read_text().splitlines()
    assert pull.startswith("pull --name ") and pull.endswith(image)
    simg = pull.split()[2]
    assert run.startswith("exec ") and f".snakemake/singularity/{simg}" in run
    assert "craft prepare --config" in run
    # no image configured: --sdm apptainer runs the job as it is
    cfg["resources"] = {}
    write_config(tmp_path / "config.yaml", cfg)
    calls.unlink()
    snakemake(tmp_path, site, "--cores", "1", target, "--sdm", "apptainer")
    assert (tmp_path / target).is_file() and not calls.exists()


LMOD_INIT = Path("/usr/share/lmod/lmod/init/bash")


@pytest.mark.slow
def test_a_job_loads_its_environment_modules_with_a_real_lmod(tmp_path, env):
    """resources.<rule>.modules under `--sdm env-modules`, with Debian's Lmod as a site sets it
    up (BASH_ENV to its init, MODULEPATH to the site's modulefiles): the module is loaded in
    the job's own shell, once per job, and the job runs."""
    if not LMOD_INIT.is_file():
        if os.environ.get("CRAFT_REQUIRE_LMOD") == "1":
            pytest.fail(f"Lmod is not installed ({LMOD_INIT}); apt-get install lmod")
        pytest.skip("Lmod is not installed (apt-get install lmod)")
    mods = tmp_path / "modulefiles" / "craft-probe"
    mods.mkdir(parents=True)
    (mods / "1.0.lua").write_text(
        'setenv("CRAFT_PROBE", "loaded")\n'
        'execute{cmd="echo loaded $$ >> \\"$CRAFT_PROBE_FILE\\"", modeA={"load"}}\n'
    )
    probe = tmp_path / "probe.txt"
    cfg = tiny_config()
    cfg["modalities"] = {"phantom-cxr": cfg["modalities"]["phantom-cxr"]}
    cfg["resources"] = {"prepare": {"modules": ["craft-probe/1.0"]}}
    write_config(tmp_path / "config.yaml", cfg)
    site = {
        **env,
        "BASH_ENV": str(LMOD_INIT),
        "MODULEPATH": str(tmp_path / "modulefiles"),
        "CRAFT_PROBE_FILE": str(probe),
    }
    target = "results/data/phantom-cxr.h5"
    out = snakemake(tmp_path, site, "--cores", "1", target, "--sdm", "env-modules")
    assert "Activating environment modules: craft-probe/1.0" in out.stdout + out.stderr
    assert (tmp_path / target).is_file()
    lines = probe.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loaded "), lines
    # without --sdm env-modules the same config loads nothing
    snakemake(tmp_path, site, "--cores", "1", "--forcerun", "prepare", "--", target)
    assert probe.read_text().splitlines() == lines


@pytest.mark.slow
def test_logs_live_under_results_and_every_attempt_keeps_its_own(tmp_path, env):
    """Two configs with two results folders keep their own logs; a rerun job keeps the earlier
    attempt's log beside the new one, and ``{log}`` is the newest attempt's."""
    cfg = tiny_config(results="site-a")
    cfg["modalities"] = {"phantom-cxr": cfg["modalities"]["phantom-cxr"]}
    write_config(tmp_path / "config.yaml", cfg)
    target = "site-a/data/phantom-cxr.h5"
    snakemake(tmp_path, env, "--cores", "1", target)
    snakemake(
        tmp_path, env, "--cores", "1", target, "--forcerun", "prepare"
    )  # after the target: --forcerun takes every word after it
    log = tmp_path / "site-a/logs/prepare/phantom-cxr.log"
    attempts = sorted((tmp_path / "site-a/logs/prepare/phantom-cxr.log.attempts").iterdir())
    assert len(attempts) == 2, attempts
    for a in attempts:
        assert "wrote" in a.read_text(), a.read_text()[-500:]
    newest = max(attempts, key=lambda a: a.stat().st_mtime_ns)
    assert log.samefile(newest)
    assert not (tmp_path / "logs").exists()


def test_an_offline_plan_lists_the_models_a_job_could_not_load(workdir, env, tmp_path):
    """HF_HUB_OFFLINE set (compute nodes without internet): the dry run stops before the DAG
    with one line per model that is neither a local folder nor in the Hugging Face cache."""
    from tests.hub_cache import offline_env

    cfg = tiny_config()
    cfg["models"] = {"generator": "site/absent-sd"}
    write_config(workdir / "config.yaml", cfg)
    (tmp_path / "empty-cache").mkdir()
    proc = snakemake(
        workdir, offline_env(tmp_path / "empty-cache", env), "-n", "--configfile",
        str(workdir / "config.yaml"), check=False,
    )  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("craft: error")]
    assert proc.returncode != 0 and lines == [
        "craft: error: not available offline: models.generator: 'site/absent-sd': not in the "
        f"Hugging Face cache; run `craft models fetch --config {workdir / 'config.yaml'}` on a "
        "machine with internet"
    ], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert snakemake(workdir, env, "-n", check=False).returncode == 0  # hub online: it plans


def test_a_key_written_twice_in_the_config_file_stops_the_plan(workdir, env):
    """Snakemake takes the last of two equal keys; craft refuses them, naming both lines."""
    text = (workdir / "config.yaml").read_text()
    (workdir / "config.yaml").write_text(text + "seeds: [5]\n")
    proc = snakemake(workdir, env, "-n", check=False)
    line = "craft: error: config.yaml: line"
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("craft: error")]
    assert proc.returncode != 0 and len(errors) == 1 and errors[0].startswith(line), proc.stderr
    assert "key 'seeds' is written twice (first on line" in errors[0]


def test_a_given_config_file_replaces_the_default_whole(workdir, env, tmp_path):
    """--configfile replaces the config.yaml of the folder (which Snakemake would merge key by
    key, and its cluster jobs even under --replace-workflow-config); --config applies on top."""
    mine = tiny_config(results=str(tmp_path / "mine"))
    mine["modalities"] = {"phantom-derm": mine["modalities"]["phantom-derm"]}
    write_config(tmp_path / "mine.yaml", mine)
    out = snakemake(workdir, env, "-n", "--configfile", str(tmp_path / "mine.yaml")).stdout
    touched = {w.get("modality") for _, w in jobs_to_run(out)} - {None}
    assert touched == {"phantom-derm"}, touched
    both = snakemake(workdir, env, "-n", "--config", "seeds=[0,1]").stdout
    assert job_counts(both)["adapt"] == 2 * 3 * 2  # 2 modalities x 3 methods x 2 seeds


def planned_inputs(output: str) -> dict[tuple[str, str], list[str]]:
    """(rule, wildcards) -> the input names of every job a dry run lists."""
    jobs = {}
    for rule, block in dry_run_jobs(output):
        wc = re.search(r"wildcards: (.*)", block)
        names = re.search(r"\n\s+input: (.*)", block)
        jobs[(rule, wc.group(1) if wc else "")] = names.group(1).split(", ") if names else []
    return jobs


def test_a_moved_checkout_plans_its_jobs_with_the_same_input_names(env, tmp_path):
    """Snakemake reruns a job whose recorded input names changed. Run from the checkout, the
    files shipped in it (the curated knowledge bases, the phantom foundations) are named
    relative to the working directory: two copies of the checkout plan the default config's
    jobs with the same input names, so a finished run moved, copied or cloned anew plans
    nothing (issue 40: it reran 86 of its 126 jobs)."""
    plans = []
    for name in ("a", "b"):
        work = tmp_path / name
        work.mkdir()
        for part in ("Snakefile", "config.yaml"):
            shutil.copy(REPO / part, work / part)
        for part in ("rules", "craft", "assets", "envs", "bin"):
            shutil.copytree(REPO / part, work / part, ignore=shutil.ignore_patterns("__pycache__"))
        proc = subprocess.run(
            ["snakemake", "-n"], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        plans.append(planned_inputs(proc.stdout))
        inputs = {f for names in plans[-1].values() for f in names}
        assert not [f for f in inputs if f.startswith(str(tmp_path))], sorted(inputs)
        for f in (
            "craft/knowledge/curated/phantom-cxr.yaml",
            "assets/phantom-foundation/phantom-cxr",
        ):
            assert f in inputs, sorted(inputs)
    assert ("knowledge", "modality=phantom-derm") in plans[0]
    assert plans[0] == plans[1]


def test_a_fresh_clone_of_a_finished_run_plans_nothing(env, tmp_path):
    """A site clones the workflow anew and brings its results: every file of the clone is
    newer than the results. The shipped foundation folder (which Snakemake cannot checksum)
    is versioned with the code and marked ancient, so its new times rerun no adapt job."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["modalities"] = {"phantom-cxr": {**cfg["modalities"]["phantom-cxr"]}}
    cfg["modalities"]["phantom-cxr"]["source"]["n_per_label"] = 8
    cfg["methods"]["lora"].update(steps=1, batch_size=2)
    del cfg["study"]
    target = "results/runs/phantom-cxr/lora/0/model.json"
    first, clone = tmp_path / "first", tmp_path / "clone"
    for work in (first, clone):
        work.mkdir()
        shutil.copy(REPO / "Snakefile", work / "Snakefile")
        write_config(work / "config.yaml", cfg)
        for part in ("rules", "craft", "assets", "envs", "bin"):  # new files: new times
            shutil.copytree(
                REPO / part,
                work / part,
                ignore=shutil.ignore_patterns("__pycache__"),
                copy_function=shutil.copy,
            )
        if work == first:
            run = ["snakemake", "--cores", "1", target]
            proc = subprocess.run(run, cwd=work, env=env, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr[-3000:]
    newest = max(f.stat().st_mtime for f in (first / "results").rglob("*"))
    for f in [clone, *clone.rglob("*")]:  # a clone made after the run: all of it newer
        os.utime(f, (newest + 60, newest + 60))
    for part in ("results", ".snakemake"):  # as `cp -a` or `rsync -a` bring them
        shutil.copytree(first / part, clone / part, symlinks=True)
    proc = subprocess.run(
        ["snakemake", "-n", target], cwd=clone, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def test_the_shipped_foundations_are_the_files_their_checksums_name():
    """The shipped foundation folders are marked ancient (a new clone reruns nothing), so
    their content must not change under the same name (assets/README.md)."""
    import hashlib

    root = REPO / "assets"
    listed = {}
    for line in (root / "phantom-foundation" / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    found = {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted((root / "phantom-foundation").rglob("*"))
        if f.is_file() and f.name != "SHA256SUMS"
    }
    assert found == listed, (
        "a shipped foundation changed under the same name: give it a new folder name "
        "(assets/README.md), then list its files in its SHA256SUMS"
    )


def slurm_jobs_planned(output: str) -> tuple[int, int]:
    """(group jobs, jobs of one rule) of a dry run: what sbatch would be called for."""
    groups = len(re.findall(r"^(?:\[.*\] )?Group job ", output, re.M))
    single = [r for r in re.findall(r"^(?:\[.*\] )?rule (\w+):", output, re.M) if r != "all"]
    return groups, len(single)


def test_the_slurm_profile_submits_a_runs_evaluations_as_one_job(env, tmp_path):
    """resources.group_evaluations (on) with profiles/slurm's group-components: one group job
    per run holds its score per evaluator, oracle, audit, downstream, fidelity and
    memorization, each with its own log; the jobs planned for SLURM drop at least twofold for
    ten seeds. Off, every evaluation is a job of its own; so it is in a local run's plan
    (no --jobs), where a group would only slow the dry run."""
    args = ["-n", "--profile", str(REPO / "profiles/slurm")]
    results = str(tmp_path / "results")
    on = snakemake(
        REPO, env, *args, "--config", f"results={results}", "seeds=[0,1,2,3,4,5,6,7,8,9]"
    )
    off = snakemake(
        REPO,
        env,
        *args,
        "--config",
        f"results={results}",
        "seeds=[0,1,2,3,4,5,6,7,8,9]",
        "resources={group_evaluations: false}",
    )
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    runs = len(cfg["modalities"]) * len(cfg["methods"]) * 10
    groups_on, single_on = slurm_jobs_planned(on.stdout)
    groups_off, single_off = slurm_jobs_planned(off.stdout)
    assert groups_off == 0 and groups_on == runs
    local = snakemake(
        REPO, env, "-n", "--config", f"results={results}", "seeds=[0,1,2,3,4,5,6,7,8,9]"
    )
    assert slurm_jobs_planned(local.stdout) == (0, single_off)
    assert "evaluation_slot" not in local.stdout
    evaluations = sum(job_counts(on.stdout)[r] for r in ("score", "audit", "downstream"))
    evaluations += sum(job_counts(on.stdout)[r] for r in ("evaluate_oracle", "fidelity"))
    evaluations += job_counts(on.stdout)["memorization"]
    assert single_on == single_off - evaluations
    assert single_off >= 2 * (groups_on + single_on), (single_off, groups_on, single_on)
    after = on.stdout.split("Group job evaluate-phantom-cxr-craft-0 ")[1]
    block = re.split(r"\n(?=\[|rule |localrule |Job stats)", after)[0]
    rules = re.findall(r"^    rule (\w+):", block, re.M)
    assert sorted(rules) == sorted(
        ["audit", "downstream", "evaluate_oracle", "fidelity", "memorization"]
        + ["score"] * len(cfg["cas"]["evaluators"])
    ), block[:3000]
    assert "evaluation_slot=1" in block
    assert "logs/fidelity/phantom-cxr/craft/0.log" in block
