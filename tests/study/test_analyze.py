"""analyze_study against hand-computed numbers, and its one-line errors on bad input."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from craft.errors import CraftError
from craft.study.analyze import analyze_study
from craft.study.export import export_study
from craft.study.schema import CSV_COLUMNS, read_key
from craft.study.stats import fleiss_kappa
from tests.study.helpers import (
    DESCRIPTION,
    METHOD_A,
    METHOD_B,
    choice_for,
    write_answers,
    write_samples,
)

LABELS = ["effusion", "nodule"]
Z = 1.959963984540054  # standard normal 97.5% quantile


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score interval: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


@pytest.fixture
def study(tmp_path):
    """A 2-label x 6-pair study; returns (key path, key, pair ids per label in page order)."""
    a = write_samples(tmp_path / "a.h5", METHOD_A, labels=LABELS, n_per_label=6)
    b = write_samples(tmp_path / "b.h5", METHOD_B, labels=LABELS, n_per_label=6)
    page = export_study(
        "phantom-cxr", DESCRIPTION, LABELS, a, b, METHOD_A, METHOD_B, tmp_path / "s", 6, seed=3
    )
    key = read_key(page.parent / "key.json")
    ids = {lab: [p.pair_id for p in key.pairs if p.label == lab] for lab in LABELS}
    return page.parent / "key.json", key, ids


def metric(summary, name, label="all"):
    rows = [r for r in summary["metrics"] if r["metric"] == name and r["label"] == label]
    assert len(rows) == 1, (name, label)
    return rows[0]["value"]


def test_win_rates_p_values_and_wilson_intervals(study, tmp_path):
    key_path, key, ids = study
    # finding: effusion a a a a b neither, nodule a a a b b neither -> overall 7 A, 3 B, 2 ties
    finding = {"effusion": "aaaabn", "nodule": "aaabbn"}
    outcomes = {}
    for lab in LABELS:
        for pid, f in zip(ids[lab], finding[lab], strict=True):
            outcomes[pid] = ({"n": "neither"}.get(f, f), "neither")  # plausibility: all ties
    answers = write_answers(tmp_path / "r1.json", key, "dr-one", outcomes)
    s = analyze_study([answers], key_path, tmp_path / "out")

    overall = s["questions"]["finding"]["overall"]
    assert (overall["wins_a"], overall["wins_b"], overall["neither"], overall["n"]) == (7, 3, 2, 10)
    assert overall["win_rate"] == pytest.approx(0.7)
    # two-sided exact binomial, symmetric: 2 * P(X >= 7 | n=10, 1/2) = 2 * 176 / 1024
    assert overall["p_value"] == pytest.approx(2 * (120 + 45 + 10 + 1) / 1024)
    assert (overall["ci_low"], overall["ci_high"]) == pytest.approx(wilson(7, 10))
    assert (overall["ci_low"], overall["ci_high"]) == pytest.approx((0.3968, 0.8922), abs=1e-4)

    eff = s["questions"]["finding"]["per_label"]["effusion"]
    assert (eff["wins_a"], eff["wins_b"], eff["win_rate"]) == (4, 1, pytest.approx(0.8))
    assert eff["p_value"] == pytest.approx(2 * (5 + 1) / 32)
    nod = s["questions"]["finding"]["per_label"]["nodule"]
    assert nod["win_rate"] == pytest.approx(0.6) and nod["p_value"] == pytest.approx(1.0)
    assert (nod["ci_low"], nod["ci_high"]) == pytest.approx(wilson(3, 5))

    plaus = s["questions"]["plausibility"]["overall"]
    assert plaus["n"] == 0 and plaus["neither"] == 12 and plaus["win_rate"] is None

    # the files: stable metric names, one rater -> kappa skipped with a note, not an error
    assert metric(s, "study_win_rate_finding") == pytest.approx(0.7)
    assert metric(s, "study_p_value_finding", "effusion") == pytest.approx(12 / 32)
    assert metric(s, "study_kappa_finding") is None
    assert any("needs at least 2 raters" in n for n in s["notes"])
    rows = list(csv.DictReader((tmp_path / "out" / "study_summary.csv").open()))
    by = {(r["label"], r["metric"]): r for r in rows}
    assert float(by["all", "study_win_rate_finding"]["value"]) == pytest.approx(0.7)
    assert by["all", "study_win_rate_finding"]["n"] == "10"
    assert by["all", "study_win_rate_plausibility"]["value"] == ""
    assert by["nodule", "study_wins_b_finding"]["value"] == "2"
    assert {r["method_a"] for r in rows} == {METHOD_A}
    assert json.loads((tmp_path / "out" / "study_summary.json").read_text()) == s


def test_cohen_kappa_of_two_raters_and_csv_answers(study, tmp_path):
    key_path, key, ids = study
    pids = ids["effusion"] + ids["nodule"][:4]
    # 10 pairs: observed agreement 7/10; marginals a5 b3 n2 for both -> p_e = 0.38
    r1 = "aaaaabbbnn"
    r2 = "aaaabbbnna"
    name = {"n": "neither", "a": "a", "b": "b"}
    f1 = write_answers(
        tmp_path / "r1.json", key, "r1", {p: (name[x], None) for p, x in zip(pids, r1, strict=True)}
    )
    # the second rater's file as the page's CSV export
    with (tmp_path / "r2.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for p, x in zip(pids, r2, strict=True):
            w.writerow([key.study_id, "r2", p, choice_for(key, p, name[x]), "", "t"])
    s = analyze_study([f1, tmp_path / "r2.csv"], key_path, tmp_path / "out")
    agreement = s["questions"]["finding"]["agreement"]
    assert agreement["kind"] == "cohen" and agreement["n_items"] == 10
    assert agreement["value"] == pytest.approx((0.7 - 0.38) / (1 - 0.38))
    assert metric(s, "study_kappa_finding") == pytest.approx(0.516129, abs=1e-6)
    # nobody answered plausibility: no pairs in common, kappa undefined, noted
    assert metric(s, "study_kappa_plausibility") is None
    overall = s["questions"]["finding"]["overall"]
    assert (overall["wins_a"], overall["wins_b"], overall["neither"]) == (
        r1.count("a") + r2.count("a"),
        r1.count("b") + r2.count("b"),
        r1.count("n") + r2.count("n"),
    )
    assert s["raters"] == ["r1", "r2"]


def test_fleiss_kappa_of_three_raters(study, tmp_path):
    key_path, key, ids = study
    pids = ids["nodule"][:4]
    # items: (a a a) (a a b) (b b b) (a b n): P = 7/12, p = (6, 5, 1)/12, P_e = 62/144
    table = ["aaa", "aab", "bbb", "abn"]
    name = {"n": "neither", "a": "a", "b": "b"}
    files = []
    for r in range(3):
        outcomes = {p: ("a", name[row[r]]) for p, row in zip(pids, table, strict=True)}
        files.append(write_answers(tmp_path / f"r{r}.json", key, f"rater{r}", outcomes))
    # a fourth pair only two raters answered: not an item of Fleiss' kappa
    extra = ids["effusion"][0]
    files[0].write_text(
        files[0]
        .read_text()
        .replace(
            '"answers": [',
            f'"answers": [{{"pair_id": "{extra}", "finding": null, "plausibility": "left"}},',
        )
    )
    s = analyze_study(files, key_path, tmp_path / "out")
    agreement = s["questions"]["plausibility"]["agreement"]
    assert (
        agreement["kind"] == "fleiss" and agreement["n_items"] == 4 and agreement["n_raters"] == 3
    )
    assert agreement["value"] == pytest.approx(22 / 82)
    # every finding answer was 'a': agreement perfect but kappa undefined (P_e = 1)
    assert s["questions"]["finding"]["agreement"]["value"] is None
    plaus = s["questions"]["plausibility"]["overall"]
    # 12 ratings of the table (6 A, 5 B, 1 tie) and the extra pair's one decisive answer
    assert (plaus["n"], plaus["neither"]) == (6 + 5 + 1, 1)
    assert s["n_pairs_answered"] == 5
    assert "rater 'rater0' answered both questions for 4 of 12 pairs" in s["notes"]


def test_fleiss_kappa_matches_the_published_example():
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories -> 0.210
    table = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-5)
    try:
        from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss
    except ImportError:
        return
    assert fleiss_kappa(table) == pytest.approx(sm_fleiss(table))


def test_bad_answer_files_are_one_line_errors(study, tmp_path):
    key_path, key, ids = study
    pid = ids["effusion"][0]
    good = write_answers(tmp_path / "good.json", key, "r1", {pid: ("a", "b")})
    out = tmp_path / "out"

    other = json.loads(good.read_text()) | {"study_id": "phantom-cxr-000000000000"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(CraftError, match="holds answers to study 'phantom-cxr-000000000000'"):
        analyze_study([tmp_path / "other.json"], key_path, out)

    unknown = json.loads(good.read_text())
    unknown["answers"].append({"pair_id": "p999", "finding": "left"})
    (tmp_path / "unknown.json").write_text(json.dumps(unknown))
    with pytest.raises(CraftError, match="pair ids the key does not know .*'p999'"):
        analyze_study([tmp_path / "unknown.json"], key_path, out)

    for name, text, match in [
        ("trunc.json", good.read_text()[:40], "malformed"),
        (
            "choice.json",
            good.read_text().replace('"left"', '"up"').replace('"right"', '"up"'),
            "malformed",
        ),
        ("norater.json", json.dumps({**json.loads(good.read_text()), "rater": ""}), "malformed"),
        ("cols.csv", "study_id,pair_id\nx,p1\n", "lacks columns"),
        ("empty.csv", ",".join(CSV_COLUMNS) + "\n", "holds no answers"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(CraftError, match=match) as err:
            analyze_study([tmp_path / name], key_path, out)
        assert "\n" not in str(err.value) and name in str(err.value)

    with pytest.raises(CraftError, match="answers in both"):
        analyze_study([good, good], key_path, out)
    with pytest.raises(CraftError, match="no answer files"):
        analyze_study([], key_path, out)
    with pytest.raises(CraftError, match="does not exist"):
        analyze_study([good], tmp_path / "nokey.json", out)
    (tmp_path / "badkey.json").write_text('{"study_id": 3}')
    with pytest.raises(CraftError, match="is not a study key"):
        analyze_study([good], tmp_path / "badkey.json", out)
    assert not out.exists()
