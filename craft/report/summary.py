"""Metric files in, the report's numbers out.

Every evaluation stage writes one JSON metrics file per (modality, method, seed) and stage
(:class:`MetricsFile`). :func:`per_seed_table` reads them into one long table with a row per
(modality, method, seed, metric); :func:`summarize` reduces that over seeds to the contract of
``results/report/summary.csv`` (docs/design.md, "Contracts"): ``modality, method, metric, mean, sd,
n_seeds``. A NaN (or null) metric value means "missing": it is dropped, as if it were absent.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from craft.atomic import atomic_write_text
from craft.errors import CraftError

#: Columns of summary.csv, in order (docs/design.md, "Contracts").
SUMMARY_COLUMNS = ("modality", "method", "metric", "mean", "sd", "n_seeds")
#: Columns of :func:`per_seed_table`.
PER_SEED_COLUMNS = ("modality", "method", "seed", "metric", "value")

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
#: snake_case base name, then optional ``__{label}`` / ``__{evaluator}`` suffixes.
METRIC_PATTERN = r"^[a-z0-9][a-z0-9_]*(__[a-z0-9][a-z0-9_.-]*)*$"
#: Separator between a metric's base name and its per-label / per-evaluator suffixes.
SUFFIX_SEP = "__"


class Provenance(BaseModel):
    """Where a metrics file came from."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    config_digest: str
    craft_version: str
    created: str | None = None
    command: str | None = None


