"""The Clinical Alignment Score of images: four dimensions, calibration, CAS, the tail.

docs/design.md, "The four CAS dimensions". For images x with requested labels y and prompts p,
with evaluator E (image embedding e = E(x), L2-normalised):

1. label fidelity      P(y | x) = softmax_l(logits(e, t_l))_y, t_l = the mean embedding of
                       label l's enriched prompts (prompt ensembling, Radford et al. 2021, 3.1.4);
2. prompt alignment    cos(e, E(p)), the image's similarity to its own prompt (CLIPScore-like);
3. checklist adherence sum_k w_yk * P(item k as expected | x) / sum_k w_yk over y's applicable
                       items, P(statement) = softmax over [statement, negation] (or an MLLM's
                       P("yes"), VQAScore, Lin et al. 2024), 1 - P(statement) where the
                       statement should NOT hold for y;
4. plausibility        -d_knn(e, R_y) / s_y: soft k-NN distance to REAL train embeddings R_y of
                       label y, in units of the real-to-real k-NN distance s_y.

Each raw dimension is calibrated by the kernel-smoothed CDF of the same dimension on REAL
held-out images of label y (craft.cas.reference), so a real image scores ~U(0, 1) on each, and
CAS = the weighted mean of the calibrated dimensions: geometric by default (every dimension
must hold; an image the evaluator calls confidently 'normal' but that lies far from every
real image stays low), or arithmetic (``cas.aggregation``). ``log_cas`` = sum_d w_d log F_d /
sum_d w_d is the reward's form: computed with log Phi, its gradient does not vanish far from
the real images. All of it is torch and differentiable in the pixels: :func:`cas_dimensions`
is the evaluation metric under ``torch.no_grad()`` and the CRAFT reward with gradients.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from craft.cas import DIMENSIONS
from craft.cas.evaluators import Evaluator, to_model_range
from craft.cas.knowledge_view import checklist_matrix, prompt_texts
from craft.errors import CraftError

if TYPE_CHECKING:
    from craft.cas.reference import Reference

#: Dimensions that are probabilities: calibrated on their log-odds (a saturated 0.999 vs
#: 0.9999 stays distinguishable and the kernel CDF keeps a gradient).
PROBABILITY_DIMENSIONS = ("label_fidelity", "checklist_adherence")


class ChecklistJudge(Protocol):
    """Answers checklist items about images: (N, K) log-odds that statement k holds for image n.

    The VLM evaluator answers through [statement, negation] similarity; an MLLM judge
    (craft.cas.judge) through log P("yes") - log P("no") to the item's question.
    """

    def item_log_odds(
        self, x: torch.Tensor, img_emb: torch.Tensor, items: ChecklistTexts
    ) -> torch.Tensor: ...


@dataclass
class ChecklistTexts:
    """The checklist's texts and embeddings, for any judge."""

    statements: list[str]
    negations: list[str]
    questions: list[str]
    statement_emb: torch.Tensor  # (K, D)
    negation_emb: torch.Tensor  # (K, D)


class VLMJudge:
    """The evaluator itself: P(statement) = softmax over [statement, negation]."""

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator

    def item_log_odds(self, x, img_emb, items: ChecklistTexts) -> torch.Tensor:
        return self.evaluator.statement_log_odds(img_emb, items.statement_emb, items.negation_emb)


