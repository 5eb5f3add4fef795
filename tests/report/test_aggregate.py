"""Cross-site aggregation: export a site's scores, pool several sites, refuse config mismatches."""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from craft.config import load_config, validate_config
from craft.errors import CraftError
from craft.evaluate import write_metrics
from craft.paths import Layout
from craft.report.aggregate import (
    AGGREGATE_COLUMNS,
    MANIFEST,
    aggregate,
    evaluator_specs,
    export_summary,
    method_specs,
)
from craft.specs import digest_of, run_stage
from tests.conftest import REPO

MODALITY = "phantom-cxr"
METHODS = ["lora", "lora-enriched", "craft"]
BASELINES = ["zero-shot", "lora", "lora-enriched", "full", "generic-reward"]  # kind != craft
# Seed 1 at both sites: two different runs that must not be paired or merged.
SEEDS = {"site-a": [0, 1], "site-b": [1, 2, 3]}


def site_config(results: Path, **method_changes):
    data = load_config(REPO / "config.yaml").model_dump(mode="json")
    data["results"] = str(results)
    for method, changes in method_changes.items():
        data["methods"][method].update(changes)
    return validate_config(data)


def make_site(root: Path, site: str, cfg, rng) -> dict[tuple[str, int, str], float]:
    """Write real metric files for the site's seeds; returns {(method, seed, metric): value}."""
    lay = Layout(cfg.results)
    values = {}
    for i, method in enumerate(METHODS):
        for seed in SEEDS[site]:
            cas = {
                "tail_rate__clip": rng.uniform(0.05, 0.4) - 0.05 * i,
                "cas_mean__clip": rng.uniform(0.3, 0.8),
            }
            down = {"downstream_auroc_synthetic": rng.uniform(0.5, 1.0)}
            for stage, metrics in (("cas-clip", cas), ("downstream", down)):
                write_metrics(
                    lay.metrics(MODALITY, method, seed, stage),
                    MODALITY,
                    method,
                    seed,
                    stage,
                    metrics,
                    cfg.spec(run_stage(cfg, method), MODALITY, method).digest,
                )
                values.update({(method, seed, k): v for k, v in metrics.items()})
    return values


@pytest.fixture
def sites(tmp_path):
    """Two exported sites (tarballs) and their written values."""
    rng = np.random.default_rng(3)
    out = {}
    for site in SEEDS:
        cfg = site_config(tmp_path / site / "results")
        values = make_site(tmp_path / site, site, cfg, rng)
        tarball = export_summary(cfg.results, cfg, tmp_path / f"{site}.tar.gz", site)
        out[site] = (tarball, values)
    return out


def rows(df: pd.DataFrame, site: str, method: str, metric: str) -> pd.Series:
    r = df[(df["site"] == site) & (df["method"] == method) & (df["metric"] == metric)]
    assert len(r) == 1, (site, method, metric, len(r))
    return r.iloc[0]


def test_export_holds_metrics_and_manifest_only(sites):
    tarball, values = sites["site-a"]
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(MANIFEST).read())
    assert names[0] == MANIFEST
    assert all(n == MANIFEST or n.endswith(".json") and "/metrics-" in n for n in names)
    assert len(names) == 1 + len(METHODS) * len(SEEDS["site-a"]) * 2
    assert manifest["site"] == "site-a"
    assert manifest["baselines"] == BASELINES
    cfg = site_config(Path("unused"))
    run = next(r for r in manifest["runs"] if r["method"] == "craft")
    assert run["seeds"] == SEEDS["site-a"]
    assert run["method_digest"] == digest_of(method_specs(cfg, MODALITY, "craft"))
    assert run["method_slice"]["align"] == cfg.spec("align", MODALITY, "craft").plain()
    assert run["evaluator_digests"] == {
        ev: digest_of(evaluator_specs(cfg, MODALITY, ev)) for ev in ("clip", "siglip")
    }
    assert set(manifest["files"]) == set(names) - {MANIFEST}


