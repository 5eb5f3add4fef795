"""Prompts the generator is conditioned on."""

from __future__ import annotations


def label_prompt(description: str, label: str) -> str:
    """The plain label prompt: 'chest radiograph, cardiomegaly'."""
    return f"{description}, {label.replace('_', ' ')}"
