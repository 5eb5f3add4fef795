"""The CAS stages as typed functions, one per CLI verb: train an evaluator, build a reference,
score samples. The CLI parses arguments and calls these; they read the config nodes they need.

Paths come from :class:`craft.paths.Layout`: ``results/models/evaluators/{modality}/{evaluator}/``
(trained phantom evaluators), ``results/cas/{modality}/reference-{evaluator}.h5``, and per run
``results/runs/{modality}/{method}/{seed}/cas-{evaluator}.h5`` and
``metrics-cas-{evaluator}.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from craft.cas.settings import CasConfig, EvaluatorConfig
from craft.errors import CraftError
from craft.paths import Layout


def default_paths(results: Path | str) -> Layout:
    return Layout(results)


def evaluator_config(cas: CasConfig, name: str) -> EvaluatorConfig:
    try:
        return cas.evaluators[name]
    except KeyError:
        raise CraftError(
            f"evaluator '{name}' is not in the config (configured: {', '.join(cas.evaluators)})"
        ) from None


def evaluator_source(cas: CasConfig, name: str, paths: Layout, modality: str) -> str:
    """The from_pretrained source of an evaluator: its trained dir, or its hub id / dir."""
    ev = evaluator_config(cas, name)
    return str(paths.evaluator(modality, name)) if ev.source == "train" else ev.source


def _setup(threads: int | None = None, seed: int = 0) -> None:
    """Cap CPU threads (SLURM's allocation, or ``threads``) and seed every RNG."""
    from craft.train.common import setup_torch

    setup_torch(seed, threads)


def _device() -> str:
    from craft.device import compute_device

    return compute_device()


def load_configured_evaluator(cas: CasConfig, name: str, paths: Layout, modality: str):
    """Load evaluator ``name`` for ``modality``: frozen, on the GPU if there is one."""
    from craft.cas.evaluators import load_evaluator

    ev = evaluator_config(cas, name)
    return load_evaluator(
        evaluator_source(cas, name, paths, modality),
        name=name,
        adapter=ev.adapter,
        device=_device(),
        revision=ev.revision,
    )


def load_configured_judge(cas: CasConfig, name: str):
    """The evaluator's MLLM judge of the checklist, or None (the VLM answers it)."""
    j = evaluator_config(cas, name).judge
    if j is None:
        return None
    from craft.cas.judge import MLLMJudge

    return MLLMJudge.from_pretrained(j.source, j.revision, _device(), j.prompt, j.yes, j.no)


def _knowledge(path: Path) -> Any:
    from craft.knowledge.schema import load_knowledge

    return load_knowledge(Path(path))


def train_phantom_evaluator(
    cas: CasConfig,
    name: str,
    modality_name: str,
    modality: Any,
    knowledge_path: Path,
    out: Path,
    threads: int | None = None,
) -> dict[str, float]:
    """``craft evaluator train``: train evaluator ``name`` on the modality's phantoms."""
    from craft.cas.train_evaluator import train_evaluator

    ev = evaluator_config(cas, name)
    _setup(threads, ev.train.seed)
    if ev.source != "train":
        raise CraftError(f"evaluator '{name}' loads '{ev.source}'; only source 'train' is trained")
    if modality.source.kind != "phantom":
        raise CraftError(
            f"modality '{modality_name}' is not a phantom: name a pretrained evaluator "
            f"(hub id or dir) as cas.evaluators.{name}.source"
        )
    return train_evaluator(
        modality.source.phantom,
        list(modality.labels),
        modality.description,
        modality.resolution,
        ev.family,
        ev.train,
        _knowledge(knowledge_path),
        Path(out),
        name,
    )


def build_configured_reference(
    cas: CasConfig,
    name: str,
    modality_name: str,
    modality: Any,
    data_h5: Path,
    knowledge_path: Path,
    paths: Layout,
    out: Path,
    config_digest: str,
    threads: int | None = None,
) -> Path:
    """``craft reference``: the real-image reference of evaluator ``name`` for one modality."""
    from craft.cas.reference import build_reference

    _setup(threads)
    evaluator = load_configured_evaluator(cas, name, paths, modality_name)
    ref = build_reference(
        evaluator,
        Path(data_h5),
        _knowledge(knowledge_path),
        weights=cas.weights.model_dump(),
        aggregation=cas.aggregation,
        tail_quantile=cas.tail_quantile,
        knn_k=cas.knn_k,
        bandwidth_scale=cas.bandwidth_scale,
        max_per_label=cas.reference_max_per_label,
        batch_size=evaluator_config(cas, name).batch_size,
        description=modality.description,
        judge=load_configured_judge(cas, name),
    )
    return ref.save(Path(out), config_digest)


def score_configured_samples(
    cas: CasConfig,
    name: str,
    modality_name: str,
    modality: Any,
    method: str,
    seed: int,
    samples: Path,
    reference_path: Path,
    knowledge_path: Path,
    paths: Layout,
    out: Path,
    metrics_out: Path,
    config_digest: str,
    threads: int | None = None,
) -> dict[str, float]:
    """``craft score``: CAS of a samples file with evaluator ``name`` -> cas-{name}.h5 + metrics."""
    from craft.cas.reference import load_reference
    from craft.cas.score import score_samples
    from craft.evaluate import write_metrics
    from craft.progress import log

    _setup(threads)
    evaluator = load_configured_evaluator(cas, name, paths, modality_name)
    reference = load_reference(Path(reference_path))
    metrics = score_samples(
        evaluator,
        Path(samples),
        _knowledge(knowledge_path),
        reference,
        Path(out),
        config_digest,
        batch_size=evaluator_config(cas, name).batch_size,
        n_boot=cas.bootstrap,
        phantom=modality.phantom,
        judge=load_configured_judge(cas, name),
    )
    role = evaluator_config(cas, name).role
    write_metrics(
        Path(metrics_out), modality_name, method, seed, f"cas-{name}", metrics, config_digest
    )
    log(
        f"{modality_name}/{method}/{seed}: CAS ({name}, {role}) "
        f"{metrics[f'cas_mean__{name}']:.3f}, "
        f"tail rate {metrics[f'tail_rate__{name}']:.3f}"
    )
    return metrics
