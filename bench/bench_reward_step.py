"""One reward-finetuning step, side by side: a plain diffusers + peft loop and craft's recipe.

Run (CPU, tiny phantom size, the default config's generator):
    OMP_NUM_THREADS=2 python bench/bench_reward_step.py
Run (GPU, Stable Diffusion 1.5 size, random weights; issue 6's reference setting):
    python bench/bench_reward_step.py --size sd15 --batch 4 --sample-steps 50 --dtype bfloat16
    (bench/gpu.sh runs that on the device machine, with the wheels it needs)

Both paths get the same random model (UNet, text encoder, and a VAE at sd15 size), the same
LoRA (rank 4 on the attention projections), the same reward (a fixed differentiable function
of the decoded image, so the step machinery is what is measured), DDIM with CFG. The plain
path is the loop an AlignProp/DRaFT-style script writes: every part in ``--dtype``, peft's
``add_adapter``, AdamW, gradients only through the window's UNet calls and the decode.
craft's is :class:`craft.train.reward.RewardFinetune`'s ``loss`` + the optimizer step its
``train`` runs, set up as ``craft align`` sets it up on a GPU: frozen parts in ``--dtype``,
the LoRA and its optimizer state float32, bf16 autocast.

Variants (``--variants``, run in the order given, each on a freshly built model):
    plain-sample, craft-sample  sampling only, no gradients (images per second)
    plain-k1, craft-k1          one reward step, K=1 (craft with its gradient checkpointing)
    craft-k1-nockpt             craft K=1 without checkpointing
    plain-full, craft-full      the whole chain with gradients, checkpointing each UNet call
                                (plain: torch.utils.checkpoint per call; craft: per block)
    craft-k1-compile            craft-k1 with align.compile: default (torch.compile)
    craft-k1-compile-ro         craft-k1 with align.compile: reduce-overhead (CUDA graphs)
Prints seconds per step, images per second and peak memory per variant, one JSON line each
to ``--out`` (written as each finishes), and the ratios against plain-k1 / plain-sample with
issue 6's targets (K=1 step <= 1.5 s per 4 images at <= 24 GiB; whole chain fits at batch 4).
A variant that runs out of memory or fails is reported as such and the next one runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from craft.config import AlignSettings, TinyUNet  # noqa: E402
from craft.models.generator import Generator  # noqa: E402
from craft.models.sampling import sample  # noqa: E402
from craft.models.tiny import build_tiny_generator  # noqa: E402
from craft.train.diffusion import FinetuneSettings, TrainingData  # noqa: E402
from craft.train.reward import RewardFinetune, Rollout  # noqa: E402

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# name: (path, what, window steps with gradients ("1" or "all"), checkpointing, compile mode)
VARIANTS = {
    "plain-sample": ("plain", "sample", "0", False, None),
    "craft-sample": ("craft", "sample", "0", False, None),
    "plain-k1": ("plain", "step", "1", False, None),
    "craft-k1": ("craft", "step", "1", True, None),
    "craft-k1-nockpt": ("craft", "step", "1", False, None),
    "plain-full": ("plain", "step", "all", True, None),
    "craft-full": ("craft", "step", "all", True, None),
    "craft-k1-compile": ("craft", "step", "1", True, "default"),
    "craft-k1-compile-ro": ("craft", "step", "1", True, "reduce-overhead"),
}
DEFAULT = "plain-sample,craft-sample,plain-k1,craft-k1,craft-full,plain-full,craft-k1-compile"


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
    text = CLIPTextModel(  # SD-1.5's text encoder: CLIP ViT-L/14's (768 wide, 12 layers)
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            projection_dim=768,
        )
    )
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


def peak_memory(device: torch.device) -> float:
    """Peak memory in GiB (CUDA allocator since the variant began; on CPU the process's max
    RSS, cumulative over variants)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def window_k(args, spec_k: str) -> int:
    return {"0": 0, "1": args.k, "all": args.sample_steps}[spec_k]


