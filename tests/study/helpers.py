"""Small samples.h5 files and scripted raters for the study tests."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from craft.store import STR, atomic_h5, image_dataset
from craft.study.schema import StudyKey

LABELS = ["normal", "cardiomegaly", "effusion", "nodule"]
DESCRIPTION = "chest radiograph"
METHOD_A, METHOD_B = "craft", "lora-enriched"


def write_samples(
    path: Path,
    method: str,
    labels: list[str] = LABELS,
    n_per_label: int = 8,
    size: int = 32,
    channels: int = 1,
    run_seed: int = 0,
) -> Path:
    """A samples.h5 as `craft generate` writes it: label-major rows, label prompts, seeds.

    Images differ per method (brightness, noise) and per row; the method name is stored in
    the file's attrs, as generate does, and must never reach the study page.
    """
    rng = np.random.default_rng(zlib.crc32(method.encode()))
    yy, xx = np.mgrid[:size, :size]
    images, lab, prompts, seeds = [], [], [], []
    for k, name in enumerate(labels):
        for i in range(n_per_label):
            r = size / 6 + (i % 4) + k
            disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < r * r
            img = rng.integers(0, 40, (size, size, channels))
            img[disc] += 120 + 10 * k
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            lab.append(k)
            prompts.append(f"{DESCRIPTION}, {name}")
            # as craft.sample.image_seed: 10-digit numbers that differ between run seeds
            seeds.append(int(np.random.SeedSequence([run_seed, k, i]).generate_state(1)[0]))
    attrs = {"labels": labels, "modality": "phantom-cxr", "method": method, "seed": run_seed}
    with atomic_h5(path, "samples", "digest", attrs=attrs) as f:
        image_dataset(f, "images", np.stack(images))
        f.create_dataset("labels", data=np.array(lab, np.int64))
        f.create_dataset("prompts", data=prompts, dtype=STR)
        f.create_dataset("seeds", data=np.array(seeds, np.int64))
    return path


def choice_for(key: StudyKey, pair_id: str, outcome: str) -> str:
    """The side a rater must click so that the unblinded outcome is ``outcome`` (a/b/neither)."""
    if outcome == "neither":
        return "neither"
    a_side = key.pair(pair_id).a_side
    return a_side if outcome == "a" else ("right" if a_side == "left" else "left")


def write_answers(
    path: Path, key: StudyKey, rater: str, outcomes: dict[str, tuple[str | None, str | None]]
) -> Path:
    """An answer file as the page exports it, from unblinded (finding, plausibility) outcomes."""
    answers = []
    for pid, (finding, plaus) in outcomes.items():
        answers.append(
            {
                "pair_id": pid,
                "finding": None if finding is None else choice_for(key, pid, finding),
                "plausibility": None if plaus is None else choice_for(key, pid, plaus),
                "answered_at": "2026-11-28T12:00:00.000Z",
            }
        )
    doc = {
        "format": "study-answers/1",
        "study_id": key.study_id,
        "rater": rater,
        "exported_at": "2026-11-28T12:30:00.000Z",
        "n_pairs": len(key.pairs),
        "answers": answers,
    }
    path.write_text(json.dumps(doc))
    return path