@dataclass
class TextBank:
    """Everything text-side that scoring needs, embedded once per evaluator and knowledge."""

    label_names: list[str]
    label_emb: torch.Tensor  # (L, D) normalised mean of each label's prompt embeddings
    checklist: ChecklistTexts
    item_weight: torch.Tensor  # (L, K) weight where item k applies to label l, else 0
    item_expected: torch.Tensor  # (L, K) bool: the statement should hold for label l

    @classmethod
    @torch.no_grad()
    def build(cls, evaluator: Evaluator, knowledge: Any, label_names: Sequence[str]) -> TextBank:
        """Embed every label's prompts and the checklist with ``evaluator``."""
        label_names = list(label_names)
        rows = []
        for lab in label_names:
            texts = prompt_texts(knowledge, lab)
            if not texts:
                raise CraftError(f"knowledge has no prompts for label '{lab}'")
            rows.append(F.normalize(evaluator.encode_texts(texts).mean(0), dim=-1))
        m = checklist_matrix(knowledge, label_names)
        questions = [getattr(it, "question", it.statement) for it in knowledge.checklist]
        items = ChecklistTexts(
            m.statements,
            m.negations,
            questions,
            evaluator.encode_texts(m.statements),
            evaluator.encode_texts(m.negations),
        )
        dev = evaluator.device
        return cls(
            label_names,
            torch.stack(rows),
            items,
            torch.from_numpy(m.weight).to(dev),
            torch.from_numpy(m.expected).to(dev),
        )


def label_indices(
    labels: Sequence | np.ndarray | torch.Tensor, label_names: Sequence[str]
) -> torch.Tensor:
    """Label strings or indices -> (N,) int64 indices into ``label_names``."""
    if isinstance(labels, torch.Tensor):
        return labels.long()
    arr = np.asarray(labels)
    if arr.dtype.kind in "iu":
        return torch.from_numpy(arr.astype(np.int64))
    names = list(label_names)
    unknown = sorted(set(arr.tolist()) - set(names))
    if unknown:
        raise CraftError(f"labels {unknown} are not in the reference's labels {names}")
    return torch.tensor([names.index(v) for v in arr.tolist()], dtype=torch.int64)


# ----------------------------------------------------------------------------- raw dimensions


def soft_knn_distance(
    emb: torch.Tensor,
    real: torch.Tensor,
    k: int,
    scale: float | torch.Tensor,
    exclude_self: bool = False,
) -> torch.Tensor:
    """(N,) soft k-NN distance of each row of ``emb`` to the rows of ``real`` (both normalised).

    The k nearest real embeddings, weighted by softmax(-d / scale): differentiable, and close to
    the nearest neighbour's distance when one neighbour stands out.
    """
    d = (2.0 - 2.0 * emb @ real.T).clamp_min(1e-8).sqrt()  # Euclidean on the unit sphere
    if exclude_self:  # leave-one-out within the real set itself
        d = d + torch.eye(d.shape[0], d.shape[1], device=d.device) * 1e6
        k = min(k, real.shape[0] - 1)
    dk = torch.topk(d, min(k, real.shape[0]), dim=1, largest=False).values
    w = torch.softmax(-dk / scale, dim=1)
    return (w * dk).sum(1)


