"""Diffusion-loss finetuning: the recipe behind ``craft pretrain`` and ``craft adapt``.

One recipe class with a fixed life (torchtune style): ``__init__`` reads settings and rejects
bad ones, ``setup`` builds the parts in dependency order, ``train`` runs, ``save_checkpoint``
writes resumable state, ``cleanup`` releases. Training is deterministic per step: the batch,
the noise and the timesteps of step ``i`` come from generators seeded by (seed, i), so a run
resumed from a checkpoint continues exactly as the uninterrupted run would have.

Loss (DDPM, Ho et al. 2020, eq. 14):
|| eps - eps_theta(sqrt(a_t) x_0 + sqrt(1 - a_t) eps, t, c) ||^2.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from craft.errors import CraftError, Interrupted
from craft.models.generator import Generator
from craft.models.lora import add_lora, save_lora
from craft.models.sampling import to_model_input
from craft.progress import log, progress

CaptionFn = Callable[[np.ndarray, np.random.Generator], list[str]]


def diffusion_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """What the UNet is trained to predict at ``t``, by the scheduler's ``prediction_type``:
    the noise (SD 1.x), the velocity sqrt(a)*noise - sqrt(1-a)*x0 (SD 2.x-v), or x0."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise CraftError(
        f"the generator's scheduler predicts '{kind}'; craft trains epsilon, v_prediction "
        "or sample models: fix scheduler/scheduler_config.json"
    )


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``target``; the old one goes only after."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class FinetuneSettings:
    """What one finetuning run does; ``config_digest`` ties a checkpoint to its settings."""

    mode: Literal["lora", "full"]
    steps: int
    batch_size: int
    lr: float
    seed: int
    config_digest: str
    job_spec: dict | None = None  # the job's spec (craft.specs), saved in each checkpoint
    rank: int = 8
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    weight_decay: float = 0.0
    checkpoint_every: int = 50
    gradient_checkpointing: bool = False  # recompute UNet blocks in backward: memory for time
    train_text_encoder: bool = False
    uncond_prob: float = 0.1  # captions dropped to "" so classifier-free guidance works
    warmup_steps: int = 0


@dataclass
class TrainingData:
    """Images (uint8 NHWC) with label indices and a function that captions a batch."""

    images: np.ndarray
    labels: np.ndarray
    caption: CaptionFn


