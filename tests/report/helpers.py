"""Small metric files, samples.h5 files and a benchmark-like set of runs for the report tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from craft.store import STR, atomic_h5, image_dataset


def metrics_json(modality, method, seed, stage, metrics, **extra) -> dict:
    return {
        "modality": modality,
        "method": method,
        "seed": seed,
        "stage": stage,
        "metrics": metrics,
        "provenance": {"config_digest": "abc123", "craft_version": "0.1.0"},
        **extra,
    }


def write_samples(path: Path, labels: list[str], n_per_label: int, channels: int, size=32) -> Path:
    """Small samples.h5: label k drawn as a disc of brightness/colour depending on k."""
    yy, xx = np.mgrid[:size, :size]
    images, lab, prompts, seeds = [], [], [], []
    rng = np.random.default_rng(len(labels) + channels)
    for k, name in enumerate(labels):
        for i in range(n_per_label):
            r = size / 6 + i % 4
            disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < r * r
            img = np.full((size, size, channels), 20, np.uint8)
            colour = (
                [80 + 60 * k, 200 - 50 * k, 120][:channels]
                if channels == 3
                else [min(250, 90 + 70 * k)]
            )
            img[disc] = colour
            img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
            images.append(img)
            lab.append(k)
            prompts.append(f"a {name} image")
            seeds.append(1000 + len(seeds))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(path, "samples", "digest", attrs={"labels": labels}) as f:
        image_dataset(f, "images", np.stack(images))
        f.create_dataset("labels", data=np.array(lab, np.int64))
        f.create_dataset("prompts", data=prompts, dtype=STR)
        f.create_dataset("seeds", data=np.array(seeds, np.int64))
    return path


# ----------------------------------------------------------------------------- benchmark-like

#: The default config's six methods, its two phantom modalities and two CAS evaluators.
BENCH_METHODS = ["zero-shot", "lora", "lora-enriched", "full", "generic-reward", "craft"]
BENCH_LABELS = {
    "phantom-cxr": ["normal", "cardiomegaly", "effusion", "nodule"],
    "phantom-derm": ["nevus", "melanoma"],
}
EVALUATORS = ["clip", "siglip"]
START = "lora-enriched"


def bench_values(seeds=(0, 1, 2)) -> dict[tuple[str, str, int], dict[str, float]]:
    """{(modality, method, seed): {metric: value}}: every stage's metrics under their real
    names, craft best on CAS and the oracle, the others in between."""
    rng = np.random.default_rng(3)
    out = {}
    for modality, labels in BENCH_LABELS.items():
        for j, method in enumerate(BENCH_METHODS):
            skill = j / (len(BENCH_METHODS) - 1)  # craft 1.0, zero-shot 0.0
            for seed in seeds:
                m = {}
                for ev in EVALUATORS:
                    m[f"cas_mean__{ev}"] = 0.4 + 0.25 * skill + rng.normal(0, 0.02)
                    m[f"tail_rate__{ev}"] = max(0.0, 0.3 - 0.2 * skill + rng.normal(0, 0.02))
                    for dim in ("label_fidelity", "prompt_alignment", "plausibility"):
                        m[f"{dim}__{ev}"] = 0.5 + 0.2 * skill + rng.normal(0, 0.03)
                    m[f"cas_mean_ci_low__{ev}"] = m[f"cas_mean__{ev}"] - 0.05
                m["oracle_label_agreement"] = 0.6 + 0.3 * skill + rng.normal(0, 0.02)
                m["oracle_distribution_shift"] = 0.2 + 0.1 * skill + rng.normal(0, 0.01)
                for label in labels:
                    m[f"oracle_label_agreement__{label}"] = float(rng.uniform(0.5, 1))
                m["downstream_auroc_synthetic"] = 0.9 + 0.08 * skill + rng.normal(0, 0.005)
                m["downstream_auroc_mixed"] = 0.97 + 0.02 * skill + rng.normal(0, 0.003)
                m["downstream_auroc_real"] = 0.99
                m["audit_pass_rate"] = 0.8 + 0.15 * skill + rng.normal(0, 0.01)
                m["memorization_rate"] = abs(rng.normal(0, 0.01))
                m["fd"] = 40 - 10 * skill + rng.normal(0, 1)
                m["kid"] = 0.02 - 0.01 * skill + rng.normal(0, 0.001)
                out[(modality, method, seed)] = {k: float(v) for k, v in m.items()}
    return out


#: Scales of the reward paths written by ``write_bench_runs(paths=True)``.
PATH_SCALES = (0.0, 0.5, 1.0, 1.5)
REWARD_METHODS = ("generic-reward", "craft")


def bench_paths(values: dict) -> dict[tuple[str, str, int], dict[str, float]]:
    """The reward methods' path metrics (craft.evaluate.paths) of ``values``' runs: scale 1 is
    the run's own metrics, scale 0 its start's, the other scales on the line through them
    (craft's realism rising twice as fast as generic-reward's)."""
    out = {}
    names = ["oracle_label_agreement", "oracle_distribution_shift"]
    names += [f"{m}__siglip" for m in ("cas_mean", "tail_rate")]
    for (modality, method, seed), m in values.items():
        start = values.get((modality, START, seed))
        if method not in REWARD_METHODS or start is None:
            continue
        path = {}
        for scale in PATH_SCALES:
            for name in names:
                a, b = start[name], m[name]
                if name == "oracle_distribution_shift" and method == "craft":
                    b = a + 2 * (b - a) + 0.02  # craft pays more realism for its gain
                path[f"path_{name}__s{scale:g}"] = a + scale * (b - a)
            path[f"path_realism_fd__s{scale:g}"] = m["fd"] * (1 + 0.1 * scale)
        path["realism_oracle_spearman__fd"] = 1.0
        out[(modality, method, seed)] = path
    return out


def write_bench_runs(
    root: Path,
    seeds=(0, 1, 2),
    n_per_label: int = 10,
    methods=BENCH_METHODS,
    metrics=None,
    paths: bool = False,
):
    """Metric files, samples.h5 (``n_per_label`` 32 px images per label) and, for craft, the
    model card naming its start, under ``root/runs``, for ``methods`` and ``metrics`` (default:
    all); with ``paths``, the reward methods' metrics-path.json too (:func:`bench_paths`).
    Returns (metric files, samples, values)."""
    from craft.models.card import ModelCard

    values = {
        run: {k: v for k, v in m.items() if metrics is None or k in metrics}
        for run, m in bench_values(seeds).items()
        if run[1] in methods
    }
    files, samples = [], {}
    for (modality, method, seed), metrics in values.items():
        run = root / "runs" / modality / method / str(seed)
        run.mkdir(parents=True, exist_ok=True)
        path = run / "metrics-all.json"
        path.write_text(json.dumps(metrics_json(modality, method, seed, "all", metrics)))
        files.append(path)
        channels = 1 if modality == "phantom-cxr" else 3
        samples[(modality, method, seed)] = write_samples(
            run / "samples.h5", BENCH_LABELS[modality], n_per_label, channels
        )
        if method == "craft":
            ModelCard(
                modality=modality,
                method=method,
                seed=seed,
                kind="lora",
                base="base",
                init=START,
                config_digest="0",
                craft_version="0",
            ).write(run / "model.json")
    if paths:
        for (modality, method, seed), metrics in bench_paths(values).items():
            path = root / "runs" / modality / method / str(seed) / "metrics-path.json"
            path.write_text(json.dumps(metrics_json(modality, method, seed, "path", metrics)))
            files.append(path)
    return files, samples, values
