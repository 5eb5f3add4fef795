"""craft.report.claim: the claim at matched realism first, then as trained, on worked numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from craft.report.claim import FULL_COLUMNS, PathClaim, full_claim
from craft.report.frontier import AS_TRAINED, MATCHED

# (scale, oracle shift, agreement, out-of-family CAS, tail rate) along each path
CRAFT = [(0, 0.20, 0.70, 0.40, 0.30), (1, 0.30, 0.90, 0.50, 0.20), (1.5, 0.40, 0.95, 0.55, 0.15)]
# generic-reward gives up little realism: it never reaches a budget of 0.05
GENERIC = [(0, 0.20, 0.70, 0.40, 0.30), (1, 0.22, 0.80, 0.45, 0.25), (1.5, 0.24, 0.85, 0.47, 0.24)]


def per_seed(lift: dict[int, float]) -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        for method, path in (("craft", CRAFT), ("generic-reward", GENERIC)):
            for scale, shift, agree, cas, tail in path:
                up = lift[seed] if method == "craft" else 0.0
                named = {
                    "oracle_distribution_shift": shift,
                    "oracle_label_agreement": agree + up,
                    "cas_mean__siglip": cas,
                    "tail_rate__siglip": tail,
                }
                for name, value in named.items():
                    rows.append(("m", method, seed, f"path_{name}__s{scale:g}", value))
                if scale == 1:  # the run's own metrics (as trained)
                    rows += [("m", method, seed, k, v) for k, v in named.items()]
        rows.append(("m", "lora", seed, "oracle_label_agreement", 0.6))
    return pd.DataFrame(rows, columns=["modality", "method", "seed", "metric", "value"])


SETUP = PathClaim(["siglip"], ["m"], ["craft", "generic-reward"], budget=0.05)


def test_matched_rows_come_first_each_path_stopped_at_its_own_budget():
    table = full_claim(
        per_seed({0: 0.0, 1: 0.02}),
        "craft",
        ["lora", "generic-reward"],
        None,
        ["siglip"],
        SETUP,
        rows=None,
    )
    assert list(table.columns) == list(FULL_COLUMNS)
    judged = list(table["judged"])
    n = judged.count(MATCHED)
    assert n == 3 and judged[:n] == [MATCHED] * n and set(judged[n:]) == {AS_TRAINED}
    matched = table[table["judged"] == MATCHED].set_index("metric")
    assert list(matched.index) == [
        "oracle_label_agreement",
        "cas_mean__siglip",
        "tail_rate__siglip",
    ]
    # craft crosses 0.20 + 0.05 halfway to scale 1: agreement 0.80 (seed 0) and 0.82 (seed
    # 1, its path 0.02 higher); generic-reward never does: judged at its end, scale 1.5, 0.85
    agree = matched.loc["oracle_label_agreement"]
    assert agree["mean"] == pytest.approx(0.81) and agree["other_mean"] == pytest.approx(0.85)
    assert agree["best_other"] == "generic-reward" and agree["margin"] == pytest.approx(-0.04)
    assert not agree["passes"] and agree["seeds_won"] == 0
    assert agree["stop_scale"] == pytest.approx(0.5) and agree["other_stop_scale"] == 1.5
    assert agree["seeds_at_end"] == 0 and agree["other_seeds_at_end"] == 2
    assert agree["realism_axis"] == "oracle" and agree["budget"] == 0.05
    # tail rate: lower is better; craft 0.25 at its stop against 0.24
    tail = matched.loc["tail_rate__siglip"]
    assert tail["mean"] == pytest.approx(0.25) and tail["margin"] == pytest.approx(-0.01)
    # as trained: craft's end point beats both at the cost of 0.10 of shift against 0.02
    trained = table[table["judged"] == AS_TRAINED].set_index("metric")
    row = trained.loc["oracle_label_agreement"]
    assert row["passes"] and row["best_other"] == "generic-reward"
    assert row["realism_cost"] == pytest.approx(0.10)
    assert row["other_realism_cost"] == pytest.approx(0.02)
    assert math.isnan(row["stop_scale"])


def test_a_larger_budget_moves_the_stops_and_without_paths_only_the_end_points_are_judged():
    data = per_seed({0: 0.0, 1: 0.0})
    wide = PathClaim(["siglip"], ["m"], ["craft", "generic-reward"], budget=0.5)
    table = full_claim(data, "craft", ["generic-reward"], None, ["siglip"], wide)
    agree = table[(table["judged"] == MATCHED) & (table["metric"] == "oracle_label_agreement")]
    assert agree["stop_scale"].item() == 1.5 and agree["seeds_at_end"].item() == 2
    assert agree["passes"].item()  # both at their ends: 0.95 against 0.85
    plain = data[~data["metric"].str.startswith("path_")]
    table = full_claim(plain, "craft", ["generic-reward"], None, ["siglip"], SETUP)
    assert set(table["judged"]) == {AS_TRAINED} and table["realism_cost"].isna().all()
    # the feature axis where the paths have no oracle: a clear error names what they have
    with pytest.raises(Exception, match="choose claim.realism among"):
        full_claim(data, "craft", None, None, ["siglip"], PathClaim(["siglip"], [], ["craft",
                   "generic-reward"]))  # fmt: skip


def test_the_realism_measures_are_ranked_against_the_oracle_over_every_path_point():
    from scipy.stats import spearmanr

    from craft.report.claim import realism_agreement

    data = per_seed({0: 0.0, 1: 0.0})
    shift = data[data["metric"].str.startswith("path_oracle_distribution_shift__")].copy()
    # fd follows the shift on craft's paths and runs against it on generic-reward's
    sign = shift["method"].map({"craft": 1.0, "generic-reward": -1.0})
    fd = shift.assign(
        metric=shift["metric"].str.replace("oracle_distribution_shift", "realism_fd"),
        value=sign * shift["value"],
    )
    got = realism_agreement(pd.concat([data, fd], ignore_index=True))
    rho, n = got["m"]["fd"]
    assert n == 12 and "kid" not in got["m"]
    assert rho == pytest.approx(spearmanr(fd["value"], shift["value"]).statistic)
    assert -1 < rho < 1
    # without an oracle (a real modality) nothing is ranked
    assert realism_agreement(data[~data["metric"].str.contains("oracle")]) == {}
