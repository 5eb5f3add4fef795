"""``craft evaluate oracle``: do generated phantoms show the finding they were asked for, and
do the right ones vary as real images of their label do?

The phantom oracle (craft.data.oracle) measures findings with thresholds and geometry, with no
learned model, so it is independent of every generator and evaluator.

Label agreement cannot see a method that draws the right finding the same way every time: a
reward finetuning that puts every effusion in the same lung is right on every image. The
distribution shift compares what the oracle measures on a label's right images (which lung
holds the fluid, heart size, lung height and texture, lesion diameter, contrast, ...) with the
same measurements of the real test images the oracle also calls that label: per measurement
the two-sample Kolmogorov-Smirnov statistic (0: the same distribution, 1: disjoint; for a
yes/no measurement the difference of the two shares), averaged over measurements, then over
labels. A measurement that is one value on every real and every generated image of a label is
left out (no fluid in any normal lung: the label's criteria fix it). The reference draws as
many real validation images per label as the method has right ones and measures them the same
way: the shift that sampling noise alone gives at these sizes.
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


def measure_in_chunks(phantom: str, images, chunk: int = 256) -> oracle.OracleResult:
    """``oracle.measure`` of ``images`` (an array, or a data split's view read when indexed)
    ``chunk`` images at a time: the oracle measures each image on its own, so the result is
    the whole measurement's, and memory is a chunk's."""
    if len(images) <= chunk:
        return oracle.measure(phantom, images[:])
    parts = [oracle.measure(phantom, images[i : i + chunk]) for i in range(0, len(images), chunk)]
    cat = lambda key, get: np.concatenate([get(p)[key] for p in parts])  # noqa: E731
    return oracle.OracleResult(
        criteria={c: cat(c, lambda p: p.criteria) for c in parts[0].criteria},
        predicted=np.concatenate([p.predicted for p in parts]),
        valid=np.concatenate([p.valid for p in parts]),
        measurements={k: cat(k, lambda p: p.measurements) for k in parts[0].measurements},
    )


def _measured(
    phantom: str, images: np.ndarray, result: oracle.OracleResult | None
) -> oracle.OracleResult:
    """``result`` where given (checked to have a row per image), else a fresh measurement."""
    if result is None:
        return measure_in_chunks(phantom, images)
    if len(result.valid) != len(images):
        raise CraftError(
            f"the oracle result has {len(result.valid)} rows for {len(images)} images: pass "
            "the measurement of these images (oracle.measure) or none"
        )
    return result


def oracle_metrics(
    phantom: str,
    images: np.ndarray,
    requested: list[str],
    plain_prompt: np.ndarray | None = None,
    result: oracle.OracleResult | None = None,
) -> dict[str, float]:
    """Label agreement and criterion pass rate, overall and per requested label; ``result``:
    the oracle's measurement of ``images`` where the caller already has it.

    With ``plain_prompt`` (per image: drawn from its plain label prompt?), also the label
    agreement on plain-prompt images and on the others (enriched prompts), where both kinds
    were drawn: a method sampling from an enriched bank can be right on its enriched prompts
    and wrong on the plain one, which the overall number hides.
    """
    result = _measured(phantom, images, result)
    requested_arr = oracle.check_requested(phantom, requested, len(images))
    agree = (result.predicted == requested_arr).astype(np.float64)
    passed = oracle.pass_rate_from_criteria(phantom, result, requested)
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
    phantom: str,
    images: np.ndarray,
    labels: list[str],
    result: oracle.OracleResult | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per label, the oracle's measurements (one row per image, NaN where undefined) of the
    images it calls that label (``result``: their measurement, if the caller has it)."""
    result = _measured(phantom, images, result)
    labels_arr = np.asarray(labels)
    out: dict[str, dict[str, np.ndarray]] = {}
    for label in sorted(set(labels)):
        right = (labels_arr == label) & (result.predicted == label)
        out[label] = {
            key: np.asarray(values, dtype=np.float64)[right]
            for key, values in result.measurements.items()
        }
    return out


def _rows(measurements: dict[str, np.ndarray]) -> int:
    return len(next(iter(measurements.values()))) if measurements else 0


def _label_shift(
    generated: dict[str, np.ndarray] | None, real: dict[str, np.ndarray]
) -> dict[str, float]:
    """KS statistic per measurement of one label's generated right images against its real ones.

    Fewer than two generated values (the method drew almost no right image of the label): the
    largest shift, 1. Left out: fewer than two real values, and a measurement that is the same
    value on every real and every generated image (the label's criteria fix it, e.g. no fluid
    in a normal lung).
    """
    from scipy.stats import ks_2samp

    out = {}
    for key, b in real.items():
        b = b[~np.isnan(b)]
        if len(b) < 2:
            continue
        a = generated.get(key, np.empty(0)) if generated else np.empty(0)
        a = a[~np.isnan(a)]
        if len(a) < 2:
            out[key] = 1.0
        elif b.min() == b.max() and np.all(a == b[0]):
            continue
        else:
            out[key] = float(ks_2samp(a, b).statistic)
    return out


def distribution_shift(
    phantom: str,
    images: np.ndarray,
    requested: list[str],
    test: tuple[np.ndarray, list[str]],
    reference: tuple[np.ndarray, list[str]] | None = None,
    draws: int = 20,
    result: oracle.OracleResult | None = None,
) -> dict[str, float]:
    """How far the oracle's measurements of the right images of each requested label lie from
    those of the real ``test`` images (images, label names) the oracle also calls that label.

    With ``reference`` (the real validation split): the same shift for as many real images per
    label as the method has right ones (all of them if the split has fewer), drawn ``draws``
    times without replacement and averaged: what sampling noise alone gives at these sizes. A
    label with fewer than two right images in either split is left out of the reference.
    """
    if len(images) == 0:
        raise CraftError("the samples file has no images: run `craft generate` for this run")
    wanted = sorted(set(requested))
    in_test = _right_measurements(phantom, *test)
    real = {lab: in_test[lab] for lab in wanted if _rows(in_test.get(lab, {})) >= 2}
    if not real:
        raise CraftError(
            f"the real test split has fewer than two images the oracle calls "
            f"{' or '.join(wanted)}: check that the data file is this modality's"
        )
    if len(real) < len(wanted):
        log(
            f"distribution shift: {', '.join(sorted(set(wanted) - set(real)))} left out, "
            "the real test split has fewer than two images the oracle calls it"
        )
    generated = _right_measurements(phantom, images, requested, result)
    name = "oracle_distribution_shift"
    metrics: dict[str, float] = {}
    for label, real_label in real.items():
        per_key = _label_shift(generated.get(label), real_label)
        metrics.update({f"{name}__{label}__{k}": v for k, v in per_key.items()})
        if per_key:
            metrics[f"{name}__{label}"] = float(np.mean(list(per_key.values())))
    labels = [metrics[f"{name}__{lab}"] for lab in real if f"{name}__{lab}" in metrics]
    if labels:
        metrics[name] = float(np.mean(labels))
    if reference is not None:
        metrics.update(_reference(phantom, reference, real, generated, draws))
    return metrics


def _reference(
    phantom: str,
    split: tuple[np.ndarray, list[str]],
    real: dict[str, dict[str, np.ndarray]],
    generated: dict[str, dict[str, np.ndarray]],
    draws: int,
) -> dict[str, float]:
    """The reference shift (see :func:`distribution_shift`); fixed draws, so reruns agree."""
    name = "oracle_distribution_shift_reference"
    measured = _right_measurements(phantom, *split)
    rng = np.random.default_rng(0)
    metrics: dict[str, float] = {}
    for label, real_label in real.items():
        m, n = _rows(measured.get(label, {})), _rows(generated.get(label, {}))
        if m < 2 or n < 2:
            continue
        values = []
        for _ in range(draws):
            pick = rng.choice(m, size=min(n, m), replace=False)
            per_key = _label_shift({k: v[pick] for k, v in measured[label].items()}, real_label)
            if per_key:
                values.append(np.mean(list(per_key.values())))
        if values:
            metrics[f"{name}__{label}"] = float(np.mean(values))
    if metrics:
        metrics[name] = float(np.mean(list(metrics.values())))
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
    phantom = m.source.phantom
    result = oracle.measure(phantom, samples.images)  # once, for every metric below
    metrics = oracle_metrics(phantom, samples.images, requested, plain, result)
    if data_h5 is not None:
        test, val = _split_images(data_h5, "test"), _split_images(data_h5, "val")
        shift = distribution_shift(phantom, samples.images, requested, test, val, result=result)
        metrics.update(shift)
    write_metrics(
        out, modality, method, seed, "oracle", metrics, cfg.spec("evaluate_oracle", modality).digest
    )
    log(
        f"{modality}/{method}/{seed}: oracle label agreement "
        f"{metrics['oracle_label_agreement']:.3f} over {len(samples)} images"
        + (
            f", distribution shift {metrics['oracle_distribution_shift']:.3f}"
            if "oracle_distribution_shift" in metrics
            else ""
        )
        + (
            f" (real val images, as many: {metrics['oracle_distribution_shift_reference']:.3f})"
            if "oracle_distribution_shift_reference" in metrics
            else ""
        )
    )
    return metrics
