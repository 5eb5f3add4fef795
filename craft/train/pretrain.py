"""``craft pretrain``: train the phantom world's foundation generator for one modality.

Real configs skip this stage: they name a pretrained model (Stable Diffusion, RoentGen). The
phantom foundation plays that part: it is trained on phantoms drawn with its own seed (not the
prepared data set) with captions like a web-scale model's: they describe what is visible in lay
words ("a large heart", "fluid in the left lung") but rarely name the clinical label
("cardiomegaly"). So, like a general-purpose model, it can draw the findings but does not know
the clinical vocabulary: the adaptation stages must teach it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from craft.config import CraftConfig
from craft.data.phantoms import draw_batch
from craft.models.generator import save_generator
from craft.models.tiny import build_tiny_generator
from craft.progress import log
from craft.prompts import label_prompt
from craft.train.common import setup_torch
from craft.train.diffusion import DiffusionFinetune, FinetuneSettings, TrainingData
from craft.version import code_version

CAPTION_WORDS = ["spot", "spots", "bright", "patch", "lesion", "brown", "tan", "blob", "big"]


def describe_findings(phantom: str, description: str, f: dict[str, float], rng) -> str:
    """A lay caption of a phantom's true findings, with some wording variety."""
    parts: list[str] = []
    if phantom == "phantom-cxr":
        if f["cardiothoracic_ratio"] > 0.5:
            parts.append(str(rng.choice(["a large heart", "an enlarged heart", "a big heart"])))
        elif rng.random() < 0.5:
            parts.append("a normal heart")
        sides = [s for s in ("left", "right") if f[f"effusion_{s}"] > 0.5]
        for side in sides:
            parts.append(str(rng.choice([f"fluid in the {side} lung", f"{side} lung fluid"])))
        if f["nodule_count"] >= 1:
            parts.append(str(rng.choice(["a small round spot", "a small bright spot in the lung"])))
        if not parts or (not sides and f["nodule_count"] < 1 and rng.random() < 0.5):
            parts.append("clear lungs")
    elif phantom == "phantom-derm":
        big = f["diameter_fraction"] > 0.42
        irregular = f["border_irregularity"] > 0.04
        parts.append(
            ("a large " if big else "a small ")
            + ("irregular " if irregular else "round ")
            + ("dark lesion" if f["n_colours"] >= 3 else "brown lesion")
        )
        if f["n_colours"] >= 3:
            parts.append(f"{int(f['n_colours'])} colours")
        if f["blue_white_veil"] > 0.5:
            parts.append("a blue white veil")
    else:
        return description
    rng.shuffle(parts)
    return f"{description}, " + ", ".join(parts)


def pretrain(cfg: CraftConfig, modality: str, out_dir: Path, threads: int | None = None) -> Path:
    """Train and save a tiny foundation generator for a phantom modality; returns ``out_dir``."""
    m = cfg.modality(modality)
    p = cfg.pretrain
    device = setup_torch(p.seed, threads)
    rng = np.random.default_rng(p.seed)
    labels = rng.choice(len(m.labels), size=p.n_images)
    log(f"drawing {p.n_images} {m.source.phantom} phantoms for pretraining")
    images, findings = draw_batch(
        m.source.phantom, [m.labels[i] for i in labels], p.seed, m.resolution
    )
    index = np.arange(p.n_images)

    def caption(rows: np.ndarray, rng: np.random.Generator) -> list[str]:
        out = []
        for i in rows:
            u = rng.random()
            if u < p.label_caption_prob:
                out.append(label_prompt(m.description, m.labels[labels[i]]))
            elif u < p.label_caption_prob + p.findings_caption_prob:
                out.append(describe_findings(m.source.phantom, m.description, findings[i], rng))
            else:
                out.append(m.description)
        return out

    words = [m.description, *m.labels, *CAPTION_WORDS]
    gen = build_tiny_generator(p.architecture, m.resolution, m.channels, words, seed=p.seed)
    gen.to(device)
    settings = FinetuneSettings(
        mode="full",
        steps=p.steps,
        batch_size=p.batch_size,
        lr=p.lr,
        seed=p.seed,
        config_digest=cfg.spec("pretrain", modality).digest,
        job_spec=cfg.spec("pretrain", modality).plain(),
        train_text_encoder=True,
        checkpoint_every=max(1, p.steps // 10),
        warmup_steps=min(50, p.steps // 10),
    )
    out_dir = Path(out_dir)
    recipe = DiffusionFinetune(settings, out_dir.with_name(out_dir.name + ".checkpoint"))
    recipe.setup(gen, TrainingData(images, index, caption), m.channels)
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
            "pretrain": p.model_dump(mode="json"),
            "command": " ".join(sys.argv),
            "craft_version": code_version(),
        },
    )
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    recipe.cleanup()
    return out_dir
