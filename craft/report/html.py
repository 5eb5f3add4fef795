"""The static HTML report: ``index.html`` + ``summary.csv`` + ``claim.csv`` + ``figures/*.png``.

The first screen answers "did craft win here?": the claim table (craft against the best method
of another kind, per modality and claim row: mean ± sd, seeds won, paired margin and p,
passes), then the headline metrics per method. Every other metric is folded below, then each
modality's sample grids (one figure per method, rows = labels) and figures.

The page opens offline: no external CSS, scripts or fonts; figures are referenced by relative
paths, so the folder can be copied or zipped as a whole. All text is HTML-escaped. Nothing on
the page is wider than the window: wide tables scroll inside their own box, figures shrink.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from craft.atomic import atomic_write_text
from craft.errors import CraftError
from craft.report.claim import FULL_COLUMNS, full_claim
from craft.report.figures import (
    cas_distributions,
    figure_name,
    frontier,
    grid_tile,
    method_grid,
    metric_bars,
    training_curves,
)
from craft.report.frontier import MATCHED
from craft.report.summary import (
    LOWER_IS_BETTER,
    START,
    SUFFIX_SEP,
    SUMMARY_COLUMNS,
    ZERO,
    is_main_metric,
    lower_is_better,
    write_claim,
    write_summary,
)
from craft.store import read_samples
from craft.version import code_version

__all__ = [
    "GRID_MAX",
    "LOWER_IS_BETTER",
    "build_report",
    "claim_for_report",
    "format_cell",
    "format_value",
    "headline_metrics",
]

#: At most this many images per label and method in a sample grid (whatever grid_per_label).
GRID_MAX = 8

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; padding-bottom: .15em; margin: .2em 0 .3em; font-size: 1.6em; }
h2 { margin: 1.6em 0 .5em; border-bottom: 1px solid #bbb; font-size: 1.3em; }
h3 { margin: 1.2em 0 .4em; font-size: 1.05em; }
p { max-width: 75em; }
nav ul { display: flex; flex-wrap: wrap; gap: .3em 1.2em; list-style: none; padding: 0;
         margin: .3em 0; font-size: .92em; }
.tw { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: .4em 0 1em; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .22em .5em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; font-weight: 600; }
thead th { white-space: normal; vertical-align: bottom; line-height: 1.2; }
thead th small { font-weight: normal; color: #555; }
td.name, th.name { text-align: left; }
td.best { font-weight: bold; background: #eef6ee; }
tr.group th { text-align: left; background: #e4e9f0; }
tr.fail td { background: #fdf0ef; }
td.pass { color: #1a6b2a; font-weight: bold; text-align: center; }
td.fail { color: #b3261e; font-weight: bold; text-align: center; }
.verdict { font-size: 1.05em; margin: .3em 0; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
img.grid { image-rendering: pixelated; }
figure { margin: .6em 0; }
.frontier { display: flex; flex-wrap: wrap; gap: 0 1em; }
.frontier figure { margin: .2em 0; flex: 1 1 0; min-width: 320px; max-width: 640px; }
.frontier figcaption { display: none; }
figcaption { color: #555; font-size: .9em; }
.grids { display: flex; flex-wrap: wrap; gap: .8em 1.2em; align-items: flex-start; }
.grids figure { margin: 0; max-width: 100%; }
footer { margin-top: 3em; border-top: 1px solid #bbb; color: #666; font-size: .85em; }
details { margin: .6em 0; }
summary { cursor: pointer; font-weight: 600; }
.note { color: #555; font-size: .9em; margin: .3em 0; }
"""


