"""The claim, judged first at matched realism and then as trained.

A reward method's end point sits wherever its training stopped, and methods that go further
from real images buy agreement with it: on the benchmark an end-point comparison credited
craft with wins that another reward method matched at the same loss of realism
(docs/benchmark.md, "Agreement at matched realism"). So the verdict compares each reward
method where its path (craft.evaluate.paths) first gives up ``claim.realism_budget`` of
realism against its own start (:func:`craft.report.frontier.at_budget`): craft against the
best other reward method, on oracle label agreement (phantoms), out-of-family mean CAS and
tail rate, paired over seeds with :func:`craft.report.summary.claim_table`'s margin, SE,
seeds won and p. The whole claim at the end points follows, labelled as trained, with the
realism each end point cost its method (scale 1 against scale 0 of its path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from craft.evaluate.paths import load_paths
from craft.report.frontier import AS_TRAINED, AXES, MATCHED, at_budget, axis_of, path_of
from craft.report.summary import (
    CLAIM_COLUMNS,
    PER_SEED_COLUMNS,
    ClaimRow,
    claim_table,
    whole_claim,
)

#: Columns a claim row has beyond :data:`CLAIM_COLUMNS`' comparison: how it was judged, on
#: which realism axis and budget, where the paths stopped (mean scale; seeds whose path never
#: reached the budget and were judged at their end), and what the end points cost.
PATH_COLUMNS = (
    "judged",
    "realism_axis",
    "budget",
    "stop_scale",
    "other_stop_scale",
    "seeds_at_end",
    "other_seeds_at_end",
    "realism_cost",
    "other_realism_cost",
)
FULL_COLUMNS = (*CLAIM_COLUMNS, *PATH_COLUMNS)


@dataclass(frozen=True)
class PathClaim:
    """What judging at matched realism needs of the config: the out-of-family evaluators,
    which modalities are phantoms (their axis is the oracle's), the reward methods (those with
    paths), the budget and the axis (``claim.realism``)."""

    out_of_family: Sequence[str]
    phantom_modalities: Sequence[str]
    reward_methods: Sequence[str]
    budget: float = 0.01
    axis: str | None = None

    @classmethod
    def of(cls, cfg) -> PathClaim:
        return cls(
            out_of_family=cfg.out_of_family_evaluators,
            phantom_modalities=[m for m, c in cfg.modalities.items() if c.source.kind == "phantom"],
            reward_methods=[k for k, c in cfg.methods.items() if c.is_align],
            budget=cfg.claim.realism_budget,
            axis=cfg.claim.realism,
        )


def matched_rows(evaluators: Sequence[str], phantom: bool) -> list[str]:
    """The metrics judged at matched realism: agreement (phantoms), out-of-family CAS and
    tail rate per out-of-family evaluator."""
    rows = ["oracle_label_agreement"] if phantom else []
    return rows + [f"{m}__{ev}" for ev in evaluators for m in ("cas_mean", "tail_rate")]


def _stops(paths: dict, axes: dict[str, str], budget: float) -> tuple[pd.DataFrame, dict]:
    """(a per-seed table of every path's compared metrics at its stop, and per (modality,
    method) the stop scales and how many seeds ended uncrossed)."""
    rows, where = [], {}
    for (modality, method), by_seed in paths.items():
        if modality not in axes:
            continue
        scales, at_end = [], 0
        for seed, by_scale in sorted(by_seed.items()):
            stop = at_budget(path_of(by_scale, axes[modality]), budget)
            scales.append(stop.point.scale)
            at_end += not stop.crossed
            for metric, value in stop.point.metrics.items():
                rows.append((modality, method, int(seed), metric, float(value)))
        where[modality, method] = (float(np.mean(scales)), at_end)
    table = pd.DataFrame(rows, columns=list(PER_SEED_COLUMNS))
    return table.astype({"seed": "int64", "value": "float64"}), where


def _costs(paths: dict, axes: dict[str, str]) -> dict:
    """(modality, method) -> mean over seeds of the realism its end point cost: the axis at
    scale 1 minus at scale 0."""
    out = {}
    for (modality, method), by_seed in paths.items():
        if modality not in axes:
            continue
        key = AXES[axes[modality]]
        costs = [
            s[1.0][key] - s[0.0][key]
            for s in by_seed.values()
            if 0.0 in s and 1.0 in s and key in s[0.0] and key in s[1.0]
        ]
        out[modality, method] = float(np.mean(costs)) if costs else math.nan
    return out


def full_claim(
    per_seed: pd.DataFrame,
    method: str,
    others: Sequence[str] | None,
    start: str | None,
    evaluators: Sequence[str],
    setup: PathClaim | None,
    alpha: float | None = None,
    rows: Sequence[ClaimRow] | None = None,
) -> pd.DataFrame:
    """The claim table with :data:`FULL_COLUMNS`: with ``setup``, the matched-realism rows of
    every modality whose runs have paths (``method`` against the best other reward method),
    first; then the whole claim (or ``rows``) as trained, as :func:`claim_table` judges it,
    each row with the realism its end points cost."""
    setup = setup or PathClaim((), (), ())
    budget, axis = setup.budget, setup.axis
    phantom_modalities, reward_methods = setup.phantom_modalities, setup.reward_methods
    out_of_family = setup.out_of_family
    paths = load_paths(per_seed)
    modalities = list(dict.fromkeys(per_seed["modality"]))
    axes = {m: axis_of(axis, m in phantom_modalities) for m in modalities}
    stopped, where = _stops(paths, axes, budget)
    costs = _costs(paths, axes)
    parts = []
    rivals = [k for k in reward_methods if k != method]
    for modality in modalities:
        if (modality, method) not in paths or not any((modality, k) in paths for k in rivals):
            continue
        metrics = matched_rows(out_of_family, modality in phantom_modalities)
        t = claim_table(
            stopped[stopped["modality"] == modality],
            method,
            [ClaimRow(m) for m in metrics],
            rivals,
            None,
            alpha,
        )
        if t.empty:
            continue
        own_scale, own_end = where[modality, method]
        other = [where.get((modality, b), (math.nan, 0)) for b in t["best_other"]]
        t = t.assign(
            judged=MATCHED,
            realism_axis=axes[modality],
            budget=budget,
            stop_scale=own_scale,
            other_stop_scale=[o[0] for o in other],
            seeds_at_end=own_end,
            other_seeds_at_end=[o[1] for o in other],
        )
        parts.append(t)
    trained = claim_table(per_seed, method, rows or whole_claim(evaluators), others, start, alpha)
    trained = trained.assign(
        judged=AS_TRAINED,
        realism_axis=[axes.get(m, "") if (m, method) in paths else "" for m in trained["modality"]],
        budget=math.nan,
        stop_scale=math.nan,
        other_stop_scale=math.nan,
        seeds_at_end=0,
        other_seeds_at_end=0,
    )
    parts.append(trained)
    table = pd.concat([p for p in parts if not p.empty] or [trained], ignore_index=True)
    if table.empty:
        return pd.DataFrame(columns=list(FULL_COLUMNS))
    table["realism_cost"] = [costs.get((m, method), math.nan) for m in table["modality"]]
    table["other_realism_cost"] = [
        costs.get((m, b), math.nan)
        for m, b in zip(table["modality"], table["best_other"], strict=True)
    ]
    table["seeds_at_end"] = table["seeds_at_end"].astype("int64")
    table["other_seeds_at_end"] = table["other_seeds_at_end"].astype("int64")
    return table[list(FULL_COLUMNS)]


def realism_agreement(per_seed: pd.DataFrame) -> dict[str, dict[str, tuple[float, int]]]:
    """modality -> oracle-free realism measure (``fd``, ``kid``) -> (Spearman rank correlation
    with the oracle's distribution shift over every path point of every reward method and seed,
    the number of points): how well a measure a site has ranks the paths' points like the
    oracle does. Only modalities whose paths have the oracle (phantoms)."""
    from craft.evaluate.paths import REALISM_MEASURES, spearman

    out: dict[str, dict[str, tuple[float, int]]] = {}
    for (modality, _), by_seed in load_paths(per_seed).items():
        for by_scale in by_seed.values():
            for point in by_scale.values():
                if "oracle_distribution_shift" not in point:
                    continue
                for name in REALISM_MEASURES:
                    if name in point:
                        pair = out.setdefault(modality, {}).setdefault(name, ([], []))
                        pair[0].append(point[name])
                        pair[1].append(point["oracle_distribution_shift"])
    return {
        m: {name.removeprefix("realism_"): (spearman(x, y), len(x)) for name, (x, y) in d.items()}
        for m, d in out.items()
    }
