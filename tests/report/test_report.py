"""The report stage: summary numbers, error handling, figures and the static HTML page."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from craft.errors import CraftError
from craft.report import report
from craft.report.claim import FULL_COLUMNS, PATH_COLUMNS
from craft.report.figures import metric_bars
from craft.report.html import build_report, format_cell
from craft.report.summary import (
    SUMMARY_COLUMNS,
    claim_table,
    per_seed_table,
    read_summary,
    summarize,
    whole_claim,
    write_summary,
)
from craft.store import atomic_h5, read_samples
from tests.report.helpers import metrics_json, write_bench_runs, write_samples

MODALITIES = ["phantom-cxr", "phantom-derm"]
METHODS = ["lora", "craft"]
SEEDS = [0, 1, 2]
LABELS = {"phantom-cxr": ["normal", "effusion", "nodule"], "phantom-derm": ["benign", "melanoma"]}


def known_values() -> dict[tuple[str, str, int], dict[str, dict[str, float]]]:
    """{(modality, method, seed): {stage: {metric: value}}} with distinct, known values."""
    rng = np.random.default_rng(7)
    out = {}
    for i, modality in enumerate(MODALITIES):
        for j, method in enumerate(METHODS):
            for seed in SEEDS:
                oracle = {"oracle_label_agreement": 0.5 + 0.2 * j + 0.05 * i + rng.normal(0, 0.03)}
                for label in LABELS[modality]:
                    oracle[f"oracle_label_agreement__{label}"] = float(rng.uniform(0, 1))
                cas = {
                    "cas_mean": float(rng.uniform(0.3, 0.9)),
                    "tail_rate": 0.2 - 0.1 * j + float(rng.uniform(0, 0.02)),
                    "cas_mean__biomedclip": float(rng.uniform(0.3, 0.9)),
                }
                out[(modality, method, seed)] = {"oracle": oracle, "cas": cas}
    return out


def write_metric_files(root: Path, values=None) -> list[Path]:
    values = values or known_values()
    paths = []
    for (modality, method, seed), stages in values.items():
        for stage, metrics in stages.items():
            p = root / "results" / "runs" / modality / method / str(seed) / f"{stage}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(metrics_json(modality, method, seed, stage, metrics)))
            paths.append(p)
    return paths


# ----------------------------------------------------------------------------- summary


def test_summarize_matches_numpy(tmp_path):
    values = known_values()
    files = write_metric_files(tmp_path, values)
    df = summarize(files)
    assert list(df.columns) == list(SUMMARY_COLUMNS)
    n_metrics = len(values[("phantom-cxr", "lora", 0)]["oracle"]) + 3
    n_metrics_derm = len(values[("phantom-derm", "lora", 0)]["oracle"]) + 3
    assert len(df) == 2 * n_metrics + 2 * n_metrics_derm
    # order: modality and method by first appearance, metric alphabetical within
    assert list(dict.fromkeys(df["modality"])) == MODALITIES
    assert list(dict.fromkeys(df.loc[df.modality == "phantom-cxr", "method"])) == METHODS
    for _, g in df.groupby(["modality", "method"], sort=False):
        assert list(g["metric"]) == sorted(g["metric"])
    for row in df.itertuples():
        seeds = [
            {
                **values[(row.modality, row.method, s)]["oracle"],
                **values[(row.modality, row.method, s)]["cas"],
            }[row.metric]
            for s in SEEDS
        ]
        assert row.n_seeds == 3
        assert row.mean == pytest.approx(np.mean(seeds), rel=1e-12)
        assert row.sd == pytest.approx(np.std(seeds, ddof=1), rel=1e-12)
    assert df["n_seeds"].dtype == np.int64


def test_given_order_and_per_seed_table(tmp_path):
    files = write_metric_files(tmp_path)
    df = summarize(files, modality_order=["phantom-derm"], method_order=["craft", "lora"])
    assert list(dict.fromkeys(df["modality"])) == ["phantom-derm", "phantom-cxr"]
    assert list(dict.fromkeys(df["method"])) == ["craft", "lora"]
    per_seed = per_seed_table(files)
    assert list(per_seed.columns) == ["modality", "method", "seed", "metric", "value"]
    assert sorted(set(per_seed["seed"])) == SEEDS
    one = per_seed[
        (per_seed.modality == "phantom-cxr")
        & (per_seed.method == "lora")
        & (per_seed.metric == "tail_rate")
    ]
    assert len(one) == 3


def test_single_seed_nan_missing_and_csv(tmp_path):
    files = []
    for seed, value in [(0, 0.5), (1, float("nan")), (2, 0.7)]:
        p = tmp_path / f"m{seed}.json"
        metrics = {"oracle_label_agreement": value, "fd": 3.0 + seed}
        if seed == 0:
            metrics["only_once"] = 1  # an int is a valid float
        p.write_text(json.dumps(metrics_json("phantom-cxr", "lora", seed, "oracle", metrics)))
        files.append(p)
    df = summarize(files).set_index("metric")
    assert df.loc["oracle_label_agreement", "n_seeds"] == 2  # NaN counts as missing
    assert df.loc["oracle_label_agreement", "mean"] == pytest.approx(0.6)
    assert df.loc["oracle_label_agreement", "sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert df.loc["only_once", "n_seeds"] == 1 and math.isnan(df.loc["only_once", "sd"])
    out = write_summary(df.reset_index()[list(SUMMARY_COLUMNS)], tmp_path / "s" / "summary.csv")
    lines = out.read_text().splitlines()
    assert lines[0] == "modality,method,metric,mean,sd,n_seeds"
    once = next(line for line in lines if ",only_once," in line)
    assert once == "phantom-cxr,lora,only_once,1.0,,1"
    back = read_summary(out)
    assert math.isnan(back.set_index("metric").loc["only_once", "sd"])
    assert not list((tmp_path / "s").glob(".*tmp*"))


def test_duplicate_metric_names_both_files(tmp_path):
    a, b = tmp_path / "a" / "oracle.json", tmp_path / "b" / "other.json"
    for p in (a, b):
        p.parent.mkdir()
    a.write_text(json.dumps(metrics_json("phantom-cxr", "lora", 0, "oracle", {"x": 1.0, "y": 2.0})))
    b.write_text(json.dumps(metrics_json("phantom-cxr", "lora", 0, "cas", {"z": 1.0, "y": 3.0})))
    with pytest.raises(CraftError) as err:
        summarize([a, b])
    msg = str(err.value)
    assert str(a) in msg and str(b) in msg and "'y'" in msg and "\n" not in msg
    # same metric of another seed is no duplicate
    b.write_text(json.dumps(metrics_json("phantom-cxr", "lora", 1, "oracle", {"y": 3.0})))
    assert summarize([a, b]).set_index("metric").loc["y", "n_seeds"] == 2


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.update(extra_key=1), "extra_key"),
        (lambda d: d["provenance"].update(host="x"), "provenance.host"),
        (lambda d: d.update(seed="zero"), "seed"),
        (lambda d: d["metrics"].update(oracle_label_agreement="high"), "oracle_label_agreement"),
        (lambda d: d.pop("stage"), "stage"),
        (lambda d: d["metrics"].update({"Bad Name": 0.1}), "snake_case"),
    ],
)
def test_malformed_metric_file_names_file(tmp_path, mutate, expected):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(metrics_json("phantom-cxr", "lora", 0, "oracle", {"a": 0.1})))
    data = metrics_json("phantom-cxr", "lora", 1, "oracle", {"oracle_label_agreement": 0.3})
    mutate(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(CraftError) as err:
        summarize([good, bad])
    assert str(bad) in str(err.value) and expected in str(err.value)


def test_unreadable_metric_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(CraftError, match="broken.json.*not valid JSON"):
        summarize([broken])
    with pytest.raises(CraftError, match="missing.json does not exist"):
        summarize([tmp_path / "missing.json"])
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(CraftError, match="list.json"):
        summarize([listing])
    assert list(summarize([]).columns) == list(SUMMARY_COLUMNS)


# ----------------------------------------------------------------------------- figures


def test_a_method_grid_keeps_colour(tmp_path):
    from craft.report.figures import method_grid

    s = read_samples(write_samples(tmp_path / "rgb.h5", LABELS["phantom-derm"], 3, 3))
    out = method_grid(s, LABELS["phantom-derm"], 3, tmp_path / "rgb.png", "derm")
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert (np.abs(img[..., 0] - img[..., 1]) > 40).mean() > 0.02  # colour survives


def test_metric_bars_single_and_multi_seed(tmp_path):
    df = pd.DataFrame(
        [
            ("phantom-cxr", "lora", "tail_rate", 0.2, 0.02, 3),
            ("phantom-cxr", "craft", "tail_rate", 0.1, float("nan"), 1),
            ("phantom-derm", "lora", "tail_rate", 0.3, float("nan"), 1),
        ],
        columns=list(SUMMARY_COLUMNS),
    )
    out = metric_bars(df, "tail_rate", tmp_path / "bars.png")
    img = Image.open(out)
    assert img.size[0] > img.size[1] > 100
    with pytest.raises(CraftError, match="not_there"):
        metric_bars(df, "not_there", tmp_path / "x.png")


# ----------------------------------------------------------------------------- html


class _Cell(NamedTuple):
    text: str
    bold: bool
    title: str


class _Table(NamedTuple):
    h2: str
    h3: str
    cls: str
    rows: list[list[_Cell]]


class _Page(HTMLParser):
    """Tables (under which h2 and h3, with bold flags and titles), img srcs and external
    references."""

    def __init__(self):
        super().__init__()
        self.h2 = self.h3 = ""
        self.tables: list[_Table] = []
        self.imgs: list[str] = []
        self.img_attrs: list[dict] = []
        self.external: list[str] = []
        self._cell = None
        self._bold = False
        self._title = ""
        self._heading = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("h2", "h3"):
            self._heading = tag
            setattr(self, tag, "")
            if tag == "h2":
                self.h3 = ""
        elif tag == "table":
            self.tables.append(_Table(self.h2, self.h3, a.get("class", ""), []))
        elif tag == "tr":
            self.tables[-1].rows.append([])
        elif tag in ("td", "th"):
            self._cell, self._bold = "", "best" in a.get("class", "")
            self._title = a.get("title", "")
        elif tag == "b":
            self._bold = True
        elif tag == "img":
            self.imgs.append(a["src"])
            self.img_attrs.append(a)
        if tag in ("link", "script") or any(
            k in ("src", "href") and v and ("//" in v or v.startswith("data:http"))
            for k, v in attrs
        ):
            self.external.append(str(attrs))

    def handle_endtag(self, tag):
        if tag == self._heading:
            self._heading = None
        elif tag in ("td", "th"):
            self.tables[-1].rows[-1].append(_Cell(self._cell.strip(), self._bold, self._title))
            self._cell = None

    def handle_data(self, data):
        if self._heading:
            setattr(self, self._heading, getattr(self, self._heading) + data)
        if self._cell is not None:
            self._cell += data


def seed_values(values, modality, method, metric) -> np.ndarray:
    stage = "oracle" if metric.startswith("oracle") else "cas"
    return np.array([values[(modality, method, s)][stage][metric] for s in SEEDS])


def test_build_report(tmp_path):
    values = known_values()
    files = write_metric_files(tmp_path, values)
    samples = {}
    for modality in MODALITIES:
        for method in METHODS:
            for seed in (2, 0):  # the grid must use the first seed, 0
                p = tmp_path / "results" / "runs" / modality / method / str(seed) / "samples.h5"
                channels = 1 if modality == "phantom-cxr" else 3
                write_samples(p, LABELS[modality], 4 if seed == 0 else 1, channels)
                samples[(modality, method, seed)] = p
    out_dir = tmp_path / "results" / "report"
    title = "Phantom <benchmark> & co"
    # lora is the baseline: craft, the other method, is the one whose claim opens the page
    index = report(files, samples, out_dir, title, grid_per_label=3, baselines=["lora"])
    assert index == out_dir / "index.html"
    text = index.read_text()
    assert "Phantom &lt;benchmark&gt; &amp; co" in text and "<benchmark>" not in text
    assert (out_dir / "summary.csv").is_file()
    assert list(read_summary(out_dir / "summary.csv").columns) == list(SUMMARY_COLUMNS)
    from craft.version import code_version

    assert f"{len(files)} metric files" in text and f"craft {code_version()}" in text

    page = _Page()
    page.feed(text)
    assert page.external == []
    assert page.imgs, "no figures on the page"
    for src in page.imgs:
        assert not src.startswith("/") and (out_dir / src).is_file(), src
    assert {Path(s).name for s in page.imgs} >= {
        *(f"grid-{m}-{k}.png" for m in MODALITIES for k in METHODS),
        "bars-tail_rate.png",
        "bars-oracle_label_agreement.png",
        "bars-cas_mean.png",
    }
    # Bars for the headline metrics (CAS per evaluator too), none for per-label metrics.
    assert not any("agreement__" in s for s in page.imgs)
    assert any("cas_mean__biomedclip" in s for s in page.imgs)

    # The claim: craft against lora per modality, row by row, as numpy and scipy compute it.
    (claim,) = [t for t in page.tables if t.cls == "claim"]
    assert claim.h2 == "Did craft win?"
    header, *body = claim.rows
    assert [c.text for c in header][:3] == ["claim row", "craft", "needs"]
    judged = {}
    modality = None
    for row in body:
        if len(row) == 1:  # a modality's group row: "modality: as trained (...)"
            modality, _, how = row[0].text.partition(": ")
            assert how.startswith("as trained"), how  # no paths: the end points alone
            continue
        judged[(modality, row[0].title.split(":")[0])] = [c.text for c in row[1:]]
    metrics = ["cas_mean__biomedclip", "oracle_label_agreement"]
    assert list(judged) == [(m, metric) for m in MODALITIES for metric in metrics]
    for (modality, metric), cells in judged.items():
        own = seed_values(values, modality, "craft", metric)
        other = seed_values(values, modality, "lora", metric)
        gain = own - other
        p = stats.ttest_rel(own, other, alternative="greater").pvalue
        assert cells == [
            format_cell(own.mean(), own.std(ddof=1), 3),
            "better",
            f"lora {format_cell(other.mean(), other.std(ddof=1), 3)}",
            f"{int((gain > 0).sum())}/3",
            f"{gain.mean():+.3f} ± {gain.std(ddof=1) / np.sqrt(3):.3f}",
            f"{p:.2g}",
            "yes" if own.mean() > other.mean() else "no",
        ], (modality, metric)
    # claim.csv holds the same rows as `craft claim` computes them
    written = pd.read_csv(out_dir / "claim.csv")
    want = claim_table(per_seed_table(files), "craft", whole_claim(["biomedclip"]), ["lora"])
    assert list(written.columns) == [*want.columns, *PATH_COLUMNS]
    assert set(written["judged"]) == {"as trained"}  # no reward paths: the end points alone
    assert written[["modality", "metric", "best_other"]].values.tolist() == (
        want[["modality", "metric", "best_other"]].values.tolist()
    )
    assert np.allclose(written["p_paired"], want["p_paired"], rtol=1e-5)

    # The headline metrics per modality: methods x (CAS, tail rate, oracle), best in bold.
    headline = {t.h3: t.rows for t in page.tables if t.cls == "headline"}
    assert set(headline) == set(MODALITIES)
    for modality in MODALITIES:
        header, *rows = headline[modality]
        assert [c.text for c in header[:2]] == ["method", "seeds"]
        names = [c.title.split(":")[0] for c in header[2:]]
        assert names == ["cas_mean", "cas_mean__biomedclip", "tail_rate", "oracle_label_agreement"]
        assert [r[0].text for r in rows] == METHODS
        for col, metric in enumerate(names, start=2):
            means = {}
            for row in rows:
                method = row[0].text
                seeds = seed_values(values, modality, method, metric)
                assert row[col].text == format_cell(seeds.mean(), seeds.std(ddof=1), 3)
                assert row[1].text == "3"
                means[method] = seeds.mean()
            best = (min if metric == "tail_rate" else max)(means, key=means.get)
            assert [r[0].text for r in rows if r[col].bold] == [best], (modality, metric)
    # per-label metrics are only in the folded all-metrics table, not in the headline
    folded = {t.h2: t.rows for t in page.tables if t.cls == "all"}
    assert set(folded) == set(MODALITIES)
    assert "oracle_label_agreement__effusion" in [r[0].text for r in folded["phantom-cxr"]]
    assert not any("__effusion" in c.title for r in headline["phantom-cxr"] for c in r)

    # One grid per method: 3 label rows of 3 tiles (grid_per_label; seed 0 holds 4 per label)
    grids = [a for a in page.img_attrs if a.get("class") == "grid"]
    assert len(grids) == len(MODALITIES) * len(METHODS)
    for a in grids:
        im = Image.open(out_dir / a["src"])
        assert (a["width"], a["height"]) == (str(im.size[0]), str(im.size[1]))
        assert (a["data-tile"], a["data-per-label"]) == ("64", "3")
    grid = np.asarray(Image.open(out_dir / "figures" / "grid-phantom-cxr-craft.png").convert("L"))
    assert grid.std() > 20
    assert 3 * 64 <= grid.shape[0] <= 3 * 64 + 120 and 3 * 64 <= grid.shape[1] <= 3 * 64 + 100
    assert not list(out_dir.glob(".*tmp*"))

    # rebuilding over an existing report works (atomic replace)
    again = build_report(summarize(files), {}, out_dir, "again")
    assert "again" in again.read_text()


def test_tail_reduction_against_the_strongest_other_baseline():
    import pandas as pd

    from craft.report.summary import PER_SEED_COLUMNS, summarize_table, with_tail_reductions

    rows = [
        ("cxr", "lora", 0, "tail_rate__clip", 0.40),
        ("cxr", "lora", 1, "tail_rate__clip", 0.30),
        ("cxr", "full", 0, "tail_rate__clip", 0.50),
        ("cxr", "full", 1, "tail_rate__clip", 0.50),
        ("cxr", "craft", 0, "tail_rate__clip", 0.10),
        ("cxr", "craft", 1, "tail_rate__clip", 0.15),
        ("cxr", "craft", 0, "tail_rate_ci_low__clip", 0.05),
    ]
    per_seed = pd.DataFrame(rows, columns=list(PER_SEED_COLUMNS))
    out = summarize_table(with_tail_reductions(per_seed, baselines=["lora", "full"]))
    get = out.set_index(["method", "metric"])["mean"]
    # craft vs lora (the baseline with the lowest mean tail, 0.35): per seed 0.30 and 0.15
    assert get[("craft", "tail_reduction_points__clip")] == pytest.approx(0.225)
    assert get[("craft", "tail_reduction_relative__clip")] == pytest.approx((0.75 + 0.5) / 2)
    # lora's strongest other baseline is full: lora reduces the tail by 0.15 on average
    assert get[("lora", "tail_reduction_points__clip")] == pytest.approx(0.15)
    assert get[("full", "tail_reduction_points__clip")] == pytest.approx(-0.15)
    assert not any("ci_low" in m and "reduction" in m for m in out["metric"])


def test_report_figures_cas_distributions_curves_and_run_figures(tmp_path):
    """CAS histograms against the real reference (tau marked), reward curves and the
    evaluation stages' own PNGs land in the modality's section, for the first seed only."""
    files = write_metric_files(tmp_path)
    modality, methods = MODALITIES[0], METHODS
    samples, scores, run_figures, curves = {}, {}, {}, {}
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        for i, method in enumerate(methods):
            run = tmp_path / "runs" / modality / method / str(seed)
            samples[(modality, method, seed)] = write_samples(
                run / "samples.h5", LABELS[modality], 2, 1
            )
            with atomic_h5(run / "cas-clip.h5", "cas", "digest") as f:
                f.create_dataset("cas", data=rng.normal(0.4 + 0.2 * i, 0.1, 64))
            scores[(modality, method, seed, "clip")] = run / "cas-clip.h5"
            png = run / "audit.png"
            Image.fromarray(np.full((20, 30, 3), 40 * i + 10 * seed, np.uint8)).save(png)
            run_figures[(modality, method, seed)] = [png, run / "never-written.png"]
    run = tmp_path / "runs" / modality / methods[1] / "0"
    pd.DataFrame(
        {
            "step": [0, 5, 10, 0, 10],
            "metric": ["reward"] * 3 + ["eval_cas__siglip"] * 2,
            "value": [0.1, 0.2, 0.3, 0.5, 0.6],
        }
    ).to_csv(run / "curves.csv", index=False)
    curves[(modality, methods[1], 0)] = run / "curves.csv"
    ref = tmp_path / "reference-clip.h5"
    with atomic_h5(ref, "cas-reference", "digest", attrs={"tau": 0.35}) as f:
        f.create_dataset("real_test/cas", data=rng.normal(0.6, 0.1, 200))

    out_dir = tmp_path / "report"
    text = report(
        files,
        samples,
        out_dir,
        grid_per_label=2,
        cas_scores=scores,
        references={(modality, "clip"): ref},
        run_figures=run_figures,
        curves=curves,
    ).read_text()
    page = _Page()
    page.feed(text)
    names = {Path(s).name for s in page.imgs}
    assert f"cas-{modality}-clip.png" in names and f"curves-{modality}.png" in names
    # no CAS figure without a reference: the other modality has none
    assert not any(n.startswith(f"cas-{MODALITIES[1]}") for n in names)
    for method in methods:  # the first seed's own PNG, byte for byte
        name = f"audit-{modality}-{method}.png"
        copied = (out_dir / "figures" / name).read_bytes()
        assert copied == (tmp_path / "runs" / modality / method / "0" / "audit.png").read_bytes()
    cas_png = np.asarray(Image.open(out_dir / "figures" / f"cas-{modality}-clip.png").convert("L"))
    assert cas_png.shape[0] > 200 and cas_png.std() > 10
    section = text.split(f'id="m-{modality}"')[1].split("<section>")[0]
    assert "tau" in section and f"cas-{modality}-clip.png" in section
    # without the optional inputs the page has none of these sections
    plain = build_report(summarize(files), samples, tmp_path / "plain", "plain").read_text()
    assert "Clinical Alignment Score distributions" not in plain and "curves-" not in plain


def test_claim_table_names_the_best_other_method_and_counts_seeds():
    from craft.report.summary import PER_SEED_COLUMNS, claim_table

    rows = [
        *(("cxr", "lora", s, "cas_mean__clip", v) for s, v in enumerate([0.50, 0.60, 0.55])),
        *(("cxr", "full", s, "cas_mean__clip", v) for s, v in enumerate([0.58, 0.52, 0.60])),
        *(("cxr", "craft", s, "cas_mean__clip", v) for s, v in enumerate([0.62, 0.50, 0.70])),
        *(("cxr", "craft-x", s, "cas_mean__clip", 0.9) for s in range(3)),
        *(("cxr", "lora", s, "tail_rate__clip", v) for s, v in enumerate([0.10, 0.20, 0.15])),
        *(("cxr", "full", s, "tail_rate__clip", 0.30) for s in range(3)),
        *(("cxr", "craft", s, "tail_rate__clip", v) for s, v in enumerate([0.12, 0.19, 0.16])),
        ("derm", "lora", 0, "cas_mean__clip", 0.4),  # craft has no derm value: no row
    ]
    per_seed = pd.DataFrame(rows, columns=list(PER_SEED_COLUMNS))
    metrics = ["cas_mean__clip", "tail_rate__clip", "absent"]
    t = claim_table(per_seed, "craft", metrics, others=["lora", "full"]).set_index("metric")
    assert list(t.index) == ["cas_mean__clip", "tail_rate__clip"]
    cas, tail = t.loc["cas_mean__clip"], t.loc["tail_rate__clip"]
    # full's mean 0.5667 beats lora's 0.55; craft's 0.6067 beats it on seeds 0 and 2
    assert cas["best_other"] == "full" and cas["wins"]
    assert cas["mean"] == pytest.approx(np.mean([0.62, 0.50, 0.70]))
    assert cas["other_sd"] == pytest.approx(np.std([0.58, 0.52, 0.60], ddof=1))
    assert (cas["seeds_won"], cas["n_seeds"]) == (2, 3)
    # the paired margin over seeds (+0.04, -0.02, +0.10) and scipy's one-sided paired t-test
    assert cas["margin"] == pytest.approx(0.04)
    assert cas["margin_se"] == pytest.approx(0.06 / np.sqrt(3))
    ttest = stats.ttest_rel([0.62, 0.50, 0.70], [0.58, 0.52, 0.60], alternative="greater")
    assert cas["p_paired"] == pytest.approx(ttest.pvalue) and 0.1 < cas["p_paired"] < 0.3
    # lower is better for the tail: lora (0.15) is the best other; craft's 0.1567 loses
    assert tail["best_other"] == "lora" and not tail["wins"] and tail["seeds_won"] == 1
    assert tail["margin"] == pytest.approx(-0.02 / 3) and tail["p_paired"] > 0.5
    # without the pool, the other craft variant is the best other and craft loses
    t_all = claim_table(per_seed, "craft", ["cas_mean__clip"]).set_index("metric")
    assert t_all.loc["cas_mean__clip", "best_other"] == "craft-x"
    assert not t_all.loc["cas_mean__clip", "wins"]


def test_the_whole_claim_judges_costs_against_the_start_and_tail_reductions_against_zero():
    from craft.report.summary import (
        BEST_OTHER,
        NOT_WORSE,
        PER_SEED_COLUMNS,
        START,
        ZERO,
        ClaimRow,
        claim_table,
        whole_claim,
    )

    def series(method, metric, values):
        return [("cxr", method, s, metric, v) for s, v in enumerate(values)]

    rows = [
        *series("start", "oracle_distribution_shift", [0.20, 0.22, 0.21]),
        *series("craft", "oracle_distribution_shift", [0.22, 0.21, 0.21]),  # 0.0033 worse
        *series("other", "oracle_distribution_shift", [0.10, 0.10, 0.10]),  # not compared
        *series("start", "memorization_rate", [0.0, 0.0, 0.0]),
        *series("craft", "memorization_rate", [0.1, 0.2, 0.1]),  # clearly worse
        *series("start", "tail_rate__clip", [0.30, 0.20, 0.25]),
        *series("other", "tail_rate__clip", [0.10, 0.20, 0.15]),  # the strongest baseline
        *series("craft", "tail_rate__clip", [0.05, 0.10, 0.16]),
    ]
    per_seed = pd.DataFrame(rows, columns=list(PER_SEED_COLUMNS))
    tests = {r.metric: (r.against, r.test) for r in whole_claim(["clip"])}
    # downstream AUROC saturates on phantoms: at least the best other method's, not more
    assert tests["downstream_auroc_synthetic"] == (BEST_OTHER, NOT_WORSE)
    assert tests["oracle_label_agreement"] == tests["cas_mean__clip"] == (BEST_OTHER, "better")
    spec = [r for r in whole_claim(["clip"]) if r.against != BEST_OTHER]
    assert [r.metric for r in spec] == [
        "tail_reduction_relative__clip",
        "memorization_rate",
        "oracle_distribution_shift",
    ]
    t = claim_table(per_seed, "craft", spec, others=["start", "other"], start="start")
    t = t.set_index("metric")
    shift, mem, tail = (
        t.loc[m] for m in ("oracle_distribution_shift", "memorization_rate", spec[0].metric)
    )
    # the shift is compared with the start, not with the best other method
    assert shift["against"] == START and shift["best_other"] == "start"
    assert shift["test"] == NOT_WORSE and not shift["wins"]
    gains = np.array([-0.02, 0.01, 0.0])
    assert shift["margin"] == pytest.approx(gains.mean())
    assert shift["margin_se"] == pytest.approx(gains.std(ddof=1) / np.sqrt(3))
    assert shift["passes"]  # worse by less than one paired standard error
    assert not mem["passes"] and mem["margin"] == pytest.approx(-0.4 / 3)
    # relative tail reduction per seed over the strongest baseline (other): 0.5, 0.5, -0.0667
    assert tail["against"] == ZERO and tail["best_other"] == "" and tail["other_mean"] == 0
    assert tail["margin"] == pytest.approx(np.mean([0.5, 0.5, -0.01 / 0.15]))
    assert (tail["seeds_won"], tail["n_seeds"]) == (2, 3) and tail["passes"]
    # alpha makes a 'better' row pass only when resolved; a 'not worse' row does not need it
    strict = claim_table(per_seed, "craft", spec, ["start", "other"], "start", alpha=0.01)
    assert list(strict["passes"]) == [False, False, True]
    # without a start, rows against it are left out
    assert len(claim_table(per_seed, "craft", spec, ["start", "other"])) == 1
    with pytest.raises(ValueError, match="unknown"):
        ClaimRow("x", against="nobody")


def test_the_oracle_distribution_shift_is_judged_lower_is_better_and_its_reference_is_context():
    from craft.report.summary import is_main_metric, lower_is_better

    for metric in ("oracle_distribution_shift", "oracle_distribution_shift__effusion"):
        assert lower_is_better(metric), metric
    assert is_main_metric("oracle_distribution_shift")
    assert not is_main_metric("oracle_distribution_shift_reference")
    assert not is_main_metric("oracle_distribution_shift__effusion__effusion_left")
    assert not lower_is_better("oracle_label_agreement")


def test_every_metric_the_evaluation_docs_call_lower_is_better_is_judged_so():
    """docs/evaluation.md's metric table says, per metric, whether lower is better; the
    report judges by craft.report.summary.lower_is_better. The two must agree (the tail
    rate's interval bounds once did not)."""
    import re

    from craft.report.summary import lower_is_better
    from tests.conftest import REPO

    rows = re.findall(
        r"^\| `([a-z0-9_]+)(?:__\{[a-z]+\})*` \| [^|]* \| (lower|higher) \|",
        (REPO / "docs/evaluation.md").read_text(),
        re.M,
    )
    assert len(rows) > 10, rows
    wrong = [(m, d) for m, d in rows if lower_is_better(m + "__clip") != (d == "lower")]
    assert not wrong, wrong


def test_cli_claim_judges_craft_against_the_other_kinds_and_checks(tmp_path):
    import subprocess

    import yaml

    from tests.conftest import BIN, REPO, write_config

    data = yaml.safe_load((REPO / "config.yaml").read_text())
    data["results"] = str(tmp_path / "results")
    data["seeds"] = [0, 1]
    cfg = write_config(tmp_path / "config.yaml", data)

    def claim(*extra):
        return subprocess.run(
            [str(BIN / "craft"), "claim", "--config", str(cfg), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )

    empty = claim()
    assert empty.returncode == 2 and "no metric files" in empty.stderr
    agreement = {"lora": [0.70, 0.72], "full": [0.75, 0.70], "craft": [0.80, 0.72]}
    for method, values in agreement.items():
        for seed, v in enumerate(values):
            run = tmp_path / "results/runs/phantom-cxr" / method / str(seed)
            run.mkdir(parents=True)
            m = metrics_json("phantom-cxr", method, seed, "oracle", {"oracle_label_agreement": v})
            (run / "metrics-oracle.json").write_text(json.dumps(m))
    ok = claim("--check")
    assert ok.returncode == 0, ok.stderr
    assert "kinds of machine" not in ok.stdout
    # the runs' model cards name two machines: the claim says so
    from craft.models.card import ModelCard

    for method, machine in (("craft", "torch 2, cpu A (x86_64, AVX512), 1 thread"), ("full", None)):
        for seed, cpu in enumerate(("A", "B")):
            ModelCard(
                modality="phantom-cxr",
                method=method,
                seed=seed,
                kind="lora",
                base="base",
                config_digest="0",
                craft_version="0",
                machine=machine and machine.replace("cpu A", f"cpu {cpu}"),
            ).write(tmp_path / "results/runs/phantom-cxr" / method / str(seed) / "model.json")
    mixed = claim()
    assert mixed.returncode == 0, mixed.stderr
    assert "trained on 2 kinds of machine" in mixed.stdout and "cpu B" in mixed.stdout
    rows = pd.read_csv(tmp_path / "results/report/claim.csv")
    assert rows[["metric", "best_other", "wins", "seeds_won"]].values.tolist() == [
        ["oracle_label_agreement", "full", True, 2]
    ]
    # craft's margin over full (+0.05, +0.02) is not resolved at alpha 0.05 (p 0.13)
    strict = claim("--check", "--alpha", "0.05")
    assert strict.returncode == 1 and "report/claim-alpha0.05.csv" in strict.stdout
    assert claim("--check", "--alpha", "0.2").returncode == 0
    # ... and the default claim.csv (the report's) is left as it was
    assert pd.read_csv(tmp_path / "results/report/claim.csv")["passes"].tolist() == [True]
    assert not pd.read_csv(tmp_path / "results/report/claim-alpha0.05.csv")["passes"].any()
    bad_alpha = claim("--alpha", "5")
    assert bad_alpha.returncode == 2 and "--alpha must lie between 0 and 1" in bad_alpha.stderr
    lost = claim("--check", "--method", "lora", "--out", str(tmp_path / "lora.csv"))
    assert lost.returncode == 1 and "craft" not in pd.read_csv(tmp_path / "lora.csv")["best_other"]
    unknown = claim("--method", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr


@pytest.mark.parametrize(
    ("known", "says"),
    [(1.0, "patient is known; train images"), (0.0, "patients unknown"), (0.5, "50%")],
)
def test_the_report_says_whether_the_memorization_reference_knew_the_patients(
    tmp_path, known, says
):
    row = {"modality": "m", "method": "a", "metric": "", "mean": 0.0, "sd": 0.0, "n_seeds": 1}
    rows = [
        {**row, "metric": "memorization_rate", "mean": 0.01},
        {**row, "metric": "memorization_reference_patients_known", "mean": known},
    ]
    summary = pd.DataFrame(rows)[list(SUMMARY_COLUMNS)]
    text = build_report(summary, {}, tmp_path / "r", "t").read_text()
    assert says in text
    others = {"patient is known; train images", "patients unknown", "50%"} - {says}
    assert not any(o in text for o in others)
    plain = build_report(summary.iloc[:1], {}, tmp_path / "p", "t").read_text()
    assert "Memorization reference" not in plain


# ----------------------------------------------------------------------------- first screen


def test_the_page_opens_on_the_claim_then_the_headline_then_folded_metrics(bench_report):
    text = bench_report.index.read_text()
    claim_at = text.index('<table class="claim"')
    headline = text.index('<table class="headline"')
    more_at, all_at = text.index('<details class="more"'), text.index('<details class="all"')
    assert claim_at < headline < more_at < all_at
    assert text.index("<h1>") < claim_at < text.index('<img class="grid"')
    assert "<details open" not in text  # every other metric starts folded
    page = _Page()
    page.feed(text)
    # the headline: CAS and tail rate per evaluator, downstream AUROC, the oracle's two
    head = [t for t in page.tables if t.cls == "headline"][0].rows[0]
    assert [c.title.split(":")[0] for c in head[2:]] == [
        "cas_mean__clip",
        "cas_mean__siglip",
        "tail_rate__clip",
        "tail_rate__siglip",
        "downstream_auroc_synthetic",
        "downstream_auroc_mixed",
        "oracle_label_agreement",
        "oracle_distribution_shift",
    ]
    # the other key metrics are folded, and only there
    more = [r[0].text.split(" ")[0] for t in page.tables if t.cls == "more" for r in t.rows[1:]]
    assert {"label_fidelity__clip", "fd", "memorization_rate", "audit_pass_rate"} <= set(more)
    assert not set(more) & {c.title.split(":")[0] for c in head}
    # at matched realism first: per modality agreement, out-of-family CAS and tail rate against
    # the other reward method; then the whole claim as trained, 12 rows each, costs against
    # the start
    (claim,) = [t for t in page.tables if t.cls == "claim"]
    groups = [r[0].text for r in claim.rows[1:] if len(r) == 1]
    assert [g.split(" (")[0] for g in groups] == [
        "phantom-cxr: at matched realism",
        "phantom-derm: at matched realism",
        "phantom-cxr: as trained",
        "phantom-derm: as trained",
    ], groups
    rows = [r for r in claim.rows[1:] if len(r) > 1]
    matched, rows = rows[:6], rows[6:]
    assert [r[0].title.split(":")[0] for r in matched[:3]] == [
        "oracle_label_agreement",
        "cas_mean__siglip",
        "tail_rate__siglip",
    ]
    assert all(r[3].text.startswith("generic-reward ") for r in matched)
    assert len(rows) == 24
    costs = {r[0].title.split(":")[0]: r[3].text for r in rows[:12]}
    assert costs["memorization_rate"].startswith("lora-enriched (start) ")
    assert costs["tail_reduction_relative__clip"] == "0"
    assert costs["cas_mean__clip"].startswith("generic-reward ")  # the best other, not craft
    verdict = text[text.index('<p class="verdict">') : claim_at]
    won = sum(r[-1].text == "yes" for r in matched)
    passed = sum(r[-1].text == "yes" for r in rows)
    assert f"At matched realism, <b>craft</b> passes <b>{won} of 6</b> claim rows" in verdict
    assert f"As trained (end points, which sit at different realism): <b>{passed} of 24</b>" in (
        verdict
    )
    # the frontier of each modality sits between the verdict and the table
    assert verdict.count('<img src="figures/frontier-') == 2


def test_grids_show_at_most_8_images_per_label_and_method(bench_report):
    """grid_per_label 32 and 10 images per label: one figure per method, 8 tiles a row."""
    from craft.report.figures import LABEL_BAND, TITLE_BAND

    out = bench_report.index.parent
    page = _Page()
    page.feed(bench_report.index.read_text())
    grids = [a for a in page.img_attrs if a.get("class") == "grid"]
    assert len(grids) == 2 * 6 and all(a["data-per-label"] == "8" for a in grids)
    for a in grids:
        img = np.asarray(Image.open(out / a["src"]).convert("L")).astype(int)
        # along the middle of the first label row: 8 dark tiles between white gaps
        line = img[TITLE_BAND + LABEL_BAND + 32] < 250
        starts = np.flatnonzero(line[1:] & ~line[:-1])
        assert len(starts) + int(line[0]) == 8, a["src"]
        assert img.shape[1] <= 8 * 64 + 7 * 2 + 40  # no ninth tile, no label column


def test_a_method_grid_shows_the_first_images_of_each_label_crisp_and_aligned(tmp_path):
    """Tiles: the label's first images in file order, upscaled x2 without smoothing; a label
    the method lacks keeps its row (light gray), so grids of two methods line up."""
    from craft.report.figures import GAP, LABEL_BAND, PAD, ROW_GAP, TITLE_BAND, method_grid

    labels = ["normal", "effusion", "nodule"]
    s = read_samples(write_samples(tmp_path / "a.h5", labels[:2], 5, 1))
    out = method_grid(s, labels, 4, tmp_path / "g.png", "lora · seed 0")
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape[:2] == (
        TITLE_BAND + 3 * (LABEL_BAND + 64) + 2 * ROW_GAP + PAD,
        4 * 66 - 2 + 2 * PAD,
    )
    for r, label in enumerate(labels):
        y = TITLE_BAND + r * (LABEL_BAND + 64 + ROW_GAP) + LABEL_BAND
        for c in range(4):
            x = PAD + c * (64 + GAP)
            tile = img[y : y + 64, x : x + 64]
            if label == "nodule":  # no image of it: a light gray tile
                assert (tile == 235).all()
                continue
            want = s.images[np.flatnonzero(s.labels == labels.index(label))[c]]
            want = np.repeat(np.repeat(want[..., 0], 2, axis=0), 2, axis=1)
            assert (tile[..., 0] == want).all() and (tile[..., 1] == want).all(), (label, c)
    other = read_samples(write_samples(tmp_path / "b.h5", labels, 5, 1))
    out2 = method_grid(other, labels, 4, tmp_path / "h.png", "craft · seed 0")
    assert Image.open(out2).size == Image.open(out).size


def test_without_a_craft_method_or_with_one_seed_the_claim_is_one_line(tmp_path):
    methods = ["zero-shot", "lora", "craft"]
    files, samples, _ = write_bench_runs(
        tmp_path / "runs", (0,), 2, methods, ["cas_mean__clip", "oracle_label_agreement"]
    )
    # every method a baseline: no method of kind craft
    text = report(files, samples, tmp_path / "a", baselines=methods).read_text()
    assert "no method of kind craft" in text and 'class="claim"' not in text
    assert text.index('class="verdict claim-note"') < text.index('<table class="headline"')
    header = (tmp_path / "a" / "claim.csv").read_text().splitlines()
    assert header == [",".join(FULL_COLUMNS)]
    # craft with one seed: said in one line, nothing judged
    text = report(files, samples, tmp_path / "b", baselines=methods[:2]).read_text()
    assert "craft has one run per modality (seed 0)" in text and 'class="claim"' not in text
    assert len((tmp_path / "b" / "claim.csv").read_text().splitlines()) == 1
    # the page without a claim (build_report alone, e.g. craft aggregate): no claim section
    plain = build_report(summarize(files), samples, tmp_path / "c", "t").read_text()
    assert 'id="claim"' not in plain and not (tmp_path / "c" / "claim.csv").exists()


def test_the_costs_are_judged_against_the_start_its_model_cards_name(bench_report, tmp_path):
    claim = pd.read_csv(bench_report.index.parent / "claim.csv")
    start = claim[claim["against"] == "start"]
    assert set(start["metric"]) == {"memorization_rate", "oracle_distribution_shift"}
    assert set(start["best_other"]) == {"lora-enriched"} and len(start) == 4
    # the start given outright wins over the cards; no card and none given: no such rows
    methods = ["lora-enriched", "full", "craft"]
    metrics = ["cas_mean__clip", "memorization_rate", "oracle_distribution_shift"]
    files, samples, _ = write_bench_runs(tmp_path / "runs", (0, 1), 1, methods, metrics)
    report(files, samples, tmp_path / "r", baselines=methods[:2], claim_start="full")
    given = pd.read_csv(tmp_path / "r" / "claim.csv")
    assert set(given.loc[given["against"] == "start", "best_other"]) == {"full"}
    assert len(given) == 2 * 3
    for path in samples.values():
        (path.parent / "model.json").unlink(missing_ok=True)
    report(files, samples, tmp_path / "s", baselines=methods[:2])
    none = pd.read_csv(tmp_path / "s" / "claim.csv")
    assert list(none["metric"]) == ["cas_mean__clip"] * 2
