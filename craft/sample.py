"""``craft generate``: N images per label from a method's generator, into ``samples.h5``.

Rows are label-major (all images of label 0, then label 1, ...). Each image has its own noise
seed, derived from (run seed, label, index), so a resumed run writes exactly the images an
uninterrupted one would have, and never duplicates one.

Prompts follow the method's ``prompts``: the label prompt ('label'), or the label's enriched
prompt bank, cycled in order ('enriched'; the bank holds the label prompt too): a method that
was taught findings-rich prompts is asked with them, and each image's CAS prompt alignment is
measured against the prompt it was drawn from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from craft.config import CraftConfig
from craft.models.card import load_card_generator
from craft.models.generator import compute_dtype
from craft.models.sampling import sample, to_uint8
from craft.progress import log, progress
from craft.prompts import label_prompt
from craft.store import STR, AppendWriter
from craft.train.common import setup_torch


def image_seed(run_seed: int, label: int, index: int) -> int:
    """The noise seed of one generated image."""
    return int(np.random.SeedSequence([run_seed, label, index]).generate_state(1)[0])


def sample_plan(
    labels: list[str],
    n_per_label: int,
    run_seed: int,
    description: str,
    banks: dict[str, list[str]] | None = None,
):
    """(label index, prompt, noise seed) of every image, in file order. ``banks``: each
    label's prompts, cycled (default: the label prompt alone)."""
    rows = []
    for li, label in enumerate(labels):
        bank = banks[label] if banks else [label_prompt(description, label)]
        rows += [(li, bank[i % len(bank)], image_seed(run_seed, li, i)) for i in range(n_per_label)]
    return rows


def generate(
    cfg: CraftConfig,
    modality: str,
    method: str,
    seed: int,
    card_path: Path,
    out: Path,
    threads: int | None = None,
    digest: str | None = None,
) -> Path:
    """Draw ``sampling.n_per_label`` images per label and write them resumably to ``out``
    (its key ``digest``, by default the generate job's: a file of another key starts anew)."""
    m = cfg.modality(modality)
    s = cfg.sampling
    device = setup_torch(seed, threads)
    card, gen = load_card_generator(card_path, s.timestep_spacing)
    # on a GPU in bf16, sampling under bf16 autocast (models.gpu_precision), as align does
    gen.to(device, compute_dtype(device, cfg.models.gpu_precision), unet_too=True)
    gen.unet.eval()
    banks = None
    if cfg.method(method).prompts == "enriched":
        from craft.paths import Layout
        from craft.prompts import enriched_prompts

        banks = enriched_prompts(Layout(cfg.results).knowledge(modality), modality, list(m.labels))
    plan = sample_plan(m.labels, s.n_per_label, seed, m.description, banks)
    res, ch = m.resolution, m.channels
    writer = AppendWriter(
        out,
        "samples",
        digest or cfg.spec("generate", modality, method).digest,
        fields={
            "images": ((res, res, ch), np.uint8),
            "labels": ((), np.int64),
            "prompts": ((), STR),
            "seeds": ((), np.int64),
        },
        total=len(plan),
        attrs={"labels": list(m.labels), "modality": modality, "method": method, "seed": seed},
    )
    starts = range(writer.done, len(plan), s.batch_size)
    if writer.done:
        log(f"resuming {out.name}: {writer.done}/{len(plan)} images already written")
    import time

    t0 = time.monotonic()
    try:
        for start in progress(
            starts,
            len(range(0, len(plan), s.batch_size)),
            "generating",
            writer.done // s.batch_size,
        ):
            rows = plan[start : start + s.batch_size]
            labels, prompts, seeds = zip(*rows, strict=True)
            with torch.no_grad():
                images = sample(gen, prompts, seeds, res, ch, s.steps, s.guidance_scale)
            writer.append(
                {
                    "images": to_uint8(images),
                    "labels": np.array(labels),
                    "prompts": np.array(prompts, dtype=object),
                    "seeds": np.array(seeds, dtype=np.int64),
                }
            )
        writer.finish()
    finally:
        writer.close()
    dt = time.monotonic() - t0
    log(f"wrote {len(plan)} images to {out} ({len(plan) / max(dt, 1e-9):.1f} images/s)")
    return Path(out)