def format_value(x: float) -> str:
    """A number for the tables: 3 decimals in the usual range, 3 significant digits outside."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    x = float(x)
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    a = abs(x)
    if a == 0 or 0.01 <= a < 1e4:
        return f"{x:.3f}"
    return f"{x:.3g}"


def format_cell(mean: float, sd: float, n_seeds: int) -> str:
    """``mean ± sd`` (just ``mean`` when there is no sd, e.g. one seed)."""
    if n_seeds > 1 and sd is not None and not math.isnan(sd):
        return f"{format_value(mean)} ± {format_value(sd)}"
    return format_value(mean)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _img(name: str, alt: str, caption: str) -> str:
    src = _e("figures/" + quote(name))
    return (
        f'<figure><img src="{src}" alt="{_e(alt)}" loading="lazy">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _wrap(table: str) -> str:
    """A table in a box that scrolls sideways if it is wider than the page (never the page)."""
    return f'<div class="tw">{table}</div>'


def _best_rows(values: pd.Series, metric: str) -> set:
    """Index labels holding the best value of a column (ties all best; needs 2+ values)."""
    v = values.dropna()
    if len(v) < 2:
        return set()
    best = v.min() if lower_is_better(metric) else v.max()
    return set(v.index[np.isclose(v.to_numpy(float), best, rtol=1e-12, atol=0)])


# ----------------------------------------------------------------------------- metric names

#: Readable names of the claim's and the headline's metrics (base names; the suffix, e.g. the
#: evaluator, follows in parentheses). Other metrics keep their own name.
METRIC_LABELS = {
    "cas_mean": "CAS",
    "tail_rate": "tail rate",
    "tail_reduction_relative": "relative tail reduction",
    "tail_reduction_points": "tail reduction in points",
    "oracle_label_agreement": "oracle label agreement",
    "oracle_distribution_shift": "oracle distribution shift",
    "downstream_auroc_synthetic": "downstream AUROC, synthetic only",
    "downstream_auroc_mixed": "downstream AUROC, mixed with real",
    "audit_pass_rate": "audit pass rate",
    "memorization_rate": "memorization rate",
}
#: Two-line column heads of the headline table (head, small second line).
HEADLINE_HEADS = {
    "cas_mean": ("CAS", None),
    "tail_rate": ("tail rate", None),
    "downstream_auroc_synthetic": ("AUROC", "synthetic"),
    "downstream_auroc_mixed": ("AUROC", "mixed"),
    "oracle_label_agreement": ("oracle", "agreement"),
    "oracle_distribution_shift": ("distribution", "shift"),
}


def metric_label(metric: str) -> str:
    """``tail_rate__clip`` -> ``tail rate (clip)``; unknown names stay as they are."""
    base, *suffix = metric.split(SUFFIX_SEP)
    if base not in METRIC_LABELS:
        return metric
    return METRIC_LABELS[base] + (f" ({', '.join(suffix)})" if suffix else "")


def _arrow(metric: str) -> tuple[str, str]:
    low = lower_is_better(metric)
    return ("↓", "lower is better") if low else ("↑", "higher is better")


def evaluators_of(metrics: Iterable[str]) -> list[str]:
    """The CAS evaluators named by ``cas_mean__{ev}`` / ``tail_rate__{ev}``, first seen first."""
    out = []
    for m in metrics:
        parts = m.split(SUFFIX_SEP)
        if len(parts) == 2 and parts[0] in ("cas_mean", "tail_rate") and parts[1] not in out:
            out.append(parts[1])
    return out


def headline_metrics(metrics: Iterable[str], evaluators: Sequence[str] | None = None) -> list[str]:
    """The headline metrics among ``metrics``, in reading order: CAS and tail rate per
    evaluator, downstream AUROC (synthetic only, mixed with real), the oracle's label agreement
    and distribution shift (phantoms)."""
    present = list(dict.fromkeys(metrics))
    evs = list(evaluators) if evaluators is not None else evaluators_of(present)
    want = []
    for base in ("cas_mean", "tail_rate"):
        want += [base, *(f"{base}{SUFFIX_SEP}{ev}" for ev in evs)]
    want += [
        "downstream_auroc_synthetic",
        "downstream_auroc_mixed",
        "oracle_label_agreement",
        "oracle_distribution_shift",
    ]
    have = set(present)
    return [m for m in want if m in have]


# ----------------------------------------------------------------------------- the claim


def claim_for_report(
    per_seed: pd.DataFrame,
    method: str | None,
    others: Sequence[str] | None,
    start: str | None = None,
    evaluators: Sequence[str] | None = None,
    paths=None,
) -> pd.DataFrame | str:
    """The report's claim: :func:`~craft.report.claim.full_claim` of ``method`` (with
    ``paths``, a :class:`~craft.report.claim.PathClaim`, its rows at matched realism first;
    then the whole claim as trained against ``others`` and its own ``start``), or the one line
    that says why there is none: no method of kind craft, one seed only (seeds won, paired
    margin and p need two), or no value of any claim row."""
    if method is None:
        return (
            "No claim table: this report's config has no method of kind craft, so there is "
            "nothing to judge against the best other method."
        )
    own = per_seed[per_seed["method"] == method]
    seeds = sorted(set(own["seed"].astype(int)))
    if len(seeds) < 2:
        which = f"seed {seeds[0]}" if seeds else "no seed"
        return (
            f"No claim table: {method} has one run per modality ({which}); the claim (mean ± "
            "sd over seeds, seeds won, paired margin and p against the best other method) "
            "needs two seeds or more (e.g. seeds: [0, 1, 2]), see docs/benchmark.md."
        )
    evs = list(evaluators) if evaluators is not None else evaluators_of(per_seed["metric"])
    table = full_claim(per_seed, method, others, start, evs, paths)
    if table.empty:
        return f"No claim table: {method} and the other methods share no claim metric yet."
    return table


def format_margin(margin: float, se: float) -> str:
    """'+0.012 ± 0.020': a claim row's paired per-seed margin and its standard error ('–'
    without a margin, the margin alone without a standard error)."""
    if math.isnan(margin):
        return "–"
    if math.isnan(se):
        return f"{margin:+.3f}"
    return f"{margin:+.3f} ± {se:.3f}"


def format_p(p: float) -> str:
    """A claim row's one-sided paired p-value, or '–' where there is none."""
    return "–" if math.isnan(p) else f"{p:.2g}"


