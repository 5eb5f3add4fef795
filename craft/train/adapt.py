"""``craft adapt``: the diffusion-loss baselines (zero-shot, LoRA, full UNet finetuning).

Every method ends in a model card (``model.json``) that ``craft generate`` loads: zero-shot
points at the foundation as is; lora adds a diffusers LoRA dir; full adds a UNet dir.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from craft.config import CraftConfig
from craft.models.card import ModelCard
from craft.models.generator import compute_dtype, load_generator
from craft.paths import Layout
from craft.prompts import draw_prompt, enriched_prompts, label_prompt, plain_prompt_weights
from craft.store import read_split
from craft.train.common import machine_description, setup_torch
from craft.train.diffusion import CaptionFn, DiffusionFinetune, FinetuneSettings, TrainingData
from craft.version import code_version


def base_source(cfg: CraftConfig, modality: str) -> str:
    """The foundation model of a modality: the configured one, or the workflow's pretrain."""
    if cfg.models.generator == "pretrain":
        return str(Layout(cfg.results).foundation(modality))
    return cfg.models.generator_for(modality)


def training_captions(
    cfg: CraftConfig, modality: str, method: str, label_names: list[str]
) -> CaptionFn:
    """The caption of each training image: its label prompt, or (prompts: enriched) one of its
    label's enriched prompts, drawn uniformly or with the plain one at label_prompt_share."""
    m, k = cfg.modality(modality), cfg.method(method)
    if k.prompts != "enriched":

        def plain(label_idx: np.ndarray, rng: np.random.Generator) -> list[str]:
            return [label_prompt(m.description, label_names[i]) for i in label_idx]

        return plain
    bank = enriched_prompts(Layout(cfg.results).knowledge(modality), modality, label_names)
    weights = {}
    if k.label_prompt_share is not None:  # the plain prompt drawn with this probability
        for lab in label_names:
            plain_prompt = label_prompt(m.description, lab)
            bank[lab] = list(dict.fromkeys([*bank[lab], plain_prompt]))
            weights[lab] = plain_prompt_weights(bank[lab], plain_prompt, k.label_prompt_share)

    def enriched(label_idx: np.ndarray, rng: np.random.Generator) -> list[str]:
        names = [label_names[i] for i in label_idx]
        return [draw_prompt(bank[lab], rng, weights.get(lab)) for lab in names]

    return enriched


def adapt(
    cfg: CraftConfig,
    modality: str,
    method: str,
    seed: int,
    card_path: Path,
    threads: int | None = None,
) -> ModelCard:
    """Adapt the foundation model to a modality's training split with one method."""
    m = cfg.modality(modality)
    k = cfg.method(method)
    spec = cfg.spec("adapt", modality, method)
    digest = spec.digest
    card_path = Path(card_path)
    run_dir = card_path.parent
    card = ModelCard(
        modality=modality,
        method=method,
        seed=seed,
        kind=k.kind,
        base=base_source(cfg, modality),
        revision=cfg.models.revision,
        config_digest=digest,
        craft_version=code_version(),
    )
    if k.kind == "zero-shot" or k.steps == 0:
        card.write(card_path)
        return card

    device = setup_torch(seed, threads)
    data = read_split(Layout(cfg.results).data(modality), "train")

    caption = training_captions(cfg, modality, method, data.label_names)
    gen = load_generator(card.base, card.revision, cfg.sampling.timestep_spacing)
    # on a GPU the frozen parts in bf16, computing under bf16 autocast: the text encoder and
    # VAE, and the UNet under a LoRA (add_lora makes the LoRA float32); a full finetune trains
    # a float32 UNet
    dtype = compute_dtype(device, cfg.models.gpu_precision)
    gen.to(device, dtype, unet_too=k.kind == "lora")
    settings = FinetuneSettings(
        mode=k.kind,
        steps=k.steps,
        batch_size=k.batch_size,
        lr=k.lr,
        seed=seed,
        config_digest=digest,
        job_spec=spec.plain(),
        rank=k.rank,
        alpha=k.alpha,
        target_modules=list(k.target_modules),
        weight_decay=k.weight_decay,
        checkpoint_every=k.checkpoint_every,
        gradient_checkpointing=k.gradient_checkpointing,
    )
    recipe = DiffusionFinetune(settings, run_dir / "checkpoint")
    recipe.setup(gen, TrainingData(data.images, data.labels, caption), m.channels)
    recipe.train()
    for name in ("lora", "unet"):  # a stale result of an earlier run must not survive
        shutil.rmtree(run_dir / name, ignore_errors=True)
    weights = recipe.save_weights(run_dir)
    card = card.model_copy(
        update={
            "steps": k.steps,
            "lora_dir" if weights == "lora" else "unet_dir": weights,
            "machine": machine_description(device),
        }
    )
    card.write(card_path)
    recipe.cleanup()
    return card
