"""Phantom image sets for the CAS validity tests: a prepared data file and a mixed test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from craft.data.phantoms import draw_batch
from craft.store import STR, atomic_h5, image_dataset


def write_phantom_data(
    path: Path,
    phantom: str,
    labels: list[str],
    n_per_label: int,
    resolution: int = 32,
    seed: int = 0,
) -> Path:
    """A data file as ``craft prepare`` lays it out: train/val/test (60/20/20 per label)."""
    lab = [x for x in labels for _ in range(n_per_label)]
    images, _ = draw_batch(phantom, lab, seed, resolution)
    y = np.array([labels.index(x) for x in lab])
    rng = np.random.default_rng(seed)
    split = np.empty(len(y), dtype=object)
    for i in range(len(labels)):
        idx = rng.permutation(np.flatnonzero(y == i))
        n_tr, n_va = int(0.6 * len(idx)), int(0.2 * len(idx))
        split[idx[:n_tr]], split[idx[n_tr : n_tr + n_va]], split[idx[n_tr + n_va :]] = (
            "train",
            "val",
            "test",
        )
    with atomic_h5(path, "data", "test", attrs={"labels": labels}) as f:
        for s in ("train", "val", "test"):
            sel = split == s
            g = f.create_group(s)
            image_dataset(g, "images", images[sel])
            g.create_dataset("labels", data=y[sel])
            g.create_dataset("paths", data=[f"{s}/{i}" for i in np.flatnonzero(sel)], dtype=STR)
    return path


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    out = ndimage.gaussian_filter(images.astype(np.float32), (0, sigma, sigma, 0))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mixed_set(phantom: str, labels: list[str], n: int, resolution: int = 32, seed: int = 99):
    """Images with requested labels and a kind tag: correct, wrong-label request, blurred,
    noisy, pure noise, blank. Returns (images uint8 NHWC, requested labels, kinds)."""
    rng = np.random.default_rng(seed)
    drawn = [labels[i % len(labels)] for i in range(n)]
    imgs, _ = draw_batch(phantom, drawn, seed, resolution)
    ch = imgs.shape[-1]
    parts, req, kinds = [imgs], list(drawn), ["correct"] * n
    # the same kind of image, asked for another label
    wrong = [
        labels[(labels.index(d) + 1 + rng.integers(len(labels) - 1)) % len(labels)] for d in drawn
    ]
    parts.append(imgs)
    req += wrong
    kinds += ["wrong_label"] * n
    for sigma in (0.8, 1.5):
        parts.append(blur(imgs, sigma))
        req += drawn
        kinds += [f"blur{sigma}"] * n
    noisy = np.clip(imgs.astype(np.float32) + rng.normal(0, 40, imgs.shape), 0, 255)
    parts.append(noisy.astype(np.uint8))
    req += drawn
    kinds += ["noisy"] * n
    m = max(4, n // 4)
    parts.append(rng.integers(0, 256, (m, resolution, resolution, ch), dtype=np.uint8))
    req += drawn[:m]
    kinds += ["noise"] * m
    parts.append(np.full((m, resolution, resolution, ch), 128, np.uint8))
    req += drawn[:m]
    kinds += ["blank"] * m
    return np.concatenate(parts), req, np.array(kinds)