def _passes_text(claim: pd.DataFrame) -> tuple[str, str]:
    """('<b>x of y</b>', 'modality a of b, ...'): a claim's passing rows, and per modality."""
    per_mod = ", ".join(
        f"{_e(m)} {int(g['passes'].sum())} of {len(g)}"
        for m, g in claim.groupby("modality", sort=False)
    )
    return f"<b>{int(claim['passes'].sum())} of {len(claim)}</b>", per_mod


def _group_title(modality: str, g: pd.DataFrame, method: str) -> str:
    """A claim group's heading: how its rows were judged, and where the paths stopped or what
    the end points cost."""
    r = g.iloc[0]
    if r["judged"] == MATCHED:
        other = g["best_other"].iloc[0]
        ends = [
            f"{n} of {int(r['n_seeds'])} seeds of {k} never reach it: judged at their end"
            for k, n in ((method, r["seeds_at_end"]), (other, r["other_seeds_at_end"]))
            if n
        ]
        return (
            f"{modality}: at matched realism (budget {r['budget']:g} of {r['realism_axis']}; "
            f"stopped at scale {r['stop_scale']:.2f} for {method}, {r['other_stop_scale']:.2f} "
            f"for {other}{'; ' + '; '.join(ends) if ends else ''})"
        )
    costs = ""
    if not math.isnan(r["realism_cost"]):
        paid = {method: r["realism_cost"]}
        for other, cost in zip(g["best_other"], g["other_realism_cost"], strict=True):
            if not math.isnan(cost):
                paid.setdefault(other, cost)
        each = ", ".join(f"{k} {v:+.3f}" for k, v in paid.items())
        costs = f"; realism each end point cost, {r['realism_axis']}: {each}"
    return f"{modality}: as trained (end points{costs})"


def _frontier_figures(summary: pd.DataFrame, claim: pd.DataFrame | str, fig_dir: Path) -> str:
    """One frontier figure per modality whose runs have paths (figures.frontier), on the
    claim's realism axis and budget (without a claim table: the oracle's shift where the
    paths have it, FD elsewhere)."""
    from craft.evaluate.paths import path_metric
    from craft.report.frontier import AXES, axis_of

    paths = summary[summary["metric"].str.startswith("path_")]
    figures = []
    for modality in dict.fromkeys(paths["modality"]):
        axis, budget = None, None
        if isinstance(claim, pd.DataFrame):
            mine = claim[(claim["judged"] == MATCHED) & (claim["modality"] == modality)]
            if len(mine):
                axis, budget = mine["realism_axis"].iloc[0], float(mine["budget"].iloc[0])
        if axis is None:  # the default axis, phantoms told by their oracle's points
            has = set(paths.loc[paths["modality"] == modality, "metric"])
            axis = axis_of(None, path_metric("oracle_distribution_shift", 0.0) in has)
        name = figure_name("frontier", modality)
        try:
            frontier(summary, modality, AXES[axis], fig_dir / name, budget)
        except CraftError:
            continue
        figures.append(
            _img(
                name,
                f"{modality}: compared metrics against realism along each reward path",
                f"{modality}: each reward method's LoRA scaled from its start (0) through as "
                f"trained (1); mean over seeds ± sd; x: {AXES[axis]}.",
            )
        )
    if not figures:
        return ""
    return '<div class="frontier">' + "".join(figures) + "</div>"