def plain_fn(gen: Generator, args, device, what: str, k: int, ckpt: bool):
    """The loop a plain diffusers + peft reward script writes (DRaFT-K / AlignProp style)."""
    from peft import LoraConfig
    from torch.utils.checkpoint import checkpoint

    unet, vae, sched = gen.unet, gen.vae, gen.scheduler
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=TARGETS)
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    prompts = ["a photo"] * args.batch
    size = args.resolution // gen.latent_scale

    def eps_of(x, t, emb):
        return unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample

    def rollout(i: int) -> torch.Tensor:
        with torch.no_grad():
            emb = torch.cat([gen.encode_prompts([""] * len(prompts)), gen.encode_prompts(prompts)])
        g = torch.Generator().manual_seed(i)
        ch = unet.config.in_channels
        x = torch.randn((args.batch, ch, size, size), generator=g).to(device, unet.dtype)
        sched.set_timesteps(args.sample_steps, device=device)
        for j, t in enumerate(sched.timesteps):
            grad = j >= len(sched.timesteps) - k
            with torch.set_grad_enabled(grad):
                if grad and ckpt:
                    eps = checkpoint(eps_of, x, t, emb, use_reentrant=False)
                else:
                    eps = eps_of(x, t, emb)
                e_u, e_c = eps.chunk(2)
                x = sched.step(e_u + args.guidance * (e_c - e_u), t, x).prev_sample
        with torch.set_grad_enabled(k > 0):
            return vae.decode(x / vae.config.scaling_factor).sample if vae is not None else x

    def step(i: int) -> float | None:
        if what == "sample":
            rollout(i)
            return None
        loss = -reward_of(rollout(i)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    return step


def craft_fn(gen: Generator, args, device, what: str, k: int, ckpt: bool, compile_mode=None):
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
    align = AlignSettings(
        window="draft", k=max(k, 1), gradient_checkpointing=ckpt, compile=compile_mode
    )
    channels = gen.image_channels
    rollout = Rollout(args.sample_steps, args.guidance, args.resolution, channels)
    recipe = RewardFinetune(settings, align, rollout, Path(tempfile.mkdtemp()) / "ckpt")
    images = np.zeros((1, args.resolution, args.resolution, channels), np.uint8)
    data = TrainingData(images, np.zeros(1, int), lambda idx, rng: ["a photo"] * len(idx))
    recipe.setup(gen, data, {0: ["a photo"]}, lambda x, y, p: reward_of(x))
    prompts, r = ["a photo"] * args.batch, rollout

    def step(i: int) -> float | None:
        if what == "sample":  # what craft's evaluations and generate run
            seeds = list(range(i * args.batch, (i + 1) * args.batch))
            with torch.no_grad():  # in the generator's precision, as craft generate
                sample(gen, prompts, seeds, r.resolution, r.channels, r.steps, r.guidance)
            return None
        loss = recipe.loss(i)
        recipe.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(recipe.params, 1.0)
        recipe.optimizer.step()
        return loss.item()

    return step


def measure(name: str, args, device) -> dict:
    path, what, spec_k, ckpt, compile_mode = VARIANTS[name]
    k = window_k(args, spec_k)
    out = {"variant": name, "size": args.size, "batch": args.batch, "steps": args.sample_steps}
    out.update(k=k, checkpointing=ckpt, compile=compile_mode, dtype=args.dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    gen = step = None
    try:
        with torch.device(device):  # random init on the device: seconds, not a minute
            gen = (sd15_generator if args.size == "sd15" else tiny_generator)()
        dtype = getattr(torch, args.dtype)
        # as craft align sets it up (craft's LoRA, added at setup, is float32 whatever this is)
        gen.to(device, dtype if dtype != torch.float32 else None, unet_too=True)
        if device.type == "cuda":  # not the float32 build before the cast
            torch.cuda.reset_peak_memory_stats()
        if path == "plain":
            step = plain_fn(gen, args, device, what, k, ckpt)
        else:
            step = craft_fn(gen, args, device, what, k, ckpt, compile_mode)
        t0 = time.perf_counter()
        out["first_loss"] = step(0)  # the LoRA starts at 0: the same in every craft variant
        for i in range(1, args.warmup):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out["warmup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(args.repeats):
            step(max(args.warmup, 1) + i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.repeats
        out.update(status="ok", s_per_step=dt, images_per_s=args.batch / dt)
    except torch.OutOfMemoryError:
        out["status"] = "out of memory"
    except Exception as err:  # report it, go on with the next variant
        traceback.print_exc()
        out["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    out["peak_gib"] = peak_memory(device)
    del gen, step
    gc.collect()  # an in-place compile leaves a reference cycle that holds the model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if out["status"] == "ok":
        line = f"{out['s_per_step']:8.3f} s/step {out['images_per_s']:8.2f} img/s"
    else:
        line = f"{out['status']:>30s}"
    print(f"{name:20s} {line} peak {out['peak_gib']:7.2f} GiB", flush=True)
    return out


def summary(results: dict[str, dict], args, device) -> None:
    """Ratios against the plain loop, and issue 6's targets at sd15 size on a GPU."""

    def ok(name: str) -> dict | None:
        r = results.get(name)
        return r if r and r["status"] == "ok" else None

    for craft_name, plain_name in (
        ("craft-sample", "plain-sample"),
        ("craft-k1", "plain-k1"),
        ("craft-k1-nockpt", "plain-k1"),
        ("craft-k1-compile", "plain-k1"),
        ("craft-k1-compile-ro", "plain-k1"),
        ("craft-full", "plain-full"),
    ):
        c, p = ok(craft_name), ok(plain_name)
        if c and p:
            print(
                f"ratio {craft_name}/{plain_name}: time {c['s_per_step'] / p['s_per_step']:.2f}, "
                f"peak memory {c['peak_gib'] / max(p['peak_gib'], 1e-9):.2f}"
                + (" (CPU max RSS is cumulative)" if device.type == "cpu" else "")
            )
    losses = {n: r["first_loss"] for n, r in results.items() if r.get("first_loss") is not None}
    craft = {n: v for n, v in losses.items() if n.startswith("craft-")}
    if len(craft) > 1:  # eager, checkpointed and compiled steps compute the same first loss
        spread = max(craft.values()) - min(craft.values())
        print(f"craft variants' first-step loss: {craft}, spread {spread:.2e}")
    if device.type != "cuda" or args.size != "sd15":
        return
    per4 = 4 / args.batch
    for name in ("craft-k1", "craft-k1-compile", "craft-k1-compile-ro"):
        if r := ok(name):
            s4, mem = r["s_per_step"] * per4, r["peak_gib"]
            met = "met" if s4 <= 1.5 and mem <= 24 else "NOT met"
            print(
                f"target K=1 <= 1.5 s per 4 images at <= 24 GiB, {name}: {s4:.2f} s, {mem:.1f}"
                f" GiB: {met}"
            )
    if "craft-full" in results:
        r = results["craft-full"]
        fits = "fits" if r["status"] == "ok" else r["status"]
        print(f"target whole chain at batch {args.batch}: craft-full {fits}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sample-steps", type=int, default=15)
    p.add_argument("--k", type=int, default=1, help="window of the *-k1 variants")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--resolution", type=int, default=None, help="pixels (tiny 32, sd15 512)")
    # no float16: craft's recipe computes under bf16 autocast exactly when the UNet is bf16
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--variants", default=DEFAULT, help=f"comma-separated of {list(VARIANTS)}")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps (at least 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="append one JSON line per variant")
    p.add_argument(
        "--summarize", type=Path, default=None, help="only print the ratios of an --out file"
    )
    args = p.parse_args()
    args.resolution = args.resolution or (512 if args.size == "sd15" else 32)
    if args.summarize:  # the latest row of each variant, from runs of several invocations
        rows = [json.loads(line) for line in args.summarize.read_text().splitlines() if line]
        results = {r["variant"]: r for r in rows}
        args.size, args.batch = rows[-1]["size"], rows[-1]["batch"]
        on_gpu = rows[-1]["device"] != "cpu"
        summary(results, args, torch.device("cuda" if on_gpu else "cpu"))
        return
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"reward step, {args.size} size on {where}: batch {args.batch}, {args.sample_steps} "
        f"DDIM steps, CFG {args.guidance}, K={args.k}, {args.dtype}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    results = {}
    for name in names:
        results[name] = measure(name, args, device)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps({"device": where, **results[name]}) + "\n")
    summary(results, args, device)


if __name__ == "__main__":
    main()
