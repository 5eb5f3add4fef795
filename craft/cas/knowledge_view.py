"""What CAS reads from the knowledge stage (craft.knowledge.schema.ModalityKnowledge).

Only these fields are used, so any object with them works (tests use a small stand-in):
``knowledge.labels[label].prompts[i].text``, ``knowledge.checklist`` of items with ``id``,
``statement``, ``negation``, ``polarity`` (present | absent), ``weight``, ``expected`` (label ->
should the statement hold for an image of that label; an absent label means not applicable),
``scope`` (label | modality) and ``oracle_criterion`` (an oracle criterion name or None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def prompt_texts(knowledge: Any, label: str) -> list[str]:
    """The enriched prompts of ``label``, as strings, in knowledge order."""
    lab = knowledge.labels.get(label) if isinstance(knowledge.labels, dict) else None
    if lab is None:
        return []
    return [p if isinstance(p, str) else p.text for p in lab.prompts]


def item_expected(item: Any, label: str) -> bool | None:
    """Should ``item``'s statement hold for an image of ``label``? None: not applicable.

    A modality-level item that names no labels applies to every label and should hold.
    """
    if label in item.expected:
        return bool(item.expected[label])
    if getattr(item, "scope", "label") == "modality" and not item.expected:
        return True
    return None


@dataclass(frozen=True)
class ChecklistMatrix:
    """The checklist as arrays over (labels x items)."""

    item_ids: list[str]
    statements: list[str]
    negations: list[str]
    weight: np.ndarray  # (L, K) item weight where the item applies to the label, else 0
    expected: np.ndarray  # (L, K) bool: the statement should hold for the label


def checklist_matrix(knowledge: Any, label_names: list[str]) -> ChecklistMatrix:
    """Weights and expectations of every checklist item for every label."""
    items = list(knowledge.checklist)
    w = np.zeros((len(label_names), len(items)), dtype=np.float32)
    e = np.zeros((len(label_names), len(items)), dtype=bool)
    for j, item in enumerate(items):
        for i, label in enumerate(label_names):
            exp = item_expected(item, label)
            if exp is not None:
                w[i, j] = float(item.weight)
                e[i, j] = exp
    return ChecklistMatrix(
        item_ids=[str(it.id) for it in items],
        statements=[it.statement for it in items],
        negations=[it.negation for it in items],
        weight=w,
        expected=e,
    )


def statement_holds(item: Any, criteria: dict[str, np.ndarray]) -> np.ndarray | None:
    """Per image, does ``item``'s statement hold, by the oracle's criteria? None if unknown."""
    crit = getattr(item, "oracle_criterion", None)
    if crit is None or crit not in criteria:
        return None
    present = np.asarray(criteria[crit], dtype=bool)
    return present if item.polarity == "present" else ~present


def all_texts(knowledge: Any, label_names: list[str]) -> list[str]:
    """Every prompt, statement and negation (for building a tokenizer's vocabulary)."""
    out = [t for lab in label_names for t in prompt_texts(knowledge, lab)]
    for it in knowledge.checklist:
        out += [it.statement, it.negation]
    return out
