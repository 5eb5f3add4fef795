"""The knowledge file (``results/knowledge/{modality}.json``): typed, versioned, validated.

For every label of a modality: a bank of enriched prompts (each with its source and the digest
of the request that produced it), and one clinical checklist shared by the labels: atomic,
visually checkable statements with the value each label expects. CAS reads the prompts (label
fidelity, prompt alignment) and the checklist (checklist adherence); the adaptation stage
trains on the prompts. This module imports only pydantic and the standard library.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from craft.atomic import atomic_write_text
from craft.errors import CraftError

SCHEMA_VERSION = 1

#: Longest statement, negation or question (characters): one atomic, checkable sentence.
MAX_STATEMENT_CHARS = 200
#: Longest prompt (characters); CLIP-style text encoders read about 77 tokens.
MAX_PROMPT_CHARS = 300
ID_PATTERN = r"^[a-z][a-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _text(v: str, cap: int) -> str:
    v = " ".join(v.split())
    if not v:
        raise ValueError("must not be empty")
    if len(v) > cap:
        raise ValueError(f"is {len(v)} characters long, more than {cap}")
    return v


class PromptRecord(_Strict):
    """One enriched prompt of a label."""

    text: str = Field(description="The prompt the generator is conditioned on.")
    source: str = Field(description="'curated', 'label' (the plain label prompt) or the model id.")
    request_digest: str | None = Field(
        None, description="Digest of the cached model request that produced it (LLM backends)."
    )

    @field_validator("text")
    @classmethod
    def _cap(cls, v: str) -> str:
        return _text(v, MAX_PROMPT_CHARS)


class ChecklistItem(_Strict):
    """One atomic, visually checkable criterion and what each label expects of it."""

    id: str = Field(pattern=ID_PATTERN, description="snake_case, unique within a modality.")
    finding: str = Field(min_length=1, description="What it tests: 'cardiomegaly'.")
    statement: str = Field(description="Declarative and visible: 'the heart is enlarged'.")
    negation: str = Field(description="Its visual opposite: 'the heart has a normal size'.")
    question: str = Field(description="The statement as a yes/no question (MLLM evaluators).")
    polarity: Literal["present", "absent"] = Field(
        description="The statement asserts the finding present or absent."
    )
    weight: float = Field(1.0, gt=0, description="Weight in checklist adherence.")
    expected: dict[str, bool] = Field(
        description="label -> should the statement hold for an image of that label; a label "
        "left out: the item does not apply to it."
    )
    scope: Literal["label", "modality"] = Field(
        "label", description="'modality': view, anatomy, no overlays; holds for every label."
    )
    oracle_criterion: str | None = Field(
        None, description="Phantoms only: the craft.data.oracle criterion this item mirrors."
    )

    @field_validator("statement", "negation", "question")
    @classmethod
    def _cap(cls, v: str) -> str:
        return _text(v, MAX_STATEMENT_CHARS)


class LabelKnowledge(_Strict):
    """The enriched prompts of one label."""

    label: str
    prompts: list[PromptRecord] = Field(min_length=1)


class ModalityKnowledge(_Strict):
    """Everything the knowledge stage knows about one modality."""

    schema_version: int = SCHEMA_VERSION
    modality: str
    description: str = Field(min_length=1, description="What the images are: 'chest radiograph'.")
    labels: dict[str, LabelKnowledge] = Field(min_length=1)
    checklist: list[ChecklistItem]
    provenance: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModalityKnowledge:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is not supported (this craft reads "
                f"{SCHEMA_VERSION}); rebuild the knowledge"
            )
        for name, lab in self.labels.items():
            if lab.label != name:
                raise ValueError(f"labels.{name}.label is '{lab.label}', expected '{name}'")
        seen: set[str] = set()
        for item in self.checklist:
            if item.id in seen:
                raise ValueError(f"checklist: item id '{item.id}' is used twice")
            seen.add(item.id)
            unknown = sorted(set(item.expected) - set(self.labels))
            if unknown:
                raise ValueError(
                    f"checklist.{item.id}.expected: {unknown} are not labels "
                    f"(labels: {', '.join(self.labels)})"
                )
            if item.scope == "modality":
                if not all(item.expected.values()):
                    raise ValueError(
                        f"checklist.{item.id}: a modality-level item must hold for every label"
                    )
                # A modality-level item applies to every label: spell that out.
                item.expected = {lab: True for lab in self.labels}
            elif not item.expected:
                raise ValueError(f"checklist.{item.id}.expected: names no label")
        return self

    def items_for(self, label: str) -> list[ChecklistItem]:
        """The checklist items that apply to ``label`` (modality-level ones included)."""
        self._known(label)
        return [it for it in self.checklist if label in it.expected]

    def prompts_for(self, label: str) -> list[str]:
        """The enriched prompts of ``label``, in order."""
        self._known(label)
        return [p.text for p in self.labels[label].prompts]

    def _known(self, label: str) -> None:
        if label not in self.labels:
            raise CraftError(
                f"label '{label}' is not in the {self.modality} knowledge "
                f"(labels: {', '.join(self.labels)})"
            )


def validation_message(err: ValidationError) -> str:
    """The first pydantic error as 'field.path: message' (one line)."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "missing":
        msg = "required field is missing"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def missing_knowledge(path: Path | str, modality: str | None = None) -> CraftError:
    """The one error for a knowledge file that is not there, with the command that makes it."""
    build = f"craft knowledge build -m {modality}" if modality else "craft knowledge build"
    return CraftError(f"{path}: no knowledge file; run `{build}` first")


def load_knowledge(path: Path | str, modality: str | None = None) -> ModalityKnowledge:
    """Read and validate a knowledge JSON file (CraftError on a missing or invalid file;
    ``modality`` names the build command in the missing-file error)."""
    path = Path(path)
    if not path.is_file():
        raise missing_knowledge(path, modality)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CraftError(f"{path}: not valid JSON: {err}") from None
    try:
        return ModalityKnowledge.model_validate(data)
    except ValidationError as err:
        raise CraftError(f"{path}: invalid knowledge: {validation_message(err)}") from None


def save_knowledge(k: ModalityKnowledge, path: Path | str) -> Path:
    """Write ``k`` as JSON (atomically: a killed job leaves no half file)."""
    return atomic_write_text(path, k.model_dump_json(indent=2) + "\n")


def snake_id(text: str) -> str:
    """A snake_case id from free text: 'Costophrenic angles!' -> 'costophrenic_angles'."""
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if not s or not s[0].isalpha():
        s = f"item_{s}".rstrip("_")
    return s[:48].rstrip("_")
