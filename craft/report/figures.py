"""The report's figures: sample grids, metric bars, CAS distributions, curves (PNG).

Uses matplotlib's object API with the Agg renderer (``Figure`` + ``savefig``), never pyplot, so
importing this module changes no global backend and leaks no figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from craft.errors import CraftError
from craft.store import Samples

DPI = 100
FONT = 10  # points
TILE_MIN = 64  # images smaller than this are upscaled (nearest neighbour, integer factor)
TILE_MAX = 128  # images larger than this are downscaled (box filter)
GAP = 2  # pixels between tiles


def _save(fig, path: Path) -> Path:
    """Save a figure as PNG through a temporary file renamed on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _text_px(text: str, size: float = FONT, bold: bool = False) -> float:
    """Rendered width of ``text`` in pixels at DPI (Agg's own text metrics)."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = RendererAgg(1, 1, DPI)
    prop = FontProperties(size=size, weight="bold" if bold else "normal")
    return renderer.get_text_width_height_descent(text, prop, ismath=False)[0]


def _tile_size(h: int, w: int) -> tuple[int, int]:
    side = max(h, w)
    if side < TILE_MIN:
        up = math.ceil(TILE_MIN / side)
        return h * up, w * up
    if side > TILE_MAX:
        scale = TILE_MAX / side
        return max(1, round(h * scale)), max(1, round(w * scale))
    return h, w


def _resize(img: np.ndarray, th: int, tw: int) -> np.ndarray:
    """HxWxC uint8 -> th x tw x C: integer nearest-neighbour up, box filter down."""
    h, w = img.shape[:2]
    if (h, w) == (th, tw):
        return img
    if th % h == 0 and tw % w == 0:
        return np.repeat(np.repeat(img, th // h, axis=0), tw // w, axis=1)
    from PIL import Image

    mode_img = img[..., 0] if img.shape[2] == 1 else img
    out = np.asarray(Image.fromarray(mode_img).resize((tw, th), Image.Resampling.BOX))
    return out.reshape(th, tw, img.shape[2])


#: The per-method sample grid (:func:`method_grid`): pixels of the title band, of each label's
#: name above its row, between rows, and around the mosaic.
TITLE_BAND, LABEL_BAND, ROW_GAP, PAD = 24, 17, 5, 4


def grid_tile(shape: Sequence[int]) -> tuple[int, int]:
    """Height and width in pixels of one image's tile in a grid, for images of ``shape``
    (H, W[, C]): at least :data:`TILE_MIN` (integer nearest-neighbour upscaling), at most
    :data:`TILE_MAX` (box-filter downscaling)."""
    return _tile_size(int(shape[0]), int(shape[1]))


def method_grid(
    samples: Samples, labels: Sequence[str], n_per_label: int, path: Path, title: str
) -> Path:
    """One method's sample grid: a row per label of ``labels`` (in that order, the label's
    name above its row), its first ``n_per_label`` images in file order.

    Every method of a modality drawn with the same ``labels`` and ``n_per_label`` gives a
    figure of the same size with its rows at the same heights, so that figures set side by
    side line up. Small images are upscaled by an integer nearest-neighbour factor,
    grayscale is drawn as gray; a label with fewer images (or none)
    leaves its tiles light gray. The mosaic is drawn 1:1, so no resampling blurs it.
    """
    from matplotlib.figure import Figure

    if n_per_label < 1:
        raise ValueError(f"n_per_label must be >= 1, got {n_per_label}")
    labels = list(labels)
    if not labels:
        raise CraftError(f"sample grid {path}: no labels to show")
    if not len(samples):
        raise CraftError(f"sample grid {path}: the samples hold no images")
    h, w, c = samples.images.shape[1:]
    if c not in (1, 3):
        raise CraftError(f"sample grid {path}: images must have 1 or 3 channels, got {c}")
    th, tw = _tile_size(h, w)
    cells_w = n_per_label * tw + (n_per_label - 1) * GAP
    fig_w = max(cells_w, math.ceil(_text_px(title, FONT + 1, bold=True))) + 2 * PAD
    row_h = LABEL_BAND + th
    fig_h = TITLE_BAND + len(labels) * row_h + (len(labels) - 1) * ROW_GAP + PAD

    canvas = np.full((fig_h, fig_w, 3), 255, np.uint8)
    for r, label in enumerate(labels):
        y = TITLE_BAND + r * (row_h + ROW_GAP) + LABEL_BAND
        idx = (
            np.flatnonzero(samples.labels == samples.label_names.index(label))[:n_per_label]
            if label in samples.label_names
            else np.array([], int)
        )
        for col in range(n_per_label):
            x = PAD + col * (tw + GAP)
            if col >= len(idx):
                canvas[y : y + th, x : x + tw] = 235  # no image of this label: light gray
                continue
            img = _resize(samples.images[idx[col]], th, tw)
            canvas[y : y + th, x : x + tw] = np.repeat(img, 3, axis=2) if c == 1 else img

    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(canvas, interpolation="nearest", aspect="auto", resample=False)
    fig.text(
        PAD / fig_w,
        1 - 4 / fig_h,
        title,
        ha="left",
        va="top",
        fontsize=FONT + 1,
        fontweight="bold",
    )
    for r, label in enumerate(labels):
        y = TITLE_BAND + r * (row_h + ROW_GAP) + LABEL_BAND - 3
        fig.text(PAD / fig_w, 1 - y / fig_h, label, ha="left", va="bottom", fontsize=FONT)
    return _save(fig, path)


def metric_bars(
    df: pd.DataFrame, metric: str, path: Path, lower_is_better: bool | None = None
) -> Path:
    """Bar chart of one metric: a subplot per modality, a bar per method (mean, sd error bar).

    ``df`` is a summary table (``modality, method, metric, mean, sd, n_seeds``). Methods with one
    seed (or no sd) get no error bar. The y axis is labelled with the metric name.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from craft.report.summary import lower_is_better as _lower

    sub = df[df["metric"] == metric]
    if sub.empty:
        raise CraftError(f"metric '{metric}' is not in the summary; nothing to plot")
    modalities = list(dict.fromkeys(sub["modality"]))
    all_methods = list(dict.fromkeys(df["method"]))
    colors = colormaps["tab10"]
    n_max = max(sub.groupby("modality")["method"].nunique())
    panel_w = max(3.0, 0.75 * n_max + 1.4)
    fig = Figure(
        figsize=(panel_w * len(modalities), 3.6), dpi=DPI, facecolor="white", layout="constrained"
    )
    axes = fig.subplots(1, len(modalities), squeeze=False)[0]
    for ax, modality in zip(axes, modalities, strict=True):
        rows = sub[sub["modality"] == modality]
        x = np.arange(len(rows))
        means = rows["mean"].to_numpy(float)
        sds = rows["sd"].to_numpy(float)
        n = rows["n_seeds"].to_numpy(int)
        ax.bar(
            x, means, width=0.65, color=[colors(all_methods.index(m) % 10) for m in rows["method"]]
        )
        has_sd = (n > 1) & np.isfinite(sds)
        if has_sd.any():
            ax.errorbar(
                x[has_sd],
                means[has_sd],
                yerr=sds[has_sd],
                fmt="none",
                ecolor="black",
                elinewidth=1.2,
                capsize=4,
            )
        ax.set_xticks(
            x, [f"{m}\n(n={k})" for m, k in zip(rows["method"], n, strict=True)], fontsize=FONT - 1
        )
        ax.set_title(modality, fontsize=FONT + 1)
        ax.set_ylabel(metric, fontsize=FONT)
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.grid(axis="y", color="0.9")
        ax.set_axisbelow(True)
    low = _lower(metric) if lower_is_better is None else lower_is_better
    fig.suptitle(
        f"{metric}: mean ± sd over seeds ({'lower' if low else 'higher'} is better)",
        fontsize=FONT + 1,
    )
    return _save(fig, path)


