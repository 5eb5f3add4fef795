"""Classifier-free-guided DDIM sampling with per-image seeds.

One loop serves generation (no grad) and, later, reward finetuning (grad kept only inside a
window of the last steps). Noise is drawn per image from its own seed, so an image depends
only on (model, prompt, seed) and never on the batch it was drawn in: a resumed run redraws
exactly the images it had not written yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from craft.models.generator import Generator


def initial_noise(gen: Generator, seeds: Sequence[int], size: int) -> torch.Tensor:
    """Per-image Gaussian noise (N, C, h, w) in the UNet's space, from each image's own seed.

    Float32 whatever the UNet's dtype: the latents of the chain stay float32, and a bf16 UNet
    runs under autocast (reward finetuning on a GPU)."""
    side = size // gen.latent_scale
    channels = gen.unet.config.in_channels
    noise = [
        torch.randn((channels, side, side), generator=torch.Generator().manual_seed(int(s)))
        for s in seeds
    ]
    return torch.stack(noise).to(gen.device, torch.float32)


def guided_eps(
    gen: Generator,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance: float,
) -> torch.Tensor:
    """Noise prediction with classifier-free guidance (Ho & Salimans 2022, eq. 6)."""
    if guidance == 1.0:
        return gen.unet(x, t, encoder_hidden_states=cond).sample
    eps = gen.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    eps_uncond, eps_cond = eps.chunk(2)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def sample(
    gen: Generator,
    prompts: Sequence[str],
    seeds: Sequence[int],
    size: int,
    channels: int,
    steps: int = 20,
    guidance: float = 3.0,
    grad_last: int = 0,
) -> torch.Tensor:
    """Draw images in [-1, 1], shape (N, channels, size, size).

    ``grad_last`` > 0 keeps autograd only for the last ``grad_last`` denoising steps and the
    decode (DRaFT-K, Clark et al. 2023); 0 samples without any graph. Runs in the generator's
    precision (:meth:`Generator.autocast`); the latents of the chain and the images returned
    are float32. With ``gen.handover_t`` the starting model draws the steps below it.
    """
    scheduler = gen.scheduler
    scheduler.set_timesteps(steps, device=gen.device)
    with gen.autocast():
        with torch.no_grad():
            cond = gen.encode_prompts(list(prompts))
            uncond = gen.encode_prompts([""] * len(prompts))
        x = initial_noise(gen, seeds, size) * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            with torch.set_grad_enabled(i >= len(timesteps) - grad_last):
                with gen.step_model(t):
                    x_in = scheduler.scale_model_input(x, t)
                    eps = guided_eps(gen, x_in, t, cond, uncond, guidance)
                x = scheduler.step(eps, t, x, eta=0.0).prev_sample
        with torch.set_grad_enabled(grad_last > 0):
            return gen.to_image_space(x, channels).float()


def to_uint8(images: torch.Tensor) -> numpy.ndarray:  # noqa: F821
    """[-1, 1] NCHW tensor -> uint8 NHWC array."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def to_model_input(images: numpy.ndarray) -> torch.Tensor:  # noqa: F821
    """uint8 NHWC array -> float [-1, 1] NCHW tensor."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0
