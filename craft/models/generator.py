"""Load, save and run the text-to-image generator from any ``from_pretrained`` source.

The same code loads Stable Diffusion from a hub id on a cluster and the tiny phantom
foundation from a local dir: the Stable Diffusion folder layout (``unet/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, optional ``vae/``). Without ``vae/`` the model works in pixel
space (the phantom foundation); with it, in the VAE's latent space.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from craft.errors import CraftError
from craft.models.hub import PIPELINE_PARTS, load_error, looks_local


@dataclass
class Generator:
    """The parts of a latent (or pixel) text-to-image diffusion model that craft uses."""

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    vae: AutoencoderKL | None = None
    # align.handover_t: below this timestep the UNet's adapters are off (the starting model,
    # its own LoRA fused, draws the late steps); None: the UNet as it is on every step
    handover_t: int | None = None

    @property
    def image_channels(self) -> int:
        """Channels of images the model draws (the VAE's, or the UNet's in pixel space)."""
        return self.vae.config.in_channels if self.vae is not None else self.unet.config.in_channels

    @property
    def latent_scale(self) -> int:
        """Pixels per latent cell along one side (8 for Stable Diffusion, 1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(
        self, device: torch.device | str, dtype: torch.dtype | None = None, unet_too: bool = False
    ) -> Generator:
        """Move every part; the frozen text encoder and VAE to ``dtype`` if given, the UNet
        too with ``unet_too`` (it is frozen: adapt's and align's LoRA, added later, are float32),
        else it keeps its dtype (a full finetune trains it in float32). ``dtype`` bf16 also
        turns on :meth:`autocast` (see :attr:`mixed`); float32 turns it off."""
        _cast(self.unet, device, dtype if unet_too else None)
        self.text_encoder.to(device, dtype=dtype)
        if self.vae is not None:
            _cast(self.vae, device, dtype)
        return self

    def starts_at(self, t: torch.Tensor | int) -> bool:
        """Does the starting model (adapters off) draw the denoising step at timestep t?"""
        return self.handover_t is not None and int(t) < self.handover_t

    @contextmanager
    def starting_model(self) -> Iterator[None]:
        """The UNet without its adapters (the reward LoRA: the starting model) inside the
        block."""
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    def step_model(self, t: torch.Tensor | int) -> AbstractContextManager[None]:
        """The UNet that draws the step at timestep ``t``: below ``handover_t`` the starting
        model, else the UNet as it is."""
        return self.starting_model() if self.starts_at(t) else nullcontext()

    @property
    def mixed(self) -> bool:
        """Compute under bf16 autocast: the frozen parts were cast to bf16. The text encoder
        tells, since ``to`` always casts it (it is never trained in bf16: DiffusionFinetune
        refuses that)."""
        return self.text_encoder.dtype == torch.bfloat16

    def autocast(self):
        """The context the generator's forward passes run in: bf16 autocast on its device when
        its parts were cast to bf16 (on a GPU: :func:`compute_dtype`), else nothing, so that
        float32 runs (the CPU's) stay bit-exact. Latents, losses, rewards stay float32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.mixed)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings (N, L, D) for the UNet's cross-attention."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        out = self.text_encoder(tokens.input_ids.to(self.device))
        return out.last_hidden_state

    def to_model_space(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images in [-1, 1] (N, C, H, W) with the modality's channels -> UNet input space.

        Latents come back float32 whatever the VAE's and UNet's dtype: the noising
        (``scheduler.add_noise``) and the target stay exact, and a bf16 UNet runs under
        autocast (in bf16 the smallest timesteps' noise rounds away)."""
        images = match_channels(images, self.image_channels)
        if self.vae is None:
            return images
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return (dist.sample(generator) * self.vae.config.scaling_factor).float()

    def to_image_space(self, latents: torch.Tensor, channels: int) -> torch.Tensor:
        """UNet space -> images in [-1, 1] with ``channels`` channels (differentiable)."""
        if self.vae is not None:
            latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
            latents = self.vae.decode(latents).sample
        return match_channels(latents, channels).clamp(-1, 1)


def _cast(model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype | None) -> None:
    """``model.to(device, dtype)``, without the warning diffusers gives on every cast (even
    ``dtype=None``) of a model whose list of modules to keep in float32 is empty
    (UNet2DConditionModel's and AutoencoderKL's are)."""
    if dtype is None:
        model.to(device)
        return
    if getattr(model, "_keep_in_fp32_modules", None):
        model.to(device, dtype=dtype)
        return
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        model.to(device, dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def compute_dtype(
    device: torch.device, precision: Literal["bf16", "float32"] = "bf16"
) -> torch.dtype | None:
    """The dtype of a generator's frozen parts on ``device`` (``models.gpu_precision``): bf16
    on a GPU unless float32 is asked for; on the CPU None (float32, bit-exact runs)."""
    if device.type == "cuda" and precision == "bf16":
        return torch.bfloat16
    return None


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grayscale <-> RGB by replication / channel mean (documented, never silent elsewhere)."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1)
    if channels == 1:
        return images.mean(dim=1, keepdim=True)
    raise ValueError(f"cannot map {have} image channels to {channels}")


def _has_subfolder(source: str, name: str, revision: str | None) -> bool:
    """Whether the pipeline has part ``name``: its folder, or its model_index.json entry (from
    the hub or, offline, the cache; a pipeline without it would silently lose its VAE)."""
    path = Path(source)
    if path.exists():
        return (path / name).is_dir()
    from huggingface_hub import hf_hub_download

    index = hf_hub_download(source, "model_index.json", revision=revision)
    return name in json.loads(Path(index).read_text())


def _check_pipeline_dir(path: Path) -> None:
    """A local generator folder is a pipeline folder, or one line says which folder to name."""
    missing = [p for p in PIPELINE_PARTS if not (path / p).is_dir()]
    if not missing:
        return
    if (path.parent / "model_index.json").is_file() or (path.parent / "unet").is_dir():
        raise CraftError(
            f"generator '{path}' is the '{path.name}' subfolder of a pipeline; set "
            f"models.generator to the pipeline folder '{path.parent}'"
        )
    raise CraftError(
        f"generator folder '{path}' has no {', '.join(p + '/' for p in missing)}: "
        "models.generator must name a Stable Diffusion pipeline folder (model_index.json, "
        f"{', '.join(p + '/' for p in PIPELINE_PARTS)}, optional vae/), as save_pretrained or "
        "a hub download writes it"
    )


def load_generator(
    source: str | Path,
    revision: str | None = None,
    timestep_spacing: str = "trailing",
    dtype: torch.dtype = torch.float32,
    field: str = "models.generator",
) -> Generator:
    """Load every part from a hub id or a local dir (Stable Diffusion folder layout); a failure
    is one line naming ``field`` (the config field the source comes from)."""
    source = str(source)
    if not Path(source).exists() and ("/" not in source or looks_local(source)):
        raise CraftError(
            f"generator '{source}' is neither a local dir nor a hub id (org/name; relative "
            f"dirs are taken from {Path.cwd()}); fix models.generator in the config"
        )
    if Path(source).is_dir():
        _check_pipeline_dir(Path(source))
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", revision=revision)
        text_encoder = CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", revision=revision, torch_dtype=dtype
        )
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision)
        scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler", revision=revision)
        vae = None
        if _has_subfolder(source, "vae", revision):
            vae = AutoencoderKL.from_pretrained(
                source, subfolder="vae", revision=revision, torch_dtype=dtype
            )
    except (OSError, ValueError) as err:  # missing files, no network, a cache miss offline
        raise load_error(field, source, err) from None
    # The saved config keeps its own clip_sample: True for pixel-space models (their x0 lies
    # in [-1, 1]), False for latent ones such as Stable Diffusion.
    scheduler = DDIMScheduler.from_config(scheduler.config, timestep_spacing=timestep_spacing)
    text_encoder.requires_grad_(False)
    if vae is not None:
        vae.requires_grad_(False)
    return Generator(unet, text_encoder, tokenizer, scheduler, vae)


def save_generator(gen: Generator, out_dir: Path, provenance: dict | None = None) -> None:
    """Save in the Stable Diffusion folder layout so ``load_generator`` reads it back."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen.unet.save_pretrained(out_dir / "unet")
    gen.text_encoder.save_pretrained(out_dir / "text_encoder")
    gen.tokenizer.save_pretrained(out_dir / "tokenizer")
    gen.scheduler.save_pretrained(out_dir / "scheduler")
    parts = {
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    if gen.vae is not None:
        gen.vae.save_pretrained(out_dir / "vae")
        parts["vae"] = ["diffusers", "AutoencoderKL"]
    index = {"_class_name": "CraftGenerator", **parts}
    if provenance:
        index["craft_provenance"] = provenance
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
