"""Reward finetuning through the sampler: the recipe behind ``craft align`` (CRAFT).

Built on :class:`~craft.train.diffusion.DiffusionFinetune` (same life: setup, train,
save_checkpoint, cleanup; same seeded steps, SIGTERM checkpoint and bit-exact resume); only
the loss of a step differs. One step:

1. draw a label-balanced batch: labels, a prompt of each label's bank, a noise seed per image;
2. sample with the generator's scheduler (DDIM), gradients only inside the backprop window:
   - ``draft``: the last k denoising steps (DRaFT-K, Clark et al. 2023, alg. 1);
   - ``alignprop``: the last k ~ U{1..T} steps, drawn per training step (AlignProp's
     randomized truncation, Prabhudesai et al. 2023, sec. 4.2);
   - ``refl``: run without gradients to a random late step i (last quarter of the chain), then
     one step with gradients scored on its predicted clean image
     x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) (ReFL, Xu et al. 2023, alg. 1);
   - ``draft-lv``: the whole chain without gradients, then the last step repeated from
     ``lv_draws`` fresh re-noisings of the sample, x_t = sqrt(a_t) sg(x0) + sqrt(1 - a_t) eps_j
     (DRaFT-LV, Clark et al. 2023, sec. 4.3): lower-variance K=1 gradients;
   with ``handover_t``, the starting model (reward LoRA off) draws the steps below that
   timestep, and the gradient reaches the LoRA through the steps it drew before;
3. decode (VAE in latent space; pixel-space generators are already images), score with the
   reward function (the differentiable CAS of the reward evaluator for CRAFT);
4. loss = -mean reward + diffusion_weight * diffusion loss on real labelled images
   + kl_weight * mean_window ||eps_theta - eps_start||^2 (the KL between the Gaussian
   transitions of the two models up to a constant, DPOK, Fan et al. 2023, eq. 8)
   + realism_weight * MMD^2 between the batch and real images of its labels in the reward
   evaluator's embedding space (per label, Gaussian kernel; Gretton et al. 2012), then one
   optimizer step on the LoRA.

Every ``eval_every`` steps (and once before the first), images of held-out prompts are drawn
with fixed seeds at ``lora_scale`` and scored by each evaluation scorer; with ``patience``
training stops after that many evaluations without a better out-of-family CAS and the best
evaluated weights are kept. With ``tolerance_se`` a later evaluation whose per-image scores
are within that many paired standard errors of the best's counts as good as the best: the
latest such weights are kept (held-out differences below the evaluation's own noise do not
send training back to earlier weights). Both curves go to ``curves.csv``.
"""

from __future__ import annotations

import csv
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from craft.config import AlignSettings
from craft.errors import CraftError
from craft.models.generator import Generator
from craft.models.lora import ADAPTER
from craft.models.sampling import guided_eps, initial_noise, sample
from craft.progress import log
from craft.prompts import draw_prompt
from craft.train.diffusion import DiffusionFinetune, TrainingData, replace_dir
from craft.train.distributed import Parallel, deepspeed_engine

#: (images float NCHW in [-1, 1], label indices (N,), prompts) -> (N,) reward or score.
RewardFn = Callable[[torch.Tensor, np.ndarray, list[str]], torch.Tensor]
#: (images float NCHW in [-1, 1], label indices (N,), source sample of each row (N,), rng) ->
#: scalar distance from real images (craft.train.align.embedding_mmd_fn).
RealismFn = Callable[[torch.Tensor, np.ndarray, np.ndarray, np.random.Generator], torch.Tensor]


@dataclass
class Rollout:
    """How images are drawn while training: denoising steps and classifier-free guidance."""

    steps: int
    guidance: float
    resolution: int
    channels: int


def lv_seeds(seeds: list[int], draw: int) -> list[int]:
    """draft-lv's noise seeds of draw ``draw``: one per image, from the image's own noise seed,
    so an image is re-noised alike whichever process of a data-parallel run draws it."""
    return [int(np.random.default_rng([s, draw]).integers(2**62)) for s in seeds]


