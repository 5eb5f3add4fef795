"""``craft evaluate oracle``: do generated phantoms show the finding they were asked for, and
do the right ones vary as real images of their label do?

The phantom oracle (craft.data.oracle) measures findings with thresholds and geometry, with no
learned model, so it is independent of every generator and evaluator.

Label agreement cannot see a method that draws the right finding the same way every time: a
reward finetuning that puts every effusion in the same lung is right on every image. The
distribution shift compares what the oracle measures on a label's right images (which lung
holds the fluid, heart size, lung height and texture, lesion diameter, contrast, ...) with the
same measurements of the real test images of that label: per measurement the two-sample
Kolmogorov-Smirnov statistic (0: the same distribution, 1: disjoint; for a yes/no measurement
the difference of the two shares), averaged over measurements, then over labels. Measurements
that do not vary among a label's real images (no fluid in any normal lung) are left out: the
label's criteria fix them. The real validation split against the test split gives the
reference: the shift that sampling noise alone gives at these sizes.
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
from craft.store import read_samples, read_split


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


def _right_measurements(
    phantom: str, images: np.ndarray, labels: list[str]
) -> dict[str, dict[str, np.ndarray]]:
    """Per label, the oracle's measurements of the images it calls that label (NaNs dropped)."""
    result = oracle.measure(phantom, images)
    labels_arr = np.asarray(labels)
    out: dict[str, dict[str, np.ndarray]] = {}
    for label in sorted(set(labels)):
        right = (labels_arr == label) & (result.predicted == label)
        out[label] = {}
        for key, values in result.measurements.items():
            v = np.asarray(values, dtype=np.float64)[right]
            out[label][key] = v[~np.isnan(v)]
    return out


def _shift(
    generated: dict[str, dict[str, np.ndarray]],
    real: dict[str, dict[str, np.ndarray]],
    prefix: str,
    per_measurement: bool,
) -> dict[str, float]:
    """KS statistics of ``generated`` against ``real`` per label (and measurement), averaged.

    A measurement with fewer than two generated values (the method drew almost no right image
    of the label) counts as the largest shift, 1. One with fewer than two real values, or the
    same value on every real image, is left out (see the module doc).
    """
    from scipy.stats import ks_2samp

    metrics: dict[str, float] = {}
    per_label = []
    for label, reference in real.items():
        stats = []
        for key, b in reference.items():
            if len(b) < 2 or b.min() == b.max():
                continue
            a = generated.get(label, {}).get(key, np.empty(0))
            ks = float(ks_2samp(a, b).statistic) if len(a) >= 2 else 1.0
            stats.append(ks)
            if per_measurement:
                metrics[f"{prefix}__{label}__{key}"] = ks
        if stats:
            metrics[f"{prefix}__{label}"] = float(np.mean(stats))
            per_label.append(metrics[f"{prefix}__{label}"])
    if per_label:
        metrics[prefix] = float(np.mean(per_label))
    return metrics


def distribution_shift(
    phantom: str,
    images: np.ndarray,
    requested: list[str],
    test: tuple[np.ndarray, list[str]],
    reference: tuple[np.ndarray, list[str]] | None = None,
) -> dict[str, float]:
    """How far the oracle's measurements of the right images of each requested label lie from
    those of real ``test`` images (images, label names) of that label; with ``reference`` (the
    real validation split), the same for it: the noise floor (see the module doc)."""
    real = _right_measurements(phantom, *test)
    real = {label: real[label] for label in sorted(set(requested)) if label in real}
    if not real:
        raise CraftError(
            f"the real test split has no image the oracle calls one of "
            f"{', '.join(sorted(set(requested)))}: check that the data file is this modality's"
        )
    generated = _right_measurements(phantom, images, requested)
    metrics = _shift(generated, real, "oracle_distribution_shift", per_measurement=True)
    if reference is not None:
        ref = _right_measurements(phantom, *reference)
        key = "oracle_distribution_shift_reference"
        metrics.update(_shift(ref, real, key, per_measurement=False))
    return metrics


def _split_images(data_h5: Path, split: str) -> tuple[np.ndarray, list[str]]:
    s = read_split(data_h5, split)
    return s.images, [s.label_names[i] for i in s.labels]


def evaluate_oracle(
    cfg: CraftConfig,
    modality: str,
    method: str,
    seed: int,
    samples_path: Path,
    out: Path,
    data_h5: Path | None = None,
) -> dict[str, float]:
    """Score a samples file with the phantom oracle and write ``metrics-oracle.json``; with
    ``data_h5`` (the prepared data file), also the distribution shift against its test split."""
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
    if data_h5 is not None:
        test, val = _split_images(data_h5, "test"), _split_images(data_h5, "val")
        metrics.update(distribution_shift(m.source.phantom, samples.images, requested, test, val))
    write_metrics(
        out, modality, method, seed, "oracle", metrics, cfg.digest("evaluate", modality, method)
    )
    log(
        f"{modality}/{method}/{seed}: oracle label agreement "
        f"{metrics['oracle_label_agreement']:.3f} over {len(samples)} images"
        + (
            f", distribution shift {metrics['oracle_distribution_shift']:.3f} "
            f"(real val vs test {metrics['oracle_distribution_shift_reference']:.3f})"
            if {"oracle_distribution_shift", "oracle_distribution_shift_reference"} <= set(metrics)
            else ""
        )
    )
    return metrics