def raw_dimensions(
    evaluator: Evaluator,
    x: torch.Tensor,
    y: torch.Tensor,
    prompts: Sequence[str] | None,
    bank: TextBank,
    reference: Reference | None,
    judge: ChecklistJudge | None = None,
) -> dict[str, torch.Tensor]:
    """Uncalibrated dimensions (N,) of float NCHW images ``x`` in [-1, 1] for labels ``y``.

    ``prompts`` None skips prompt alignment; ``reference`` None skips plausibility.
    Also returns ``embedding`` (N, D).
    """
    y = y.to(evaluator.device)
    emb = evaluator.encode_images(x)
    rows = torch.arange(len(y), device=emb.device)
    # 1. label fidelity: zero-shot probability of the requested label among all labels, and
    #    its exact log-odds log p_y - log(1 - p_y) (no saturation, for the calibration)
    logp = torch.log_softmax(evaluator.similarity_logits(emb, bank.label_emb), dim=1)
    log_py = logp[rows, y]
    others = logp.masked_fill(F.one_hot(y, logp.shape[1]).bool(), float("-inf"))
    out = {
        "embedding": emb,
        "label_fidelity": log_py.exp(),
        "label_fidelity_log_odds": log_py - torch.logsumexp(others, dim=1),
    }
    # 2. prompt alignment: cosine similarity to the image's own prompt
    if prompts is not None:
        if len(prompts) != len(y):
            raise CraftError(f"got {len(prompts)} prompts for {len(y)} images")
        out["prompt_alignment"] = (emb * evaluator.encode_texts(list(prompts))).sum(1)
    # 3. checklist adherence: weighted mean P(item as the label expects it), and its log-odds,
    #    both from log-sigmoids of each item's log-odds a_k:
    #    log sum_k w_k sigmoid(+-a_k) - log sum_k w_k
    judge = judge or VLMJudge(evaluator)
    a = judge.item_log_odds(x, emb, bank.checklist)  # (N, K)
    w, expected = bank.item_weight[y], bank.item_expected[y]
    a = torch.where(expected, a, -a)  # log-odds of "as expected"
    log_w = torch.log(w).masked_fill(w <= 0, float("-inf"))
    has = (w > 0).any(1)
    log_ok = torch.logsumexp(F.logsigmoid(a) + log_w, dim=1)
    log_not = torch.logsumexp(F.logsigmoid(-a) + log_w, dim=1)
    log_total = torch.log(w.sum(1).clamp_min(1e-12))
    out["checklist_adherence"] = torch.where(has, (log_ok - log_total).exp(), 0.5)
    out["checklist_adherence_log_odds"] = torch.where(has, log_ok - log_not, 0.0)
    # the checklist's log-likelihood, sum_k w_k log P(item k as expected) / sum_k w_k: unlike
    # the adherence (a mean of probabilities, flat once an item is surely wrong), each item's
    # gradient is sigmoid(-a_k), near 1 for an item the evaluator sees wrong, near 0 once right
    loglik = (F.logsigmoid(a) * w).sum(1) / w.sum(1).clamp_min(1e-12)
    out["checklist_loglik"] = torch.where(has, loglik, 0.0)
    # 4. plausibility: closeness to real images of the label, in real-to-real units
    if reference is not None:
        out["plausibility"] = reference.plausibility(emb, y)
    return out


def calibration_scale(dimension: str, raw: dict[str, torch.Tensor]) -> torch.Tensor:
    """The values a dimension is calibrated on: log-odds for probabilities, else the raw value."""
    if dimension in PROBABILITY_DIMENSIONS:
        return raw[f"{dimension}_log_odds"]
    return raw[dimension]


def cas_dimensions(
    evaluator: Evaluator,
    images: torch.Tensor | np.ndarray,
    labels: Sequence | np.ndarray | torch.Tensor,
    prompts: Sequence[str],
    knowledge: Any,
    reference: Reference,
    bank: TextBank | None = None,
    judge: ChecklistJudge | None = None,
    linear_below: float | None = None,
) -> dict[str, torch.Tensor]:
    """The four calibrated dimensions, their raw values (``{dim}_raw``), ``cas`` and
    ``log_cas`` (sum_d w_d log dim / sum_d w_d, the reward's form), each (N,), and the raw
    ``checklist_loglik`` (the mean log P(item as expected), a reward term; not calibrated).
    ``linear_below``: see :meth:`Reference.log_calibrate` (the reward sets it).

    ``images``: float NCHW in [-1, 1] (the sampler's output; differentiable) or uint8 NHWC.
    ``labels``: requested label names or indices into ``reference.label_names``.
    Wrap in ``torch.no_grad()`` for evaluation; with gradients, ``cas`` is the CRAFT reward.
    """
    if evaluator.name != reference.evaluator:
        raise CraftError(
            f"reference was built with evaluator '{reference.evaluator}', not '{evaluator.name}'"
        )
    x = to_model_range(images)
    y = label_indices(labels, reference.label_names).to(evaluator.device)
    bank = bank or TextBank.build(evaluator, knowledge, reference.label_names)
    raw = raw_dimensions(evaluator, x, y, prompts, bank, reference, judge)
    out: dict[str, torch.Tensor] = {}
    logs: dict[str, torch.Tensor] = {}
    for dim in DIMENSIONS:
        out[f"{dim}_raw"] = raw[dim]
        logs[dim] = reference.log_calibrate(
            dim, calibration_scale(dim, raw), y, list(prompts), linear_below
        )
        out[dim] = logs[dim].exp()
    out["cas"] = reference.combine(out)
    out["log_cas"] = reference.log_combine(logs)
    out["checklist_loglik"] = raw["checklist_loglik"]
    return out


