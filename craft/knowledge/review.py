"""The review file: the knowledge of one modality as YAML that a clinician can read and edit.

``write_review`` writes it beside the JSON (``results/knowledge/{modality}.review.yaml``). A
reviewer copies it out of results/, edits prompts and checklist items, and pins the copy in
config (``knowledge.review.{modality}``); the knowledge stage then uses it verbatim and records
its digest. ``load_review(write_review(k))`` gives back ``k`` exactly.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from craft.atomic import atomic_write_text
from craft.errors import CraftError
from craft.knowledge.schema import ModalityKnowledge, validation_message

HEADER = """\
# craft knowledge review file: {modality} ({description})
# Edit freely, then pin your copy in the config so the workflow uses it verbatim:
#   knowledge:
#     review:
#       {modality}: path/to/{modality}.review.yaml
# Only that modality's dependent jobs rerun. Fields:
#   labels.<label>.prompts: enriched prompts (text; source: who wrote it; request_digest, if
#     any: the cached model request that produced it).
#   checklist: one item per visually checkable criterion.
#     statement / negation: what the image shows if the item holds / does not hold.
#     question: the statement as a yes/no question.   polarity: present | absent (the statement
#     says the finding is there / is not there).   weight: > 0, importance in the score.
#     expected: <label>: true (must hold for that label) | false (must not hold); a label left
#     out: the item does not apply to it.   scope: label | modality (holds for every label).
#     oracle_criterion: phantoms only, the oracle criterion the item mirrors.
# Checklist items as a table: craft knowledge show {modality}
"""


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as literal blocks, no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, s: str):
    style = "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


_Dumper.add_representer(str, _str)


def _flow_dict(d: dict[str, bool]):
    return _FlowMap(d)


class _FlowMap(dict):
    """A mapping written on one line ({normal: true, effusion: false})."""


_Dumper.add_representer(
    _FlowMap, lambda d, m: d.represent_mapping("tag:yaml.org,2002:map", m.items(), flow_style=True)
)


def review_data(k: ModalityKnowledge) -> dict[str, Any]:
    """The plain data of the review file (the label name is the key, not repeated)."""
    data = k.model_dump(mode="json", exclude_none=True)
    data["labels"] = {name: {"prompts": lab["prompts"]} for name, lab in data["labels"].items()}
    for item in data["checklist"]:
        item["expected"] = _flow_dict(item["expected"])
    return data


def render_review(k: ModalityKnowledge) -> str:
    """The review file's text."""
    body = yaml.dump(
        review_data(k),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=1000,
        default_flow_style=False,
    )
    return HEADER.format(modality=k.modality, description=k.description) + body


def write_review(k: ModalityKnowledge, path: Path | str) -> Path:
    """Write the human-readable, editable review file of ``k`` (atomically)."""
    return atomic_write_text(path, render_review(k))


def load_review(path: Path | str) -> ModalityKnowledge:
    """Read a (possibly edited) review file into validated knowledge (CraftError if invalid)."""
    from craft.yamlfile import read_yaml

    path = Path(path)
    data = read_yaml(path, "knowledge review file", "fix knowledge.review")
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise CraftError(f"{path}: not a knowledge review file (no 'labels' mapping)")
    labels = {}
    for name, lab in data["labels"].items():
        if not isinstance(lab, dict):
            raise CraftError(f"{path}: labels.{name}: expected a mapping with 'prompts'")
        labels[str(name)] = {"label": str(name), **lab}
    data["labels"] = labels
    try:
        return ModalityKnowledge.model_validate(data)
    except ValidationError as err:
        raise CraftError(f"{path}: invalid knowledge: {validation_message(err)}") from None


def file_digest(path: Path | str) -> str:
    """sha256 of a file's bytes (recorded when a pinned review file is used)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
