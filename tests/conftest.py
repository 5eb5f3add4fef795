"""Shared fixtures: the repository root, the venv's tools, and a tiny phantom config."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tiny_cas() -> dict:
    """CAS with two tiny evaluators (reward clip, out-of-family siglip) trained for 3 steps."""
    train = {
        "steps": 3,
        "batch_size": 8,
        "n_images": 32,
        "architecture": {"hidden_size": 16, "layers": 1, "projection_dim": 16},
    }
    return {
        "evaluators": {
            "clip": {"family": "clip", "role": "reward", "train": train},
            "siglip": {"family": "siglip", "role": "out-of-family", "train": {**train, "seed": 1}},
        },
        "bootstrap": 100,
        "reference_max_per_label": 8,
    }


def tiny_config(results: str = "results", seeds=(0,)) -> dict:
    """The default config's structure at the smallest sizes that still run every stage."""
    return {
        "results": results,
        "seeds": list(seeds),
        "modalities": {
            "phantom-cxr": {
                "source": {"kind": "phantom", "phantom": "phantom-cxr", "n_per_label": 12},
                "labels": ["normal", "cardiomegaly", "effusion", "nodule"],
                "description": "chest radiograph",
                "resolution": 24,
                "channels": 1,
            },
            "phantom-derm": {
                "source": {"kind": "phantom", "phantom": "phantom-derm", "n_per_label": 12},
                "labels": ["nevus", "melanoma"],
                "description": "dermoscopy image",
                "resolution": 24,
                "channels": 3,
            },
        },
        "pretrain": {
            "steps": 4,
            "batch_size": 4,
            "n_images": 32,
            "architecture": {
                "block_out_channels": [8, 16, 16],
                "cross_attention_dim": 16,
                "text_layers": 1,
                "text_max_length": 16,
            },
        },
        "methods": {
            "zero-shot": {"kind": "zero-shot"},
            "lora": {"kind": "lora", "steps": 3, "batch_size": 4, "rank": 2},
            "lora-enriched": {
                "kind": "lora",
                "prompts": "enriched",
                "steps": 3,
                "batch_size": 4,
                "rank": 2,
            },
        },
        "sampling": {"steps": 2, "n_per_label": 2, "batch_size": 8},
        "cas": tiny_cas(),
        "study": {"method_a": "lora-enriched", "method_b": "lora", "pairs_per_label": 2},
    }


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def env() -> dict:
    """Environment for subprocesses: the venv's `craft` and `snakemake` first on PATH."""
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def backward_of(loss_fn, module) -> tuple[dict, int]:
    """Run ``loss_fn()`` and its backward pass: ``module``'s parameter gradients and the bytes
    autograd kept for the backward pass (what gradient checkpointing saves)."""
    import torch

    kept = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return grads, sum(kept)
