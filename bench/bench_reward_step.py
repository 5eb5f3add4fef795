"""One reward-finetuning step, side by side: a plain diffusers + peft loop and craft's recipe.

Run (CPU, tiny phantom size, the default config's generator):
    OMP_NUM_THREADS=2 python bench/bench_reward_step.py
Run (GPU, Stable Diffusion 1.5 size, random weights; issue 6's reference setting):
    python bench/bench_reward_step.py --size sd15 --batch 4 --sample-steps 50 --dtype bfloat16

Both paths get the same random model (UNet, text encoder, and a VAE at sd15 size), the same
LoRA (rank 4 on the attention projections), the same reward (a fixed differentiable function
of the decoded image, so the step machinery is what is measured), DDIM with CFG and K=1
(gradients only through the last denoising step and the decode). The plain path is the loop
an AlignProp/DRaFT-style script writes (pipeline parts, peft's ``add_adapter``, AdamW);
craft's is :class:`craft.train.reward.RewardFinetune`'s ``loss`` + the optimizer step that
its ``train`` runs. Prints seconds per step, images per second and peak memory, and the
ratios craft / plain.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from craft.config import AlignSettings, TinyUNet  # noqa: E402
from craft.models.generator import Generator  # noqa: E402
from craft.models.tiny import build_tiny_generator  # noqa: E402
from craft.train.diffusion import FinetuneSettings, TrainingData  # noqa: E402
from craft.train.reward import RewardFinetune, Rollout  # noqa: E402

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def sd15_generator(seed: int = 0) -> Generator:
    """Stable Diffusion 1.5's architecture with random weights (no download)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from craft.models.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD-1.5 defaults
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    tokenizer = build_tokenizer(["a", "photo"], model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77))
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
    )
    text.requires_grad_(False)
    vae.requires_grad_(False)
    return Generator(unet, text, tokenizer, scheduler, vae)


def tiny_generator(seed: int = 0) -> Generator:
    """The default config's phantom generator (32 px, pixel space)."""
    return build_tiny_generator(TinyUNet(), 32, 1, ["chest", "radiograph"], seed=seed)


def reward_of(images: torch.Tensor) -> torch.Tensor:
    """A fixed differentiable reward: smooth brightness in the image centre, per image."""
    h, w = images.shape[-2:]
    centre = images[..., h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].float()
    return torch.tanh(centre.mean(dim=(1, 2, 3))) - 0.1 * images.float().std(dim=(1, 2, 3))


def memory_now(device: torch.device) -> float:
    """Peak memory so far in GiB (CUDA allocator; on CPU the process's max RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def plain_step_fn(gen: Generator, args, device):
    """The loop a plain diffusers + peft reward script writes (DRaFT-K / AlignProp style)."""
    from peft import LoraConfig

    unet, vae, sched = gen.unet, gen.vae, gen.scheduler
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=TARGETS)
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    prompts = ["a photo"] * args.batch
    size = args.resolution // gen.latent_scale

    def step(i: int) -> None:
        with torch.no_grad():
            cond = gen.encode_prompts(prompts)
            uncond = gen.encode_prompts([""] * len(prompts))
        g = torch.Generator().manual_seed(i)
        ch = unet.config.in_channels
        x = torch.randn((args.batch, ch, size, size), generator=g).to(device, unet.dtype)
        sched.set_timesteps(args.sample_steps, device=device)
        for j, t in enumerate(sched.timesteps):
            with torch.set_grad_enabled(j >= len(sched.timesteps) - args.k):
                eps = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond]))
                e_u, e_c = eps.sample.chunk(2)
                x = sched.step(e_u + args.guidance * (e_c - e_u), t, x).prev_sample
        img = vae.decode(x / vae.config.scaling_factor).sample if vae is not None else x
        loss = -reward_of(img).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def craft_step_fn(gen: Generator, args, device):
    """craft's recipe: the loss of one training step and the optimizer step of its train()."""
    settings = FinetuneSettings(
        mode="lora",
        steps=10**6,
        batch_size=args.batch,
        lr=1e-4,
        seed=0,
        config_digest="bench",
        rank=4,
        alpha=4,
        target_modules=TARGETS,
    )
    align = AlignSettings(window="draft", k=args.k, gradient_checkpointing=args.checkpointing)
    rollout = Rollout(args.sample_steps, args.guidance, args.resolution, 3 if gen.vae else 1)
    recipe = RewardFinetune(settings, align, rollout, Path(tempfile.mkdtemp()) / "ckpt")
    images = np.zeros((1, args.resolution, args.resolution, 1), np.uint8)
    data = TrainingData(images, np.zeros(1, int), lambda idx, rng: ["a photo"] * len(idx))
    recipe.setup(gen, data, {0: ["a photo"]}, lambda x, y, p: reward_of(x))

    def step(i: int) -> None:
        loss = recipe.loss(i)
        recipe.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(recipe.params, 1.0)
        recipe.optimizer.step()

    return step


def measure(name: str, make, args, device) -> dict[str, float]:
    gen = (sd15_generator if args.size == "sd15" else tiny_generator)()
    dtype = getattr(torch, args.dtype)
    gen.unet.to(device, dtype)
    gen.to(device, dtype)
    step = make(gen, args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(args.repeats):
        step(args.warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.repeats
    out = {"s_per_step": dt, "images_per_s": args.batch / dt, "peak_gib": memory_now(device)}
    print(
        f"{name:6s} {dt:8.3f} s/step {args.batch / dt:8.2f} img/s peak {out['peak_gib']:.2f} GiB",
        flush=True,
    )
    del gen, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sample-steps", type=int, default=15)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--resolution", type=int, default=None, help="pixels (tiny 32, sd15 512)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--checkpointing", action="store_true", help="craft: checkpoint the window")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    args.resolution = args.resolution or (512 if args.size == "sd15" else 32)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"reward step, {args.size} size on {device}: batch {args.batch}, {args.sample_steps} "
        f"DDIM steps, CFG {args.guidance}, K={args.k}, {args.dtype}, "
        f"{torch.get_num_threads()} threads"
    )
    plain = measure("plain", plain_step_fn, args, device)
    craft = measure("craft", craft_step_fn, args, device)
    print(
        f"ratio craft/plain: time {craft['s_per_step'] / plain['s_per_step']:.2f}, "
        f"peak memory {craft['peak_gib'] / max(plain['peak_gib'], 1e-9):.2f}"
        + (" (CPU max RSS is cumulative over both runs)" if device.type == "cpu" else "")
    )


if __name__ == "__main__":
    main()
