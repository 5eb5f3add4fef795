"""Tiny models of the real architectures, built locally and saved in Hugging Face format.

No hub is reachable here, so the phantom world's foundation generator and the tests use
small ``UNet2DConditionModel`` / ``AutoencoderKL`` / ``CLIPTextModel`` instances with a locally
built tokenizer. They load through the same ``from_pretrained`` code as Stable Diffusion.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from craft.config import TinyUNet
from craft.models.generator import Generator
from craft.models.tokenizer import build_tokenizer


def tiny_text_encoder(vocab_size: int, hidden: int, layers: int, max_length: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 16),
        max_position_embeddings=max_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=hidden,
    )
    return CLIPTextModel(config)


def tiny_unet(arch: TinyUNet, sample_size: int, channels: int) -> UNet2DConditionModel:
    down = ["CrossAttnDownBlock2D" if attn else "DownBlock2D" for attn in arch.attention_levels]
    up = ["CrossAttnUpBlock2D" if attn else "UpBlock2D" for attn in reversed(arch.attention_levels)]
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=tuple(arch.block_out_channels),
        layers_per_block=arch.layers_per_block,
        cross_attention_dim=arch.cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=min(8, arch.block_out_channels[0]),
    )


def tiny_scheduler(latent: bool = False, prediction_type: str = "epsilon") -> DDIMScheduler:
    # A cosine schedule suits small pixel-space images better than SD's scaled_linear. Its last
    # timestep has almost no signal, so an eps-prediction's x0 estimate there is amplified
    # ~600x and clipped to [-1, 1]: the first step fixes each image's colour at random. A
    # v-prediction model predicts x0 itself there (foundations use it). Pixel-space models
    # clip x0 to [-1, 1] (latents have no such range).
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=not latent,
        set_alpha_to_one=False,
        prediction_type=prediction_type,
        timestep_spacing="trailing",
    )


def tiny_vae(channels: int = 3, latent_channels: int = 4) -> AutoencoderKL:
    """A small AutoencoderKL (random weights; 4x spatial reduction) for loading tests."""
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
    )


def build_tiny_generator(
    arch: TinyUNet,
    resolution: int,
    channels: int,
    words: list[str] = (),
    with_vae: bool = False,
    seed: int = 0,
) -> Generator:
    """A randomly initialised generator of the real classes (pixel space unless ``with_vae``)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(list(words), model_max_length=arch.text_max_length)
    text_encoder = tiny_text_encoder(
        len(tokenizer), arch.cross_attention_dim, arch.text_layers, arch.text_max_length
    )
    vae = tiny_vae(channels) if with_vae else None
    unet_channels = vae.config.latent_channels if vae is not None else channels
    size = resolution // (4 if vae is not None else 1)
    unet = tiny_unet(arch, size, unet_channels)
    scheduler = tiny_scheduler(latent=vae is not None, prediction_type=arch.prediction_type)
    return Generator(unet, text_encoder, tokenizer, scheduler, vae)
