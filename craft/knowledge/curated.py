"""The curated backend: knowledge bases written by this project from standard clinical criteria.

Each base is a YAML file in craft/knowledge/curated/ (or any path the config names): labels with
aliases (the class codes data sets use, e.g. ``mel`` for melanoma) and prompts, and a checklist
in the schema's fields. A config may use a subset of a base's labels, under their aliases; the
checklist is cut down to those labels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from craft.errors import CraftError
from craft.knowledge.schema import (
    ChecklistItem,
    LabelKnowledge,
    ModalityKnowledge,
    PromptRecord,
    validation_message,
)

CURATED_DIR = Path(__file__).parent / "curated"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CuratedLabel(_Strict):
    aliases: list[str] = Field([], description="Other names of the label (data set class codes).")
    prompts: list[str] = Field(min_length=1)


class CuratedItem(_Strict):
    id: str
    finding: str
    statement: str
    negation: str
    question: str
    polarity: Literal["present", "absent"]
    weight: float = 1.0
    expected: dict[str, bool] = {}
    scope: Literal["label", "modality"] = "label"
    oracle_criterion: str | None = None


class CuratedBase(_Strict):
    """One curated knowledge base file."""

    name: str
    description: str
    notes: str = Field("", description="Which clinical criteria the base follows.")
    phantom: str | None = Field(None, description="The phantom modality it mirrors, if any.")
    labels: dict[str, CuratedLabel] = Field(min_length=1)
    checklist: list[CuratedItem]

    def knowledge(self, source: str = "curated") -> ModalityKnowledge:
        """The whole base as validated knowledge (its own label names)."""
        return ModalityKnowledge(
            modality=self.name,
            description=self.description,
            labels={
                lab: LabelKnowledge(
                    label=lab, prompts=[PromptRecord(text=t, source=source) for t in v.prompts]
                )
                for lab, v in self.labels.items()
            },
            checklist=[ChecklistItem(**it.model_dump()) for it in self.checklist],
        )


def shipped_bases() -> list[str]:
    """Names of the knowledge bases shipped with craft."""
    return sorted(p.stem for p in CURATED_DIR.glob("*.yaml"))


def curated_path(name_or_path: str) -> Path:
    """The YAML file of a shipped base name, or the path itself."""
    if name_or_path in shipped_bases():
        return CURATED_DIR / f"{name_or_path}.yaml"
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise CraftError(f"curated knowledge file {path} does not exist")
        return path
    raise CraftError(
        f"'{name_or_path}' is neither a shipped knowledge base ({', '.join(shipped_bases())}) "
        f"nor a .yaml path"
    )


def load_curated(name_or_path: str) -> tuple[CuratedBase, str]:
    """Read and validate a curated base; returns it and the sha256 of its file."""
    path = curated_path(name_or_path)
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise CraftError(f"{path}: not valid YAML: {err}") from None
    try:
        base = CuratedBase.model_validate(data)
        base.knowledge()  # the schema's checks (ids, labels, lengths)
    except ValidationError as err:
        raise CraftError(f"{path}: invalid curated knowledge: {validation_message(err)}") from None
    return base, hashlib.sha256(raw).hexdigest()


def resolve_base(curated: dict[str, str], modality: str, phantom: str | None) -> str:
    """Which base a modality uses: the config's choice, else its phantom, else its own name."""
    if modality in curated:
        return curated[modality]
    for name in (phantom, modality):
        if name and name in shipped_bases():
            return name
    raise CraftError(
        f"no curated knowledge for modality '{modality}': name a shipped base "
        f"({', '.join(shipped_bases())}) or a YAML file in knowledge.curated.{modality}"
    )


def label_map(base: CuratedBase, labels: list[str]) -> dict[str, str]:
    """config label -> base label, by name or alias (case-insensitive)."""
    names: dict[str, str] = {}
    for lab, v in base.labels.items():
        for n in (lab, *v.aliases):
            names[n.lower()] = lab
    out, missing = {}, []
    for lab in labels:
        if lab.lower() in names:
            out[lab] = names[lab.lower()]
        else:
            missing.append(lab)
    if missing:
        raise CraftError(
            f"curated knowledge '{base.name}' has no label {missing} (it knows: "
            f"{', '.join(base.labels)}, or their aliases)"
        )
    if len(set(out.values())) != len(out):
        raise CraftError(f"two config labels map to the same curated label: {out}")
    return out


def curated_knowledge(
    base: CuratedBase, modality: str, description: str, labels: list[str]
) -> ModalityKnowledge:
    """The base cut down to ``labels`` (config names, in config order) for ``modality``."""
    mapping = label_map(base, labels)
    back = {v: k for k, v in mapping.items()}
    checklist = []
    for it in base.checklist:
        d = it.model_dump()
        d["expected"] = {back[b]: v for b, v in it.expected.items() if b in back}
        if it.scope == "label" and not d["expected"]:
            continue  # the item concerns labels this config does not use
        checklist.append(ChecklistItem(**d))
    return ModalityKnowledge(
        modality=modality,
        description=description,
        labels={
            lab: LabelKnowledge(
                label=lab,
                prompts=[PromptRecord(text=t, source="curated") for t in base.labels[b].prompts],
            )
            for lab, b in mapping.items()
        },
        checklist=checklist,
    )