class MetricsFile(BaseModel):
    """One metrics JSON file: the metrics of one stage for one (modality, method, seed)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    modality: str = Field(pattern=NAME_PATTERN)
    method: str = Field(pattern=NAME_PATTERN)
    seed: int
    stage: str = Field(pattern=NAME_PATTERN)
    metrics: dict[str, float | None]
    provenance: Provenance

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, v: dict[str, float | None]) -> dict[str, float | None]:
        bad = [k for k in v if not re.match(METRIC_PATTERN, k)]
        if bad:
            raise ValueError(
                f"metric names must be snake_case with optional '__suffix' parts, got {bad}"
            )
        return v


def _format_validation(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "file"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if e["type"] == "extra_forbidden":
        return f"{loc}: unknown key{more}"
    if e["type"] == "missing":
        return f"{loc}: required key is missing{more}"
    shown = json.dumps(e.get("input"), default=str)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{loc}: {shown} is invalid: {e['msg'].removeprefix('Value error, ')}{more}"


def load_metrics_file(path: Path) -> MetricsFile:
    """Read and validate one metrics JSON file, or raise a one-line CraftError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CraftError(f"metrics file {path} does not exist: run the stage that makes it first")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CraftError(f"metrics file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CraftError(f"metrics file {path}: expected a JSON object at the top level")
    try:
        return MetricsFile.model_validate(data)
    except ValidationError as err:
        raise CraftError(f"metrics file {path}: {_format_validation(err)}") from None


def _unique_paths(metric_files: Sequence[Path]) -> list[Path]:
    """The files in order, the same file named twice counted once."""
    seen: set[Path] = set()
    out = []
    for p in metric_files:
        key = Path(p).resolve()
        if key not in seen:
            seen.add(key)
            out.append(Path(p))
    return out


def per_seed_table(metric_files: Sequence[Path]) -> pd.DataFrame:
    """One row per (modality, method, seed, metric) with its value, in file order.

    Columns: ``modality, method, seed, metric, value``. NaN/null values are dropped (missing).
    The same (modality, method, seed, metric) in two files is a CraftError naming both.
    """
    rows: list[tuple[str, str, int, str, float]] = []
    origin: dict[tuple[str, str, int, str], Path] = {}
    for path in _unique_paths(metric_files):
        mf = load_metrics_file(path)
        for metric, value in mf.metrics.items():
            key = (mf.modality, mf.method, mf.seed, metric)
            if key in origin:
                raise CraftError(
                    f"metric '{metric}' of {mf.modality}/{mf.method} seed {mf.seed} is in both "
                    f"{origin[key]} and {path}; remove one of them"
                )
            origin[key] = path
            if value is None or math.isnan(value):
                continue
            rows.append((*key[:3], metric, float(value)))
    df = pd.DataFrame(rows, columns=list(PER_SEED_COLUMNS))
    return df.astype(
        {
            "modality": object,
            "method": object,
            "seed": "int64",
            "metric": object,
            "value": "float64",
        }
    )


def with_tail_reductions(
    per_seed: pd.DataFrame, baselines: Sequence[str] | None = None
) -> pd.DataFrame:
    """Add ``tail_reduction_points__{ev}`` and ``tail_reduction_relative__{ev}`` rows.

    For each modality, method and evaluator: the strongest baseline is the one among
    ``baselines`` (default: every method) other than the method itself with the lowest mean
    ``tail_rate__{ev}`` over seeds; per seed, points = baseline tail - method tail (positive:
    fewer low-alignment images), relative = points / baseline tail. Seeds the two share only.
    """
    tails = per_seed[per_seed["metric"].str.match(r"^tail_rate__[^_][^\s]*$")]
    tails = tails[tails["metric"].str.count(SUFFIX_SEP) == 1]
    rows = []
    for (modality, metric), t in tails.groupby(["modality", "metric"], sort=False):
        ev = metric.split(SUFFIX_SEP, 1)[1]
        means = t.groupby("method")["value"].mean()
        by_seed = t.pivot_table(index="seed", columns="method", values="value")
        for method in means.index:
            pool = [b for b in (baselines or means.index) if b in means.index and b != method]
            if not pool:
                continue
            best = min(pool, key=lambda b: means[b])
            pair = by_seed[[best, method]].dropna()
            for seed, (base, own) in pair.iterrows():
                points = base - own
                rows.append((modality, method, int(seed), f"tail_reduction_points__{ev}", points))
                if base > 0:
                    rel = points / base
                    rows.append(
                        (modality, method, int(seed), f"tail_reduction_relative__{ev}", rel)
                    )
    if not rows:
        return per_seed
    extra = pd.DataFrame(rows, columns=list(PER_SEED_COLUMNS)).astype(per_seed.dtypes.to_dict())
    return pd.concat([per_seed, extra], ignore_index=True)


def _order_key(values: pd.Series, given: Sequence[str] | None) -> pd.Series:
    """Rank of each value: its place in ``given``, then first appearance for the rest."""
    order = list(dict.fromkeys([*(given or []), *values]))
    rank = {v: i for i, v in enumerate(order)}
    return values.map(rank)


def summarize_table(
    per_seed: pd.DataFrame,
    modality_order: Sequence[str] | None = None,
    method_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Reduce a :func:`per_seed_table` over seeds (mean, sample sd with ddof=1, n_seeds)."""
    if per_seed.empty:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=t)
                for c, t in zip(
                    SUMMARY_COLUMNS,
                    (object, object, object, "float64", "float64", "int64"),
                    strict=True,
                )
            }
        )
    g = per_seed.groupby(["modality", "method", "metric"], sort=False)["value"]
    df = g.agg(
        mean="mean",
        sd=lambda v: float(np.std(v.to_numpy(), ddof=1)) if len(v) > 1 else math.nan,
        n_seeds="count",
    ).reset_index()
    df = df.assign(
        _mod=_order_key(df["modality"], modality_order),
        _meth=_order_key(df["method"], method_order),
    )
    df = df.sort_values(["_mod", "_meth", "metric"], kind="mergesort").reset_index(drop=True)
    df = df[list(SUMMARY_COLUMNS)]
    return df.astype({"mean": "float64", "sd": "float64", "n_seeds": "int64"})


def summarize(
    metric_files: Sequence[Path],
    modality_order: Sequence[str] | None = None,
    method_order: Sequence[str] | None = None,
    baselines: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The report's numbers: columns exactly ``modality, method, metric, mean, sd, n_seeds``.

    ``sd`` is the sample standard deviation over seeds (ddof=1), NaN when ``n_seeds == 1``.
    Rows are sorted by modality and method (the given orders, then order of first appearance
    in ``metric_files``), then metric name alphabetically.
    """
    per_seed = with_tail_reductions(per_seed_table(metric_files), baselines)
    return summarize_table(per_seed, modality_order, method_order)


def write_claim(table: pd.DataFrame, path: Path) -> Path:
    """Write a claim table (:func:`claim_table`) as CSV (atomically): claim.csv, the same from
    ``craft claim`` and from the report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    return path


def write_summary(df: pd.DataFrame, path: Path) -> Path:
    """Write the summary as CSV (atomically); a missing sd is an empty field."""
    if list(df.columns) != list(SUMMARY_COLUMNS):
        raise ValueError(f"summary columns must be {list(SUMMARY_COLUMNS)}, got {list(df.columns)}")
    path = Path(path)
    atomic_write_text(path, df.to_csv(index=False, na_rep="", lineterminator="\n"))
    return path


def read_summary(path: Path) -> pd.DataFrame:
    """Read a summary.csv written by :func:`write_summary` (empty sd -> NaN)."""
    path = Path(path)
    if not path.is_file():
        raise CraftError(f"summary file {path} does not exist: run 'craft report' first")
    df = pd.read_csv(path, dtype={"modality": str, "method": str, "metric": str})
    if list(df.columns) != list(SUMMARY_COLUMNS):
        raise CraftError(
            f"{path}: columns must be {', '.join(SUMMARY_COLUMNS)}, got {', '.join(df.columns)}"
        )
    return df.astype({"mean": "float64", "sd": "float64", "n_seeds": "int64"})


#: Metrics (base names) where lower values are better; every other metric: higher is better.
#: A base name ending in ``_{name}`` for one of these (e.g. ``cas_tail_rate``) counts too.
LOWER_IS_BETTER = frozenset(
    {
        "tail_rate",
        # the bounds of the tail rate's bootstrap interval: lower is better, as for the rate
        "tail_rate_ci_low",
        "tail_rate_ci_high",
        "fd",
        "fid",
        "distribution_shift",
        "kid",
        "kid_std",
        "memorization_rate",
        "memorization_rate_pixel",
        "memorization_similarity_median",
        "ece",
        "loss",
    }
)


def lower_is_better(metric: str) -> bool:
    """Whether a lower value of ``metric`` is better (see :data:`LOWER_IS_BETTER`)."""
    base = base_metric(metric)
    return base in LOWER_IS_BETTER or any(base.endswith("_" + m) for m in LOWER_IS_BETTER)


def base_metric(metric: str) -> str:
    """The metric's name without its ``__label`` / ``__evaluator`` suffixes."""
    return metric.split(SUFFIX_SEP, 1)[0]


#: Per-evaluator metrics shown in the main table (``{name}__{evaluator}``, no label suffix).
MAIN_PER_EVALUATOR = frozenset(
    {
        "cas_mean",
        "tail_rate",
        "label_fidelity",
        "prompt_alignment",
        "checklist_adherence",
        "plausibility",
        "cas_oracle_spearman",
        "tail_reduction_points",
        "tail_reduction_relative",
    }
)
#: Metrics without a suffix that are context, not headline numbers (kept out of the main table).
SECONDARY = (
    "_reference",
    "_std",
    "downstream_accuracy",
    "downstream_f1",
    "_ci_low",
    "_ci_high",
    "_plain_prompt",
    "_enriched_prompts",
)


def is_main_metric(metric: str) -> bool:
    """A key metric: one without a per-label suffix (CAS metrics carry their evaluator)."""
    parts = metric.split(SUFFIX_SEP)
    if len(parts) == 1:
        return not any(tag in metric for tag in SECONDARY)
    return len(parts) == 2 and parts[0] in MAIN_PER_EVALUATOR


#: Columns of :func:`claim_table`. ``against`` says what a row compares with (``best other``:
#: the best other method's mean; ``start``: the method's own starting point; ``zero``: the
#: metric is itself a gain over the strongest other method), ``test`` how it is passed.
CLAIM_COLUMNS = (
    "modality",
    "metric",
    "method",
    "mean",
    "sd",
    "against",
    "best_other",
    "other_mean",
    "other_sd",
    "test",
    "wins",
    "seeds_won",
    "n_seeds",
    "margin",
    "margin_se",
    "p_paired",
    "passes",
)

#: A row's tests: ``better`` (the mean is strictly better) and ``not worse`` (the paired margin
#: is no worse than minus one standard error; a single seed: no worse at all).
BETTER, NOT_WORSE = "better", "not worse"
#: What a row compares with (see :data:`CLAIM_COLUMNS`).
BEST_OTHER, START, ZERO = "best other", "start", "zero"


@dataclass(frozen=True)
class ClaimRow:
    """One row of a claim: a metric, what it is compared with and how it passes."""

    metric: str
    against: str = BEST_OTHER
    test: str = BETTER

    def __post_init__(self) -> None:
        if self.against not in (BEST_OTHER, START, ZERO) or self.test not in (BETTER, NOT_WORSE):
            raise ValueError(f"claim row {self}: unknown 'against' or 'test'")


#: Downstream AUROC rows: at least the best other method's (not worse beyond one paired SE),
#: not strictly better. A classifier trained with real images reaches AUROC 1.000 on the
#: 32 px phantoms for every method (measured on the benchmark), and one trained on generated
#: images alone 1.000 on dermoscopy: there a strict "better" could be lost by a tie alone.
DOWNSTREAM_ROWS = ("downstream_auroc_synthetic", "downstream_auroc_mixed")


def whole_claim(evaluators: Sequence[str]) -> list[ClaimRow]:
    """The paper's whole claim, row by row (docs/benchmark.md):

    better than the best other method: CAS and tail rate per evaluator, oracle label agreement
    (phantoms), the checklist audit's pass rate; a tail reduction (relative, per evaluator)
    above zero; at least the best other method's (not worse beyond one paired standard error):
    downstream AUROC trained on generated images only and mixed with real ones
    (:data:`DOWNSTREAM_ROWS`); and no worse than the method's own start (beyond one paired
    standard error): the memorization rate and the oracle's distribution shift (phantoms), the
    price a reward could make it pay.
    """
    rows = [ClaimRow(f"{m}__{ev}") for m in ("cas_mean", "tail_rate") for ev in evaluators]
    rows += [ClaimRow(f"tail_reduction_relative__{ev}", ZERO) for ev in evaluators]
    rows += [ClaimRow("oracle_label_agreement")]
    rows += [ClaimRow(m, BEST_OTHER, NOT_WORSE) for m in DOWNSTREAM_ROWS]
    rows += [ClaimRow("audit_pass_rate")]
    rows += [
        ClaimRow(m, START, NOT_WORSE) for m in ("memorization_rate", "oracle_distribution_shift")
    ]
    return rows


def claim_table(
    per_seed: pd.DataFrame,
    method: str,
    metrics: Sequence[str | ClaimRow],
    others: Sequence[str] | None = None,
    start: str | None = None,
    alpha: float | None = None,
) -> pd.DataFrame:
    """Does ``method`` make its claim? One row per modality and claim row (``metrics``; a plain
    name is a :class:`ClaimRow` against the best other method).

    Against the best other method (among ``others``, default every other method): the one with
    the best mean over seeds (lowest for :func:`lower_is_better` metrics). Against ``start``:
    that method (rows against the start are left out without one). Against zero: the metric is a
    per-seed gain already (``tail_reduction_*``, computed by :func:`with_tail_reductions` over
    ``others``); ``best_other`` is empty and the reference 0.

    ``wins``: ``method``'s mean is strictly better; ``seeds_won``: on how many of the seeds both
    have, ``method`` is strictly better. ``margin``: the mean over those seeds of how much better
    ``method`` is (positive = better, in the metric's units), ``margin_se`` its standard error,
    and ``p_paired`` the one-sided paired t-test's p-value for "``method`` is better" (NaN under
    two paired seeds): with few seeds and reward finetuning's run-to-run spread, a mean that is
    better is not yet a difference that is resolved. ``passes``: for ``better`` rows, ``wins``
    (and ``p_paired < alpha`` when ``alpha`` is given); for ``not worse`` rows, ``margin +
    margin_se >= 0``. A metric the method has no value for in a modality is left out.
    """
    specs = [m if isinstance(m, ClaimRow) else ClaimRow(m) for m in metrics]
    per_seed = with_tail_reductions(per_seed, others)
    summary = summarize_table(per_seed)
    rows = []
    for modality in dict.fromkeys(summary["modality"]):
        s = summary[summary["modality"] == modality]
        p = per_seed[per_seed["modality"] == modality]
        for spec in specs:
            metric = spec.metric
            col = s[s["metric"] == metric].set_index("method")
            if method not in col.index:
                continue
            own = col.loc[method]
            lower = lower_is_better(metric)
            by_seed = p[p["metric"] == metric].pivot_table(
                index="seed", columns="method", values="value"
            )
            if spec.against == ZERO:
                best, ref_mean, ref_sd = "", 0.0, math.nan
                pair = by_seed[[method]].dropna()
                gain = -pair[method] if lower else pair[method]
            else:
                if spec.against == START:
                    pool = [start] if start in col.index and start != method else []
                else:
                    pool = [k for k in (others or col.index) if k in col.index and k != method]
                means = col.loc[pool, "mean"].dropna()
                if means.empty:
                    continue
                best = means.idxmin() if lower else means.idxmax()
                ref_mean, ref_sd = float(col.loc[best, "mean"]), float(col.loc[best, "sd"])
                pair = by_seed[[method, best]].dropna()
                gain = (pair[best] - pair[method]) if lower else (pair[method] - pair[best])
            seeds_won = int((gain > 0).sum())
            margin, margin_se, p_value = paired_margin(gain.to_numpy(dtype=float))
            better = operator.lt if lower else operator.gt
            wins = bool(better(float(own["mean"]), ref_mean))
            if spec.test == BETTER:
                passes = wins and (alpha is None or p_value < alpha)
            else:
                passes = margin + (0.0 if math.isnan(margin_se) else margin_se) >= 0
            rows.append(
                (
                    modality,
                    metric,
                    method,
                    float(own["mean"]),
                    float(own["sd"]),
                    spec.against,
                    best,
                    ref_mean,
                    ref_sd,
                    spec.test,
                    wins,
                    seeds_won,
                    int(len(pair)),
                    margin,
                    margin_se,
                    p_value,
                    bool(passes),
                )
            )
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


def paired_margin(gain: np.ndarray) -> tuple[float, float, float]:
    """Mean of per-seed gains, its standard error, and the one-sided paired t-test p-value
    for a mean gain above 0 (NaN for the last two under two seeds; a gain with no spread
    gives p 0 when positive, 1 otherwise)."""
    from scipy import stats

    n = len(gain)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(gain.mean())
    if n < 2:
        return mean, math.nan, math.nan
    se = float(gain.std(ddof=1) / math.sqrt(n))
    if se == 0.0:
        return mean, 0.0, 0.0 if mean > 0 else 1.0
    return mean, se, float(stats.t.sf(mean / se, df=n - 1))
