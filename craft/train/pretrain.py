"""``craft pretrain``: train the phantom world's foundation generator for one modality.

Real configs skip this stage: they name a pretrained model (Stable Diffusion, RoentGen). The
phantom foundation plays that part: it is trained on phantoms drawn with its own seed (not the
prepared data set) and with captions that name the label only some of the time, so it draws the
modality well but follows clinical labels weakly, as a general-purpose model does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from craft import __version__
from craft.config import CraftConfig
from craft.data.phantoms import draw_batch
from craft.models.generator import save_generator
from craft.models.tiny import build_tiny_generator
from craft.progress import log
from craft.prompts import label_prompt
from craft.train.common import setup_torch
from craft.train.diffusion import DiffusionFinetune, FinetuneSettings, TrainingData


def pretrain(cfg: CraftConfig, modality: str, out_dir: Path, threads: int | None = None) -> Path:
    """Train and save a tiny foundation generator for a phantom modality; returns ``out_dir``."""
    m = cfg.modality(modality)
    p = cfg.pretrain
    device = setup_torch(p.seed, threads)
    rng = np.random.default_rng(p.seed)
    labels = rng.choice(len(m.labels), size=p.n_images)
    log(f"drawing {p.n_images} {m.source.phantom} phantoms for pretraining")
    images, _ = draw_batch(m.source.phantom, [m.labels[i] for i in labels], p.seed, m.resolution)

    def caption(label_idx: np.ndarray, rng: np.random.Generator) -> list[str]:
        named = rng.random(len(label_idx)) < p.label_caption_prob
        return [
            label_prompt(m.description, m.labels[i]) if n else m.description
            for i, n in zip(label_idx, named, strict=True)
        ]

    words = [m.description, *m.labels]
    gen = build_tiny_generator(p.architecture, m.resolution, m.channels, words, seed=p.seed)
    gen.to(device)
    settings = FinetuneSettings(
        mode="full",
        steps=p.steps,
        batch_size=p.batch_size,
        lr=p.lr,
        seed=p.seed,
        config_digest=cfg.digest("pretrain", modality),
        train_text_encoder=True,
        checkpoint_every=max(1, p.steps // 10),
        warmup_steps=min(50, p.steps // 10),
    )
    out_dir = Path(out_dir)
    recipe = DiffusionFinetune(settings, out_dir.with_name(out_dir.name + ".checkpoint"))
    recipe.setup(gen, TrainingData(images, labels, caption), m.channels)
    recipe.train()
    gen.text_encoder.requires_grad_(False)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    save_generator(
        gen,
        tmp,
        provenance={
            "stage": "pretrain",
            "modality": modality,
            "phantom": m.source.phantom,
            "seed": p.seed,
            "steps": p.steps,
            "config_digest": settings.config_digest,
            "craft_version": __version__,
        },
    )
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    recipe.cleanup()
    return out_dir
