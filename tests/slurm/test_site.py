"""A real site, rehearsed end to end on the real local SLURM cluster (fake GPUs).

The site has its own data (a manifest of real DICOM slices and PNGs, several per patient, with
patient IDs), downloads its models in the hub's formats (a Stable Diffusion 1.5 pipeline,
BiomedCLIP whose BERT text tower is a second hub model, a timm classifier: all read from a
Hugging Face cache with the hub switched off, as on compute nodes without internet) or keeps
them in local folders (a transformers CLIP and SigLIP, DINOv2), and builds its knowledge from an
OpenAI-compatible server that needs an API key. All six methods run through
``snakemake --profile slurm``; both reward finetunings run as two-GPU jobs (DeepSpeed on the CPU).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from craft.paths import Layout
from craft.report.summary import load_metrics_file
from tests.knowledge.chat_server import ChatServer, Reply
from tests.site_workspace import METHODS, MODALITY, SECRET, build_site, site_answer

from .conftest import REPO
from .test_slurm_workflow import (
    EVALUATION_RULES,
    cancel_leftovers,
    failure_report,
    finish,
    gpu_rules,
    is_evaluation_group,
    job_stats,
    localrules,
    now_for_sacct,
    run_jobs,
    slurm_args,
    slurm_profile,
    snakemake_cmd,
    start,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def files_holding(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


#: Loads each run's LoRA into a plain diffusers StableDiffusionPipeline (argv[1]: the pipeline
#: folder; the rest: model cards) and compares its UNet with the one craft loads from the card.
LORA_CHECK = """
import sys, torch
from diffusers import StableDiffusionPipeline
from craft.models.card import load_card_generator

def out(unet):
    g = torch.Generator().manual_seed(0)
    c = unet.config
    x = torch.randn(1, c.in_channels, c.sample_size, c.sample_size, generator=g)
    text = torch.randn(1, 16, c.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, 500, encoder_hidden_states=text).sample

for card in sys.argv[2:]:
    _, ours = load_card_generator(card)
    pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1])
    base = out(pipe.unet)
    pipe.load_lora_weights(card.rsplit("/", 1)[0] + "/lora")
    theirs = out(pipe.unet)
    assert (theirs - base).abs().max() > 0, f"{card}: the LoRA changed nothing"
    torch.testing.assert_close(theirs, out(ours.unet), atol=1e-5, rtol=0)
    print(card, "same UNet")