def test_pooled_numbers_match_a_direct_computation(sites, tmp_path):
    out = tmp_path / "agg"
    index = aggregate([sites["site-a"][0], sites["site-b"][0]], out)
    df = pd.read_csv(out / "summary.csv")
    assert tuple(df.columns) == AGGREGATE_COLUMNS
    assert list(dict.fromkeys(df["site"])) == ["site-a", "site-b", "pooled"]
    for method in METHODS:
        for metric in ("tail_rate__clip", "cas_mean__clip", "downstream_auroc_synthetic"):
            every = []
            for site, (_, values) in sites.items():
                own = np.array([values[(method, s, metric)] for s in SEEDS[site]])
                every += list(own)
                r = rows(df, site, method, metric)
                assert r["n_seeds"] == len(own)
                assert r["mean"] == pytest.approx(own.mean(), rel=1e-9)
                assert r["sd"] == pytest.approx(np.std(own, ddof=1), rel=1e-9)
            r = rows(df, "pooled", method, metric)
            assert r["n_seeds"] == 5  # seed 1 of both sites counted twice, not merged
            assert r["mean"] == pytest.approx(np.mean(every), rel=1e-9)
            assert r["sd"] == pytest.approx(np.std(every, ddof=1), rel=1e-9)
    page = index.read_text()
    assert "site-a" in page and "site-b" in page and "<img" in page  # bars, no grids
    assert "grid" not in " ".join(p.name for p in (out / "figures").iterdir())
    prov = json.loads((out / "aggregate.json").read_text())
    assert prov["mismatches"] == [] and [s["site"] for s in prov["sites"]] == list(SEEDS)


def test_pooled_tail_reductions_pair_each_site_seed_with_the_strongest_baseline(sites, tmp_path):
    aggregate([sites["site-a"][0], sites["site-b"][0]], tmp_path / "agg")
    df = pd.read_csv(tmp_path / "agg" / "summary.csv")
    pairs = [(site, s) for site in SEEDS for s in SEEDS[site]]
    tail = {
        k: np.array([sites[site][1][(k, s, "tail_rate__clip")] for site, s in pairs])
        for k in METHODS
    }
    best = min(
        (k for k in METHODS if k in BASELINES and k != "craft"), key=lambda k: tail[k].mean()
    )
    points = tail[best] - tail["craft"]
    r = rows(df, "pooled", "craft", "tail_reduction_points__clip")
    assert r["n_seeds"] == 5
    assert r["mean"] == pytest.approx(points.mean(), rel=1e-9)
    assert r["sd"] == pytest.approx(np.std(points, ddof=1), rel=1e-9)
    rel = rows(df, "pooled", "craft", "tail_reduction_relative__clip")
    assert rel["mean"] == pytest.approx((points / tail[best]).mean(), rel=1e-9)
    # Every site has its own reduction rows too.
    assert rows(df, "site-b", "craft", "tail_reduction_points__clip")["n_seeds"] == 3


def test_mismatched_method_config_is_refused_naming_the_key(tmp_path):
    rng = np.random.default_rng(0)
    tarballs = []
    for site, changes in (("site-a", {}), ("site-b", {"lora": {"steps": 151}})):
        cfg = site_config(tmp_path / site / "results", **changes)
        make_site(tmp_path / site, site, cfg, rng)
        tarballs.append(export_summary(cfg.results, cfg, tmp_path / f"{site}.tgz", site))
    with pytest.raises(CraftError) as err:
        aggregate(tarballs, tmp_path / "agg")
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{MODALITY}/lora:" in msg and "method digest" in msg
    assert "site-a" in msg and "site-b" in msg and "adapt.method.training.steps" in msg
    assert "lora-enriched" not in msg and "(+" not in msg  # only lora differs
    assert not (tmp_path / "agg" / "summary.csv").exists()

    index = aggregate(tarballs, tmp_path / "agg", allow_mismatch=True)
    prov = json.loads((tmp_path / "agg" / "aggregate.json").read_text())
    assert prov["allow_mismatch"] is True
    (m,) = prov["mismatches"]
    assert (m["method"], m["what"], m["keys"], m["sites"]) == (
        "lora",
        "method",
        ["adapt.method.training.steps"],
        ["site-a", "site-b"],
    )
    assert "adapt.method.training.steps" in index.read_text()
    df = pd.read_csv(tmp_path / "agg" / "summary.csv")
    assert rows(df, "pooled", "lora", "cas_mean__clip")["n_seeds"] == 5


