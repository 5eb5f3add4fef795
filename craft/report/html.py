"""The static HTML report: ``index.html`` + ``summary.csv`` + ``figures/*.png`` in one folder.

The page opens offline: no external CSS, scripts or fonts; figures are referenced by relative
paths, so the folder can be copied or zipped as a whole. All text is HTML-escaped.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from craft import __version__
from craft.atomic import atomic_write_text
from craft.report.figures import (
    cas_distributions,
    figure_name,
    image_grid,
    metric_bars,
    training_curves,
)
from craft.report.summary import (
    LOWER_IS_BETTER,
    SUMMARY_COLUMNS,
    is_main_metric,
    lower_is_better,
    write_summary,
)
from craft.store import read_samples

__all__ = ["LOWER_IS_BETTER", "build_report", "format_value", "format_cell"]

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; }
td.name, th.name { text-align: left; }
td.best { font-weight: bold; background: #eef6ee; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; }
footer { margin-top: 3em; border-top: 1px solid #bbb; color: #666; font-size: 0.85em; }
details { margin: 1em 0; }
.note { color: #555; font-size: 0.9em; }
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


def _best_rows(values: pd.Series, metric: str) -> set:
    """Index labels holding the best value of a column (ties all best; needs 2+ values)."""
    v = values.dropna()
    if len(v) < 2:
        return set()
    best = v.min() if lower_is_better(metric) else v.max()
    return set(v.index[np.isclose(v.to_numpy(float), best, rtol=1e-12, atol=0)])


def _main_table(rows: pd.DataFrame, methods: list[str]) -> str:
    """Methods x main metrics, ``mean ± sd``, best per column in bold."""
    metrics = sorted(m for m in dict.fromkeys(rows["metric"]) if is_main_metric(m))
    if not metrics:
        return '<p class="note">No main metrics for this modality.</p>'
    cells = rows.set_index(["method", "metric"])
    head = ['<th class="name">method</th>', "<th>seeds</th>"]
    for m in metrics:
        arrow = "↓" if lower_is_better(m) else "↑"
        title = "lower is better" if lower_is_better(m) else "higher is better"
        head.append(f'<th title="{title}">{_e(m)} {arrow}</th>')
    best = {}
    for m in metrics:
        col = pd.Series(
            {k: cells.loc[(k, m), "mean"] if (k, m) in cells.index else np.nan for k in methods},
            dtype=float,
        )
        best[m] = _best_rows(col, m)
    body = []
    for k in methods:
        seeds = sorted(set(rows.loc[rows["method"] == k, "n_seeds"].astype(int)))
        seeds_txt = (
            "–" if not seeds else (str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}")
        )
        tds = [f'<td class="name">{_e(k)}</td>', f"<td>{_e(seeds_txt)}</td>"]
        for m in metrics:
            if (k, m) not in cells.index:
                tds.append("<td>–</td>")
                continue
            r = cells.loc[(k, m)]
            n = int(r["n_seeds"])
            text = _e(format_cell(r["mean"], r["sd"], n))
            if k in best[m]:
                tds.append(f'<td class="best" title="n_seeds={n}"><b>{text}</b></td>')
            else:
                tds.append(f'<td title="n_seeds={n}">{text}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (
        '<table class="main"><thead><tr>'
        + "".join(head)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def _all_table(rows: pd.DataFrame, methods: list[str]) -> str:
    """Every metric (per-label and per-evaluator ones too) x methods, in a collapsed block."""
    metrics = sorted(dict.fromkeys(rows["metric"]))
    cells = rows.set_index(["method", "metric"])
    head = '<th class="name">metric</th>' + "".join(f"<th>{_e(k)}</th>" for k in methods)
    body = []
    for m in metrics:
        tds = [f'<td class="name">{_e(m)}</td>']
        for k in methods:
            if (k, m) in cells.index:
                r = cells.loc[(k, m)]
                tds.append(f"<td>{_e(format_cell(r['mean'], r['sd'], int(r['n_seeds'])))}</td>")
            else:
                tds.append("<td>–</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (
        f"<details><summary>All {len(metrics)} metrics (per label and per evaluator)</summary>"
        f'<table class="all"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
        "</table></details>"
    )


def _first_runs(modality, method_order, first_seed) -> list[tuple[str, int]]:
    return [(k, first_seed[(modality, k)]) for k in method_order if (modality, k) in first_seed]


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
    share = float(known.min())
    if share >= 1:
        text = (
            "Memorization reference: every test image's patient is known; train images of the "
            "same patient were left out of its search."
        )
    elif share <= 0:
        text = (
            "Memorization reference: patients unknown (the data names none; a manifest names them "
            "in a patient column), so "
            "a test image may have met a train image of its own patient; the reference rate "
            "may be high for that reason."
        )
    else:
        text = (
            f"Memorization reference: patients known for {share:.0%} of the test images "
            "(their same-patient train images left out); the others may meet their own patient."
        )
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


def build_report(
    summary: pd.DataFrame,
    samples: Mapping[tuple[str, str, int], Path],
    out_dir: Path,
    title: str,
    grid_per_label: int = 8,
    *,
    n_metric_files: int | None = None,
    provenance: Mapping[str, str] | None = None,
    cas_scores: Mapping[tuple[str, str, int, str], Path] | None = None,
    references: Mapping[tuple[str, str], Path] | None = None,
    run_figures: Mapping[tuple[str, str, int], Sequence[Path]] | None = None,
    curves: Mapping[tuple[str, str, int], Path] | None = None,
) -> Path:
    """Write ``out_dir/summary.csv``, ``out_dir/figures/*.png`` and ``out_dir/index.html``.

    ``samples`` maps (modality, method, seed) to a ``samples.h5``; each modality's grid shows the
    first (lowest) seed of each method. ``provenance`` adds lines to the page's footer.

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
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    write_summary(summary, out_dir / "summary.csv")

    modalities = list(dict.fromkeys([*summary["modality"], *(k[0] for k in samples)]))
    method_order = list(dict.fromkeys([*summary["method"], *(k[1] for k in samples)]))
    first_seed: dict[tuple[str, str], int] = {}
    for modality, method, seed in samples:
        key = (modality, method)
        first_seed[key] = min(seed, first_seed.get(key, seed))

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        '<p class="note">Numbers are mean ± sample sd (ddof=1) over seeds; '
        "the best value of each column is in bold (↑ higher is better, ↓ lower is better). "
        'All numbers: <a href="summary.csv">summary.csv</a>.</p>',
    ]
    if modalities:
        parts.append("<nav><ul>")
        parts += [f'<li><a href="#m-{_e(quote(m))}">{_e(m)}</a></li>' for m in modalities]
        parts.append('<li><a href="#key-metrics">key metrics</a></li></ul></nav>')
    else:
        parts.append('<p class="note">No metrics and no samples were given.</p>')

    for modality in modalities:
        rows = summary[summary["modality"] == modality]
        methods = [k for k in method_order if k in set(rows["method"])]
        parts.append(f'<section><h2 id="m-{_e(quote(modality))}">{_e(modality)}</h2>')
        if rows.empty:
            parts.append('<p class="note">No metrics for this modality.</p>')
        else:
            parts.append(_main_table(rows, methods))
            parts.append(_all_table(rows, methods))
            parts += _patients_note(rows)
        grid_methods = [k for k in method_order if (modality, k) in first_seed]
        if grid_methods:
            by_method = {
                k: read_samples(samples[(modality, k, first_seed[(modality, k)])])
                for k in grid_methods
            }
            name = figure_name("grid", modality)
            seeds = ", ".join(f"{k}: seed {first_seed[(modality, k)]}" for k in grid_methods)
            image_grid(
                by_method,
                grid_per_label,
                fig_dir / name,
                f"{modality}: {grid_per_label} samples per label",
            )
            parts.append(
                _img(
                    name,
                    f"generated {modality} images per label and method",
                    f"Generated samples, rows = requested label, first {grid_per_label} per label "
                    f"({seeds}).",
                )
            )
        parts += _cas_section(modality, method_order, first_seed, cas_scores, references, fig_dir)
        parts += _curves_section(modality, method_order, first_seed, curves, fig_dir)
        parts += _run_figures_section(modality, method_order, first_seed, run_figures, fig_dir)
        parts.append("</section>")

    key_metrics = sorted(m for m in dict.fromkeys(summary["metric"]) if is_main_metric(m))
    if key_metrics:
        parts.append('<section><h2 id="key-metrics">Key metrics</h2>')
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
        parts.append("</section>")

    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    foot = [f"craft {__version__}", f"created {created}"]
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