"""


def test_a_site_runs_every_method_on_slurm_with_offline_nodes(tmp_path, slurm_cluster, craft_env):
    import yaml

    t0 = time.monotonic()
    workdir = tmp_path / "site"
    with ChatServer(lambda n, body: Reply(site_answer(body))) as server:
        site = build_site(workdir, server.base_url)
        # run, as a site does, from a folder that holds craft's embedded default config.yaml:
        # the given --configfile must replace it, in the jobs SLURM runs too
        shutil.copy(REPO / "config.yaml", workdir / "config.yaml")
        env = {**site.env(craft_env), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
        profile = slurm_profile(tmp_path, slurm_cluster)
        prefix = f"craft-site-{uuid.uuid4().hex[:8]}"
        since = now_for_sacct()
        log = tmp_path / "slurm.log"
        proc = start(
            snakemake_cmd(workdir, site.config, *slurm_args(profile, prefix)), workdir, env, log
        )
        try:
            rc = finish(proc, timeout=1500)
            assert rc == 0, f"site run failed (rc {rc})\n{failure_report(log, workdir)}"
        finally:
            if proc.poll() is None:
                finish(proc, timeout=1)
            cancel_leftovers(prefix)
        auth = {s.headers.get("Authorization") for s in server.seen}
    assert auth == {f"Bearer {SECRET}"}, "the knowledge job did not use the server's key"

    # every job through SLURM, COMPLETED; GPU jobs on the GPU partition; align on two GPUs
    text = log.read_text()
    jobs, table = run_jobs(prefix, since, tmp_path)
    expected = job_stats(text)
    expected.pop("all", None)
    for rule in localrules(text):
        expected.pop(rule, None)
    # a run's evaluation jobs are one SLURM job (resources.group_evaluations): one per run
    runs = expected.get("generate", 0)
    for rule in EVALUATION_RULES:
        expected.pop(rule, None)
    assert sum(expected.values()) + runs == len(jobs), f"{expected}\n{table}"
    cfg = yaml.safe_load(site.config.read_text())
    gpus = gpu_rules(cfg)
    for j in jobs:
        assert j["State"] == "COMPLETED" and j["ExitCode"] == "0:0", f"{j['JobID']}:\n{table}"
        gpu = is_evaluation_group(j) or j["rule"] in gpus  # a group asks for score's GPU
        want = slurm_cluster.gpu_partition if gpu else slurm_cluster.partition
        assert j["Partition"] == want, f"{j['rule']} on {j['Partition']}:\n{table}"
    aligned = [j for j in jobs if j["rule"] == "align"]
    assert len(aligned) == 2 and all("gres/gpu=2" in j["AllocTRES"] for j in aligned), table

    # no patient in two splits; the memorization reference knew every patient
    lay = Layout(workdir / "results")
    with h5py.File(lay.data(MODALITY)) as f:
        patients = {s: {p.decode() for p in f[s]["patients"][()]} for s in ("train", "val", "test")}
    assert all(patients.values()), patients
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"], patients

    # the report lists every method, and the memorization reference knew the patients
    summary = pd.read_csv(lay.report() / "summary.csv")
    assert set(summary["method"]) == set(METHODS), sorted(set(summary["method"]))
    known = summary.loc[summary["metric"] == "memorization_reference_patients_known", "mean"]
    assert len(known) == len(METHODS) and (known == 1.0).all(), known
    page = (lay.report() / "index.html").read_text()
    assert all(m in page for m in METHODS)

    # each reward method's path: scale 1 is the run's own metrics, exactly; scale 0 its
    # start's where the start asks with the same prompts (craft and lora-enriched: enriched;
    # generic-reward asks with the label prompt, so its start is sampled with its own plan)
    for method, ends in (("generic-reward", ["1"]), ("craft", ["0", "1"])):
        path = load_metrics_file(lay.metrics(MODALITY, method, 0, "path")).metrics
        for scale, run in (("0", "lora-enriched"), ("1", method)):
            if scale not in ends:
                continue
            own = {}
            for f in lay.run(MODALITY, run, 0).glob("metrics-*.json"):
                own |= load_metrics_file(f).metrics
            at = {k.removeprefix("path_").removesuffix(f"__s{scale}"): v for k, v in path.items()
                  if k.endswith(f"__s{scale}")}  # fmt: skip
            shared = set(at) & set(own)
            assert {k.split("__")[0] for k in shared} == {"cas_mean", "tail_rate"}, sorted(at)
            assert all(at[k] == own[k] for k in shared), (method, scale)
            labels = [k for k in own if k.startswith("fd__")]
            assert at["realism_fd"] == pytest.approx(np.mean([own[k] for k in labels]))
        scales = {k.rpartition("__s")[2] for k in path if k.startswith("path_")}
        assert scales == {"0", "0.5", "1", "1.5"}, scales  # the default evaluation.paths

    # every trained LoRA loads in a plain diffusers pipeline and gives craft's UNet (in a
    # process of the site's offline environment: the card names the generator by hub id)
    check = subprocess.run(
        [sys.executable, "-c", LORA_CHECK, str(site.sd), *(str(lay.card(MODALITY, m, 0))
         for m in ("lora", "lora-enriched", "generic-reward", "craft"))],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.count("same UNet") == 4, check.stdout

    # the key reached no file: results, logs, Snakemake's and the SLURM jobs' logs
    leaked = files_holding(workdir, SECRET) + files_holding(tmp_path / "profiles", SECRET)
    assert not leaked and SECRET not in text, leaked
    print(f"site rehearsal on SLURM: {len(jobs)} jobs, {time.monotonic() - t0:.0f} s\n{table}")
