"""The real-image reference of CAS: neighbours, calibration distributions and the tail threshold.

Built once per (modality, evaluator) from the prepared data file's three splits, each with
one job so that no real image calibrates the numbers it is judged by:

- train: embeddings R_y of real images of each label, the neighbours of plausibility, and
  s_y, the median leave-one-out soft k-NN distance among them (the unit of plausibility);
- val: every dimension of real images of label y, on its calibration scale; the kernel CDF
  of these values (Gaussian kernel, Silverman's bandwidth) maps a raw dimension to (0, 1);
  prompt alignment pairs every val image with every prompt of its label;
- test: CAS of real test images paired with each prompt of their label; tau is its q-th
  percentile (``tail_quantile``), the low-alignment threshold.

Saved as one HDF5 file (kind ``cas-reference``) and loaded back by :func:`load_reference`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from craft.cas import DIMENSIONS
from craft.cas.evaluators import Evaluator, to_model_range
from craft.cas.knowledge_view import prompt_texts
from craft.cas.score import (
    TextBank,
    calibration_scale,
    cas_dimensions,
    raw_dimensions,
    soft_knn_distance,
)
from craft.errors import CraftError

KIND = "cas-reference"
#: Smallest value a calibrated dimension takes inside a geometric CAS.
GEOMETRIC_FLOOR = 1e-3


def silverman_bandwidth(values: np.ndarray) -> float:
    """Silverman's rule of thumb, 0.9 min(sd, IQR/1.34) n^(-1/5) (Silverman 1986, eq. 3.31)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return 0.0
    sd = v.std(ddof=1)
    iqr = np.subtract(*np.percentile(v, [75, 25])) / 1.34
    spread = min(sd, iqr) if iqr > 0 else sd
    return float(0.9 * spread * v.size ** (-0.2))


#: Where the reward's log kernel CDF turns linear (in kernel bandwidths below a real value).
REWARD_LINEAR_TAIL = -3.0


def log_ndtr_linear_tail(z: torch.Tensor, z0: float) -> torch.Tensor:
    """log Phi(z) for z >= z0, its tangent at z0 below: concave, C1, slope at most
    phi(z0)/Phi(z0) (3.28 at z0 = -3) everywhere."""
    z0t = torch.tensor(float(z0), dtype=z.dtype, device=z.device)
    at = torch.special.log_ndtr(z0t)
    slope = torch.exp(-0.5 * z0t**2 - 0.5 * math.log(2 * math.pi) - at)
    return torch.where(z >= z0t, torch.special.log_ndtr(z.clamp(min=z0)), at + slope * (z - z0t))