def cas_reward(
    evaluator: Evaluator,
    images: torch.Tensor,
    labels,
    prompts: Sequence[str],
    knowledge: Any,
    reference: Reference,
    bank: TextBank | None = None,
    log: bool = True,
    power: float = 1.0,
    checklist_weight: float = 0.0,
    cap: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N,) differentiable CAS of sampler images (float NCHW in [-1, 1]): the CRAFT reward.

    ``log`` (default): the weighted mean log calibrated dimension (``log_cas``), whose gradient
    stays alive for images far outside the real distribution, each kernel's log CDF linear
    below :data:`REWARD_LINEAR_TAIL` so that no image's gradient grows with its distance;
    else ``cas`` itself, or ``cas ** power``. ``checklist_weight`` > 0 adds that times
    ``checklist_loglik``: a gradient for each checklist item the evaluator sees wrong, where
    ``cas`` is flat at 0. ``cap`` (per label index): CAS above it earns nothing more (its log
    in the log form), so an image already as aligned as real images of its label are is not
    pushed past them.
    """
    from craft.cas.reference import REWARD_LINEAR_TAIL

    tail = REWARD_LINEAR_TAIL if log else None
    s = cas_dimensions(
        evaluator, images, labels, prompts, knowledge, reference, bank, linear_below=tail
    )
    c = s["cas"]
    per_image = None if cap is None else cap.to(c)[torch.as_tensor(labels, device=c.device)]
    if log:
        r = s["log_cas"] if cap is None else torch.minimum(s["log_cas"], per_image.log())
    else:
        c = c if cap is None else torch.minimum(c, per_image)
        r = c if power == 1.0 else c.clamp_min(1e-6) ** power
    return r + checklist_weight * s["checklist_loglik"] if checklist_weight else r


# ----------------------------------------------------------------------------- the tail


def bootstrap_ci(
    flags: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean over images (resampling images)."""
    flags = np.asarray(flags, dtype=np.float64)
    if flags.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = flags[rng.integers(0, flags.size, size=(n_boot, flags.size))].mean(1)
    a = (1.0 - level) / 2.0
    return float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))


def cas_metrics(
    scores: dict[str, np.ndarray],
    labels: np.ndarray,
    label_names: Sequence[str],
    tau: float,
    evaluator_name: str,
    n_boot: int = 1000,
    oracle_pass_rate: np.ndarray | None = None,
) -> dict[str, float]:
    """The report's CAS rows for one evaluator: means, tail rate with CI, per label, Spearman.

    Names: ``cas_mean__{ev}``, ``tail_rate__{ev}`` (+ ``_ci_low``/``_ci_high``), each
    calibrated dimension ``{dim}__{ev}``, per label ``...__{ev}__{label}``, and
    ``cas_oracle_spearman__{ev}`` when the oracle's pass rates are given.
    """
    from scipy.stats import spearmanr

    ev = evaluator_name
    cas = np.asarray(scores["cas"], dtype=np.float64)
    tail = cas < tau
    lo, hi = bootstrap_ci(tail, n_boot)
    m: dict[str, float] = {
        f"cas_mean__{ev}": float(cas.mean()),
        f"tail_rate__{ev}": float(tail.mean()),
        f"tail_rate_ci_low__{ev}": lo,
        f"tail_rate_ci_high__{ev}": hi,
    }
    for dim in DIMENSIONS:
        m[f"{dim}__{ev}"] = float(np.mean(scores[dim]))
    for i, lab in enumerate(label_names):
        sel = labels == i
        if not sel.any():
            continue
        m[f"cas_mean__{ev}__{lab}"] = float(cas[sel].mean())
        m[f"tail_rate__{ev}__{lab}"] = float(tail[sel].mean())
    if oracle_pass_rate is not None:
        # undefined (NaN: 'missing' in the report) when either side is constant, e.g. every
        # image meets every criterion
        varies = np.ptp(cas) > 0 and np.ptp(oracle_pass_rate) > 0
        rho = spearmanr(cas, oracle_pass_rate).statistic if varies else float("nan")
        m[f"cas_oracle_spearman__{ev}"] = float(rho)
    return m