def _claim_section(claim: pd.DataFrame | str, figures: str = "") -> list[str]:
    parts = ['<section id="claim"><h2>Did craft win?</h2>']
    if isinstance(claim, str):
        parts.append(f'<p class="verdict claim-note">{_e(claim)}</p>{figures}</section>')
        return parts
    method = str(claim["method"].iloc[0])
    n = int(claim["n_seeds"].max())
    matched = claim[claim["judged"] == MATCHED]
    trained = claim[claim["judged"] != MATCHED]
    if len(matched):
        r = matched.iloc[0]
        (won, per_mod), (won_trained, per_mod_trained) = (
            _passes_text(matched),
            _passes_text(trained),
        )
        parts.append(
            f'<p class="verdict">At matched realism, <b>{_e(method)}</b> passes {won} claim '
            f"rows over {n} seeds ({per_mod}): each reward method stopped where its path first "
            f"gives up {r['budget']:g} of realism ({_e(r['realism_axis'])}) against its own "
            "start, compared with the best other reward method. As trained (end points, which "
            f"sit at different realism): {won_trained} ({per_mod_trained}). Mean ± sd over "
            "seeds; seeds won and the paired per-seed margin ± SE with its one-sided p "
            "(positive = better).</p>"
        )
    else:
        won, per_mod = _passes_text(trained)
        parts.append(
            f'<p class="verdict"><b>{_e(method)}</b> passes {won} claim rows over {n} seeds '
            f"({per_mod}), as trained: end points, with no reward paths to judge at matched "
            "realism. Mean ± sd over seeds; compared with the best method of another kind "
            "(costs: with its own start); seeds won and the paired per-seed margin ± SE with "
            "its one-sided p (positive = better).</p>"
        )
    parts.append(figures)
    head = [
        '<th class="name">claim row</th>',
        f"<th>{_e(method)}</th>",
        "<th>needs</th>",
        '<th class="name">compared with</th>',
        "<th>seeds won</th>",
        "<th>margin ± SE</th>",
        "<th>p</th>",
        "<th>passes</th>",
    ]
    body = []
    for (_, modality), g in claim.groupby(["judged", "modality"], sort=False):
        title = _e(_group_title(modality, g, method))
        body.append(f'<tr class="group"><th colspan="{len(head)}">{title}</th></tr>')
        for r in g.itertuples(index=False):
            arrow, direction = _arrow(r.metric)
            if r.against == ZERO:
                other = "0"
            else:
                tag = " (start)" if r.against == START else ""
                other = f"{r.best_other}{tag} {format_cell(r.other_mean, r.other_sd, r.n_seeds)}"
            verdict = "yes" if r.passes else "no"
            tds = [
                f'<td class="name" title="{_e(r.metric)}: {direction}">'
                f"{_e(metric_label(r.metric))} {arrow}</td>",
                f"<td>{_e(format_cell(r.mean, r.sd, r.n_seeds))}</td>",
                f"<td>{_e(r.test)}</td>",
                f'<td class="name">{_e(other)}</td>',
                f"<td>{r.seeds_won}/{r.n_seeds}</td>",
                f"<td>{_e(format_margin(r.margin, r.margin_se))}</td>",
                f"<td>{_e(format_p(r.p_paired))}</td>",
                f'<td class="{"pass" if r.passes else "fail"}">{verdict}</td>',
            ]
            body.append(
                f'<tr class="{"row" if r.passes else "row fail"}">' + "".join(tds) + "</tr>"
            )
    parts.append(
        _wrap(
            '<table class="claim"><thead><tr>'
            + "".join(head)
            + "</tr></thead><tbody>"
            + "".join(body)
            + "</tbody></table>"
        )
    )
    parts.append("</section>")
    return parts


# ----------------------------------------------------------------------------- metric tables


def _seeds_text(rows: pd.DataFrame, method: str) -> str:
    seeds = sorted(set(rows.loc[rows["method"] == method, "n_seeds"].astype(int)))
    if not seeds:
        return "–"
    return str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"


