"""``craft fidelity``: Frechet distance and KID of generated images against the REAL test split.

Features come from a configurable extractor (``evaluation.fidelity.features``):

- ``tiny`` (default, phantoms): :class:`craft.evaluate.features.RandomConvEncoder`, fixed
  seeded random conv weights, globally average-pooled (32 features). It is trained on nothing, so it
  is independent of the generator and of every CAS evaluator (the tiny evaluators' image towers
  are not: one of them is the reward), deterministic, and fast on CPU.
- ``inception``: torchmetrics' InceptionV3 pool features (2048), the FID standard; needs the
  torch-fidelity package and its weights.
- a transformers image model hub id or dir (e.g. ``facebook/dinov2-base``: FD_DINOv2, Stein et
  al. 2023).

Features are extracted once per image set; the distances are torchmetrics'
``FrechetInceptionDistance`` and ``KernelInceptionDistance`` fed through their custom
``feature`` module interface (an identity on the precomputed features), overall and per label
(the generated images of label l against the real test images of label l). The reference
``fd_reference`` / ``kid_reference`` compares the real VAL split with the test split: the
distance two samples of real images have at these sizes (both are biased upwards for small
sets, so compare methods at equal sizes). Metrics: ``fd``, ``kid``, ``kid_std``,
``fd__{label}``, ``kid__{label}``, ``fd_reference``, ``kid_reference``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from craft.errors import CraftError
from craft.evaluate import write_metrics
from craft.evaluate.features import RandomConvEncoder, device, embed, load_encoder
from craft.evaluate.settings import FidelityConfig
from craft.progress import log
from craft.store import read_samples, read_split

#: Pooled grid of the tiny feature extractor: global average pooling, as InceptionV3's pool
#: features (32 features; a 2x2 grid, 128 features, separated labels less with 8-24 images).
TINY_GRID = 1


class _Precomputed(nn.Module):
    """The torchmetrics custom-feature interface over features computed beforehand."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _InceptionUint8(nn.Module):
    """torchmetrics' InceptionV3 (2048 pool features) on float NCHW [-1, 1], gray -> RGB."""

    def __init__(self):
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
        except ModuleNotFoundError:
            raise CraftError(
                "evaluation.fidelity.features: 'inception' needs torch-fidelity "
                "(pip install torch-fidelity) and its weights; or name 'tiny' or a hub id"
            ) from None
        self.num_features = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))


def feature_extractor(settings: FidelityConfig, channels: int) -> nn.Module:
    """The configured extractor: float NCHW in [-1, 1] -> (N, D) features."""
    if settings.features == "tiny":
        return RandomConvEncoder(channels, seed=settings.seed, grid=TINY_GRID).to(device())
    if settings.features == "inception":
        return _InceptionUint8().to(device())
    return load_encoder(settings.features, channels, field="evaluation.fidelity.features")


def frechet_and_kid(
    real: np.ndarray,
    fake: np.ndarray,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(FD, KID mean, KID std) between two (N, D) feature sets, by torchmetrics.

    NaN where a set has fewer than 2 rows (both distances need a covariance / two samples).
    The KID subset size is capped by the smaller set.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise CraftError(f"feature sets must be (N, D) alike, got {real.shape} and {fake.shape}")
    if min(len(real), len(fake)) < 2:
        return float("nan"), float("nan"), float("nan")
    d = real.shape[1]
    r = torch.from_numpy(np.asarray(real, np.float64))
    f = torch.from_numpy(np.asarray(fake, np.float64))
    fid = FrechetInceptionDistance(feature=_Precomputed(d), reset_real_features=True)
    fid.update(r, real=True)
    fid.update(f, real=False)
    fd = float(fid.compute())
    subset = int(min(kid_subset_size, len(real), len(fake)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "KID will save all features in buffer"
        kid = KernelInceptionDistance(
            feature=_Precomputed(d), subsets=kid_subsets, subset_size=subset
        )
    kid.update(r, real=True)
    kid.update(f, real=False)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        kid_mean, kid_std = kid.compute()
    finally:
        torch.random.set_rng_state(state)
    return max(fd, 0.0), float(kid_mean), float(kid_std)


def fidelity(
    settings: FidelityConfig,
    data_h5: Path,
    samples_h5: Path,
    out: Path,
    modality: str,
    method: str,
    seed: int,
    config_digest: str,
) -> dict[str, float]:
    """FD and KID of a samples file against the real test split, overall and per label."""
    t0 = time.monotonic()
    samples = read_samples(samples_h5)
    test = read_split(data_h5, "test")
    val = read_split(data_h5, "val")
    if list(samples.label_names) != list(test.label_names):
        raise CraftError(
            f"{samples_h5} has labels {samples.label_names}, {data_h5} has {test.label_names}: "
            "generate from the same modality"
        )
    if samples.images.shape[1:] != test.images.shape[1:]:
        raise CraftError(
            f"{samples_h5} images are {samples.images.shape[1:]}, {data_h5} images "
            f"{test.images.shape[1:]}: generate at the data's resolution and channels"
        )
    if len(samples) < 2 or len(test) < 2:
        raise CraftError(
            f"fidelity needs at least 2 generated and 2 real test images, got {len(samples)} "
            f"in {samples_h5} and {len(test)} in {data_h5}"
        )
    extractor = feature_extractor(settings, samples.images.shape[-1])
    fake = embed(extractor, samples.images, settings.batch_size)
    real = embed(extractor, test.images, settings.batch_size)
    args = (settings.kid_subset_size, settings.kid_subsets, settings.seed)
    fd, kid, kid_std = frechet_and_kid(real, fake, *args)
    metrics = {"fd": fd, "kid": kid, "kid_std": kid_std}
    if len(val) >= 2:
        ref = embed(extractor, val.images, settings.batch_size)
        metrics["fd_reference"], metrics["kid_reference"], _ = frechet_and_kid(real, ref, *args)
    for i, label in enumerate(samples.label_names):
        g, t = samples.labels == i, test.labels == i
        if g.sum() >= 2 and t.sum() >= 2:
            metrics[f"fd__{label}"], metrics[f"kid__{label}"], _ = frechet_and_kid(
                real[t], fake[g], *args
            )
        elif g.any():
            log(
                f"fidelity: label '{label}' has {g.sum()} generated / {t.sum()} test images; "
                "its FD and KID are skipped"
            )
    write_metrics(out, modality, method, seed, "fidelity", metrics, config_digest)
    log(
        f"{modality}/{method}/{seed}: FD {fd:.4g} "
        f"(real val vs test {metrics.get('fd_reference', float('nan')):.4g}), "
        f"KID {kid:.4g}, {len(samples)} images, features '{settings.features}', "
        f"{time.monotonic() - t0:.1f} s"
    )
    return metrics
