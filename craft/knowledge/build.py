"""``craft knowledge build``: the knowledge of one modality, from the configured backend.

Order of precedence: a pinned review file (used verbatim), else the curated base, else a model
backend (transformers or OpenAI-compatible) through the cache. Writes the JSON and, beside it,
the editable review file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from craft.errors import CraftError
from craft.knowledge.curated import curated_knowledge, load_curated, resolve_base
from craft.knowledge.review import file_digest, load_review, write_review
from craft.knowledge.schema import (
    SCHEMA_VERSION,
    ModalityKnowledge,
    PromptRecord,
    save_knowledge,
)
from craft.knowledge.settings import KnowledgeConfig
from craft.progress import log
from craft.prompts import label_prompt
from craft.version import code_version


def review_path(out: Path | str) -> Path:
    """Where the review file of a knowledge JSON goes: ``{modality}.review.yaml`` beside it."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".json") + ".review.yaml")


def pinned_review(path: Path, modality: str, labels: list[str]) -> ModalityKnowledge:
    """A pinned review file, checked against the config's labels."""
    k = load_review(path)
    if set(k.labels) != set(labels):
        raise CraftError(
            f"knowledge.review.{modality}: {path} has labels {list(k.labels)}, the config "
            f"{labels}; edit the file or the config"
        )
    k.provenance = {**k.provenance, "review_file": str(path), "review_digest": file_digest(path)}
    return k


def _with_label_prompts(k: ModalityKnowledge, description: str) -> None:
    for name, lab in k.labels.items():
        text = label_prompt(description, name)
        if text not in [p.text for p in lab.prompts]:
            lab.prompts.insert(0, PromptRecord(text=text, source="label"))


def build_knowledge(
    settings: KnowledgeConfig,
    modality: str,
    description: str,
    labels: list[str],
    out: Path | str,
    *,
    phantom: str | None = None,
    cache_dir: Path | str | None = None,
    backend: Any = None,
    config_digest: str | None = None,
) -> ModalityKnowledge:
    """Build, validate and write ``out`` (JSON) and its review file; returns the knowledge.

    ``cache_dir`` defaults to ``cache/`` beside ``out``; ``backend`` replaces the configured
    chat backend (tests); ``phantom`` links checklist items to the oracle's criteria.
    """
    out = Path(out)
    cache_dir = Path(cache_dir) if cache_dir is not None else out.parent / "cache"
    if modality in settings.review:
        path = Path(settings.review[modality])
        log(f"knowledge {modality}: using the pinned review file {path} verbatim")
        k = pinned_review(path, modality, labels)
    elif settings.backend.kind == "curated":
        name = resolve_base(dict(settings.curated), modality, phantom)
        base, digest = load_curated(name)
        log(f"knowledge {modality}: curated base '{base.name}'")
        k = curated_knowledge(base, modality, description, labels)
        k.provenance = {"backend": "curated", "curated_base": base.name, "curated_digest": digest}
        if settings.include_label_prompt:
            _with_label_prompts(k, description)
    else:
        from craft.knowledge.backends import make_chat_backend
        from craft.knowledge.enrich import enrich

        chat = backend if backend is not None else make_chat_backend(settings.backend)
        failed = out.parent / f"{out.name.removesuffix('.json')}.failed"
        k = enrich(
            chat,
            modality,
            description,
            labels,
            settings.enrichment,
            cache_dir,
            failed,
            phantom=phantom,
        )
        if settings.include_label_prompt:
            _with_label_prompts(k, description)
    k.provenance.update(craft_version=code_version(), schema_version=str(SCHEMA_VERSION))
    if config_digest:
        k.provenance["config_digest"] = config_digest
    k = ModalityKnowledge.model_validate(k.model_dump())  # every check again, after edits
    save_knowledge(k, out)
    write_review(k, review_path(out))
    n_items = len(k.checklist)
    n_prompts = sum(len(lab.prompts) for lab in k.labels.values())
    log(f"knowledge {modality}: {n_prompts} prompts, {n_items} checklist items -> {out}")
    return k


def build_from_config(cfg: Any, modality: str, out: Path | str) -> ModalityKnowledge:
    """``build_knowledge`` with everything taken from a CraftConfig (``cfg.knowledge``)."""
    m = cfg.modality(modality)
    settings: KnowledgeConfig = cfg.knowledge
    digest = cfg.spec("knowledge", modality).digest  # the job's spec (craft.specs)
    return build_knowledge(
        settings,
        modality,
        m.description,
        list(m.labels),
        out,
        phantom=m.phantom,
        config_digest=digest,
    )