@dataclass
class Reference:
    """What CAS needs from real images, for one evaluator and one modality."""

    evaluator: str
    label_names: list[str]
    neighbours: dict[str, np.ndarray]  # label -> (M, D) float32 real train embeddings
    knn_scale: dict[str, float]  # label -> s_y
    knn_k: int
    calibration: dict[str, dict[str, np.ndarray]]  # dim -> label -> real val values
    bandwidth: dict[str, dict[str, float]]  # dim -> label -> kernel bandwidth
    weights: dict[str, float]
    tail_quantile: float
    tau: float
    tau_by_label: dict[str, float]
    real_test_cas: np.ndarray  # CAS of (test image, prompt) pairs
    real_test_labels: np.ndarray
    # label -> prompt -> real val prompt alignment with that very prompt (and its bandwidth)
    prompt_calibration: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    prompt_bandwidth: dict[str, dict[str, float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    aggregation: str = "geometric"  # or "arithmetic"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def real_test_percentile(
        self, label: str, q: float, fix: str = "rebuild it with `craft reference`"
    ) -> float:
        """The ``q``-th percentile of the CAS that real test images of ``label`` score with
        their label's prompts (the tail threshold at q = tail_quantile); ``fix`` ends the
        error when there is none."""
        values = self.real_test_cas[self.real_test_labels == list(self.label_names).index(label)]
        if len(values) == 0:
            raise CraftError(
                f"the {self.evaluator} reference has no real test image of '{label}': {fix}"
            )
        return float(np.percentile(values, q))

    # -- torch views (cached per device) --------------------------------------------------

    def _tensor(self, key: tuple, values: np.ndarray, device) -> torch.Tensor:
        k = (*key, str(device))
        if k not in self._cache:
            self._cache[k] = torch.as_tensor(values, dtype=torch.float32, device=device)
        return self._cache[k]

    @property
    def digest(self) -> str:
        """Digest of the reference's numbers (scores name the reference they used)."""
        h = hashlib.sha256()
        for lab in self.label_names:
            h.update(np.ascontiguousarray(self.neighbours[lab]).tobytes())
            for dim in DIMENSIONS:
                h.update(np.ascontiguousarray(self.calibration[dim][lab]).tobytes())
        for lab, table in self.prompt_calibration.items():
            for p, v in table.items():
                h.update(f"{lab}\0{p}".encode())
                h.update(np.ascontiguousarray(v).tobytes())
        h.update(json.dumps([self.weights, self.aggregation, self.tau, self.knn_k]).encode())
        return h.hexdigest()[:16]

    def plausibility(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) raw plausibility -d_knn / s_y of normalised embeddings for labels ``y``."""
        out = torch.zeros(len(y), device=emb.device, dtype=emb.dtype)
        for i in torch.unique(y).tolist():
            lab = self.label_names[i]
            sel = y == i
            real = self._tensor(("nb", lab), self.neighbours[lab], emb.device)
            s = self.knn_scale[lab]
            out = out.masked_scatter(sel, -soft_knn_distance(emb[sel], real, self.knn_k, s) / s)
        return out

    def log_calibrate(
        self,
        dim: str,
        value: torch.Tensor,
        y: torch.Tensor,
        prompts: list[str] | None = None,
        linear_below: float | None = None,
    ) -> torch.Tensor:
        """log F(v): the log kernel CDF of real val images of each label,
        F(v) = mean_j Phi((v - r_j) / h), computed as logsumexp_j log Phi(.) - log n so that
        it stays finite, with a gradient, far below every real image.

        ``linear_below`` (the reward's form, :data:`REWARD_LINEAR_TAIL`): each kernel's
        log Phi(z) continues as its tangent below that z, so an image far outside the real
        distribution gets a gradient of bounded size instead of one growing with its distance
        (log Phi(z) ~ -z^2/2): a few such images no longer outweigh a whole batch.

        Prompt alignment with ``prompts``: a prompt of the label's reference bank is calibrated
        against real images paired with that same prompt (prompts differ in their typical
        similarity); any other prompt against all of the label's prompts pooled.
        """
        groups: dict[tuple[int, str | None], list[int]] = {}
        for n, i in enumerate(y.tolist()):
            own = self.prompt_calibration.get(self.label_names[i], {})
            p = prompts[n] if dim == "prompt_alignment" and prompts is not None else None
            groups.setdefault((i, p if p in own else None), []).append(n)
        out = torch.zeros_like(value)
        for (i, p), rows in groups.items():
            lab = self.label_names[i]
            if p is None:
                ref = self._tensor(("cal", dim, lab), self.calibration[dim][lab], value.device)
                h = self.bandwidth[dim][lab]
            else:
                ref = self._tensor(("pcal", lab, p), self.prompt_calibration[lab][p], value.device)
                h = self.prompt_bandwidth[lab][p]
            sel = torch.zeros(len(y), dtype=torch.bool, device=value.device)
            sel[rows] = True
            z = (value[sel, None] - ref[None, :]) / h
            log_phi = (
                torch.special.log_ndtr(z)
                if linear_below is None
                else log_ndtr_linear_tail(z, linear_below)
            )
            log_cdf = torch.logsumexp(log_phi, dim=1) - math.log(ref.numel())
            out = out.masked_scatter(sel, log_cdf)
        return out

    def calibrate(
        self, dim: str, value: torch.Tensor, y: torch.Tensor, prompts: list[str] | None = None
    ) -> torch.Tensor:
        """The calibrated dimension F(v) in (0, 1); see :meth:`log_calibrate`."""
        return self.log_calibrate(dim, value, y, prompts).exp()

    def log_combine(self, log_calibrated: dict[str, torch.Tensor]) -> torch.Tensor:
        """sum_d w_d log F_d / sum_d w_d: the log of the geometric CAS without its floor. As a
        reward its gradient never vanishes (log Phi(z) ~ -z^2/2 far below the real images)."""
        total = sum(self.weights[d] for d in DIMENSIONS)
        return sum(self.weights[d] * log_calibrated[d] for d in DIMENSIONS) / total

    def combine(self, calibrated: dict[str, torch.Tensor]) -> torch.Tensor:
        """CAS = weighted mean of the calibrated dimensions: arithmetic, or geometric (every
        dimension must hold: one near 0 pulls CAS near 0). The geometric mean floors each
        dimension at GEOMETRIC_FLOOR so that log and gradient stay finite."""
        total = sum(self.weights[d] for d in DIMENSIONS)
        if self.aggregation == "geometric":
            logs = [
                self.weights[d] * torch.log(calibrated[d].clamp(min=GEOMETRIC_FLOOR))
                for d in DIMENSIONS
            ]
            return torch.exp(sum(logs) / total)
        return sum(self.weights[d] * calibrated[d] for d in DIMENSIONS) / total

    # -- files ---------------------------------------------------------------------------

    def save(self, path: Path, config_digest: str) -> Path:
        """Write the reference as HDF5 (atomic)."""
        from craft.store import atomic_h5

        attrs = {
            "evaluator": self.evaluator,
            "labels": self.label_names,
            "knn_k": self.knn_k,
            "knn_scale": self.knn_scale,
            "bandwidth": self.bandwidth,
            "weights": self.weights,
            "aggregation": self.aggregation,
            "tail_quantile": self.tail_quantile,
            "tau": self.tau,
            "tau_by_label": self.tau_by_label,
            "prompts": {lab: list(v) for lab, v in self.prompt_calibration.items()},
            "prompt_bandwidth": self.prompt_bandwidth,
            "meta": self.meta,
        }
        with atomic_h5(Path(path), KIND, config_digest, attrs=attrs) as f:
            for lab in self.label_names:
                f.create_dataset(f"neighbours/{lab}", data=self.neighbours[lab])
                for dim in DIMENSIONS:
                    f.create_dataset(f"calibration/{dim}/{lab}", data=self.calibration[dim][lab])
                for j, values in enumerate(self.prompt_calibration.get(lab, {}).values()):
                    f.create_dataset(f"prompt_calibration/{lab}/{j}", data=values)
            f.create_dataset("real_test/cas", data=self.real_test_cas)
            f.create_dataset("real_test/labels", data=self.real_test_labels)
        return Path(path)


def load_reference(path: Path, config_digest: str | None = None) -> Reference:
    """Read a reference written by :meth:`Reference.save`."""
    from craft.store import json_attr, open_h5

    with open_h5(Path(path), KIND, config_digest) as f:
        labels = json_attr(f, "labels")
        prompts = json_attr(f, "prompts")
        return Reference(
            evaluator=str(f.attrs["evaluator"]),
            label_names=labels,
            neighbours={lab: f[f"neighbours/{lab}"][()] for lab in labels},
            knn_scale=json_attr(f, "knn_scale"),
            knn_k=int(f.attrs["knn_k"]),
            calibration={
                d: {lab: f[f"calibration/{d}/{lab}"][()] for lab in labels} for d in DIMENSIONS
            },
            bandwidth=json_attr(f, "bandwidth"),
            weights=json_attr(f, "weights"),
            aggregation=str(f.attrs["aggregation"]),
            tail_quantile=float(f.attrs["tail_quantile"]),
            tau=float(f.attrs["tau"]),
            tau_by_label=json_attr(f, "tau_by_label"),
            real_test_cas=f["real_test/cas"][()],
            real_test_labels=f["real_test/labels"][()],
            prompt_calibration={
                lab: {p: f[f"prompt_calibration/{lab}/{j}"][()] for j, p in enumerate(ps)}
                for lab, ps in prompts.items()
            },
            prompt_bandwidth=json_attr(f, "prompt_bandwidth"),
            meta=json_attr(f, "meta"),
        )


# ----------------------------------------------------------------------------- building


@torch.no_grad()
def embed_images(evaluator: Evaluator, images: np.ndarray, batch_size: int = 128) -> torch.Tensor:
    """(N, D) embeddings of uint8 NHWC images, in batches."""
    parts = [
        evaluator.encode_images(to_model_range(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros((0, evaluator.embed_dim()))


def reference_prompts(knowledge: Any, label: str, description: str | None = None) -> list[str]:
    """The prompts a real image of ``label`` is paired with: the enriched prompts and the plain
    label prompt (the two kinds of prompts the generators are sampled with)."""
    from craft.prompts import label_prompt

    bank = prompt_texts(knowledge, label)
    desc = description if description is not None else getattr(knowledge, "description", None)
    if desc:
        bank = [*bank, label_prompt(desc, label)]
    return list(dict.fromkeys(bank))


def _raw_pairs(evaluator, images, y, prompts_by_label, bank, ref, batch_size, judge=None):
    """Dimensions of real images on their calibration scale, each image paired with every
    prompt of its label.

    Returns per dimension an array over (image, prompt) pairs, the pairs' label indices and
    their prompts.
    """
    out: dict[str, list[np.ndarray]] = {d: [] for d in DIMENSIONS}
    labs: list[np.ndarray] = []
    texts_of_pairs: list[str] = []
    for i in range(0, len(images), batch_size):
        xb = to_model_range(images[i : i + batch_size])
        yb = torch.as_tensor(y[i : i + batch_size])
        raw = raw_dimensions(evaluator, xb, yb, None, bank, ref, judge)
        emb = raw["embedding"]
        for lab_i in torch.unique(yb).tolist():
            sel = (yb == lab_i).to(emb.device)
            texts = prompts_by_label[bank.label_names[lab_i]]
            cos = emb[sel] @ evaluator.encode_texts(texts).T  # (n, P)
            n_p = cos.shape[1]
            out["prompt_alignment"].append(cos.flatten().cpu().numpy())
            for d in ("label_fidelity", "checklist_adherence", "plausibility"):
                v = calibration_scale(d, raw)[sel]
                out[d].append(v.repeat_interleave(n_p).cpu().numpy())
            labs.append(np.full(int(sel.sum()) * n_p, lab_i))
            texts_of_pairs += texts * int(sel.sum())
    raw = {d: np.concatenate(v) for d, v in out.items()}
    return raw, np.concatenate(labs), np.array(texts_of_pairs, dtype=object)


def _at_most(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``rows``, or a sorted random ``n`` of them where there are more (the rng draws only
    then, so a split under the cap leaves the draws after it as they were)."""
    return np.sort(rng.choice(rows, n, replace=False)) if len(rows) > n else rows


@torch.no_grad()
def build_reference(
    evaluator: Evaluator,
    data_h5: Path,
    knowledge: Any,
    weights: dict[str, float] | None = None,
    aggregation: str = "geometric",
    tail_quantile: float = 10.0,
    knn_k: int = 10,
    bandwidth_scale: float = 1.0,
    max_per_label: int = 2000,
    batch_size: int = 128,
    seed: int = 0,
    description: str | None = None,
    judge=None,
) -> Reference:
    """Build the reference of ``evaluator`` from a prepared data file's train/val/test splits.

    ``judge`` (an MLLM judge, craft.cas.judge) answers the checklist instead of the evaluator;
    the same judge must then score the samples.
    """
    from craft.progress import log
    from craft.store import read_split

    t0 = time.monotonic()
    weights = {d: 1.0 for d in DIMENSIONS} if weights is None else dict(weights)
    train, val, test = (read_split(data_h5, s) for s in ("train", "val", "test"))
    names = train.label_names
    for split, part in (("val", val), ("test", test)):
        missing = [lab for i, lab in enumerate(names) if not (part.labels == i).any()]
        if missing:
            raise CraftError(f"{data_h5}: the {split} split has no images of {missing}")
    bank = TextBank.build(evaluator, knowledge, names)
    prompts = {lab: reference_prompts(knowledge, lab, description) for lab in names}
    rng = np.random.default_rng(seed)

    # train: neighbours and their own spacing
    neighbours, scale = {}, {}
    for i, lab in enumerate(names):
        idx = np.flatnonzero(train.labels == i)
        if len(idx) < 2:
            raise CraftError(f"{data_h5}: the train split needs 2+ images of '{lab}'")
        idx = _at_most(idx, max_per_label, rng)
        emb = embed_images(evaluator, train.images.subset(idx), batch_size)
        d = soft_knn_distance(emb, emb, knn_k, 1.0, exclude_self=True)
        s = float(d.median())
        s = float(soft_knn_distance(emb, emb, knn_k, s, exclude_self=True).median())
        neighbours[lab] = emb.cpu().numpy().astype(np.float32)
        scale[lab] = max(s, 1e-6)
    ref = Reference(
        evaluator.name,
        list(names),
        neighbours,
        scale,
        knn_k,
        {},
        {},
        weights,
        tail_quantile,
        float("nan"),
        {},
        np.zeros(0, np.float32),
        np.zeros(0, np.int64),
        aggregation=aggregation,
    )
    if aggregation not in ("arithmetic", "geometric"):
        raise CraftError(f"aggregation must be 'arithmetic' or 'geometric', got '{aggregation}'")

    # val: calibration distributions on each dimension's calibration scale, from at most
    # max_per_label images a label: every calibration compares a batch with all its kernels
    keep = [
        _at_most(np.flatnonzero(val.labels == i), max_per_label, rng) for i in range(len(names))
    ]
    cal_rows = np.sort(np.concatenate(keep))
    cal_labels = val.labels[cal_rows]
    raw, labs, pair_texts = _raw_pairs(
        evaluator, val.images.subset(cal_rows), cal_labels, prompts, bank, ref, batch_size, judge
    )
    for dim in DIMENSIONS:
        values = raw[dim].astype(np.float64)
        pooled_sd = float(values.std()) if values.size > 1 else 0.0
        floor = max(0.05 * pooled_sd, 1e-3)
        ref.calibration[dim], ref.bandwidth[dim] = {}, {}
        for i, lab in enumerate(names):
            v = np.sort(values[labs == i])
            # a (image, prompt) pair is not an independent image: Silverman's n is the images'
            n_img = int((cal_labels == i).sum())
            h = silverman_bandwidth(v) * (v.size / max(n_img, 1)) ** 0.2 * bandwidth_scale
            ref.calibration[dim][lab] = v.astype(np.float32)
            ref.bandwidth[dim][lab] = float(max(h, floor))
            if dim == "prompt_alignment":
                ref.prompt_calibration[lab], ref.prompt_bandwidth[lab] = {}, {}
                for p in prompts[lab]:
                    vp = np.sort(values[(labs == i) & (pair_texts == p)])
                    hp = silverman_bandwidth(vp) * bandwidth_scale
                    ref.prompt_calibration[lab][p] = vp.astype(np.float32)
                    ref.prompt_bandwidth[lab][p] = float(max(hp, floor))

    # test: CAS of real images with each prompt of their label, and its low tail
    cas_parts, lab_parts = [], []
    for i in range(0, len(test.images), batch_size):
        xb, yb = test.images[i : i + batch_size], test.labels[i : i + batch_size]
        xs, ys, ps = [], [], []
        for j, lab_i in enumerate(yb.tolist()):
            for p in prompts[names[lab_i]]:
                xs.append(j)
                ys.append(lab_i)
                ps.append(p)
        s = cas_dimensions(
            evaluator, xb[np.array(xs)], np.array(ys), ps, knowledge, ref, bank, judge
        )
        cas_parts.append(s["cas"].cpu().numpy())
        lab_parts.append(np.array(ys))
    ref.real_test_cas = np.concatenate(cas_parts).astype(np.float32)
    ref.real_test_labels = np.concatenate(lab_parts).astype(np.int64)
    ref.tau = float(np.percentile(ref.real_test_cas, tail_quantile))
    ref.tau_by_label = {lab: ref.real_test_percentile(lab, tail_quantile) for lab in names}
    ref.meta = {
        "evaluator": evaluator.describe(),
        "judge": getattr(judge, "source", None),
        "data": str(data_h5),
        "n_images": {"train": len(train), "val": len(val), "test": len(test)},
        "n_calibration_images": len(cal_rows),
        "prompts": prompts,
        "real_test_cas_mean": float(ref.real_test_cas.mean()),
        "seconds": round(time.monotonic() - t0, 2),
    }
    log(
        f"reference {evaluator.name}: tau {ref.tau:.3f} (q={tail_quantile:g}), real test CAS "
        f"mean {ref.real_test_cas.mean():.3f}, {time.monotonic() - t0:.1f} s"
    )
    return ref
