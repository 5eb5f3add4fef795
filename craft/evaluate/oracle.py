"""``craft evaluate oracle``: do generated phantoms show the finding they were asked for?

The phantom oracle (craft.data.oracle) measures findings with thresholds and geometry, with no
learned model, so it is independent of every generator and evaluator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from craft.config import CraftConfig
from craft.data import oracle
from craft.errors import CraftError
from craft.evaluate import write_metrics
from craft.progress import log
from craft.prompts import label_prompt
from craft.store import read_samples


def oracle_metrics(
    phantom: str,
    images: np.ndarray,
    requested: list[str],
    plain_prompt: np.ndarray | None = None,
) -> dict[str, float]:
    """Label agreement and criterion pass rate, overall and per requested label.

    With ``plain_prompt`` (per image: drawn from its plain label prompt?), also the label
    agreement on plain-prompt images and on the others (enriched prompts), where both kinds
    were drawn: a method sampling from an enriched bank can be right on its enriched prompts
    and wrong on the plain one, which the overall number hides.
    """
    agree = oracle.label_agreement(phantom, images, requested)
    passed = oracle.criterion_pass_rate(phantom, images, requested)
    requested_arr = np.array(requested)
    metrics = {
        "oracle_label_agreement": float(agree.mean()),
        "oracle_criterion_pass_rate": float(passed.mean()),
    }
    for label in sorted(set(requested)):
        sel = requested_arr == label
        metrics[f"oracle_label_agreement__{label}"] = float(agree[sel].mean())
        metrics[f"oracle_criterion_pass_rate__{label}"] = float(passed[sel].mean())
    if plain_prompt is not None and 0 < plain_prompt.sum() < len(plain_prompt):
        metrics["oracle_label_agreement_plain_prompt"] = float(agree[plain_prompt].mean())
        metrics["oracle_label_agreement_enriched_prompts"] = float(agree[~plain_prompt].mean())
    return metrics


def evaluate_oracle(
    cfg: CraftConfig, modality: str, method: str, seed: int, samples_path: Path, out: Path
) -> dict[str, float]:
    """Score a samples file with the phantom oracle and write ``metrics-oracle.json``."""
    m = cfg.modality(modality)
    if m.source.kind != "phantom":
        raise CraftError(
            f"modality '{modality}' is not a phantom: the oracle only measures phantoms"
        )
    samples = read_samples(samples_path)
    requested = [samples.label_names[i] for i in samples.labels]
    pairs = zip(samples.prompts, requested, strict=True)
    plain = np.array([p == label_prompt(m.description, r) for p, r in pairs])
    metrics = oracle_metrics(m.source.phantom, samples.images, requested, plain)
    write_metrics(
        out, modality, method, seed, "oracle", metrics, cfg.digest("evaluate", modality, method)
    )
    log(
        f"{modality}/{method}/{seed}: oracle label agreement "
        f"{metrics['oracle_label_agreement']:.3f} over {len(samples)} images"
    )
    return metrics
