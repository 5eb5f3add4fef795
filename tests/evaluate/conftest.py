"""Fixtures of the evaluation-stage tests: phantom data files and samples files, written the way
``craft prepare`` and ``craft generate`` write them (same HDF5 layer, same kinds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from craft.data.phantoms import draw_batch
from craft.store import STR, atomic_h5, image_dataset

CXR = "phantom-cxr"
CXR_LABELS = ["normal", "cardiomegaly", "effusion", "nodule"]
DERM = "phantom-derm"
DERM_LABELS = ["nevus", "melanoma"]


@pytest.fixture(autouse=True)
def _one_thread():
    """The stages' own threads: one (the machines that run the tests share two cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_data(
    path: Path,
    phantom: str,
    labels: list[str],
    per_label: dict[str, int],
    resolution: int = 32,
    seed: int = 0,
) -> Path:
    """A data file with train/val/test splits of ``per_label[split]`` phantoms per label."""
    with atomic_h5(path, "data", "test", attrs={"labels": labels, "modality": phantom}) as f:
        for k, split in enumerate(("train", "val", "test")):
            n = per_label[split]
            lab = [x for x in labels for _ in range(n)]
            images, _ = draw_batch(phantom, lab, seed * 10 + k, resolution)
            g = f.create_group(split)
            image_dataset(g, "images", images)
            g.create_dataset("labels", data=np.array([labels.index(x) for x in lab]))
            g.create_dataset("paths", data=[f"{split}/{i}" for i in range(len(lab))], dtype=STR)
    return path


def write_samples(path: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    """A samples file as ``craft generate`` writes it (one prompt and seed per image)."""
    with atomic_h5(path, "samples", "test", attrs={"labels": names}) as f:
        image_dataset(f, "images", images)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        f.create_dataset("prompts", data=[names[i] for i in labels], dtype=STR)
        f.create_dataset("seeds", data=np.arange(len(labels), dtype=np.int64))
    return path


def drawn_samples(
    path: Path, phantom: str, labels: list[str], n_per_label: int, seed: int, resolution: int = 32
) -> Path:
    """Fresh phantoms (a seed unlike the data's) standing in for generated images."""
    lab = [x for x in labels for _ in range(n_per_label)]
    images, _ = draw_batch(phantom, lab, seed, resolution)
    return write_samples(path, images, np.array([labels.index(x) for x in lab]), labels)


def read_train(data: Path):
    from craft.store import read_split

    return read_split(data, "train")


@pytest.fixture(scope="session")
def cxr_data(tmp_path_factory) -> Path:
    """Chest phantoms: 24 train, 8 val, 8 test per label (32x32)."""
    path = tmp_path_factory.mktemp("data") / "cxr.h5"
    return write_data(path, CXR, CXR_LABELS, {"train": 24, "val": 8, "test": 8})


@pytest.fixture(scope="session")
def derm_data(tmp_path_factory) -> Path:
    """Dermoscopy phantoms: 24 train, 8 val, 8 test per label (32x32, RGB)."""
    path = tmp_path_factory.mktemp("data") / "derm.h5"
    return write_data(path, DERM, DERM_LABELS, {"train": 24, "val": 8, "test": 8})