def test_mismatched_evaluator_names_the_evaluator(tmp_path):
    rng = np.random.default_rng(1)
    tarballs = []
    for site, steps in (("site-a", 400), ("site-b", 401)):
        data = load_config(REPO / "config.yaml").model_dump(mode="json")
        data["results"] = str(tmp_path / site / "results")
        data["cas"]["evaluators"]["siglip"]["train"]["steps"] = steps
        cfg = validate_config(data)
        make_site(tmp_path / site, site, cfg, rng)
        tarballs.append(export_summary(cfg.results, cfg, tmp_path / f"{site}.tgz", site))
    with pytest.raises(CraftError, match=r"evaluator siglip digest differs.*train\.steps"):
        aggregate(tarballs, tmp_path / "agg")


def test_corrupted_export_is_refused(sites, tmp_path):
    src, _ = sites["site-b"]
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(src) as tin, tarfile.open(bad, "w:gz") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read()
            if member.name.endswith("craft/2/metrics-cas-clip.json"):
                record = json.loads(data)
                record["metrics"]["cas_mean__clip"] = 0.99
                data = json.dumps(record).encode()
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data))
    with pytest.raises(
        CraftError, match=r"craft/2/metrics-cas-clip\.json does not match its sha256"
    ):
        aggregate([sites["site-a"][0], bad], tmp_path / "agg")

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(CraftError, match="not a readable .tar.gz export"):
        aggregate([truncated], tmp_path / "agg")


def test_extracted_folders_and_site_names(sites, tmp_path):
    folders = []
    for site, (tarball, _) in sites.items():
        d = tmp_path / "x" / site
        with tarfile.open(tarball) as tar:
            tar.extractall(d, filter="data")
        folders.append(d)
    aggregate(folders, tmp_path / "agg", site_names=["north", "south"])
    df = pd.read_csv(tmp_path / "agg" / "summary.csv")
    assert list(dict.fromkeys(df["site"])) == ["north", "south", "pooled"]

    with pytest.raises(CraftError, match="both site 'north'"):
        aggregate(folders, tmp_path / "agg2", site_names=["north", "north"])
    edited = folders[0] / "runs" / MODALITY / "lora" / "0" / "metrics-downstream.json"
    edited.write_text(edited.read_text() + " ")
    with pytest.raises(CraftError, match="does not match its sha256"):
        aggregate(folders, tmp_path / "agg3")


def test_export_needs_metrics_and_a_valid_site_name(tmp_path):
    cfg = site_config(tmp_path / "results")
    with pytest.raises(CraftError, match="no metrics files"):
        export_summary(cfg.results, cfg, tmp_path / "a.tgz", "a")
    make_site(tmp_path, "site-a", cfg, np.random.default_rng(0))
    for bad in ("pooled", "Site A"):
        with pytest.raises(CraftError, match="site name"):
            export_summary(cfg.results, cfg, tmp_path / "a.tgz", bad)
    assert not (tmp_path / "a.tgz").exists()


# ----------------------------------------------------------------------------- two real sites