@dataclass
class Evaluation:
    """Held-out images to score during training: fixed prompts, labels and noise seeds."""

    prompts: list[str]
    labels: np.ndarray
    seeds: list[int]
    scorers: dict[str, RewardFn]  # name -> per-image score (no gradients needed)
    stop_on: str  # the scorer early stopping follows (the out-of-family CAS)
    batch_size: int = 64


@dataclass
class _Best:
    """What early stopping keeps: the weights of ``step``, and the best evaluation so far
    (mean ``score`` at ``best_step``, per-image ``scores``) that later ones are judged by."""

    score: float = -math.inf
    step: int = 0
    bad_evals: int = 0  # evaluations since the kept one
    weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    best_step: int = 0
    scores: np.ndarray | None = field(default=None, repr=False)

    def gap(self, scores: np.ndarray) -> tuple[float, float]:
        """How far the mean of ``scores`` (the same held-out images, prompts and seeds) lies
        below the best evaluation's, and the paired standard error of that difference (NaN
        without the best's per-image scores, as in checkpoints from before them, or under two
        images)."""
        if self.scores is None or len(scores) < 2:
            return self.score - float(np.mean(scores)), math.nan
        d = self.scores - scores
        return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))

    def within(self, scores: np.ndarray, tolerance_se: float | None) -> bool:
        """Whether ``scores`` are within ``tolerance_se`` paired standard errors of the best's."""
        below, se = self.gap(scores)
        return tolerance_se is not None and below <= tolerance_se * se  # False for NaN


