"""Fixtures of the report tests: a benchmark-like report, built once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from craft.report.claim import PathClaim
from tests.report.helpers import BENCH_METHODS, REWARD_METHODS, write_bench_runs


@dataclass(frozen=True)
class BenchReport:
    """A report of six methods x two phantom modalities x three seeds, 10 images per label,
    the two reward methods with paths."""

    index: Path
    files: list[Path]
    samples: dict
    values: dict


@pytest.fixture(scope="session")
def bench_report(tmp_path_factory) -> BenchReport:
    """``craft report`` as the CLI calls it (the methods not of kind craft as baselines), with
    grid_per_label 32 (the config's maximum) over runs that hold 10 images per label."""
    from craft.report import report

    root = tmp_path_factory.mktemp("bench")
    files, samples, values = write_bench_runs(root, n_per_label=10, paths=True)
    index = report(
        files,
        samples,
        root / "report",
        "craft report",
        grid_per_label=32,
        method_order=BENCH_METHODS,
        baselines=[k for k in BENCH_METHODS if k != "craft"],
        claim_paths=PathClaim(["siglip"], ["phantom-cxr", "phantom-derm"], REWARD_METHODS),
    )
    return BenchReport(index, files, samples, values)


@pytest.fixture(scope="session")
def tiny_site(tmp_path_factory):
    """Runs the tiny workflow (one phantom modality, zero-shot and lora, no study) once per
    site name and seeds, on first use, and gives its folder: the finished runs the slow tests
    of the report share (pooling two sites, ``snakemake --report``)."""
    import os
    import subprocess

    from tests.conftest import BIN, REPO, tiny_config, write_config

    root = tmp_path_factory.mktemp("sites")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("OMP_NUM_THREADS", "1")
    done: dict[str, tuple[Path, tuple[int, ...]]] = {}

    def run(site: str, seeds) -> Path:
        if site in done:
            work, ran = done[site]
            assert ran == tuple(seeds), f"site {site} ran with seeds {ran}, not {seeds}"
            return work
        work = root / site
        work.mkdir()
        cfg = tiny_config(seeds=seeds)  # one modality, two methods
        cfg["modalities"] = {"phantom-cxr": cfg["modalities"]["phantom-cxr"]}
        cfg["methods"] = {k: cfg["methods"][k] for k in ("zero-shot", "lora")}
        cfg["study"] = None
        write_config(work / "config.yaml", cfg)
        cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work)]
        cmd += ["--cores", "2", "--profile", str(REPO / "profiles/local")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        done[site] = (work, tuple(seeds))
        return work

    return run
