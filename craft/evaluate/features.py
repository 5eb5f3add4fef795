"""Image encoders the evaluation stages share, and the streaming nearest-neighbour search.

Encoders map uint8 NHWC images to (N, D) float features (``embed``):

- ``tiny``: :class:`RandomConvEncoder`, a small conv net with FIXED random weights drawn from a
  seed. It is trained on nothing, so it shares no weights and no training signal with the
  generator or with any CAS evaluator (the tiny evaluator's image tower would: the CLIP one is
  the reward), it is deterministic, and it costs milliseconds on 32x32 phantoms. Random conv
  features are a known, if weaker, stand-in for learned ones in distribution distances (Naeem et
  al. 2020, "Reliable fidelity and diversity metrics", random embeddings).
- a transformers image model (hub id or dir; DINOv2 for memorization as in Stein et al. 2023):
  :class:`HFImageEncoder`, the pooled (CLS) output with the model's own preprocessing constants.
- :class:`ImageStatistics`: no weights at all: quantiles of each channel's intensities and of
  its local contrast (the absolute Laplacian) at a few scales, standardised by real images. It
  sees how bright, how contrasted and how smooth or grainy images are, not where anything is;
  differentiable, so reward finetuning can use it as a realism term (``align.realism_features``).
- ``pixels`` (:func:`pixel_vectors`): the images themselves, area-downsampled, centred and
  normalised, so that a dot product is the Pearson correlation of two images.

:func:`nearest_neighbours` finds the most similar key for every query by cosine similarity in
blocks of ``chunk_size`` x ``chunk_size``: the full (queries x keys) matrix is never held, and
the keys may arrive as a stream of blocks (read and embedded from an HDF5 file chunk by chunk).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from craft.device import compute_device
from craft.errors import CraftError

__all__ = [
    "RandomConvEncoder",
    "HFImageEncoder",
    "ImageStatistics",
    "load_encoder",
    "embed",
    "pixel_vectors",
    "nearest_neighbours",
    "iter_split_images",
    "to_float",
    "device",
]


def device() -> torch.device:
    return torch.device(compute_device())


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]; CraftError on anything else."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise CraftError(
            f"images must be uint8 NHWC with 1 or 3 channels, got {images.dtype} {images.shape}"
        )
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class RandomConvEncoder(nn.Module):
    """Fixed random conv features: 3 conv+ReLU blocks (two 2x average pools), then an adaptive
    average pool to a ``grid`` x ``grid`` map, flattened. Input float NCHW in [-1, 1].

    Weights are He-normal draws from ``torch.Generator().manual_seed(seed)`` and never trained.
    ``num_features`` = 2 * width * grid^2 (torchmetrics reads it).
    """

    def __init__(self, in_channels: int, width: int = 16, grid: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(in_channels, width, 3, padding=1),
                nn.Conv2d(width, 2 * width, 3, padding=1),
                nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            ]
        )
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.in_channels * 9
                conv.weight.copy_(
                    torch.randn(conv.weight.shape, generator=g) * math.sqrt(2 / fan_in)
                )
                conv.bias.zero_()
        self.in_channels = in_channels
        self.grid = grid
        self.num_features = 2 * width * grid * grid
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise CraftError(
                f"the tiny encoder was built for {self.in_channels} channels, got {x.shape[1]}"
            )
        h = x.float()
        for i, conv in enumerate(self.convs):
            h = F.relu(conv(h))
            if i < 2:
                h = F.avg_pool2d(h, 2)
        return F.adaptive_avg_pool2d(h, self.grid).flatten(1)


class ImageStatistics(nn.Module):
    """Low-level statistics of an image, as one (N, D) vector per image: per channel, the
    ``quantiles`` of its intensities and of its absolute Laplacian (5-point stencil, the local
    contrast) at each of ``scales`` resolutions (the image, then 2x average pools while both
    sides stay >= 8 px). Input float NCHW in [-1, 1], moved to the module's device;
    differentiable.

    The statistics are standardised by :meth:`fit` (each dimension's mean and standard deviation
    over real images), so that every one counts alike in a distance. What they see is the
    intensity histogram, the contrast and the grain of the image at each scale, not where a
    finding lies or how it is shaped: a realism measure that an alignment reward, which is
    about the findings, need not fight.
    """

    def __init__(
        self,
        in_channels: int,
        quantiles: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95),
        scales: int = 3,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.scales = scales
        self.register_buffer("q", torch.tensor(quantiles, dtype=torch.float32))
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("std", torch.zeros(0))
        self.requires_grad_(False)
        self.eval()

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The statistics before standardisation."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise CraftError(
                f"image statistics were set up for {self.in_channels}-channel NCHW images, "
                f"got shape {tuple(x.shape)}"
            )
        h = x.to(self.q.device, torch.float32)
        parts = [torch.quantile(h.flatten(2), self.q, dim=2)]
        for s in range(self.scales):
            if s:
                if min(h.shape[-2:]) < 16:
                    break
                h = F.avg_pool2d(h, 2)
            lap = (
                4 * h[..., 1:-1, 1:-1]
                - h[..., :-2, 1:-1]
                - h[..., 2:, 1:-1]
                - h[..., 1:-1, :-2]
                - h[..., 1:-1, 2:]
            )
            parts.append(torch.quantile(lap.abs().flatten(2), self.q, dim=2))
        # (quantile, N, C) per part -> (N, C * quantiles * parts)
        return torch.cat(parts, 0).permute(1, 2, 0).flatten(1)

    @torch.no_grad()
    def fit(self, images: np.ndarray, batch_size: int = 256) -> ImageStatistics:
        """Standardise by these real images (uint8 NHWC); returns self."""
        self.fit_transform(images, batch_size)
        return self

    @torch.no_grad()
    def fit_transform(self, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
        """Standardise by these real images (uint8 NHWC) and return their standardised
        statistics, row for row (what ``self(images)`` would give, without a second pass)."""
        if len(images) < 2:
            raise CraftError(f"image statistics need two or more real images, got {len(images)}")
        feats = torch.cat(
            [
                self.raw(to_float(images[i : i + batch_size]))
                for i in range(0, len(images), batch_size)
            ]
        )
        self.mean = feats.mean(0)
        self.std = feats.std(0).clamp_min(1e-6)
        return (feats - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.mean):
            raise RuntimeError("ImageStatistics.fit(real images) first")
        return (self.raw(x) - self.mean) / self.std

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """The evaluator-like name the realism term calls."""
        return self(x)


class HFImageEncoder(nn.Module):
    """A transformers image model (AutoModel, e.g. Dinov2Model) as a frozen feature extractor.

    Input float NCHW in [-1, 1] (1 or 3 channels); resized, cropped and normalised with torch
    ops and the model's image-processor constants; output the pooled (CLS) features.
    """

    def __init__(self, source: str, revision: str | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        try:
            AutoConfig.from_pretrained(source, revision=revision)
        except (OSError, ValueError) as err:
            raise CraftError(
                f"cannot load image model '{source}' ({str(err).splitlines()[0]}); name a "
                "transformers hub id or a dir written by save_pretrained"
            ) from None
        self.model = AutoModel.from_pretrained(source, revision=revision).eval()
        self.model.requires_grad_(False)
        size, mean, std = (224, 224), [0.5] * 3, [0.5] * 3
        try:
            proc = AutoImageProcessor.from_pretrained(source, revision=revision)
            crop = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", 0) else None
            s = crop or getattr(proc, "size", None) or {}
            if "height" in s:
                size = (int(s["height"]), int(s["width"]))
            elif "shortest_edge" in s:
                size = (int(s["shortest_edge"]),) * 2
            mean, std = list(proc.image_mean), list(proc.image_std)
        except (OSError, ValueError, TypeError, AttributeError):
            cfg = self.model.config
            side = int(getattr(cfg, "image_size", 224))
            size = (side, side)
        self.size = size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        with torch.no_grad():
            probe = self(torch.zeros(1, 3, *size))
        self.num_features = int(probe.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from craft.cas.evaluators import model_pixels

        pixels = model_pixels(x.to(self.mean.device), self.size, self.mean, self.std, "bicubic")
        out = self.model(pixel_values=pixels.to(self.model.dtype))
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state[:, 0]
        return pooled.flatten(1).float()


def load_encoder(
    name: str, channels: int, seed: int = 0, grid: int = 4, field: str = "encoder"
) -> nn.Module:
    """'tiny' -> :class:`RandomConvEncoder`; else a transformers hub id or dir."""
    if name == "tiny":
        return RandomConvEncoder(channels, seed=seed, grid=grid).to(device())
    if name in ("pixels", "inception"):
        raise CraftError(f"{field}: '{name}' is not an embedding model here")
    return HFImageEncoder(name).to(device())


@torch.no_grad()
def embed(encoder: nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, D) float32 features of uint8 NHWC ``images``, in batches."""
    dev = next(iter(encoder.buffers()), next(iter(encoder.parameters()), None))
    dev = dev.device if dev is not None else torch.device("cpu")
    out = []
    for i in range(0, len(images), batch_size):
        out.append(encoder(to_float(images[i : i + batch_size]).to(dev)).float().cpu())
    if not out:
        return np.zeros((0, int(getattr(encoder, "num_features", 0))), np.float32)
    return torch.cat(out).numpy()


