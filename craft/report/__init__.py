"""The report stage: metric files + samples -> ``summary.csv``, figures and ``index.html``.

``craft report`` calls :func:`report`. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from craft.report.html import LOWER_IS_BETTER, build_report
from craft.report.summary import (
    MetricsFile,
    load_metrics_file,
    per_seed_table,
    read_summary,
    summarize,
    write_summary,
)

__all__ = [
    "LOWER_IS_BETTER",
    "MetricsFile",
    "build_report",
    "load_metrics_file",
    "per_seed_table",
    "read_summary",
    "report",
    "summarize",
    "write_summary",
]


def report(
    metric_files: Sequence[Path],
    samples: Mapping[tuple[str, str, int], Path],
    out_dir: Path,
    title: str = "craft report",
    grid_per_label: int = 8,
    modality_order: Sequence[str] | None = None,
    method_order: Sequence[str] | None = None,
    baselines: Sequence[str] | None = None,
    **figures,
) -> Path:
    """Summarize ``metric_files`` and build the report in ``out_dir``; returns its index.html.

    ``samples`` maps (modality, method, seed) to that run's ``samples.h5``. Modalities and
    methods appear in the given orders, then in order of first appearance. ``figures`` are
    :func:`build_report`'s optional figure inputs (cas_scores, references, run_figures, curves).
    """
    metric_files = [Path(p) for p in metric_files]
    summary = summarize(metric_files, modality_order, method_order, baselines)
    loaded = [load_metrics_file(p) for p in dict.fromkeys(p.resolve() for p in metric_files)]
    versions = sorted({m.provenance.craft_version for m in loaded})
    provenance = {"craft versions of the metric files": ", ".join(versions)} if versions else {}
    return build_report(
        summary,
        {tuple(k): Path(v) for k, v in samples.items()},
        out_dir,
        title,
        grid_per_label,
        n_metric_files=len(loaded),
        provenance=provenance,
        **figures,
    )
