"""``craft audit``: does each checklist item hold as expected, judged by someone other than the
reward evaluator?

For every generated image with requested label y and every checklist item k that applies to y,
an auditor says whether k's statement holds; the image passes item k when that matches what
label y expects (an absence item passes when the finding is absent). Auditors:

- ``oracle`` (phantoms): the oracle's measured criterion behind the item (``oracle_criterion``;
  items without one are not judged). No learned model at all.
- an out-of-family evaluator of ``cas.evaluators`` (another model family than the reward's):
  its log-odds of statement vs negation > 0 (the CAS checklist item log-odds), or, when that
  evaluator has an MLLM ``judge``, the judge's log P("yes") - log P("no") > 0.

The reward evaluator is refused: it is what CRAFT was trained on, so it cannot audit CRAFT.

Metrics: ``audit_pass_rate`` (mean over auditors), ``audit_pass_rate__{auditor}`` (share of
judged (image, item) pairs that pass) and ``audit_pass_rate__{auditor}__{label}``. Artifacts:
``audit.csv`` (auditor, item, finding, label, expected, n_images, pass_rate) and ``audit.png``
(a heatmap of items x labels per auditor).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from craft.cas.knowledge_view import item_expected, statement_holds
from craft.errors import CraftError
from craft.evaluate import write_metrics
from craft.evaluate.settings import AuditConfig
from craft.progress import log
from craft.store import read_samples

ORACLE = "oracle"
CSV_COLUMNS = ("auditor", "item", "finding", "label", "expected", "n_images", "pass_rate")


def oracle_item_holds(phantom: str, images: np.ndarray, knowledge: Any) -> np.ndarray:
    """(N, K) 1.0/0.0: does item k's statement hold on image n, by the oracle; NaN for items
    with no oracle criterion."""
    from craft.data import oracle

    result = oracle.measure(phantom, images)
    holds = np.full((len(images), len(knowledge.checklist)), np.nan)
    for k, item in enumerate(knowledge.checklist):
        h = statement_holds(item, result.criteria)
        if h is not None:
            holds[:, k] = h.astype(np.float64)
    return holds


def evaluator_item_holds(
    evaluator: Any, images: np.ndarray, knowledge: Any, judge: Any = None, batch_size: int = 64
) -> np.ndarray:
    """(N, K) 1.0/0.0: item k's log-odds > 0 on image n, by a VLM evaluator (statement vs
    negation) or by its MLLM ``judge`` (P("yes") vs P("no") to the item's question)."""
    import torch

    from craft.cas.evaluators import to_model_range
    from craft.cas.score import ChecklistTexts

    items = list(knowledge.checklist)
    statements = [it.statement for it in items]
    negations = [it.negation for it in items]
    texts = ChecklistTexts(
        statements,
        negations,
        [getattr(it, "question", it.statement) for it in items],
        evaluator.encode_texts(statements),
        evaluator.encode_texts(negations),
    )
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = to_model_range(images[i : i + batch_size]).to(evaluator.device)
            emb = evaluator.encode_images(x)
            if judge is not None:
                lo = judge.item_log_odds(x, emb, texts)
            else:
                lo = evaluator.statement_log_odds(emb, texts.statement_emb, texts.negation_emb)
            out.append((lo > 0).float().cpu().numpy())
    if not out:
        return np.zeros((0, len(items)))
    return np.concatenate(out).astype(np.float64)


def audit_rows(
    auditor: str, holds: np.ndarray, labels: np.ndarray, label_names: list[str], knowledge: Any
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Per (item, label) pass rates from ``holds`` (N, K; NaN = not judged), for the labels
    that images were asked for.

    Returns the table rows (``CSV_COLUMNS``) and (N, K) pass values (1/0, NaN where the item
    does not apply to the image's label or was not judged).
    """
    items = list(knowledge.checklist)
    if holds.shape != (len(labels), len(items)):
        raise CraftError(
            f"auditor '{auditor}' judged {holds.shape} (images x items), expected "
            f"{(len(labels), len(items))}"
        )
    passed = np.full(holds.shape, np.nan)
    rows = []
    for li, label in enumerate(label_names):
        sel = labels == li
        if not sel.any():
            continue  # no image asked for this label
        for k, item in enumerate(items):
            exp = item_expected(item, label)
            if exp is None:
                continue
            h = holds[sel, k]
            judged = ~np.isnan(h)
            p = (h[judged] == float(exp)).astype(np.float64)
            passed[np.flatnonzero(sel)[judged], k] = p
            rows.append(
                {
                    "auditor": auditor,
                    "item": str(item.id),
                    "finding": str(getattr(item, "finding", item.id)),
                    "label": label,
                    "expected": bool(exp),
                    "n_images": int(judged.sum()),
                    "pass_rate": float(p.mean()) if len(p) else float("nan"),
                }
            )
    return rows, passed


def audit_metrics(
    passed: dict[str, np.ndarray], labels: np.ndarray, label_names: list[str]
) -> dict[str, float]:
    """``audit_pass_rate`` (mean over auditors) and per auditor / per label pass rates."""
    metrics: dict[str, float] = {}
    per_auditor = []
    for auditor, p in passed.items():
        rate = float(np.nanmean(p)) if np.isfinite(p).any() else float("nan")
        metrics[f"audit_pass_rate__{auditor}"] = rate
        per_auditor.append(rate)
        for li, label in enumerate(label_names):
            q = p[labels == li]
            if np.isfinite(q).any():
                metrics[f"audit_pass_rate__{auditor}__{label}"] = float(np.nanmean(q))
    finite = [r for r in per_auditor if np.isfinite(r)]
    metrics["audit_pass_rate"] = float(np.mean(finite)) if finite else float("nan")
    return metrics


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """The audit table as CSV (atomically)."""
    import pandas as pd

    from craft.atomic import atomic_write_text

    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    return atomic_write_text(Path(path), table.to_csv(index=False, float_format="%.4f"))


def heatmap(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """One heatmap panel per auditor: items (rows) x labels (columns), pass rate in colour;
    grey where the item does not apply to the label or the auditor cannot judge it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    auditors = list(dict.fromkeys(r["auditor"] for r in rows))
    items = list(dict.fromkeys(r["item"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig, axes = plt.subplots(
        1,
        max(len(auditors), 1),
        figsize=(1.0 + 1.1 * len(labels) * max(len(auditors), 1) + 1.6, 0.9 + 0.38 * len(items)),
        squeeze=False,
    )
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#dddddd")
    for a, auditor in enumerate(auditors):
        m = np.full((len(items), len(labels)), np.nan)
        for r in rows:
            if r["auditor"] == auditor:
                m[items.index(r["item"]), labels.index(r["label"])] = r["pass_rate"]
        ax = axes[0, a]
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for i in range(len(items)):
            for j in range(len(labels)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(items)), items if a == 0 else [""] * len(items), fontsize=8)
        ax.set_title(auditor, fontsize=9)
    fig.colorbar(im, ax=axes[0, -1], fraction=0.08, label="pass rate")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def check_auditors(settings: AuditConfig, cas: Any, phantom: str | None) -> list[str]:
    """The auditors to run (:meth:`AuditConfig.auditor_names`), as a one-line CraftError when
    the config names the reward evaluator or an unknown one."""
    try:
        names = settings.auditor_names(cas, phantom)
    except ValueError as err:
        raise CraftError(str(err)) from None
    if phantom is None and settings.auditors is not None and ORACLE in settings.auditors:
        log("audit: skipping the oracle (the modality is not a phantom)")
    return names


def audit(
    settings: AuditConfig,
    cas: Any,
    samples_h5: Path,
    knowledge: Any,
    out: Path,
    modality: str,
    method: str,
    seed: int,
    config_digest: str,
    phantom: str | None = None,
    load_auditor: Any = None,
    artifacts: Path | None = None,
) -> dict[str, float]:
    """Audit a samples file's checklist with every configured auditor -> metrics, CSV, PNG.

    ``cas`` is the CAS config node (which evaluator is the reward); ``phantom`` the phantom
    modality or None; ``load_auditor(name) -> (evaluator, judge or None)`` loads an evaluator
    (the CLI passes craft.cas.stages' loaders).
    """
    t0 = time.monotonic()
    artifacts = Path(artifacts) if artifacts is not None else Path(out).parent
    auditors = check_auditors(settings, cas, phantom)
    samples = read_samples(samples_h5)
    names = list(samples.label_names)
    missing = [lab for lab in names if lab not in knowledge.labels]
    if missing:
        raise CraftError(
            f"{samples_h5} has labels {missing} that the knowledge of {modality} lacks; "
            "rebuild the knowledge for this config"
        )
    if not list(knowledge.checklist):
        raise CraftError(f"the knowledge of {modality} has no checklist items to audit")
    rows: list[dict[str, Any]] = []
    passed: dict[str, np.ndarray] = {}
    for name in auditors:
        if name == ORACLE:
            holds = oracle_item_holds(phantom, samples.images, knowledge)
            if np.isnan(holds).all():
                raise CraftError(
                    f"the {modality} checklist names no oracle_criterion: the oracle cannot "
                    "audit it (use curated phantom knowledge)"
                )
        else:
            if load_auditor is None:
                raise CraftError(f"audit: no loader given for evaluator '{name}'")
            evaluator, judge = load_auditor(name)
            holds = evaluator_item_holds(
                evaluator, samples.images, knowledge, judge, settings.batch_size
            )
        r, p = audit_rows(name, holds, samples.labels, names, knowledge)
        rows += r
        passed[name] = p
    metrics = audit_metrics(passed, samples.labels, names)
    write_csv(rows, artifacts / "audit.csv")
    heatmap(rows, artifacts / "audit.png", f"{modality} / {method} / seed {seed}: checklist audit")
    write_metrics(out, modality, method, seed, "audit", metrics, config_digest)
    log(
        f"{modality}/{method}/{seed}: audit pass rate {metrics['audit_pass_rate']:.3f} ("
        + ", ".join(f"{a} {metrics[f'audit_pass_rate__{a}']:.3f}" for a in auditors)
        + f") over {len(samples)} images in {time.monotonic() - t0:.1f} s"
    )
    return metrics
