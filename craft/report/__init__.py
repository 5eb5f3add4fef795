"""The report stage: metric files + samples -> ``summary.csv``, figures and ``index.html``.

``craft report`` calls :func:`report`. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from craft.errors import CraftError
from craft.report.html import LOWER_IS_BETTER, build_report, claim_for_report
from craft.report.summary import (
    MetricsFile,
    load_metrics_file,
    per_seed_table,
    read_summary,
    summarize,
    summarize_table,
    with_tail_reductions,
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
    *,
    claim_method: str | None = None,
    claim_start: str | None = None,
    evaluators: Sequence[str] | None = None,
    claim_paths=None,
    **figures,
) -> Path:
    """Summarize ``metric_files`` and build the report in ``out_dir``; returns its index.html.

    ``samples`` maps (modality, method, seed) to that run's ``samples.h5``. Modalities and
    methods appear in the given orders, then in order of first appearance. ``figures`` are
    :func:`build_report`'s optional figure inputs (cas_scores, references, run_figures, curves).

    The page opens on the claim of ``claim_method`` (default: the first method, in method
    order, that is not one of ``baselines``: ``craft report`` passes the methods not of kind
    craft as baselines) against the best of ``baselines``, and against its own start for the
    costs: ``claim_start``, default the ``init`` its runs' model cards (``model.json`` beside
    ``samples.h5``) name. Without baselines there is no method of kind craft to judge, and the
    page says so; ``evaluators`` orders the claim's and the headline's per-evaluator rows
    (default: as the metric names give them). ``claim_paths``
    (:class:`craft.report.claim.PathClaim`) puts the rows judged at matched realism first,
    from the runs' paths (``metrics-path.json``), and the frontier figure on the page.
    """
    metric_files = [Path(p) for p in metric_files]
    per_seed = per_seed_table(metric_files)
    summary = summarize_table(
        with_tail_reductions(per_seed, baselines), modality_order, method_order
    )
    loaded = [load_metrics_file(p) for p in dict.fromkeys(p.resolve() for p in metric_files)]
    versions = sorted({m.provenance.craft_version for m in loaded})
    provenance = {"craft versions of the metric files": ", ".join(versions)} if versions else {}
    samples = {tuple(k): Path(v) for k, v in samples.items()}
    methods = list(dict.fromkeys([*(method_order or []), *summary["method"]]))
    if claim_method is None and baselines is not None:
        claim_method = next((k for k in methods if k not in set(baselines)), None)
    if claim_method is not None and claim_start is None:
        claim_start = _start_from_cards(samples, claim_method)
    claim = claim_for_report(
        per_seed, claim_method, baselines, claim_start, evaluators, claim_paths
    )
    return build_report(
        summary,
        samples,
        out_dir,
        title,
        grid_per_label,
        n_metric_files=len(loaded),
        provenance=provenance,
        claim=claim,
        evaluators=evaluators,
        **figures,
    )


def _start_from_cards(samples: Mapping[tuple[str, str, int], Path], method: str) -> str | None:
    """The method an align method started from, as its runs' model cards name it (``init``);
    None when no card of its runs names one (a method that is not an align method)."""
    from craft.models.card import ModelCard

    for (_, k, _), path in sorted(samples.items(), key=lambda kv: kv[0]):
        card = Path(path).parent / "model.json"
        if k != method or not card.is_file():
            continue
        try:
            init = ModelCard.read(card).init
        except CraftError:
            continue
        if init:
            return init
    return None
