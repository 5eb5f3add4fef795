"""``craft path``: a reward method's path from its start, measured at several scales.

An align run (kind craft or generic-reward) keeps its reward LoRA apart from its start's
(``reward-lora/`` beside the card). Scaled by ``s`` on top of the start it traces a path:
0 is the start, 1 the run as trained, above 1 further along the same direction (LoRA-scale
interpolation as in DRaFT, arXiv 2309.17400). At every scale of ``evaluation.paths.scales``
the path is measured as a run is: the oracle on phantom modalities (label agreement and
distribution shift), each out-of-family evaluator (mean CAS, tail rate) and the fidelity
stage (per-label FD and KID against the real test images). Scale 0 is the start's own
samples and metric files (where the start asks with the same prompts; else the start is
sampled with the run's plan), scale 1 the run's own: neither is sampled twice. Every other scale
draws the run's own sampling plan (the same prompts and noise seeds, so the points of a path
differ only by the scale) into ``path/scale-{s}/`` and is measured there by the same code as
a run.

Each finished point is appended to ``path/points.jsonl`` with the job's digest, and its
folder removed; a killed job resumes after the last finished point (and a scale's samples
file resumes where it stopped). The job's metrics file holds every point's metrics as
``path_{metric}__s{scale}`` and, on phantoms, how well each oracle-free realism measure ranks
the points like the oracle's distribution shift (``realism_oracle_spearman__{fd,kid}``).

Realism without an oracle: ``realism_fd`` and ``realism_kid`` are the per-label Frechet
distance and KID of the fidelity stage (the generated images of each label against the real
test images of that label, in ``evaluation.fidelity.features``, which neither CAS evaluator
uses), averaged over labels. The claim's realism axis is chosen in ``claim.realism``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from craft.errors import CraftError
from craft.progress import log

if TYPE_CHECKING:
    from craft.config import CraftConfig
    from craft.paths import Layout

#: The journal of finished points, inside the run's ``path/`` folder.
POINTS = "points.jsonl"
#: Oracle-free realism measures: (metric of a point, per-label metric of the fidelity stage).
REALISM_MEASURES = {"realism_fd": "fd", "realism_kid": "kid"}
ORACLE_METRICS = ("oracle_label_agreement", "oracle_distribution_shift")


def scale_name(scale: float) -> str:
    """A scale as written in metric names and folders: 0, 0.5, 1, 1.5."""
    return f"{scale:g}"


def path_metric(name: str, scale: float) -> str:
    """A point's metric as the job writes it: ``path_{name}__s{scale}``."""
    return f"path_{name}__s{scale_name(scale)}"


def split_path_metric(metric: str) -> tuple[str, float] | None:
    """(name, scale) of a :func:`path_metric`; None for any other metric."""
    if not metric.startswith("path_"):
        return None
    name, sep, scale = metric.removeprefix("path_").rpartition("__s")
    try:
        return (name, float(scale)) if sep else None
    except ValueError:
        return None


def path_folder(lay: Layout, modality: str, method: str, seed: int) -> Path:
    return lay.run(modality, method, seed) / "path"


