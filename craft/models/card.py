"""The model card: what a method's trained generator is, as a small JSON file.

``results/runs/{modality}/{method}/{seed}/model.json`` says which base model it starts from and
which weights replace or adapt it (a diffusers LoRA dir, or a full UNet dir), relative to the
card. ``load_card_generator`` turns a card back into a ready Generator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from craft.errors import CraftError


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modality: str
    method: str
    seed: int
    kind: Literal["zero-shot", "lora", "full", "pretrain"]
    base: str  # from_pretrained source of the foundation model
    revision: str | None = None
    lora_dir: str | None = None  # relative to the card: diffusers LoRA
    unet_dir: str | None = None  # relative to the card: full UNet replacing the base one
    steps: int = 0
    # align runs (craft align): the method they started from, the reward LoRA alone (relative
    # to the card; lora_dir already holds the starting model's LoRA plus this one at lora_scale)
    init: str | None = None
    reward_lora_dir: str | None = None
    lora_scale: float | None = None
    # align.handover_t: below this timestep the starting model draws (start_lora_dir, its
    # LoRA, relative to the card; None: the base or unet_dir UNet as it is), above it the
    # starting model plus the reward LoRA at lora_scale
    handover_t: int | None = None
    start_lora_dir: str | None = None
    config_digest: str
    craft_version: str
    # what trained it: torch build, device, CPU kernel level (craft.train.common); None for
    # cards without training and cards written before craft recorded it
    machine: str | None = None

    def write(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        path = Path(path)
        if not path.is_file():
            raise CraftError(f"{path} does not exist: run `craft adapt` for this run first")
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (ValidationError, json.JSONDecodeError) as err:
            raise CraftError(
                f"{path} is not a valid model card: {str(err).splitlines()[0]}"
            ) from None


def load_card_generator(
    card_path: Path, timestep_spacing: str = "trailing", lora_scale: float = 1.0
):
    """Load the base generator and apply the card's weights (LoRA at ``lora_scale``; with a
    ``handover_t``, the starting model's LoRA fused and the reward LoRA as the adapter that
    the sampler turns off below it)."""
    from diffusers import UNet2DConditionModel

    from craft.models.generator import load_generator
    from craft.models.lora import fuse_lora, load_lora

    card = ModelCard.read(card_path)
    root = Path(card_path).parent
    gen = load_generator(card.base, card.revision, timestep_spacing)
    if card.unet_dir:
        gen.unet = UNet2DConditionModel.from_pretrained(root / card.unet_dir)
    if card.handover_t is not None:  # two models by timestep: the start, the start + reward
        if card.reward_lora_dir is None:
            raise CraftError(f"{card_path} has a handover_t but no reward_lora_dir: rerun align")
        if card.start_lora_dir:
            load_lora(gen.unet, root / card.start_lora_dir)
            fuse_lora(gen.unet)
        scale = lora_scale * (card.lora_scale if card.lora_scale is not None else 1.0)
        load_lora(gen.unet, root / card.reward_lora_dir, scale=scale)
        gen.handover_t = card.handover_t
    elif card.lora_dir:
        load_lora(gen.unet, root / card.lora_dir, scale=lora_scale)
    gen.unet.requires_grad_(False)
    return card, gen