class RewardFinetune(DiffusionFinetune):
    """Reward finetuning of a LoRA on a (starting) generator, through its sampler."""

    def __init__(
        self,
        settings,
        align: AlignSettings,
        rollout: Rollout,
        checkpoint_dir: Path,
        parallel: Parallel | None = None,
    ):
        if settings.mode != "lora":
            raise ValueError(f"reward finetuning trains a LoRA, got mode {settings.mode}")
        super().__init__(settings, checkpoint_dir)
        self.a = align
        self.rollout = rollout
        self.parallel = parallel or Parallel()
        self.parallel.shard(settings.batch_size)  # the batch must split over the ranks
        self.engine = None
        self.history: list[dict[str, float]] = []
        self.best = _Best()
        self._terms: dict[str, float] = {}

    # -- setup ----------------------------------------------------------------------------

    def setup(
        self,
        gen: Generator,
        data: TrainingData,
        prompts: dict[int, list[str]],
        reward: RewardFn,
        evaluation: Evaluation | None = None,
        prompt_weights: dict[int, np.ndarray] | None = None,
        realism: RealismFn | None = None,
    ) -> None:
        """``gen`` is the starting model (its own LoRA already fused); ``data`` the real images
        of the diffusion-loss term; ``prompts`` each label's training prompts, drawn uniformly
        or with ``prompt_weights`` (each label's probabilities, in its prompts' order);
        ``realism`` the realism term (needed with a realism weight)."""
        missing = sorted(set(range(len(prompts))) - {i for i, p in prompts.items() if p})
        if missing:
            raise ValueError(f"labels {missing} have no training prompts")
        if self.a.patience is not None and evaluation is None:
            raise ValueError("patience needs an evaluation")
        if self.a.realism_weight and realism is None:
            raise ValueError("realism_weight needs a realism function")
        if self.a.realism_weight:
            self._check_realism_batch(len(prompts))
        self._check_handover(gen)
        self.realism = realism
        self.prompts, self.reward_fn, self.evaluation = prompts, reward, evaluation
        self.prompt_weights = prompt_weights or {}
        super().setup(gen, data, self.rollout.channels)
        if self.a.gradient_checkpointing:  # per block, and only where gradients are on
            gen.unet.enable_gradient_checkpointing()
            if gen.vae is not None:
                gen.vae.enable_gradient_checkpointing()
        if self.a.compile:  # in place: parameter names, and so checkpoints, stay as they are
            # graphs per grad mode, batch shape (rollout, diffusion loss, evaluation), adapter
            # state (KL) and LoRA scale: more than dynamo's default 8, past which it runs eager
            from torch._dynamo import config as dynamo

            dynamo.recompile_limit = max(dynamo.recompile_limit, 32)
            gen.unet.compile(mode=self.a.compile)
            if gen.vae is not None:  # craft calls vae.decode, never vae(): its decoder
                gen.vae.decoder.compile(mode=self.a.compile)
        if self.parallel.zero_stage:  # after the optimizer exists; resume through the engine
            micro = self.s.batch_size // self.parallel.world
            self.engine = deepspeed_engine(
                self.modules, self.params, self.optimizer, self.parallel, micro
            )
            self._resume_zero()
        self._print_arithmetic()

    def _check_realism_batch(self, n_lab: int) -> None:
        """The realism term's self term needs two samples of each label a process draws. Every
        batch is a cyclic shift of the labels of :meth:`_batch_labels` (0), so its counts per
        process are those of offset 0, relabelled: checking offset 0 on every rank covers all."""
        b, world = self.s.batch_size, self.parallel.world
        labels = self._batch_labels(0, n_lab)
        fewest = min(
            int(counts[counts > 0].min())
            for counts in (
                np.bincount(labels[self.parallel.shard(b, r)], minlength=n_lab)
                for r in range(world)
            )
        )
        if fewest < 2:
            raise CraftError(
                f"align.realism_weight needs two images of each label on each process, and a "
                f"batch of {b} over {world} process(es) gives {fewest} for {n_lab} labels: set "
                f"batch_size to a multiple of {2 * n_lab * world}"
            )

    def _check_handover(self, gen: Generator) -> None:
        """With align.handover_t, the draft window must reach a step the reward LoRA draws,
        else no gradient ever reaches it."""
        if gen.handover_t is None or self.a.window != "draft":
            return
        gen.scheduler.set_timesteps(self.rollout.steps)
        steps = gen.scheduler.timesteps
        first = int(steps[len(steps) - min(self.a.k, len(steps))])
        if first < gen.handover_t:
            raise CraftError(
                f"align.handover_t {gen.handover_t}: the draft window (the last {self.a.k} of "
                f"{len(steps)} steps, timesteps {first} and below) lies wholly below it, where "
                "the starting model draws, so the reward LoRA gets no gradient: raise align.k "
                "or lower handover_t"
            )

    def _print_arithmetic(self) -> None:
        b, t, n_lab = self.s.batch_size, self.rollout.steps, len(self.prompts)
        cfg = 2 if self.rollout.guidance != 1.0 else 1
        grad = {
            "draft": f"{min(self.a.k, t)}",
            "alignprop": f"1..{t} (mean {(t + 1) / 2:g})",
            "refl": "1",
            "draft-lv": f"{self.a.lv_draws} (x{self.a.lv_draws} images)",
        }[self.a.window]
        extra = []
        if self.a.kl_weight:
            extra.append("+1 no-grad KL call per grad step")
        if self.a.diffusion_weight:
            extra.append(f"+1 diffusion-loss call on {b} real images")
        if self.a.realism_weight:
            extra.append(f"+1 evaluator call (realism, {self.a.realism_real} real per label)")
        n_eval = len(self.evaluation.prompts) if self.evaluation else 0
        p = self.parallel
        if p.world > 1 or p.zero_stage:
            log(f"DeepSpeed ZeRO-{p.zero_stage}: {p.world} processes x {b // p.world} images")
        log(
            f"align batch: {b} images ({n_lab} labels, {b // n_lab}-{-(-b // n_lab)} each), "
            f"UNet batch {cfg * b} (CFG x{cfg}), {t} denoising steps of which {grad} with "
            f"gradients (window {self.a.window}){'; ' + ', '.join(extra) if extra else ''}; "
            f"evaluation: {n_eval} images every {self.a.eval_every or '-'} steps"
        )

    # -- one step -------------------------------------------------------------------------

    def _batch_labels(self, first: int, n_lab: int) -> np.ndarray:
        """The global batch's labels: cycling through all labels from label ``first``."""
        return (first + np.arange(self.s.batch_size)) % n_lab

    def _reward_batch(self, rng: np.random.Generator):
        """Label-balanced labels, one prompt of each image's label, a noise seed per image."""
        n_lab = len(self.prompts)
        labels = self._batch_labels(int(rng.integers(n_lab)), n_lab)
        w = self.prompt_weights
        prompts = [draw_prompt(self.prompts[int(y)], rng, w.get(int(y))) for y in labels]
        seeds = rng.integers(0, 2**62, size=len(labels)).tolist()
        mine = self.parallel.shard(len(labels))  # this rank's share of the global batch
        return labels[mine], prompts[mine], seeds[mine]

    def _batch(self, step: int):
        """The diffusion-loss batch of step ``step``, this rank's share."""
        x0, captions, noise, t = super()._batch(step)
        mine = self.parallel.shard(len(captions))
        return x0[mine], captions[mine], noise[mine], t[mine]

    def _eps(self, x, t, cond, uncond, grad: bool, kl_terms: list[torch.Tensor]):
        """Guided noise prediction; inside the window with gradients (with
        gradient_checkpointing, each UNet block's activations are recomputed in the backward
        pass) and, with a KL weight, compared to the starting model's. Below
        ``align.handover_t`` the starting model predicts (gradients still flow through x to
        the earlier steps the reward LoRA drew) and there is no KL term."""
        gen, g = self.gen, self.rollout.guidance
        x_in = gen.scheduler.scale_model_input(x, t)
        if not grad:
            with torch.no_grad(), gen.step_model(t):
                return guided_eps(gen, x_in, t, cond, uncond, g)
        with gen.step_model(t):  # align.handover_t: the starting model below it
            eps = guided_eps(gen, x_in, t, cond, uncond, g)
        if self.a.kl_weight and not gen.starts_at(t):
            with torch.no_grad(), gen.starting_model():
                eps_start = guided_eps(gen, x_in, t, cond, uncond, g)
            kl_terms.append((eps.float() - eps_start.float()).pow(2).mean())
        return eps

    def _rollout(self, prompts: list[str], seeds: list[int], rng: np.random.Generator):
        """Images (float NCHW in [-1, 1]) with gradients only from the window, how many draws
        each image has (draft-lv), and the window's KL terms."""
        gen, sched, steps = self.gen, self.gen.scheduler, self.rollout.steps
        sched.set_timesteps(steps, device=gen.device)
        timesteps = sched.timesteps
        with torch.no_grad():
            cond = gen.encode_prompts(list(prompts))
            uncond = gen.encode_prompts([""] * len(prompts))
        x = initial_noise(gen, seeds, self.rollout.resolution) * sched.init_noise_sigma
        first_grad = {
            "draft": steps - min(self.a.k, steps),
            "alignprop": steps - int(rng.integers(1, steps + 1)),
            "refl": steps,  # handled below
            "draft-lv": steps,  # handled below
        }[self.a.window]
        refl_at = int(rng.integers(int(0.75 * steps), steps)) if self.a.window == "refl" else -1
        kl: list[torch.Tensor] = []
        for i, t in enumerate(timesteps):
            if i == refl_at:  # ReFL: one step with gradients, scored on its x0 prediction
                eps = self._eps(x, t, cond, uncond, True, kl)
                x0 = sched.step(eps, t, x, eta=0.0).pred_original_sample
                return gen.to_image_space(x0, self.rollout.channels), 1, kl
            eps = self._eps(x, t, cond, uncond, i >= first_grad, kl)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        draws = 1
        if self.a.window == "draft-lv":  # re-noise the sample for the last step, lv_draws times
            x0, t = x.detach(), timesteps[-1]
            outs = []
            for d in range(self.a.lv_draws):
                noise = initial_noise(gen, lv_seeds(seeds, d), self.rollout.resolution).to(x0)
                xt = sched.add_noise(x0, noise, t.reshape(1))
                eps = self._eps(xt, t, cond, uncond, True, kl)
                outs.append(sched.step(eps, t, xt, eta=0.0).prev_sample)
            x, draws = torch.cat(outs), self.a.lv_draws
        return gen.to_image_space(x, self.rollout.channels), draws, kl

    def loss(self, step: int) -> torch.Tensor:
        """Minus the mean reward of step ``step``'s batch, plus the regularisers. The generator
        runs in its precision (Generator.autocast), the reward evaluator in float32 outside it."""
        rng = np.random.default_rng([self.s.seed, step, 1])  # apart from the real-image batch
        labels, prompts, seeds = self._reward_batch(rng)
        with self.gen.autocast():
            images, draws, kl = self._rollout(prompts, seeds, rng)
        rows = np.tile(np.arange(len(labels)), draws)  # draft-lv: each sample's draws
        images = images.float()  # one tensor for every term (align.SharedImageEmbeddings)
        reward = self.reward_fn(images, labels[rows], prompts * draws)
        loss = -reward.float().mean()
        terms = {"reward": reward.mean().item()}
        if self.a.realism_weight:
            realism = self.realism(images, labels[rows], rows, rng)
            loss = loss + self.a.realism_weight * realism
            terms["realism_mmd"] = realism.item()
        if kl:
            kl_mean = torch.stack(kl).mean()
            loss = loss + self.a.kl_weight * kl_mean
            terms["kl"] = kl_mean.item()
        if self.a.diffusion_weight:
            diffusion = super().loss(step)
            loss = loss + self.a.diffusion_weight * diffusion
            terms["diffusion_loss"] = diffusion.item()
        terms["loss"] = loss.item()
        self._terms = self.parallel.mean(terms)
        return loss

    def optimizer_step(self, loss: torch.Tensor) -> None:
        if self.engine is None:
            return super().optimizer_step(loss)
        self.engine.backward(loss)  # averages gradients over the ranks, clips at norm 1
        self.engine.step()

    # -- the starting model, the LoRA scale ----------------------------------------------

    @contextmanager
    def lora_scale(self, scale: float) -> Iterator[None]:
        """The reward LoRA at ``scale`` inside the block (1 = as trained)."""
        if scale == 1.0:
            yield
            return
        self.gen.unet.set_adapters([ADAPTER], weights=[scale])
        try:
            yield
        finally:
            self.gen.unet.set_adapters([ADAPTER], weights=[1.0])

    # -- evaluation and early stopping ----------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, np.ndarray]:
        """Each scorer's per-image scores of the held-out images, drawn at ``lora_scale``."""
        ev, r = self.evaluation, self.rollout
        images = []
        with self.lora_scale(self.a.lora_scale):
            for i in range(0, len(ev.prompts), ev.batch_size):
                j = i + ev.batch_size
                images.append(
                    sample(
                        self.gen,
                        ev.prompts[i:j],
                        ev.seeds[i:j],
                        r.resolution,
                        r.channels,
                        r.steps,
                        r.guidance,
                    )
                )
        x = torch.cat(images)  # sample() returns float32 images
        return {
            name: fn(x, ev.labels, ev.prompts).float().cpu().numpy()
            for name, fn in ev.scorers.items()
        }

    def _evaluate_and_track(self) -> bool:
        """Evaluate, log the scores in the history, keep the best weights; True = stop."""
        per_image = self.evaluate()
        means = {k: float(np.mean(v)) for k, v in per_image.items()}
        row = {"step": float(self.step), **{f"eval_cas__{k}": v for k, v in means.items()}}
        if self.history and self.history[-1]["step"] == self.step:
            self.history[-1].update(row)
        else:
            self.history.append(row)
        scores = np.asarray(per_image[self.evaluation.stop_on], dtype=np.float64)
        score, b = means[self.evaluation.stop_on], self.best
        shown = ", ".join(f"{k} {v:.4f}" for k, v in means.items())
        if score > b.score:
            self.best = _Best(score, self.step, 0, self._trainable_state(), self.step, scores)
            log(f"evaluation at step {self.step}: CAS {shown} (best so far)")
            return False
        below, se = b.gap(scores)
        noise = f", {below / se:.1f} paired SE" if se > 0 else ""  # NaN: no per-image scores
        gap = f"{below:.4f} below the best {b.score:.4f} at step {b.best_step}{noise}"
        if b.within(scores, self.a.tolerance_se):  # as good as the best within the noise
            b.step, b.bad_evals, b.weights = self.step, 0, self._trainable_state()
            log(f"evaluation at step {self.step}: CAS {shown} ({gap}: kept)")
        else:
            b.bad_evals += 1
            log(
                f"evaluation at step {self.step}: CAS {shown} ({gap}; kept step {b.step}, "
                f"{b.bad_evals} without improvement)"
            )
        return self.a.patience is not None and b.bad_evals >= self.a.patience

    def after_step(self) -> bool:
        self.history.append({"step": float(self.step), **self._terms})
        if not self.a.eval_every or self.step % self.a.eval_every:
            return False
        return self._evaluate_and_track()

    def train(self) -> list[float]:
        """Evaluate the starting model (step 0), then train (see DiffusionFinetune.train)."""
        if self.step == 0 and self.a.eval_every:
            self._evaluate_and_track()
        t0, start = time.monotonic(), self.step
        losses = super().train()
        if losses:
            log(f"{(time.monotonic() - t0) / max(self.step - start, 1):.2f} s per reward step")
        return losses

    # -- state ----------------------------------------------------------------------------

    def _maybe_resume(self) -> None:
        if not self.parallel.zero_stage:
            super()._maybe_resume()
        # with ZeRO the optimizer state is sharded: resumed by _resume_zero, via the engine

    def _resume_zero(self) -> None:
        state_file = self.checkpoint_dir / "state.pt"
        if not state_file.is_file():
            return
        state = torch.load(state_file, weights_only=False)
        if not self.resumable(state, self.parallel.world):
            return
        self.engine.load_checkpoint(
            str(self.checkpoint_dir / "zero"), tag="ckpt", load_lr_scheduler_states=False
        )
        self.step = int(state["step"])
        self.load_extra_state(state.get("extra", {}), self.checkpoint_dir)
        log(f"resumed from {self.checkpoint_dir} at step {self.step} (ZeRO shards)")

    def save_checkpoint(self) -> None:
        """Without ZeRO, the recipe's checkpoint; with it, every rank writes its shard of the
        optimizer state into ``zero/`` and rank 0 the weights and run state, then renames."""
        if not self.parallel.zero_stage:
            return super().save_checkpoint()
        p = self.parallel
        tmp = self.checkpoint_dir.with_name(self.checkpoint_dir.name + ".tmp")
        if p.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        p.barrier()
        self.engine.save_checkpoint(str(tmp / "zero"), tag="ckpt")
        p.barrier()
        if p.is_main:
            save_file(self._trainable_state(), tmp / "trainable.safetensors")
            state = {
                "step": self.step,
                "config_digest": self.s.config_digest,
                "job_spec": self.s.job_spec,
                "seed": self.s.seed,
                "world": p.world,
                "extra": self.extra_state(tmp),
            }
            torch.save(state, tmp / "state.pt")
            replace_dir(tmp, self.checkpoint_dir)
        p.barrier()

    def extra_state(self, directory: Path) -> dict:
        b = self.best
        if b.weights is not None:
            save_file(b.weights, Path(directory) / "best.safetensors")
        best = {"score": b.score, "step": b.step, "bad": b.bad_evals, "best_step": b.best_step}
        if b.scores is not None:
            best["scores"] = b.scores.tolist()
        return {"history": self.history, "best": best}

    def load_extra_state(self, state: dict, directory: Path) -> None:
        self.history = list(state.get("history", []))
        b = state.get("best")
        if b is not None:
            best_file = Path(directory) / "best.safetensors"
            weights = load_file(best_file) if best_file.is_file() else None
            scores = b.get("scores")  # checkpoints from before tolerance_se have none
            self.best = _Best(
                b["score"],
                b["step"],
                b["bad"],
                weights,
                b.get("best_step", b["step"]),
                None if scores is None else np.asarray(scores, dtype=np.float64),
            )

    def keep_best(self) -> int:
        """With early stopping, load the best evaluated weights; returns their step."""
        if self.a.patience is None or self.best.weights is None:
            return self.step
        b = self.best
        self.modules.load_state_dict(b.weights, strict=False)
        log(
            f"keeping the weights of step {b.step} "
            f"(best held-out CAS {b.score:.4f} at step {b.best_step})"
        )
        return b.step

    def write_curves(self, path: Path) -> Path:
        """The reward and evaluation curves, long format: step, metric, value."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "metric", "value"])
            for row in self.history:
                for k, v in row.items():
                    if k != "step":
                        w.writerow([int(row["step"]), k, f"{v:.6g}"])
        tmp.replace(path)
        return path