def point_metrics(
    labels: list[str],
    fidelity: dict[str, float],
    cas: dict[str, dict[str, float]],
    oracle: dict[str, float] | None,
) -> dict[str, float]:
    """One point of a path from its metric files' values: the oracle's agreement and shift
    (phantoms), each out-of-family evaluator's mean CAS and tail rate, and the realism
    measures (the fidelity stage's per-label distances averaged over the labels that have
    one)."""
    out: dict[str, float] = {}
    if oracle is not None:
        out |= {k: float(oracle[k]) for k in ORACLE_METRICS}
    for ev, m in cas.items():
        out[f"cas_mean__{ev}"] = float(m[f"cas_mean__{ev}"])
        out[f"tail_rate__{ev}"] = float(m[f"tail_rate__{ev}"])
    for name, stem in REALISM_MEASURES.items():
        per_label = [fidelity.get(f"{stem}__{label}") for label in labels]
        values = [v for v in per_label if v is not None and math.isfinite(v)]
        out[name] = float(np.mean(values)) if values else math.nan
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan under three points or for
    a constant side."""
    from scipy.stats import spearmanr

    keep = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(keep) < 3 or len({a for a, _ in keep}) < 2 or len({b for _, b in keep}) < 2:
        return math.nan
    a, b = zip(*keep, strict=True)
    return float(spearmanr(a, b).statistic)


def path_metrics(points: dict[float, dict[str, float]]) -> dict[str, float]:
    """The job's metrics: every point's as ``path_{metric}__s{scale}`` (a metric with its
    own suffix keeps it: ``path_cas_mean__{ev}__s{scale}``), and on phantoms each realism
    measure's rank agreement with the oracle's shift along the path."""
    out: dict[str, float] = {}
    for scale, metrics in sorted(points.items()):
        for name, value in metrics.items():
            out[path_metric(name, scale)] = value
    scales = sorted(points)
    if all("oracle_distribution_shift" in points[s] for s in scales):
        shift = [points[s]["oracle_distribution_shift"] for s in scales]
        for name in REALISM_MEASURES:
            if not all(name in points[s] for s in scales):
                continue
            measure = [points[s][name] for s in scales]
            out[f"realism_oracle_spearman__{name.removeprefix('realism_')}"] = spearman(
                measure, shift
            )
    return out


def read_points(journal: Path, digest: str) -> dict[float, dict[str, float]]:
    """The finished points of this job's digest (lines of another digest, and a last line
    cut short by a kill, are skipped)."""
    points: dict[float, dict[str, float]] = {}
    if not journal.is_file():
        return points
    for line in journal.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("digest") == digest:
            points[float(row["scale"])] = {
                k: (math.nan if v is None else float(v)) for k, v in row["metrics"].items()
            }
    return points


def _append_point(journal: Path, digest: str, scale: float, metrics: dict[str, float]) -> None:
    clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
    line = json.dumps({"digest": digest, "scale": scale, "metrics": clean})
    with journal.open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _metrics_of(path: Path) -> dict[str, float]:
    from craft.report.summary import load_metrics_file

    return load_metrics_file(path).metrics


def _run_point(
    cfg: CraftConfig, lay: Layout, modality: str, method: str, seed: int
) -> dict[str, float]:
    """A finished run's point, from its own metric files."""
    phantom = cfg.modality(modality).source.kind == "phantom"
    return point_metrics(
        list(cfg.modality(modality).labels),
        _metrics_of(lay.metrics(modality, method, seed, "fidelity")),
        {
            ev: _metrics_of(lay.metrics(modality, method, seed, f"cas-{ev}"))
            for ev in cfg.out_of_family_evaluators
        },
        _metrics_of(lay.metrics(modality, method, seed, "oracle")) if phantom else None,
    )


def scaled_card(run_card: Path, start_card: Path, scale: float, folder: Path) -> Path:
    """A model card in ``folder`` for the start plus the run's reward LoRA at ``scale`` times
    the scale it was trained at: one LoRA of the base (written to ``folder/lora``), or with
    a handover the run's own two models, the reward one at the new scale."""
    from craft.models.card import ModelCard
    from craft.models.lora import combine_loras, read_lora, write_lora

    card = ModelCard.read(run_card)
    run_dir = run_card.parent
    if card.reward_lora_dir is None:
        raise CraftError(f"{run_card} keeps no reward LoRA apart: rerun its align job")

    def here(rel: str | None) -> str | None:  # a path relative to the run, from folder
        return None if rel is None else os.path.relpath(run_dir / rel, folder)

    trained = card.lora_scale if card.lora_scale is not None else 1.0
    folder.mkdir(parents=True, exist_ok=True)
    if card.handover_t is not None:
        new = card.model_copy(
            update={
                "lora_dir": here(card.lora_dir),
                "unet_dir": here(card.unet_dir),
                "reward_lora_dir": here(card.reward_lora_dir),
                "start_lora_dir": here(card.start_lora_dir),
                "lora_scale": scale * trained,
            }
        )
    else:
        start = ModelCard.read(start_card)
        parts = [(read_lora(run_dir / card.reward_lora_dir), scale * trained)]
        if start.lora_dir:
            parts.insert(0, (read_lora(start_card.parent / start.lora_dir), 1.0))
        write_lora(combine_loras(parts), folder / "lora")
        new = card.model_copy(
            update={
                "lora_dir": "lora",
                "unet_dir": here(card.unet_dir),
                "reward_lora_dir": None,
                "lora_scale": None,
            }
        )
    new.write(folder / "model.json")
    return folder / "model.json"