def _headline_table(
    rows: pd.DataFrame, methods: list[str], metrics: list[str], highlight: str | None
) -> str:
    """Methods x headline metrics, ``mean ± sd``, best per column in bold."""
    cells = rows.set_index(["method", "metric"])
    head = ['<th class="name">method</th>', "<th>seeds</th>"]
    for m in metrics:
        arrow, direction = _arrow(m)
        base, *suffix = m.split(SUFFIX_SEP)
        top, sub = HEADLINE_HEADS.get(base, (base, None))
        sub = ", ".join(suffix) if suffix else sub
        small = f"<br><small>{_e(sub)}</small>" if sub else ""
        head.append(f'<th title="{_e(m)}: {direction}">{_e(top)} {arrow}{small}</th>')
    best = {}
    for m in metrics:
        col = pd.Series(
            {k: cells.loc[(k, m), "mean"] if (k, m) in cells.index else np.nan for k in methods},
            dtype=float,
        )
        best[m] = _best_rows(col, m)
    body = []
    for k in methods:
        name = f"<b>{_e(k)}</b>" if k == highlight else _e(k)
        tds = [f'<td class="name">{name}</td>', f"<td>{_e(_seeds_text(rows, k))}</td>"]
        for m in metrics:
            if (k, m) not in cells.index:
                tds.append("<td>–</td>")
                continue
            r = cells.loc[(k, m)]
            n = int(r["n_seeds"])
            text = _e(format_cell(r["mean"], r["sd"], n))
            if k in best[m]:
                tds.append(f'<td class="best" title="{_e(m)}, n_seeds={n}"><b>{text}</b></td>')
            else:
                tds.append(f'<td title="{_e(m)}, n_seeds={n}">{text}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return _wrap(
        '<table class="headline"><thead><tr>'
        + "".join(head)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def _metrics_by_row(rows: pd.DataFrame, methods: list[str], metrics: list[str], cls: str) -> str:
    """Metrics (rows) x methods (columns), ``mean ± sd``; best of each row in bold for the
    key metrics (``cls == "more"``)."""
    cells = rows.set_index(["method", "metric"])
    head = '<th class="name">metric</th>' + "".join(f"<th>{_e(k)}</th>" for k in methods)
    body = []
    for m in metrics:
        best: set = set()
        if cls == "more":
            col = pd.Series(
                {
                    k: cells.loc[(k, m), "mean"] if (k, m) in cells.index else np.nan
                    for k in methods
                },
                dtype=float,
            )
            best = _best_rows(col, m)
        arrow = f" {_arrow(m)[0]}" if cls == "more" else ""
        tds = [f'<td class="name">{_e(m)}{arrow}</td>']
        for k in methods:
            if (k, m) in cells.index:
                r = cells.loc[(k, m)]
                text = _e(format_cell(r["mean"], r["sd"], int(r["n_seeds"])))
                cell = f'<td class="best"><b>{text}</b></td>' if k in best else f"<td>{text}</td>"
                tds.append(cell)
            else:
                tds.append("<td>–</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return _wrap(
        f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _folded_tables(rows: pd.DataFrame, methods: list[str], headline: list[str]) -> list[str]:
    """The other key metrics and every metric of a modality, each in a closed <details>."""
    all_metrics = sorted(dict.fromkeys(rows["metric"]))
    more = [m for m in all_metrics if is_main_metric(m) and m not in headline]
    parts = []
    if more:
        bases = list(dict.fromkeys(m.split(SUFFIX_SEP)[0] for m in more))
        shown = ", ".join(bases[:5]) + (", …" if len(bases) > 5 else "")
        parts.append(
            f'<details class="more"><summary>Other key metrics ({len(more)}): {_e(shown)}'
            "</summary>" + _metrics_by_row(rows, methods, more, "more") + "</details>"
        )
    parts.append(
        f'<details class="all"><summary>All {len(all_metrics)} metrics (per label and per '
        "evaluator)</summary>" + _metrics_by_row(rows, methods, all_metrics, "all") + "</details>"
    )
    return parts


# ----------------------------------------------------------------------------- figures


def _first_runs(modality, method_order, first_seed) -> list[tuple[str, int]]:
    return [(k, first_seed[(modality, k)]) for k in method_order if (modality, k) in first_seed]


def _grid_section(modality, method_order, first_seed, samples, grid_per_label, fig_dir) -> list:
    """Per method a figure of its first seed's images: rows = labels, at most GRID_MAX each.

    The figures wrap side by side; the labels and their order are the modality's (the longest
    label list first), so the rows line up."""
    from PIL import Image

    runs = _first_runs(modality, method_order, first_seed)
    loaded = {k: read_samples(samples[(modality, k, seed)]) for k, seed in runs}
    loaded = {k: s for k, s in loaded.items() if len(s)}
    if not loaded:
        return []
    by_size = sorted(loaded.values(), key=lambda s: -len(s.label_names))
    labels = list(dict.fromkeys(name for s in by_size for name in s.label_names))
    most = max(
        int(np.sum(s.labels == i)) for s in loaded.values() for i in range(len(s.label_names))
    )
    n = max(1, min(grid_per_label, GRID_MAX, most))
    figures = []
    for k, s in loaded.items():
        seed = first_seed[(modality, k)]
        name = figure_name("grid", modality, k)
        method_grid(s, labels, n, fig_dir / name, f"{k} · seed {seed}")
        with Image.open(fig_dir / name) as im:
            width, height = im.size
        _, tw = grid_tile(s.images.shape[1:])
        figures.append(
            f'<figure data-method="{_e(k)}"><img class="grid" src="{_e("figures/" + quote(name))}" '
            f'width="{width}" height="{height}" data-tile="{tw}" data-per-label="{n}" '
            f'alt="{_e(f"generated {modality} images of {k}, seed {seed}, rows = labels")}">'
            "</figure>"
        )
    h, w = next(iter(loaded.values())).images.shape[1:3]
    th, tw = grid_tile((h, w))
    scale = (
        f"; {w} px images shown at {tw} px (nearest neighbour)" if tw > w else f"; {tw} px tiles"
    )
    return [
        "<h3>Samples</h3>",
        f'<p class="note">Rows: the requested label; the first {n} images of each label per '
        f"method, first seed{_e(scale)}. A light gray tile: fewer images of that label.</p>",
        '<div class="grids">' + "".join(figures) + "</div>",
    ]


def _cas_section(modality, method_order, first_seed, cas_scores, references, fig_dir) -> list:
    """CAS of each method's images vs the real test images, per evaluator, tau marked."""
    from craft.store import open_h5

    parts = []
    for (mod, ev), ref_path in (references or {}).items():
        if mod != modality or not Path(ref_path).is_file():
            continue
        by_method = {}
        for method, seed in _first_runs(modality, method_order, first_seed):
            path = (cas_scores or {}).get((modality, method, seed, ev))
            if path is not None and Path(path).is_file():
                with open_h5(path, "cas") as f:
                    by_method[method] = f["cas"][()]
        if not by_method:
            continue
        with open_h5(ref_path, "cas-reference") as f:
            real, tau = f["real_test/cas"][()], float(f.attrs["tau"])
        name = figure_name("cas", modality, ev)
        cas_distributions(by_method, real, tau, fig_dir / name, f"{modality}: CAS by {ev}")
        if not parts:
            parts.append("<h3>Clinical Alignment Score distributions</h3>")
        parts.append(
            _img(
                name,
                f"CAS distributions of {modality} by {ev}",
                f"CAS by evaluator {ev} of each method's images (first seed) against real test "
                f"images (gray); dashed: the tail threshold tau, below which an image counts as "
                f"low-alignment.",
            )
        )
    return parts


def _curves_section(modality, method_order, first_seed, curves, fig_dir) -> list:
    frames = {}
    for method, seed in _first_runs(modality, method_order, first_seed):
        path = (curves or {}).get((modality, method, seed))
        if path is not None and Path(path).is_file():
            frames[method] = pd.read_csv(path)
    if not frames:
        return []
    name = figure_name("curves", modality)
    training_curves(frames, fig_dir / name, f"{modality}: reward finetuning")
    return [
        "<h3>Reward finetuning curves</h3>",
        _img(
            name,
            f"reward finetuning curves of {modality}",
            "Training terms per step and held-out CAS (eval_cas__evaluator, markers) at each "
            "evaluation, first seed; early stopping keeps the best held-out evaluation.",
        ),
    ]


def _patients_note(rows: pd.DataFrame) -> list[str]:
    """Whether the memorization reference (real test vs train) knew the patients."""
    known = rows.loc[rows["metric"] == "memorization_reference_patients_known", "mean"]
    if known.empty:
        return []
    from craft.evaluate.memorization import patients_note

    text = patients_note(float(known.min()))
    return [f'<p class="note">{_e(text)}</p>']


def _run_figures_section(modality, method_order, first_seed, run_figures, fig_dir) -> list:
    parts = []
    for method, seed in _first_runs(modality, method_order, first_seed):
        for src in (run_figures or {}).get((modality, method, seed), ()):
            src = Path(src)
            if not src.is_file():
                continue
            name = figure_name(src.stem, modality, method)
            shutil.copyfile(src, fig_dir / name)
            if not parts:
                parts.append("<h3>Evaluation figures (first seed)</h3>")
            parts.append(_img(name, f"{src.stem} of {modality} {method}", f"{method}: {src.stem}"))
    return parts


def _write_claim_csv(claim: pd.DataFrame | str | None, path: Path) -> None:
    """claim.csv: the claim table's rows as ``craft claim`` writes them (header only when the
    page shows a line instead of the table)."""
    if claim is None:
        return
    table = claim if isinstance(claim, pd.DataFrame) else pd.DataFrame(columns=FULL_COLUMNS)
    write_claim(table, path)


def _anchor(name: str) -> str:
    return "m-" + re.sub(r"[^A-Za-z0-9_-]+", "_", name)


# ----------------------------------------------------------------------------- the page


def build_report(
    summary: pd.DataFrame,
    samples: Mapping[tuple[str, str, int], Path],
    out_dir: Path,
    title: str,
    grid_per_label: int = GRID_MAX,
    *,
    n_metric_files: int | None = None,
    provenance: Mapping[str, str] | None = None,
    claim: pd.DataFrame | str | None = None,
    evaluators: Sequence[str] | None = None,
    cas_scores: Mapping[tuple[str, str, int, str], Path] | None = None,
    references: Mapping[tuple[str, str], Path] | None = None,
    run_figures: Mapping[tuple[str, str, int], Sequence[Path]] | None = None,
    curves: Mapping[tuple[str, str, int], Path] | None = None,
) -> Path:
    """Write ``out_dir/summary.csv``, ``out_dir/figures/*.png`` and ``out_dir/index.html``.

    ``claim`` opens the page: a :func:`~craft.report.summary.claim_table` (also written to
    ``out_dir/claim.csv``), or the one line that says why there is none (claim.csv then holds
    the header only); see :func:`claim_for_report`. Without it the page opens on the headline
    metrics (:func:`headline_metrics`; ``evaluators`` orders them, default: as named by the
    metrics) and writes no claim.csv.

    ``samples`` maps (modality, method, seed) to a ``samples.h5``; each modality's grids show
    the first (lowest) seed of each method, one figure per method, at most
    min(``grid_per_label``, :data:`GRID_MAX`) images per label. ``provenance`` adds lines to
    the page's footer.

    Optional, per modality and shown for the first seed of each method like the grid:
    ``cas_scores`` ((modality, method, seed, evaluator) -> ``cas-{evaluator}.h5``) with
    ``references`` ((modality, evaluator) -> reference .h5) give the CAS distributions against
    the real test images with tau marked; ``run_figures`` (run -> PNGs an evaluation stage drew,
    e.g. the checklist audit heatmap and the memorization pairs) are copied into figures/;
    ``curves`` (run -> ``curves.csv`` of a reward finetuning) give the training curves.
    Files that do not exist are left out (a stage the config does not run made none).
    Returns the path of ``index.html``.
    """
    if list(summary.columns) != list(SUMMARY_COLUMNS):
        raise ValueError(
            f"summary columns must be {list(SUMMARY_COLUMNS)}, got {list(summary.columns)}"
        )
    if isinstance(claim, pd.DataFrame) and list(claim.columns) != list(FULL_COLUMNS):
        raise ValueError(f"claim columns must be {list(FULL_COLUMNS)}, got {list(claim.columns)}")
    if isinstance(claim, pd.DataFrame) and claim.empty:
        claim = "No claim table: no claim row has values."
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    write_summary(summary, out_dir / "summary.csv")
    _write_claim_csv(claim, out_dir / "claim.csv")

    modalities = list(dict.fromkeys([*summary["modality"], *(k[0] for k in samples)]))
    method_order = list(dict.fromkeys([*summary["method"], *(k[1] for k in samples)]))
    first_seed: dict[tuple[str, str], int] = {}
    for modality, method, seed in samples:
        key = (modality, method)
        first_seed[key] = min(seed, first_seed.get(key, seed))
    highlight = str(claim["method"].iloc[0]) if isinstance(claim, pd.DataFrame) else None
    evs = list(evaluators) if evaluators is not None else evaluators_of(summary["metric"])

    csv_links = '<a href="summary.csv">summary.csv</a>'
    if claim is not None:
        csv_links += ', <a href="claim.csv">claim.csv</a>'
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    nav = []
    if claim is not None:
        nav.append('<li><a href="#claim">claim</a></li>')
    if len(summary):
        nav.append('<li><a href="#headline">headline metrics</a></li>')
    nav += [f'<li><a href="#{_anchor(m)}">{_e(m)}</a></li>' for m in modalities]
    nav.append('<li><a href="#key-metrics">key metrics</a></li>')
    parts.append("<nav><ul>" + "".join(nav) + "</ul></nav>")
    if not modalities:
        parts.append('<p class="note">No metrics and no samples were given.</p>')

    if claim is not None:
        parts += _claim_section(claim, _frontier_figures(summary, claim, fig_dir))

    headline_by_modality = {}
    if len(summary):
        parts.append('<section id="headline"><h2>Headline metrics</h2>')
        parts.append(
            '<p class="note">Mean ± sample sd (ddof=1) over seeds; the best of each column in '
            "bold (↑ higher is better, ↓ lower is better). Every number: "
            f"{csv_links}; the other metrics are folded under each modality below.</p>"
        )
        for modality in modalities:
            rows = summary[summary["modality"] == modality]
            if rows.empty:
                continue
            methods = [k for k in method_order if k in set(rows["method"])]
            metrics = headline_metrics(rows["metric"], evs)
            headline_by_modality[modality] = metrics
            parts.append(f"<h3>{_e(modality)}</h3>")
            if metrics:
                parts.append(_headline_table(rows, methods, metrics, highlight))
            else:
                parts.append('<p class="note">No headline metric for this modality.</p>')
        parts.append("</section>")

    for modality in modalities:
        rows = summary[summary["modality"] == modality]
        methods = [k for k in method_order if k in set(rows["method"])]
        parts.append(f'<section><h2 id="{_anchor(modality)}">{_e(modality)}</h2>')
        parts += _grid_section(modality, method_order, first_seed, samples, grid_per_label, fig_dir)
        if rows.empty:
            parts.append('<p class="note">No metrics for this modality.</p>')
        else:
            parts.append("<h3>Metrics</h3>")
            parts += _folded_tables(rows, methods, headline_by_modality.get(modality, []))
            parts += _patients_note(rows)
        parts += _cas_section(modality, method_order, first_seed, cas_scores, references, fig_dir)
        parts += _curves_section(modality, method_order, first_seed, curves, fig_dir)
        parts += _run_figures_section(modality, method_order, first_seed, run_figures, fig_dir)
        parts.append("</section>")

    key_metrics = sorted(m for m in dict.fromkeys(summary["metric"]) if is_main_metric(m))
    parts.append('<section><h2 id="key-metrics">Key metrics as bar charts</h2>')
    if key_metrics:
        parts.append(
            f'<details class="bars"><summary>{len(key_metrics)} bar charts: mean ± sd over '
            "seeds per method and modality</summary>"
        )
        for metric in key_metrics:
            name = figure_name("bars", metric)
            metric_bars(summary, metric, fig_dir / name)
            parts.append(
                _img(
                    name,
                    f"bar chart of {metric}",
                    f"{metric}: mean ± sd over seeds per method and modality.",
                )
            )
        parts.append("</details>")
    else:
        parts.append('<p class="note">No key metrics.</p>')
    parts.append("</section>")

    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    foot = [f"craft {code_version()}", f"created {created}"]
    if n_metric_files is not None:
        foot.append(f"{n_metric_files} metric file{'s' if n_metric_files != 1 else ''}")
    foot.append(f"{len(samples)} sample file{'s' if len(samples) != 1 else ''}")
    foot += [f"{k}: {v}" for k, v in (provenance or {}).items()]
    parts.append(
        '<footer><p class="provenance">'
        + " · ".join(_e(f) for f in foot)
        + "</p></footer></body></html>"
    )
    index = out_dir / "index.html"
    atomic_write_text(index, "\n".join(parts) + "\n")
    return index