# ----------------------------------------------------------------------------- samples


def score_samples(
    evaluator: Evaluator,
    samples_path: Path,
    knowledge: Any,
    reference: Reference,
    out: Path,
    config_digest: str,
    batch_size: int = 64,
    n_boot: int = 1000,
    phantom: str | None = None,
    judge: ChecklistJudge | None = None,
) -> dict[str, float]:
    """Score a samples file into ``cas-{evaluator}.h5`` (resumable) and return its metrics.

    Per image: each dimension raw and calibrated, ``cas`` and ``tail`` (CAS < tau). With
    ``phantom`` (a phantom modality), also the Spearman correlation of CAS with the oracle's
    criterion pass rate.
    """
    from craft.progress import log, progress
    from craft.store import AppendWriter, json_attr, open_h5

    with open_h5(samples_path, "samples") as f:
        n = int(f["labels"].shape[0])
        names = json_attr(f, "labels")
    if list(names) != list(reference.label_names):
        raise CraftError(
            f"{samples_path} has labels {names}, the reference {reference.label_names}"
        )
    fields: dict[str, tuple[tuple[int, ...], Any]] = {"labels": ((), np.int64)}
    for dim in DIMENSIONS:
        fields[dim] = ((), np.float32)
        fields[f"{dim}_raw"] = ((), np.float32)
    fields["cas"] = ((), np.float32)
    fields["log_cas"] = ((), np.float32)
    fields["tail"] = ((), np.uint8)
    attrs = {
        "labels": list(names),
        "evaluator": json.dumps(evaluator.describe()),
        "tau": float(reference.tau),
        "tail_quantile": float(reference.tail_quantile),
        "weights": dict(reference.weights),
        "aggregation": reference.aggregation,
        "reference_digest": reference.digest,
        "samples": str(samples_path),
    }
    writer = AppendWriter(Path(out), "cas", config_digest, fields, n, attrs=attrs)
    bank = TextBank.build(evaluator, knowledge, reference.label_names)
    t0, start = time.monotonic(), writer.done
    try:
        with open_h5(samples_path, "samples") as f:
            starts = range(writer.done, n, batch_size)
            for i in progress(starts, len(starts), f"CAS ({evaluator.name})"):
                j = min(i + batch_size, n)
                labels = f["labels"][i:j].astype(np.int64)
                prompts = [p.decode() if isinstance(p, bytes) else p for p in f["prompts"][i:j]]
                with torch.no_grad():
                    s = cas_dimensions(
                        evaluator,
                        f["images"][i:j],
                        labels,
                        prompts,
                        knowledge,
                        reference,
                        bank,
                        judge,
                    )
                row = {k: s[k].float().cpu().numpy() for k in fields if k in s}
                row["labels"] = labels
                row["tail"] = (row["cas"] < reference.tau).astype(np.uint8)
                writer.append(row)
        writer.finish()
    finally:
        writer.close()
    seconds = time.monotonic() - t0
    if n > start:
        log(
            f"scored {n - start} images with {evaluator.name} in {seconds:.1f} s "
            f"({(n - start) / max(seconds, 1e-9):.1f} images/s)"
        )
    scores = read_scores(out)
    pass_rate = None
    if phantom is not None:
        from craft.data import oracle

        with open_h5(samples_path, "samples") as f:
            images = f["images"][()]
        pass_rate = oracle.criterion_pass_rate(
            phantom, images, [names[i] for i in scores["labels"]]
        )
    return cas_metrics(
        scores, scores["labels"], names, reference.tau, evaluator.name, n_boot, pass_rate
    )


def read_scores(path: Path) -> dict[str, np.ndarray]:
    """Every per-image column of a ``cas-{evaluator}.h5`` file."""
    from craft.store import open_h5

    with open_h5(path, "cas") as f:
        return {k: f[k][()] for k in f}