def _sampled_point(
    cfg: CraftConfig,
    lay: Layout,
    modality: str,
    method: str,
    seed: int,
    scale: float,
    folder: Path,
    digest: str,
    threads: int | None,
) -> dict[str, float]:
    """Sample the start plus the reward LoRA at ``scale`` with the run's plan, and measure
    the samples as the run's were measured."""
    from craft.cas.stages import score_configured_samples
    from craft.evaluate.fidelity import fidelity
    from craft.evaluate.oracle import evaluate_oracle
    from craft.sample import generate
    from craft.train.common import setup_torch

    m = cfg.modality(modality)
    init = cfg.method(method).init
    card = scaled_card(lay.card(modality, method, seed), lay.card(modality, init, seed), scale,
                       folder)  # fmt: skip
    samples = folder / "samples.h5"
    generate(
        cfg, modality, method, seed, card, samples, threads, digest=f"{digest}-s{scale_name(scale)}"
    )
    oracle = None
    if m.source.kind == "phantom":
        oracle = evaluate_oracle(
            cfg, modality, method, seed, samples, folder / "metrics-oracle.json", lay.data(modality)
        )
    cas = {}
    for ev in cfg.out_of_family_evaluators:
        cas[ev] = score_configured_samples(
            cfg.cas, ev, modality, m, method, seed, samples, lay.reference(modality, ev),
            lay.knowledge(modality), lay, folder / f"cas-{ev}.h5",
            folder / f"metrics-cas-{ev}.json", digest, threads,
        )  # fmt: skip
    settings = cfg.evaluation.fidelity
    setup_torch(settings.seed, threads)  # as `craft fidelity` seeds the run's own
    fid = fidelity(settings, lay.data(modality), samples, folder / "metrics-fidelity.json",
                   modality, method, seed, digest)  # fmt: skip
    return point_metrics(list(m.labels), fid, cas, oracle)


def start_drawn_alike(cfg: CraftConfig, method: str) -> bool:
    """Whether the start's own samples are what scale 0 of ``method``'s path draws: the same
    sampling plan, which differs only by the prompts (generic-reward asks with the label
    prompt, its start lora-enriched with the enriched ones: then scale 0 is sampled)."""
    return cfg.method(method).prompts == cfg.method(cfg.method(method).init).prompts


def reward_path(
    cfg: CraftConfig,
    lay: Layout,
    modality: str,
    method: str,
    seed: int,
    out: Path,
    digest: str,
    threads: int | None = None,
) -> dict[str, float]:
    """Measure ``method``'s path for one seed at every configured scale, resuming after the
    points already in the journal; write the metrics file ``out``."""
    from craft.evaluate import write_metrics

    k = cfg.method(method)
    if not k.is_align:
        raise CraftError(
            f"method '{method}' is of kind {k.kind}: paths are of reward methods (kind craft "
            "or generic-reward), which keep their reward LoRA apart"
        )
    folder = path_folder(lay, modality, method, seed)
    folder.mkdir(parents=True, exist_ok=True)
    journal = folder / POINTS
    points = read_points(journal, digest)
    scales = cfg.evaluation.paths.scales
    if points:
        log(f"{modality}/{method}/{seed}: resuming the path, scales {sorted(points)} done")
    for scale in scales:
        if scale in points:
            continue
        where = folder / f"scale-{scale_name(scale)}"
        if scale == 0 and start_drawn_alike(cfg, method):
            point = _run_point(cfg, lay, modality, k.init, seed)
        elif scale == 1:
            point = _run_point(cfg, lay, modality, method, seed)
        else:
            log(f"{modality}/{method}/{seed}: reward LoRA at scale {scale:g}")
            point = _sampled_point(cfg, lay, modality, method, seed, scale, where, digest,
                                   threads)  # fmt: skip
        _append_point(journal, digest, scale, point)
        points[scale] = point
        shutil.rmtree(where, ignore_errors=True)  # a sampled scale's weights and samples
    metrics = path_metrics({s: points[s] for s in scales})
    write_metrics(out, modality, method, seed, "path", metrics, digest)
    log(f"{modality}/{method}/{seed}: path of {len(scales)} points written to {out}")
    return metrics


def load_paths(per_seed: Any) -> dict[tuple[str, str], dict[int, dict[float, dict[str, float]]]]:
    """(modality, method) -> seed -> scale -> point metrics, from a per-seed table's
    ``path_*__s{scale}`` rows (craft.report.summary.per_seed_table)."""
    out: dict = {}
    rows = per_seed[per_seed["metric"].str.startswith("path_")]
    for r in rows.itertuples(index=False):
        parsed = split_path_metric(r.metric)
        if parsed is None:
            continue
        name, scale = parsed
        by_scale = out.setdefault((r.modality, r.method), {}).setdefault(int(r.seed), {})
        by_scale.setdefault(scale, {})[name] = float(r.value)
    return out
