"""Prompts the generator is conditioned on."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def label_prompt(description: str, label: str) -> str:
    """The plain label prompt: 'chest radiograph, cardiomegaly'."""
    return f"{description}, {label.replace('_', ' ')}"


def plain_prompt_weights(bank: list[str], plain: str, share: float) -> np.ndarray:
    """Probabilities of drawing each prompt of ``bank`` (which holds ``plain``): the plain
    prompt with probability ``share``, the others uniformly with the rest."""
    others = len(bank) - 1
    weights = np.full(len(bank), (1 - share) / others if others else 0.0)
    weights[bank.index(plain)] = share if others else 1.0
    return weights


def draw_prompt(
    bank: list[str], rng: np.random.Generator, weights: np.ndarray | None = None
) -> str:
    """One prompt of ``bank``: uniformly, or with ``weights`` (probabilities in its order)."""
    return str(rng.choice(bank) if weights is None else rng.choice(bank, p=weights))


def prompt_banks(knowledge, labels: list[str]) -> dict[str, list[str]]:
    """Each label's enriched prompt bank (its label prompt included) from loaded knowledge."""
    return {label: knowledge.prompts_for(label) for label in labels}


def enriched_prompts(path: Path | str, modality: str, labels: list[str]) -> dict[str, list[str]]:
    """The prompt banks of the knowledge file ``path`` (methods with ``prompts: enriched``)."""
    from craft.knowledge.schema import load_knowledge

    return prompt_banks(load_knowledge(path, modality), labels)