def pixel_vectors(images: np.ndarray, max_size: int = 64) -> np.ndarray:
    """(N, P) float32: images area-downsampled to at most ``max_size`` per side, each centred
    and L2-normalised, so that a dot product is the images' Pearson correlation."""
    x = to_float(images)
    if x.shape[-1] > max_size or x.shape[-2] > max_size:
        x = F.adaptive_avg_pool2d(x, (min(max_size, x.shape[-2]), min(max_size, x.shape[-1])))
    v = x.flatten(1)
    v = v - v.mean(1, keepdim=True)
    return F.normalize(v, dim=1, eps=1e-8).numpy()


def _blocks(keys: np.ndarray | Iterable[np.ndarray], chunk_size: int) -> Iterator[np.ndarray]:
    if isinstance(keys, np.ndarray):
        keys = [keys]
    for block in keys:
        for i in range(0, len(block), chunk_size):
            yield block[i : i + chunk_size]


@torch.no_grad()
def nearest_neighbours(
    queries: np.ndarray,
    keys: np.ndarray | Iterable[np.ndarray],
    chunk_size: int = 4096,
    normalise: bool = True,
    query_groups: np.ndarray | None = None,
    key_groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the index and cosine similarity of its most similar key row.

    Computed in (chunk_size x chunk_size) blocks with a running maximum, so memory is
    O(N_queries * D + chunk_size^2) whatever the number of keys; ``keys`` may be one array or an
    iterable of arrays (a stream; indices count across it). Ties keep the first key.
    With ``query_groups`` and ``key_groups`` (int per row, -1 for none; e.g. the patient), a
    key of the query's own group is never its neighbour.
    Returns (N_queries,) int64 indices and float32 similarities; -1 and -inf if no keys.
    """
    if chunk_size < 1:
        raise CraftError(f"chunk_size must be at least 1, got {chunk_size}")
    dev = device()
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(dev)
    if normalise:
        q_all = F.normalize(q_all, dim=1, eps=1e-12)
    n = q_all.shape[0]
    best_sim = torch.full((n,), -math.inf, device=dev)
    best_idx = torch.full((n,), -1, dtype=torch.int64, device=dev)
    grouped = query_groups is not None and key_groups is not None
    if grouped:
        qg = torch.as_tensor(np.asarray(query_groups, np.int64), device=dev)
        kg = torch.as_tensor(np.asarray(key_groups, np.int64), device=dev)
    offset = 0
    for block in _blocks(keys, chunk_size):
        k = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(dev)
        if k.shape[1] != q_all.shape[1]:
            raise CraftError(
                f"queries have {q_all.shape[1]} features, keys {k.shape[1]}: embed both alike"
            )
        if normalise:
            k = F.normalize(k, dim=1, eps=1e-12)
        for i in range(0, n, chunk_size):
            s = q_all[i : i + chunk_size] @ k.T
            if grouped:
                g = qg[i : i + chunk_size, None]
                same = (g == kg[None, offset : offset + k.shape[0]]) & (g >= 0)
                s = s.masked_fill(same, -math.inf)
            m, a = s.max(1)
            better = m > best_sim[i : i + chunk_size]
            best_sim[i : i + chunk_size] = torch.where(better, m, best_sim[i : i + chunk_size])
            best_idx[i : i + chunk_size] = torch.where(
                better, a + offset, best_idx[i : i + chunk_size]
            )
        offset += k.shape[0]
    return best_idx.cpu().numpy(), best_sim.cpu().numpy()


def iter_split_images(data_h5: Path, split: str, chunk_size: int) -> Iterator[np.ndarray]:
    """The images of one split of a data file, ``chunk_size`` at a time (never all at once)."""
    from craft.store import data_channels, expand_channels, open_h5

    with open_h5(data_h5, "data") as f:
        if split not in f:
            raise CraftError(f"{data_h5} has no split '{split}'")
        ds, channels = f[split]["images"], data_channels(f, split)
        for i in range(0, ds.shape[0], chunk_size):
            yield expand_channels(ds[i : i + chunk_size], channels)