def cas_distributions(
    scores_by_method: Mapping[str, np.ndarray],
    reference: np.ndarray,
    tau: float,
    path: Path,
    title: str,
) -> Path:
    """CAS histograms of each method's images against the real test images, tau marked.

    One step-line density per method (same bins for all), the real reference filled in gray,
    and a dashed vertical line at the tail threshold tau: the share of a method's mass left of
    it is its tail rate.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    reference = np.asarray(reference, dtype=np.float64)
    series = {k: np.asarray(v, dtype=np.float64) for k, v in scores_by_method.items() if len(v)}
    if not series and not len(reference):
        raise CraftError(f"CAS distribution {path}: no scores to plot")
    everything = np.concatenate([reference, *series.values(), [tau]])
    lo, hi = float(np.nanmin(everything)), float(np.nanmax(everything))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 31)
    colors = colormaps["tab10"]
    fig = Figure(figsize=(8.0, 3.6), dpi=DPI, facecolor="white", layout="constrained")
    ax = fig.add_subplot()
    if len(reference):
        ax.hist(
            reference, bins=bins, density=True, color="0.8", label=f"real test (n={len(reference)})"
        )
    for i, (method, v) in enumerate(series.items()):
        tail = float(np.mean(v < tau))
        ax.hist(
            v,
            bins=bins,
            density=True,
            histtype="step",
            linewidth=1.6,
            color=colors(i % 10),
            label=f"{method} (tail {tail:.0%})",
        )
    ax.axvline(tau, color="black", linestyle="--", linewidth=1.2, label=f"tau = {tau:.3g}")
    ax.set_xlabel("CAS", fontsize=FONT)
    ax.set_ylabel("density", fontsize=FONT)
    ax.set_title(title, fontsize=FONT + 1)
    ax.legend(fontsize=FONT - 2, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def training_curves(curves_by_method: Mapping[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Reward finetuning curves: a panel per logged metric, a line per method, over steps.

    Each frame is a ``curves.csv`` (columns ``step, metric, value``): the training terms (the
    reward, the diffusion loss) and the held-out evaluations (``eval_cas__{evaluator}``).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    frames = {k: v for k, v in curves_by_method.items() if not v.empty}
    if not frames:
        raise CraftError(f"training curves {path}: no curves to plot")
    metrics = list(dict.fromkeys(m for f in frames.values() for m in f["metric"]))
    colors = colormaps["tab10"]
    ncol = min(3, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig = Figure(
        figsize=(3.6 * ncol, 2.8 * nrow + 0.4), dpi=DPI, facecolor="white", layout="constrained"
    )
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        for i, (method, f) in enumerate(frames.items()):
            rows = f[f["metric"] == metric].sort_values("step")
            if rows.empty:
                continue
            marker = "o" if metric.startswith("eval_") else None
            ax.plot(
                rows["step"],
                rows["value"],
                marker=marker,
                markersize=3,
                color=colors(i % 10),
                label=method,
            )
        ax.set_title(metric, fontsize=FONT)
        ax.set_xlabel("step", fontsize=FONT - 1)
        ax.grid(color="0.9")
        ax.legend(fontsize=FONT - 2, frameon=False)
    for ax in axes[len(metrics) :]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=FONT + 1)
    return _save(fig, path)


def frontier(
    summary: pd.DataFrame, modality: str, axis: str, path: Path, budget: float | None = None
) -> Path:
    """The reward methods' paths of one modality (craft.evaluate.paths): each compared metric
    (oracle agreement on phantoms, each out-of-family mean CAS) against the realism ``axis``
    (a path point metric: ``oracle_distribution_shift``, ``realism_fd`` or ``realism_kid``),
    a line through the scales' means over seeds with a band of ± sd, the start (scale 0,
    square) and the run as trained (scale 1, star) marked; with ``budget`` a dashed line where
    each path's budget ends (its start's realism + budget)."""
    import re

    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from craft.evaluate.paths import split_path_metric

    rows = summary[summary["modality"] == modality]
    parsed = [split_path_metric(m) for m in rows["metric"]]
    keep = [p is not None for p in parsed]
    if not any(keep):
        raise CraftError(f"{modality} has no reward paths in the summary; nothing to plot")
    parsed = [p for p in parsed if p is not None]
    rows = rows[keep].assign(name=[p[0] for p in parsed], scale=[p[1] for p in parsed])
    names = [n for n in dict.fromkeys(rows["name"]) if n != axis]
    shown = [n for n in names if n == "oracle_label_agreement"]
    shown += [n for n in names if re.match(r"^cas_mean__", n)]
    if axis not in set(rows["name"]) or not shown:
        raise CraftError(f"{modality}'s paths have no {axis} or no compared metric to plot")
    methods = list(dict.fromkeys(rows["method"]))
    all_methods = list(dict.fromkeys(summary["method"]))
    colors = colormaps["tab10"]
    # small enough that two modalities' figures sit side by side above the claim table
    fig = Figure(figsize=(3.1 * len(shown), 2.5), dpi=DPI, facecolor="white", layout="constrained")
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    for ax, name in zip(axes, shown, strict=True):
        for k in methods:
            mine = rows[rows["method"] == k]
            x = mine[mine["name"] == axis].set_index("scale")
            y = mine[mine["name"] == name].set_index("scale")
            scales = sorted(set(x.index) & set(y.index))
            if not scales:
                continue
            xs, ys = x.loc[scales, "mean"].to_numpy(float), y.loc[scales, "mean"].to_numpy(float)
            sd = np.nan_to_num(y.loc[scales, "sd"].to_numpy(float))
            c = colors(all_methods.index(k) % 10)
            ax.plot(xs, ys, "-o", color=c, ms=3, lw=1.5, label=k)
            ax.fill_between(xs, ys - sd, ys + sd, color=c, alpha=0.15, lw=0)
            for s, marker in ((0.0, "s"), (1.0, "*")):
                if s in scales:
                    i = scales.index(s)
                    ax.plot(xs[i], ys[i], marker, color=c, ms=9 if marker == "*" else 6,
                            mec="black", mew=0.6)  # fmt: skip
            if budget is not None and 0.0 in scales:
                ax.axvline(xs[scales.index(0.0)] + budget, color=c, ls="--", lw=0.8)
        ax.set_xlabel(f"{axis} (lower: more real)", fontsize=FONT - 2)
        ax.set_ylabel(name, fontsize=FONT - 2)
        ax.tick_params(labelsize=FONT - 2)
        ax.grid(color="0.9")
        ax.legend(fontsize=FONT - 2, frameon=False)
    fig.suptitle(
        f"{modality}: square start, star as trained, dashed the budget",
        fontsize=FONT - 1,
    )
    return _save(fig, path)


def figure_name(kind: str, *parts: str) -> str:
    """A safe PNG file name, e.g. ``grid-phantom-cxr.png``."""
    import re

    safe = [re.sub(r"[^A-Za-z0-9_.-]+", "_", p) for p in (kind, *parts)]
    return "-".join(safe) + ".png"


__all__: Sequence[str] = (
    "cas_distributions",
    "frontier",
    "figure_name",
    "grid_tile",
    "method_grid",
    "metric_bars",
    "training_curves",
)