@pytest.mark.slow
def test_two_tiny_workflow_sites_pool_to_a_direct_computation(tmp_path, tiny_site):
    """The tiny workflow runs twice as two sites with different seeds; aggregate the exports."""
    seeds = {"north": [0], "south": [1, 2]}
    tarballs = []
    work = {}
    for site, site_seeds in seeds.items():
        work[site] = tiny_site(site, site_seeds)  # one modality, two methods: 3 workflow runs
        cfg = load_config(work[site] / "config.yaml")
        cwd = os.getcwd()
        try:  # results: is relative to the workflow's directory
            os.chdir(work[site])
            tarballs.append(export_summary(cfg.results, cfg, tmp_path / f"{site}.tgz", site))
        finally:
            os.chdir(cwd)
        assert (work[site] / "results" / "report" / "summary.csv").is_file()
    out = tmp_path / "agg"
    aggregate(tarballs, out)
    df = pd.read_csv(out / "summary.csv")

    values: dict[tuple[str, str, str], list[float]] = {}
    for site in seeds:
        for path in sorted((work[site] / "results" / "runs").glob("*/*/*/metrics-*.json")):
            record = json.loads(path.read_text())
            for metric, v in record["metrics"].items():
                if v is not None and not math.isnan(v):
                    key = (record["modality"], record["method"], metric)
                    values.setdefault(key, []).append(v)
    pooled = df[df["site"] == "pooled"].set_index(["modality", "method", "metric"])
    checked = 0
    for key, vs in values.items():
        r = pooled.loc[key]
        assert r["n_seeds"] == len(vs), key
        assert r["mean"] == pytest.approx(np.mean(vs), rel=1e-9, abs=1e-12), key
        assert r["sd"] == pytest.approx(np.std(vs, ddof=1), rel=1e-9, abs=1e-12), key
        checked += 1
    assert checked > 20
    assert sum(len(vs) == 3 for vs in values.values()) > 20  # seeds of both sites, pooled
    # A site's rows agree with the site's own report.
    own = pd.read_csv(work["north"] / "results" / "report" / "summary.csv")
    north = df[df["site"] == "north"].drop(columns="site").reset_index(drop=True)
    merged = own.merge(north, on=["modality", "method", "metric"], suffixes=("", "_agg"))
    assert len(merged) == len(own) == len(north)
    assert np.allclose(merged["sd"], merged["sd_agg"], rtol=1e-9, atol=1e-12, equal_nan=True)
    assert np.allclose(merged["mean"], merged["mean_agg"], rtol=1e-9, atol=1e-12)


def test_sites_that_ran_different_code_are_named(tmp_path, monkeypatch):
    """Job digests cover the settings, not the code: the export records the code's version
    (release + source digest) and commit, and pooling says when the sites' differ."""
    import craft.report.aggregate as agg

    rng = np.random.default_rng(5)
    exports = []
    for site, version, commit in (
        ("site-a", "0.2.0+aaaaaaaaaaaa", "1" * 40),
        ("site-b", "0.2.0+bbbbbbbbbbbb", None),
    ):
        monkeypatch.setattr(agg, "code_version", lambda v=version: v)
        monkeypatch.setattr(agg, "commit", lambda c=commit: c)
        cfg = site_config(tmp_path / site / "results")
        make_site(tmp_path / site, site, cfg, rng)
        exports.append(export_summary(cfg.results, cfg, tmp_path / f"{site}.tar.gz", site))
        with tarfile.open(exports[-1]) as tar:
            manifest = json.loads(tar.extractfile(MANIFEST).read())
        assert manifest["craft_version"] == version and manifest["craft_commit"] == commit
    index = aggregate(exports, tmp_path / "pooled")
    said = json.loads((tmp_path / "pooled/aggregate.json").read_text())["code_versions_differ"]
    assert "site-a 0.2.0+aaaaaaaaaaaa, commit 1111111111" in said
    assert "site-b 0.2.0+bbbbbbbbbbbb" in said
    assert "Different code" in index.read_text()
    # the same code at both: nothing to say
    index = aggregate(exports[:1], tmp_path / "one")
    assert json.loads((tmp_path / "one/aggregate.json").read_text())["code_versions_differ"] is None
    assert "Different code" not in index.read_text()