class DiffusionFinetune:
    """Finetune a generator's UNet (LoRA or full) with the diffusion loss."""

    def __init__(self, settings: FinetuneSettings, checkpoint_dir: Path):
        if settings.mode not in ("lora", "full"):
            raise ValueError(f"mode must be lora or full, got {settings.mode}")
        if settings.train_text_encoder and settings.mode == "lora":
            raise ValueError("train_text_encoder needs mode=full")
        self.s = settings
        self.checkpoint_dir = Path(checkpoint_dir)
        self.step = 0
        self._stop = False

    # -- setup ----------------------------------------------------------------------------

    def setup(self, gen: Generator, data: TrainingData, channels: int) -> None:
        self.gen, self.data, self.channels = gen, data, channels
        # 1. Frozen parts first; then the trainable parameters, which the optimizer needs.
        gen.text_encoder.requires_grad_(self.s.train_text_encoder)
        if self.s.mode == "lora":
            params = add_lora(
                gen.unet, self.s.rank, self.s.alpha, self.s.target_modules, self.s.seed
            )
        else:
            gen.unet.requires_grad_(True)
            params = list(gen.unet.parameters())
        if self.s.train_text_encoder:
            params += list(gen.text_encoder.parameters())
        if self.s.gradient_checkpointing:  # each UNet block's activations recomputed in backward
            gen.unet.enable_gradient_checkpointing()
        low = {p.dtype for p in params} - {torch.float32}
        if low:
            raise ValueError(
                f"trainable parameters in {sorted(map(str, low))}: train in float32 (cast only "
                "frozen parts, Generator.to(device, dtype) without unet_too for a full finetune)"
            )
        self.params = params
        self.modules = torch.nn.ModuleDict({"unet": gen.unet, "text_encoder": gen.text_encoder})
        self.optimizer = torch.optim.AdamW(params, lr=self.s.lr, weight_decay=self.s.weight_decay)
        # 2. Resume: weights and optimizer from the checkpoint, if it matches these settings.
        self._maybe_resume()
        n = sum(p.numel() for p in params)
        log(
            f"training {self.s.mode}: {n / 1e6:.3f}M trainable parameters, "
            f"{len(data.images)} images, batch {self.s.batch_size}, "
            f"steps {self.step}->{self.s.steps}"
        )

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of the trained parameters (on the CPU ``.cpu()`` alone would alias them, and
        a snapshot, such as early stopping's best weights, would follow later steps)."""
        return {
            name: p.detach().to("cpu", copy=True).contiguous()
            for name, p in self.modules.named_parameters()
            if p.requires_grad
        }

    def resumable(self, state: dict, world: int | None = None) -> bool:
        """Whether a checkpoint's run state was made with this run's settings (and number of
        processes); if not, one log line names the settings that differ, and the run starts
        over (the checkpoint is replaced at the first save)."""
        from craft.specs import describe_changes

        same = state["config_digest"] == self.s.config_digest
        if same and (world is None or state.get("world") == world):
            return True
        if not same:
            why = describe_changes(state.get("job_spec"), self.s.job_spec or {})
        else:
            why = f"processes: {state.get('world')} -> {world}"
        log(
            f"WARNING: not resuming from {self.checkpoint_dir}: it was made with other "
            f"settings ({why}); starting over"
        )
        return False

    def _maybe_resume(self) -> None:
        state_file = self.checkpoint_dir / "state.pt"
        if not state_file.is_file():
            return
        state = torch.load(state_file, weights_only=False)
        if not self.resumable(state):
            return
        weights = load_file(self.checkpoint_dir / "trainable.safetensors")
        missing = self.modules.load_state_dict(weights, strict=False)
        if missing.unexpected_keys:
            raise RuntimeError(f"checkpoint has unexpected weights {missing.unexpected_keys[:3]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.load_extra_state(state.get("extra", {}), self.checkpoint_dir)
        log(f"resumed from {self.checkpoint_dir} at step {self.step}")

    # -- hooks of recipes built on this one (craft.train.reward) ---------------------------

    def extra_state(self, directory: Path) -> dict:
        """Run state beyond step and optimizer (files may go into ``directory``)."""
        return {}

    def load_extra_state(self, state: dict, directory: Path) -> None:
        """Restore what :meth:`extra_state` saved."""

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward pass, gradient clipping (norm 1) and one optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()

    def after_step(self) -> bool:
        """Called after each optimizer step (``self.step`` counts it); True stops training."""
        return False

    # -- training -------------------------------------------------------------------------

    def _batch(self, step: int):
        """Batch of step ``step``: images, captions, noise and timesteps, all seeded by step."""
        rng = np.random.default_rng([self.s.seed, step])
        idx = rng.choice(len(self.data.images), size=self.s.batch_size, replace=True)
        captions = self.data.caption(self.data.labels[idx], rng)
        drop = rng.random(len(captions)) < self.s.uncond_prob
        captions = ["" if d else c for c, d in zip(captions, drop, strict=True)]
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        images = to_model_input(self.data.images[idx]).to(self.gen.device)
        x0 = self.gen.to_model_space(images, generator=g)
        noise = torch.randn(x0.shape, generator=g).to(x0)
        t = torch.randint(
            0, self.gen.scheduler.config.num_train_timesteps, (len(idx),), generator=g
        )
        return x0, captions, noise, t.to(self.gen.device)

    def loss(self, step: int) -> torch.Tensor:
        """The diffusion loss of step ``step``'s batch; the generator's forward passes run in
        its precision (bf16 autocast on a GPU), the noising, target and loss in float32."""
        x0, captions, noise, t = self._batch(step)
        xt = self.gen.scheduler.add_noise(x0, noise, t)
        with self.gen.autocast():
            cond = self.gen.encode_prompts(captions)
            pred = self.gen.unet(xt, t, encoder_hidden_states=cond).sample
        target = diffusion_target(self.gen.scheduler, x0, noise, t)
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    def _lr(self, step: int) -> float:
        if self.s.warmup_steps and step < self.s.warmup_steps:
            return self.s.lr * (step + 1) / self.s.warmup_steps
        return self.s.lr

    def train(self) -> list[float]:
        """Run to ``steps``; checkpoint every ``checkpoint_every`` and on SIGTERM."""
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        losses: list[float] = []
        t0 = time.monotonic()
        try:
            self.gen.unet.train()
            steps = range(self.step, self.s.steps)
            for step in progress(steps, self.s.steps, f"{self.s.mode} finetuning", self.step):
                for group in self.optimizer.param_groups:
                    group["lr"] = self._lr(step)
                loss = self.loss(step)
                self.optimizer_step(loss)
                self.step = step + 1
                losses.append(loss.item())
                if self.after_step():
                    log(f"stopping early after step {self.step}")
                    break
                if self.step % self.s.checkpoint_every == 0 and self.step < self.s.steps:
                    self.save_checkpoint()
                if self._stop:
                    self.save_checkpoint()
                    raise Interrupted(f"stopped by SIGTERM at step {self.step}; checkpoint saved")
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.gen.unet.eval()
        if losses:
            dt = time.monotonic() - t0
            log(
                f"done: {len(losses)} steps in {dt:.0f} s, "
                f"last-20 mean loss {np.mean(losses[-20:]):.4f}"
            )
        return losses

    def _on_sigterm(self, signum, frame) -> None:
        log("SIGTERM received: saving a checkpoint after this step")
        self._stop = True

    def save_checkpoint(self) -> None:
        """Write weights and run state apart, atomically (temp dir, then rename)."""
        tmp = self.checkpoint_dir.with_name(self.checkpoint_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(self._trainable_state(), tmp / "trainable.safetensors")
        torch.save(
            {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "config_digest": self.s.config_digest,
                "job_spec": self.s.job_spec,
                "seed": self.s.seed,
                "extra": self.extra_state(tmp),
            },
            tmp / "state.pt",
        )
        replace_dir(tmp, self.checkpoint_dir)

    # -- outputs --------------------------------------------------------------------------

    def save_weights(self, out_dir: Path) -> str:
        """Final weights: a diffusers LoRA dir or a full UNet dir; returns its name."""
        if self.s.mode == "lora":
            save_lora(self.gen.unet, Path(out_dir) / "lora")
            return "lora"
        self.gen.unet.save_pretrained(Path(out_dir) / "unet")
        return "unet"

    def cleanup(self) -> None:
        """Remove the checkpoint once the final weights are safely written."""
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
