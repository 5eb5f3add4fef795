"""``craft downstream``: can a classifier trained on generated images diagnose REAL images?

Protocol (per modality, method, seed), every classifier tested on the REAL test split and early
stopped on the REAL val split (lowest cross-entropy, ``patience`` epochs):

- ``synthetic``: trained on the generated images only;
- ``mixed`` at each budget b of ``evaluation.downstream.budgets``: a stratified, seeded share b
  of the real train split plus all generated images (smaller budgets are subsets of larger);
- ``real`` (the reference): the whole real train split, and the same budget subsets alone.

Metric names (scikit-learn: one-vs-rest AUROC per label and their mean, accuracy, macro-F1):

- ``downstream_{auroc,accuracy,f1}_synthetic``, ``downstream_{...}_real`` (whole train split),
  ``downstream_{...}_mixed`` (at the LARGEST budget), each with ``__{label}`` AUROCs;
- ``downstream_{...}_mixed__b{b}`` and ``downstream_{...}_real__b{b}`` at every budget b
  (``b0.1``, ``b0.5``; ``real__b1`` is not written, it is ``real``). A label never contains a
  dot, so ``__b0.1`` cannot be mistaken for a label suffix.

Resumable: each phase keeps ``{state_dir}/{phase}.pt`` (weights, optimizer, best weights,
early-stopping counters; written after every epoch) and, when finished, ``{phase}.json`` with its
metrics. A rerun skips finished phases and continues an unfinished one from its last epoch;
state made under another config digest or data is discarded with a log line. Data order is
drawn per epoch from (seed, phase, epoch), so a resumed phase trains exactly as an
uninterrupted one. The classifier seed is ``settings.seed + run seed``: every method at run seed
s trains with the same seed (paired comparisons).

Classifiers: ``tiny`` (:class:`TinyCNN`, three conv blocks, ~25k parameters at width 16), any
timm model name (``densenet121`` as in CheXpert work, ``resnet50``, ViTs) or a transformers
image classification hub id / dir.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from craft.atomic import atomic_write_text
from craft.errors import CraftError
from craft.evaluate import write_metrics
from craft.evaluate.features import device, to_float
from craft.evaluate.settings import DownstreamConfig
from craft.progress import log
from craft.store import StackedImages, read_samples, read_split

__all__ = [
    "TinyCNN",
    "build_classifier",
    "budget_subset",
    "classification_metrics",
    "PhaseTrainer",
    "downstream",
    "real_phases",
]


class TinyCNN(nn.Module):
    """A small CNN for phantoms: 3 x (conv3x3 with stride 2, GroupNorm, ReLU), global average
    pool, linear. Input float NCHW in [-1, 1]. GroupNorm, not BatchNorm: with a few hundred
    images an epoch is a handful of steps, too few for BatchNorm's running statistics (they
    made eval-mode predictions collapse to one class in a trial)."""

    def __init__(self, in_channels: int, n_labels: int, width: int = 16):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width]
        blocks = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            blocks += [
                nn.Conv2d(a, b, 3, stride=2, padding=1),
                nn.GroupNorm(math.gcd(4, b), b),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(chans[-1], n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class _Resized(nn.Module):
    """Resize float NCHW images to a square side, then call the wrapped classifier; with
    ``mean`` and ``std`` (a pretrained model's input statistics, on a 0..1 scale) the [-1, 1]
    images are first mapped to what its weights were trained on."""

    def __init__(
        self,
        model: nn.Module,
        size: int | None,
        channels_to: int | None = None,
        transformers_model: bool = False,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ):
        super().__init__()
        self.model, self.size, self.channels_to = model, size, channels_to
        self.transformers_model = transformers_model
        self.stats = None if mean is None or std is None else (tuple(mean), tuple(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        if self.channels_to == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.stats is not None:
            mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device) for v in self.stats)
            if x.shape[1] != len(mean):  # e.g. grey images into an RGB-trained model's stem
                mean, std = mean.mean().reshape(1), std.mean().reshape(1)
            x = ((x + 1) / 2 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        if self.transformers_model:
            return self.model(pixel_values=x).logits
        return self.model(x)


def build_classifier(settings: DownstreamConfig, channels: int, n_labels: int) -> nn.Module:
    """A fresh classifier: float NCHW in [-1, 1] -> (N, n_labels) logits."""
    name = settings.classifier
    if name == "tiny":
        return _Resized(TinyCNN(channels, n_labels, settings.width), settings.image_size)
    import timm

    if name.startswith("hf-hub:") or timm.is_model(name):
        try:
            model = timm.create_model(
                name, pretrained=settings.pretrained, num_classes=n_labels, in_chans=channels
            )
        except Exception as err:  # noqa: BLE001 - timm raises many kinds; report in one line
            raise CraftError(
                f"evaluation.downstream.classifier: timm cannot build '{name}' "
                f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
            ) from None
        stats = model.pretrained_cfg if settings.pretrained else {}
        return _Resized(model, settings.image_size, mean=stats.get("mean"), std=stats.get("std"))
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        raise CraftError(
            f"evaluation.downstream.classifier: '{name}' is not 'tiny', a timm model name nor "
            "a transformers hub id / dir"
        ) from None
    model = AutoModelForImageClassification.from_pretrained(
        name, num_labels=n_labels, ignore_mismatched_sizes=True
    )
    size = settings.image_size or int(getattr(model.config, "image_size", 224))
    try:  # the input statistics its weights were trained with, where it ships a processor
        processor = AutoImageProcessor.from_pretrained(name)
        mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    except (OSError, ValueError):
        mean = std = None
    channels = int(getattr(model.config, "num_channels", 3))
    return _Resized(model, size, channels, True, mean, std)


def budget_subset(labels: np.ndarray, budget: float, seed: int) -> np.ndarray:
    """Indices of a stratified share ``budget`` of ``labels`` (at least one per label present).

    One seeded permutation per label, so a smaller budget's subset lies in a larger one's.
    """
    rng = np.random.default_rng(seed)
    out = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        perm = idx[rng.permutation(len(idx))]
        out.append(perm[: max(1, int(round(budget * len(idx))))])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def classification_metrics(
    y: np.ndarray, probs: np.ndarray, label_names: list[str]
) -> dict[str, float]:
    """AUROC per label (one vs rest) and their mean, accuracy, macro-F1 (scikit-learn)."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    present = set(np.unique(y).tolist())
    missing = [lab for i, lab in enumerate(label_names) if i not in present]
    if missing:
        raise CraftError(
            f"the real test split has no images of {missing}: AUROC is undefined; "
            "prepare the data with more images per label"
        )
    out: dict[str, float] = {}
    aucs = []
    for k, lab in enumerate(label_names):
        auc = float(roc_auc_score((y == k).astype(int), probs[:, k]))
        out[f"auroc__{lab}"] = auc
        aucs.append(auc)
    pred = probs.argmax(1)
    out["auroc"] = float(np.mean(aucs))
    out["accuracy"] = float(accuracy_score(y, pred))
    out["f1"] = float(
        f1_score(y, pred, average="macro", labels=list(range(len(label_names))), zero_division=0)
    )
    return out


@dataclass
class PhaseData:
    """The images one classifier trains on, and the real val / test splits."""

    train_x: np.ndarray  # (N, H, W, C) uint8, or an array-like view that reads when indexed
    train_y: np.ndarray  # (N,) int64
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    label_names: list[str]


def phase_digest(
    settings: DownstreamConfig, phase: str, data: PhaseData, digest: str, seed: int
) -> str:
    """What a phase's result depends on: config digest, phase, settings, seed, the labels of
    every split, and the train images (shape, and at most 1024 of them, evenly spaced)."""
    h = hashlib.sha256(f"{digest}:{phase}:{settings.model_dump_json()}:{seed}".encode())
    for arr in (data.train_y, data.val_y, data.test_y):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(str(data.train_x.shape).encode())
    # The pixels too: regenerated samples start over.
    rows = np.arange(0, len(data.train_x), max(1, len(data.train_x) // 1024))
    for i in range(0, len(rows), 256):  # a chunk at a time: the same bytes, hashed in turn
        h.update(np.ascontiguousarray(data.train_x[rows[i : i + 256]]).tobytes())
    return h.hexdigest()[:16]


def finished_phase(result_path: Path, digest: str) -> dict[str, float] | None:
    """The metrics of a phase recorded at ``result_path`` under ``digest``, else None."""
    if not result_path.is_file():
        return None
    try:
        rec = json.loads(result_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec["metrics"] if rec.get("digest") == digest else None


def _phase_seed(seed: int, phase: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{phase}".encode()).digest()[:4], "little")


class PhaseTrainer:
    """Train, early-stop and test one classifier; resumable from ``{state_dir}/{phase}.pt``.

    ``run(epochs=None)`` trains until early stopping or ``max_epochs`` (or only ``epochs`` more
    epochs, saving state, for time-limited jobs) and returns True when the phase is finished.
    """

    def __init__(
        self,
        settings: DownstreamConfig,
        phase: str,
        data: PhaseData,
        state_dir: Path,
        digest: str,
        seed: int,
    ):
        self.settings, self.phase, self.data = settings, phase, data
        self.state_path = Path(state_dir) / f"{phase}.pt"
        self.result_path = Path(state_dir) / f"{phase}.json"
        self.digest = phase_digest(settings, phase, data, digest, seed)
        self.seed = _phase_seed(seed, phase)
        self.device = device()
        with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG untouched
            torch.manual_seed(self.seed)
            model = build_classifier(settings, data.train_x.shape[-1], len(data.label_names))
        self.model = model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.epoch, self.best_loss, self.bad_epochs = 0, float("inf"), 0
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.stopped = False
        self._resume()

    # -- state ---------------------------------------------------------------------------

    def finished_metrics(self) -> dict[str, float] | None:
        """The phase's metrics if it finished under this digest, else None."""
        return finished_phase(self.result_path, self.digest)

    def _resume(self) -> None:
        if not self.state_path.is_file():
            return
        try:
            st = torch.load(self.state_path, map_location=self.device, weights_only=True)
        except Exception:  # noqa: BLE001 - a half-written or foreign file: start over
            st = None
        if st is None or st.get("digest") != self.digest:
            why = "unreadable" if st is None else "made with another config or data"
            log(f"downstream {self.phase}: starting over, the saved state is {why}")
            self.state_path.unlink(missing_ok=True)
            return
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.best_state = st["best_state"]
        self.epoch, self.best_loss = int(st["epoch"]), float(st["best_loss"])
        self.bad_epochs, self.stopped = int(st["bad_epochs"]), bool(st["stopped"])
        log(f"downstream {self.phase}: resuming after epoch {self.epoch}")

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.tmp")
        torch.save(
            {
                "digest": self.digest,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "best_state": self.best_state,
                "epoch": self.epoch,
                "best_loss": self.best_loss,
                "bad_epochs": self.bad_epochs,
                "stopped": self.stopped,
            },
            tmp,
        )
        tmp.replace(self.state_path)

    # -- training ------------------------------------------------------------------------

    def _batches(self, n: int, epoch: int) -> list[np.ndarray]:
        g = np.random.default_rng([self.seed, epoch])
        order = g.permutation(n)
        bs = self.settings.batch_size
        out = [order[i : i + bs] for i in range(0, n, bs)]
        if len(out) > 1 and len(out[-1]) < 2:  # BatchNorm needs two images per batch
            out[-2] = np.concatenate([out[-2], out.pop()])
        return out

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, L) logits and softmax probabilities of uint8 NHWC images (eval mode)."""
        self.model.eval()
        logits = []
        for i in range(0, len(images), 256):
            logits.append(self.model(to_float(images[i : i + 256]).to(self.device)).float().cpu())
        z = torch.cat(logits) if logits else torch.zeros(0, len(self.data.label_names))
        return z.numpy(), z.softmax(1).numpy()

    def _val_loss(self) -> float:
        z, _ = self.predict(self.data.val_x)
        return float(F.cross_entropy(torch.from_numpy(z), torch.from_numpy(self.data.val_y)))

    def run(self, epochs: int | None = None) -> bool:
        """Train (at most ``epochs`` more epochs when given); True when the phase is finished."""
        s, d = self.settings, self.data
        done_now, last_log = 0, time.monotonic()
        while not self.stopped and self.epoch < s.max_epochs:
            if epochs is not None and done_now >= epochs:
                return False
            self.model.train()
            # Dropout and the like draw from a stream seeded by (phase, epoch): a resumed
            # phase, or one run without the phases before it (shared real-only phases),
            # trains as an uninterrupted one does.
            cuda = [self.device] if torch.device(self.device).type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(_phase_seed(self.seed, f"epoch{self.epoch}"))
                for idx in self._batches(len(d.train_y), self.epoch):
                    x = to_float(d.train_x[idx]).to(self.device)
                    y = torch.from_numpy(d.train_y[idx]).to(self.device)
                    loss = F.cross_entropy(self.model(x), y)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
            self.epoch += 1
            done_now += 1
            val = self._val_loss() if len(d.val_y) else -float(self.epoch)
            if val < self.best_loss - 1e-6:
                self.best_loss, self.bad_epochs = val, 0
                self.best_state = copy.deepcopy(self.model.state_dict())
            else:
                self.bad_epochs += 1
                self.stopped = self.bad_epochs >= s.patience
            self._save()
            if time.monotonic() - last_log > 30 or self.stopped:
                last_log = time.monotonic()
                log(
                    f"downstream {self.phase}: epoch {self.epoch}/{s.max_epochs}, real val loss "
                    f"{val:.4f} (best {self.best_loss:.4f})" + (", stopping" * self.stopped)
                )
        return True

    def test(self) -> dict[str, float]:
        """Load the best weights, score the real test split, and record the phase as done."""
        self.model.load_state_dict(self.best_state)
        _, probs = self.predict(self.data.test_x)
        metrics = classification_metrics(self.data.test_y, probs, self.data.label_names)
        metrics["epochs"] = float(self.epoch)
        atomic_write_text(
            self.result_path,
            json.dumps({"digest": self.digest, "phase": self.phase, "metrics": metrics}, indent=1),
        )
        self.state_path.unlink(missing_ok=True)
        return metrics

    def fit(self) -> dict[str, float]:
        """The phase's test metrics: from its finished record, or by training it now."""
        done = self.finished_metrics()
        if done is not None:
            log(f"downstream {self.phase}: already done")
            return done
        t0 = time.monotonic()
        self.run()
        metrics = self.test()
        log(
            f"downstream {self.phase}: {len(self.data.train_y)} train images, "
            f"{self.epoch} epochs, real test AUROC {metrics['auroc']:.3f}, "
            f"{time.monotonic() - t0:.1f} s"
        )
        return metrics


def budget_tag(budget: float) -> str:
    """``b0.1`` for 0.1 (the metric suffix of a real-data budget)."""
    return f"b{budget:g}"


def phases(
    settings: DownstreamConfig, real_y: np.ndarray, seed: int
) -> list[tuple[str, np.ndarray | None, bool]]:
    """(phase name, real train indices or None for none, with synthetic images) in run order."""
    out: list[tuple[str, np.ndarray | None, bool]] = [("synthetic", None, True)]
    for b in settings.budgets:
        idx = budget_subset(real_y, b, seed)
        out.append((f"mixed__{budget_tag(b)}", idx, True))
        if b < 1:
            out.append((f"real__{budget_tag(b)}", idx, False))
    out.append(("real", np.arange(len(real_y)), False))
    return out


def _phase_data(train, val, test, idx: np.ndarray | None, samples) -> PhaseData:
    """A phase's images: the real train rows ``idx`` (None: none) and the samples (or None),
    as one view that reads a batch's real images from the data file when it is drawn."""
    xs, ys = [], []
    if idx is not None:
        xs.append(train.images.subset(idx))
        ys.append(train.labels[idx])
    if samples is not None:
        xs.append(samples.images)
        ys.append(samples.labels)
    x, y = StackedImages(xs), np.concatenate(ys)
    return PhaseData(
        x, y, val.images, val.labels, test.images, test.labels, list(train.label_names)
    )


def real_phases(
    settings: DownstreamConfig,
    data_h5: Path,
    out: Path,
    seed: int,
    config_digest: str,
) -> dict[str, dict[str, float]]:
    """Train and test the real-only phases of a modality and run seed once, for every method.

    Each method's :func:`downstream` (``real_dir`` = ``out``'s folder) takes them from here
    instead of training the same classifier again: the real-only classifiers see no generated
    image and are seeded by the run seed alone. Resumable like :func:`downstream` (state in
    ``out``'s folder); ``out`` (JSON, written last) records every real phase's metrics.
    """
    t0 = time.monotonic()
    state_dir = Path(out).parent
    train, val, test = (read_split(data_h5, s) for s in ("train", "val", "test"))
    if len(train) < 2:
        raise CraftError(
            f"downstream needs at least 2 real train images, got {len(train)} in {data_h5}"
        )
    cls_seed = settings.seed + seed
    real = [
        (ph, idx)
        for ph, idx, synthetic in phases(settings, train.labels, cls_seed)
        if not synthetic
    ]
    if Path(out).name in {f"{ph}{ext}" for ph, _ in real for ext in (".json", ".pt")}:
        raise CraftError(f"{out}: a phase's record has this name; name the file real-phases.json")
    done: dict[str, dict[str, float]] = {}
    for phase, idx in real:
        data = _phase_data(train, val, test, idx, None)
        done[phase] = PhaseTrainer(settings, phase, data, state_dir, config_digest, cls_seed).fit()
    atomic_write_text(Path(out), json.dumps({"seed": seed, "phases": done}, indent=1))
    log(f"downstream real-only phases ({', '.join(done)}) in {time.monotonic() - t0:.1f} s")
    return done


def downstream(
    settings: DownstreamConfig,
    data_h5: Path,
    samples_h5: Path,
    out: Path,
    modality: str,
    method: str,
    seed: int,
    config_digest: str,
    state_dir: Path | None = None,
    real_dir: Path | None = None,
) -> dict[str, float]:
    """Train and test every phase's classifier (resumably) and write the metrics JSON.

    ``state_dir`` (default ``{out's folder}/downstream``) holds the per-phase state.
    ``real_dir``: where :func:`real_phases` recorded the real-only phases of this modality and
    run seed; a phase recorded there under the same digest is taken from it (the same numbers:
    a real-only classifier does not depend on the method), any other is trained here.
    """
    t0 = time.monotonic()
    state_dir = Path(state_dir) if state_dir is not None else Path(out).parent / "downstream"
    samples = read_samples(samples_h5)
    train, val, test = (read_split(data_h5, s) for s in ("train", "val", "test"))
    names = list(train.label_names)
    if list(samples.label_names) != names:
        raise CraftError(
            f"{samples_h5} has labels {samples.label_names}, {data_h5} has {names}: "
            "generate from the same modality"
        )
    if samples.images.shape[1:] != train.images.shape[1:]:
        raise CraftError(
            f"{samples_h5} images are {samples.images.shape[1:]}, {data_h5} images "
            f"{train.images.shape[1:]}: generate at the data's resolution and channels"
        )
    if len(samples) < 2 or len(train) < 2:
        raise CraftError(
            f"downstream needs at least 2 generated and 2 real train images, got "
            f"{len(samples)} in {samples_h5} and {len(train)} in {data_h5}"
        )
    if len(val) == 0:
        log(f"downstream: {data_h5} has no val split; training runs max_epochs without stopping")
    cls_seed = settings.seed + seed
    metrics: dict[str, float] = {}
    by_phase: dict[str, dict[str, float]] = {}
    for phase, idx, synthetic in phases(settings, train.labels, cls_seed):
        data = _phase_data(train, val, test, idx, samples if synthetic else None)
        m = None
        if real_dir is not None and not synthetic:
            digest = phase_digest(settings, phase, data, config_digest, cls_seed)
            m = finished_phase(Path(real_dir) / f"{phase}.json", digest)
            if m is None:
                log(f"downstream {phase}: not recorded in {real_dir} for this data; training it")
            else:
                log(f"downstream {phase}: shared real-only result from {real_dir}")
        if m is None:
            m = PhaseTrainer(settings, phase, data, state_dir, config_digest, cls_seed).fit()
        by_phase[phase] = m
        kind, _, tag = phase.partition("__")
        for key in ("auroc", "accuracy", "f1"):
            metrics[f"downstream_{key}_{kind}" + (f"__{tag}" if tag else "")] = m[key]
        if not tag:
            for lab in names:
                metrics[f"downstream_auroc_{kind}__{lab}"] = m[f"auroc__{lab}"]
    largest = budget_tag(settings.budgets[-1])
    for key in ("auroc", "accuracy", "f1"):
        metrics[f"downstream_{key}_mixed"] = metrics[f"downstream_{key}_mixed__{largest}"]
    for lab in names:
        metrics[f"downstream_auroc_mixed__{lab}"] = by_phase[f"mixed__{largest}"][f"auroc__{lab}"]
    write_metrics(out, modality, method, seed, "downstream", metrics, config_digest)
    log(
        f"{modality}/{method}/{seed}: downstream AUROC synthetic "
        f"{metrics['downstream_auroc_synthetic']:.3f}, mixed ({largest}) "
        f"{metrics['downstream_auroc_mixed']:.3f}, real {metrics['downstream_auroc_real']:.3f} "
        f"in {time.monotonic() - t0:.1f} s"
    )
    return metrics
