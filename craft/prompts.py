"""Prompts the generator is conditioned on."""

from __future__ import annotations

from pathlib import Path


def label_prompt(description: str, label: str) -> str:
    """The plain label prompt: 'chest radiograph, cardiomegaly'."""
    return f"{description}, {label.replace('_', ' ')}"


def prompt_banks(knowledge, labels: list[str]) -> dict[str, list[str]]:
    """Each label's enriched prompt bank (its label prompt included) from loaded knowledge."""
    return {label: knowledge.prompts_for(label) for label in labels}


def enriched_prompts(path: Path | str, modality: str, labels: list[str]) -> dict[str, list[str]]:
    """The prompt banks of the knowledge file ``path`` (methods with ``prompts: enriched``)."""
    from craft.knowledge.schema import load_knowledge

    return prompt_banks(load_knowledge(path, modality), labels)
