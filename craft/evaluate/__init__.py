"""Evaluations of generated images; each writes a metrics file the report reads."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING

from craft.atomic import atomic_write_text
from craft.version import code_version

if TYPE_CHECKING:
    from craft.report.summary import MetricsFile


def write_metrics(
    path: Path,
    modality: str,
    method: str,
    seed: int,
    stage: str,
    metrics: dict[str, float],
    config_digest: str,
) -> MetricsFile:
    """Validate and write one metrics JSON file atomically."""
    # Imported here: config.py imports craft.evaluate.settings, which runs this package at
    # Snakefile parse time; pandas and h5py (summary, store) are not needed there.
    from craft.report.summary import MetricsFile, Provenance
    from craft.store import current_command

    record = MetricsFile(
        modality=modality,
        method=method,
        seed=seed,
        stage=stage,
        metrics={k: float(v) for k, v in metrics.items()},
        provenance=Provenance(
            config_digest=config_digest,
            craft_version=code_version(),
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            command=current_command(),
        ),
    )
    atomic_write_text(Path(path), record.model_dump_json(indent=2))
    return record
