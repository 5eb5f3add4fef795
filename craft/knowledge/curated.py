"""The curated backend: knowledge bases written by this project from standard clinical criteria.

Each base is a YAML file in craft/knowledge/curated/ (or any path the config names): labels with
aliases (the class codes data sets use, e.g. ``mel`` for melanoma) and prompts, and a checklist
in the schema's fields. A config may use a subset of a base's labels, under their aliases; the
checklist is cut down to those labels.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

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
    """One label: the prompts images of it are drawn from."""

    aliases: list[str] = Field([], description="Other names of the label (data set class codes).")
    prompts: list[str] = Field(
        min_length=1,
        description="Findings-rich prompts, each a short caption of an image of this label "
        "(the generator's text encoder reads at most ~75 tokens): what is visible, where, how "
        "it looks. Methods with enriched prompts cycle through them.",
    )


class CuratedItem(_Strict):
    """One checklist item (the fields of craft.knowledge.schema.ChecklistItem)."""

    id: str = Field(description="snake_case, unique within the file: 'heart_enlarged'.")
    finding: str = Field(description="What it tests: 'cardiomegaly'.")
    statement: str = Field(
        description="Declarative and visible in one image: 'the heart is enlarged'."
    )
    negation: str = Field(description="Its visual opposite: 'the heart has a normal size'.")
    question: str = Field(description="The statement as a yes/no question (MLLM judges).")
    polarity: Literal["present", "absent"] = Field(
        description="The statement asserts the finding present or absent."
    )
    weight: float = Field(1.0, description="Weight in checklist adherence (> 0).")
    expected: dict[str, bool] = Field(
        {},
        description="label -> should the statement hold for an image of that label; a label "
        "left out: the item does not apply to it. Needed unless scope is 'modality'.",
    )
    scope: Literal["label", "modality"] = Field(
        "label",
        description="'modality': holds for every label (view, anatomy, no overlays).",
    )
    oracle_criterion: str | None = Field(
        None, description="Phantoms only: the craft.data.oracle criterion this item mirrors."
    )


class CuratedBase(_Strict):
    """One curated knowledge base file: a modality's labels, prompts and clinical checklist."""

    name: str = Field(description="The base's name (a modality or data set).")
    description: str = Field(description="What the images are: 'chest radiograph'.")
    notes: str = Field("", description="Which clinical criteria the base follows.")
    phantom: str | None = Field(None, description="The phantom modality it mirrors, if any.")
    labels: dict[str, CuratedLabel] = Field(
        min_length=1, description="Every label, by the name the manifest uses (or an alias)."
    )
    checklist: list[CuratedItem] = Field(
        description="Atomic, visually checkable criteria; absence items guard against "
        "exaggeration (findings of other labels, a finding drawn twice)."
    )

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
    from craft.yamlfile import read_yaml

    path = curated_path(name_or_path)
    data = read_yaml(path, "curated knowledge file", "fix knowledge.curated")
    raw = path.read_bytes()
    todo = [
        i
        for i, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1)
        if TODO in line and not line.lstrip().startswith("#")
    ]
    if todo:
        raise CraftError(
            f"{path}: line {todo[0]} still holds a {TODO} of the template ({len(todo)} line(s) "
            "in all); write the clinical content there, then build the knowledge"
        )
    try:
        base = CuratedBase.model_validate(data)
        base.knowledge()  # the schema's checks (ids, labels, lengths)
    except ValidationError as err:
        raise CraftError(f"{path}: invalid curated knowledge: {validation_message(err)}") from None
    return base, hashlib.sha256(raw).hexdigest()


#: The marker of what a template leaves to fill in; a file holding one is refused.
TODO = "TODO"


def template(name: str, description: str, labels: list[str]) -> str:
    """A curated knowledge file to fill in for a new modality (valid YAML, refused until every
    TODO is replaced): per label two prompts, and per label one presence item plus one
    modality-wide item, each field explained in a comment."""
    lines = [
        f"# Curated knowledge of '{name}': fill in every {TODO}, then name this file in the",
        f"# config (knowledge.curated.{name}: this file). `craft knowledge build` checks it;",
        "# `craft knowledge schema` prints every field. The shipped bases are examples",
        "# (craft/knowledge/curated/chexpert.yaml, ham10000.yaml, ...).",
        f"name: {name}",
        f"description: {description}",
        "notes: >-",
        f"  {TODO}: the clinical criteria that the prompts and checklist follow.",
        "labels:",
    ]
    q = json.dumps  # labels quoted: '0', 'mel', 'no finding' stay strings
    for label in labels:
        lines += [
            f"  {q(label)}:",
            "    aliases: []   # other names of the label, e.g. a data set's class code",
            "    prompts:      # captions of an image of this label: what is visible, where, how",
            f"      - {description}, {label}, {TODO} the visible findings",
            f"      - {description} showing {TODO} (location, size, shape, density or colour)",
        ]
    lines += [
        "checklist:",
        "  # one atomic, visible criterion per item; expected: label -> should it hold there",
        "  - id: view_and_anatomy",
        "    finding: view",
        f"    statement: {TODO} the standard view of a {description}",
        f"    negation: {TODO} not a {description}, or another view",
        f"    question: {TODO} Is this the standard view of a {description}?",
        "    polarity: present",
        "    scope: modality   # holds for every label",
    ]
    for label in labels:
        ident = "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")
        ident = ident if ident[:1].isalpha() else f"label_{ident}"  # ids start with a letter
        expected = ", ".join(f"{q(other)}: {str(other == label).lower()}" for other in labels)
        lines += [
            f"  - id: {ident}_finding",
            f"    finding: {q(label)}",
            f"    statement: {TODO} the finding of {label}, as it is seen",
            f"    negation: {TODO} its visual opposite",
            f"    question: {TODO} the statement as a yes/no question?",
            "    polarity: present",
            "    weight: 1.0",
            f"    expected: {{{expected}}}",
        ]
    return "\n".join(lines) + "\n"


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
