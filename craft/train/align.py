"""``craft align``: reward finetuning of another method's result (kinds craft, generic-reward).

The starting model is the init method's generator (its LoRA fused into the UNet, or its full
UNet); a new LoRA is trained on top of it with :class:`~craft.train.reward.RewardFinetune`.
The run ends in a model card that ``craft generate`` loads unchanged (kind lora): ``lora/``
holds the starting model's LoRA and the reward LoRA at ``align.lora_scale`` stacked into one
diffusers LoRA of the base model (``pipe.load_lora_weights`` loads it); ``reward-lora/`` holds
the reward LoRA alone, ``curves.csv`` the reward and held-out CAS curves. With
``align.handover_t`` the model is two models by timestep: the card names ``start-lora/`` (the
starting model's LoRA, fused on loading) and the reward LoRA, which ``load_card_generator``
turns off below the handover; ``lora/`` then holds what draws the steps above it.

Rewards (plain functions, swappable):
- craft: the differentiable CAS of the reward evaluator, for each image's label
  and the prompt it was drawn from (craft.cas.score.cas_reward);
- generic-reward: the reward evaluator's cosine similarity of the image to the plain label
  prompt: reward finetuning without clinical knowledge.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from craft.config import CraftConfig
from craft.errors import CraftError
from craft.evaluate.features import ImageStatistics
from craft.models.card import ModelCard, load_card_generator
from craft.models.generator import compute_dtype
from craft.models.lora import combine_loras, fuse_lora, read_lora, write_lora
from craft.paths import Layout
from craft.progress import log
from craft.prompts import draw_prompt, label_prompt, plain_prompt_weights, prompt_banks
from craft.store import read_split
from craft.train.common import machine_description, setup_torch
from craft.train.diffusion import FinetuneSettings, TrainingData
from craft.train.distributed import Parallel
from craft.train.reward import Evaluation, RealismFn, RewardFinetune, RewardFn, Rollout
from craft.version import code_version


class SharedImageEmbeddings:
    """The reward evaluator as the reward and the realism term of one step see it: embedding
    the very tensor it embedded last (same object, unchanged, same grad mode) returns the same
    embeddings, so the step runs one forward and one backward through the evaluator, not one
    per term. Everything else is the evaluator's own."""

    def __init__(self, evaluator):
        self._evaluator = evaluator
        self._last: tuple[weakref.ref, int, bool, torch.Tensor] | None = None

    def __getattr__(self, name: str):
        return getattr(self._evaluator, name)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        key = (x._version, torch.is_grad_enabled())
        if self._last is not None and self._last[0]() is x and self._last[1:3] == key:
            return self._last[3]
        emb = self._evaluator.encode_images(x)
        self._last = (weakref.ref(x), *key, emb)
        return emb


def cas_reward_fn(
    evaluator,
    knowledge: Any,
    reference,
    label_names: list[str],
    log_form=True,
    power: float = 1.0,
    checklist_weight: float = 0.0,
    cap_quantile: float | None = None,
    weights: dict[str, float] | None = None,
):
    """CRAFT's reward: per-image (log) CAS of the evaluator for its label and prompt, or
    CAS ** power (without ``log_form``), plus ``checklist_weight`` times the checklist's
    log-likelihood (craft.cas.score.cas_reward); with ``cap_quantile``, CAS capped per label
    at that percentile of the real test images' CAS of the reference (:func:`cas_cap`)."""
    from craft.cas.score import TextBank, cas_reward

    bank = TextBank.build(evaluator, knowledge, label_names)
    if weights is not None:  # the reward's own mix of the dimensions; evaluations keep the CAS's
        reference = dataclasses.replace(reference, weights=dict(weights))
    cap = None if cap_quantile is None else cas_cap(reference, label_names, cap_quantile)

    def reward(images: torch.Tensor, labels: np.ndarray, prompts: list[str]) -> torch.Tensor:
        return cas_reward(
            evaluator,
            images,
            labels,
            prompts,
            knowledge,
            reference,
            bank,
            log=log_form,
            power=power,
            checklist_weight=checklist_weight,
            cap=cap,
        )

    return reward


def cas_cap(reference, label_names: list[str], quantile: float) -> torch.Tensor:
    """Per label (in ``label_names``' order), the ``quantile``-th percentile of the CAS that
    the reference's real test images score with their label's prompts: the level of
    alignment real images of the label reach, above which the reward stops pushing."""
    fix = "rebuild it (craft reference) or set align.cas_cap_quantile to null"
    caps = [reference.real_test_percentile(lab, quantile, fix) for lab in label_names]
    return torch.tensor(caps, dtype=torch.float32)


def generic_reward_fn(evaluator, label_prompts: list[str]) -> RewardFn:
    """The generic baseline's reward: cos(E(image), E(plain label prompt)), no knowledge."""

    def reward(images: torch.Tensor, labels: np.ndarray, prompts: list[str]) -> torch.Tensor:
        emb = evaluator.encode_images(images)
        text = evaluator.encode_texts([label_prompts[int(y)] for y in labels])
        return (emb * text).sum(1)

    return reward


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``a`` and of ``b``."""
    aa, bb = (a * a).sum(1), (b * b).sum(1)
    return (aa[:, None] + bb[None, :] - 2 * a @ b.T).clamp_min(0)


def embedding_mmd_fn(
    evaluator,
    images: np.ndarray,
    labels: np.ndarray,
    label_names: list[str],
    n_real: int,
    chunk: int = 256,
    space: str = "the reward evaluator",
    embeddings: torch.Tensor | None = None,
) -> RealismFn:
    """The realism term: per label in the batch, the squared maximum mean discrepancy (MMD,
    Gretton et al. 2012, unbiased form) between the embeddings (``evaluator.encode_images``:
    the reward evaluator's, or :class:`~craft.evaluate.features.ImageStatistics`) of the
    batch's images of that label and of ``n_real`` real ``images`` (uint8 NHWC, label indices
    ``labels``) of it drawn afresh, averaged over the batch's labels. Kernel
    exp(-|a - b|^2 / (2 s^2)) with s the median distance between different real embeddings
    of the label.

    The returned function takes ``sources`` besides the images and labels: which independent
    sample each row is (draft-lv's re-noisings of one sample share one). The self term, which
    pushes images of a label apart, pairs rows of different sources only; a label with a single
    source has none, and its value is then the pull towards real images alone (no longer an
    MMD). :class:`~craft.train.reward.RewardFinetune` refuses batches that give a process
    fewer than two sources of a label.

    ``embeddings``: the real images' embeddings when the caller already has them, row for row
    (``ImageStatistics.fit_transform``), so that they are not computed a second time.
    """
    from craft.cas.evaluators import to_model_range

    if embeddings is not None and len(embeddings) != len(images):
        raise ValueError(f"{len(embeddings)} embeddings for {len(images)} real images")
    real: dict[int, torch.Tensor] = {}
    bandwidth: dict[int, float] = {}
    subset = np.random.default_rng(0)  # the bandwidth's images: not the file's first ones
    with torch.no_grad():
        for y, name in enumerate(label_names):
            rows = np.flatnonzero(labels == y)
            fix = "give the modality more training images or set align.realism_weight 0"
            if len(rows) < 2:
                raise CraftError(
                    f"the realism term needs real training images of every label, and "
                    f"'{name}' has {len(rows)}: {fix}"
                )
            if embeddings is not None:
                emb = embeddings[torch.as_tensor(rows, device=embeddings.device)]
            else:  # chunk by chunk: no copy of the label's images as a whole
                emb = torch.cat(
                    [
                        evaluator.encode_images(to_model_range(images[rows[i : i + chunk]]))
                        for i in range(0, len(rows), chunk)
                    ]
                )
            pick = np.sort(subset.permutation(len(emb))[:512])
            sub = emb[torch.as_tensor(pick, device=emb.device)]
            sq = sq_dist(sub, sub)[~torch.eye(len(sub), dtype=torch.bool, device=emb.device)]
            apart = sq[sq > 1e-4]  # float32 rounding leaves equal embeddings ~1e-7 apart
            if not len(apart):
                raise CraftError(
                    f"the realism term needs two different real training images of each "
                    f"label, and all of '{name}' look the same to {space}: {fix}"
                )
            real[y], bandwidth[y] = emb, float(apart.median().sqrt())

    def kernel(a: torch.Tensor, b: torch.Tensor, s: float) -> torch.Tensor:
        return torch.exp(-sq_dist(a, b) / (2 * s * s))

    def realism(
        gen: torch.Tensor, gen_labels: np.ndarray, sources: np.ndarray, rng: np.random.Generator
    ) -> torch.Tensor:
        emb = evaluator.encode_images(gen)
        terms = []
        for y in np.unique(gen_labels).tolist():
            rows = np.flatnonzero(gen_labels == y)
            g = emb[torch.as_tensor(rows, device=emb.device)]
            pool, s = real[y], bandwidth[y]
            draw = rng.choice(len(pool), min(n_real, len(pool)), replace=False)
            r = pool[torch.as_tensor(draw, device=pool.device)]
            k_rr, m = kernel(r, r, s), len(r)
            mmd = (k_rr.sum() - k_rr.diagonal().sum()) / (m * (m - 1)) - 2 * kernel(g, r, s).mean()
            src = sources[rows]
            apart = torch.as_tensor(src[:, None] != src[None, :], device=emb.device)
            if apart.any():
                mmd = mmd + kernel(g, g, s)[apart].mean()
            terms.append(mmd)
        return torch.stack(terms).mean()

    return realism


def split_prompts(
    enriched: dict[str, list[str]], plain: dict[str, str], holdout: float, use_enriched: bool
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(training, held-out) prompts per label.

    Held out: a share ``holdout`` of each label's enriched prompts (at least one where a label
    has two or more; fixed choice), never trained on, plus the plain label prompt, which
    ``craft generate`` uses. Training: the label's other enriched prompts and its plain prompt
    (``use_enriched``), or the plain prompt alone.
    """
    train, held = {}, {}
    for lab, bank in enriched.items():
        bank = list(dict.fromkeys(bank))
        n_out = max(1, round(holdout * len(bank))) if holdout > 0 and len(bank) >= 2 else 0
        order = np.random.default_rng(len(bank)).permutation(len(bank))
        out = [bank[i] for i in sorted(order[:n_out])]
        kept = [p for p in bank if p not in out]
        train[lab] = list(dict.fromkeys([*kept, plain[lab]])) if use_enriched else [plain[lab]]
        held[lab] = [*out, plain[lab]]
    return train, held


def evaluation_set(
    held: dict[str, list[str]], label_names: list[str], per_label: int, seed: int
) -> tuple[list[str], np.ndarray, list[int]]:
    """Prompts (cycling each label's held-out prompts), labels and fixed noise seeds."""
    prompts, labels, seeds = [], [], []
    for i, lab in enumerate(label_names):
        for j in range(per_label):
            prompts.append(held[lab][j % len(held[lab])])
            labels.append(i)
            seeds.append(int(np.random.SeedSequence([seed, 7919, i, j]).generate_state(1)[0]))
    return prompts, np.array(labels), seeds


def align(
    cfg: CraftConfig,
    modality: str,
    method: str,
    seed: int,
    card_path: Path,
    threads: int | None = None,
) -> ModelCard:
    """Reward-finetune the init method's generator; writes the run's model card."""
    from craft.cas.reference import load_reference
    from craft.cas.stages import load_configured_evaluator
    from craft.knowledge.schema import load_knowledge

    m, k = cfg.modality(modality), cfg.method(method)
    if not k.is_align:
        raise CraftError(
            f"method '{method}' is kind {k.kind}, not an align method: run `craft adapt`"
        )
    a = k.align_settings
    lay = Layout(cfg.results)
    card_path = Path(card_path)
    run_dir = card_path.parent
    spec = cfg.spec("align", modality, method)
    digest = spec.digest
    init_card = lay.card(modality, k.init, seed)
    if not init_card.is_file():
        raise CraftError(
            f"{init_card} does not exist: run `craft adapt -m {modality} -k {k.init} -s {seed}` "
            f"first (method '{method}' starts from '{k.init}')"
        )
    for path, fix in (
        (lay.knowledge(modality), f"craft knowledge build -m {modality}"),
        (lay.data(modality), f"craft prepare -m {modality}"),
        *[
            (lay.reference(modality, ev), f"craft reference -m {modality} -e {ev}")
            for ev in cfg.align_evaluators(method)
        ],
    ):
        if not path.is_file():
            raise CraftError(f"{path} does not exist: run `{fix}` first")

    setup_torch(seed, threads)
    parallel = Parallel.from_env(a.zero_stage)
    device = parallel.check_devices()
    # 1. The starting model: the init run's generator, its LoRA fused so that the reward LoRA
    #    is the only adapter (and disabling it gives the starting model back, for the KL).
    init, gen = load_card_generator(init_card, cfg.sampling.timestep_spacing)
    if init.lora_dir:
        fuse_lora(gen.unet)
    gen.handover_t = a.handover_t  # the starting model below it (rollouts, evaluations)
    # on a GPU every frozen part in bf16 (the recipe then computes under bf16 autocast); the
    # reward LoRA, added at setup, and its optimizer state stay float32
    gen.to(device, compute_dtype(device, cfg.models.gpu_precision), unet_too=True)
    # 2. Data and prompts: real training images (diffusion loss), each label's prompt bank.
    data = read_split(lay.data(modality), "train")
    labels = list(data.label_names)
    if labels != list(m.labels):
        raise CraftError(f"{lay.data(modality)} has labels {labels}, the config {list(m.labels)}")
    knowledge = load_knowledge(lay.knowledge(modality), modality)
    plain = {lab: label_prompt(m.description, lab) for lab in labels}
    use_enriched = k.kind == "craft" and k.prompts == "enriched"
    train_prompts, held = split_prompts(
        prompt_banks(knowledge, labels), plain, a.holdout_prompts, use_enriched
    )
    by_index = {i: train_prompts[lab] for i, lab in enumerate(labels)}
    weights = {}  # each label's prompt probabilities; none: uniform
    if k.label_prompt_share is not None:
        weights = {
            i: plain_prompt_weights(train_prompts[lab], plain[lab], k.label_prompt_share)
            for i, lab in enumerate(labels)
        }

    def caption(label_idx: np.ndarray, rng: np.random.Generator) -> list[str]:
        return [draw_prompt(by_index[int(i)], rng, weights.get(int(i))) for i in label_idx]

    # 3. The reward evaluator and the reward; the out-of-family evaluator for evaluations.
    reward_ev = cfg.cas.reward_evaluator
    evaluator = load_configured_evaluator(cfg.cas, reward_ev, lay, modality)
    reference = load_reference(lay.reference(modality, reward_ev))
    # with the realism term in its space, the reward and the term embed each step's images
    # once, together
    in_reward_space = a.realism_weight and a.realism_features == "reward-evaluator"
    shared = SharedImageEmbeddings(evaluator) if in_reward_space else evaluator
    if k.kind == "craft":
        reward = cas_reward_fn(
            shared,
            knowledge,
            reference,
            labels,
            a.reward == "log-cas",
            a.reward_power,
            a.checklist_weight,
            a.cas_cap_quantile,
            None if a.reward_weights is None else a.reward_weights.model_dump(),
        )
    else:
        reward = generic_reward_fn(shared, [plain[lab] for lab in labels])
    evaluation = None
    if a.eval_every:
        scorers = {reward_ev: cas_reward_fn(evaluator, knowledge, reference, labels, False)}
        oof = cfg.out_of_family_evaluators[0]
        oof_ev = load_configured_evaluator(cfg.cas, oof, lay, modality)
        oof_ref = load_reference(lay.reference(modality, oof))
        scorers[oof] = cas_reward_fn(oof_ev, knowledge, oof_ref, labels, False)
        prompts, ys, seeds = evaluation_set(held, labels, a.eval_per_label, seed)
        evaluation = Evaluation(prompts, ys, seeds, scorers, stop_on=oof)

    settings = FinetuneSettings(
        mode="lora",
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
    )
    rollout = Rollout(
        a.sample_steps or cfg.sampling.steps, cfg.sampling.guidance_scale, m.resolution, m.channels
    )
    recipe = RewardFinetune(settings, a, rollout, run_dir / "checkpoint", parallel)
    realism = None
    if in_reward_space:
        realism = embedding_mmd_fn(shared, data.images, data.labels, labels, a.realism_real)
    elif a.realism_weight:
        stats = ImageStatistics(m.channels)
        real_stats = stats.fit_transform(data.images).to(device)
        realism = embedding_mmd_fn(
            stats.to(device),
            data.images,
            data.labels,
            labels,
            a.realism_real,
            space="image statistics",
            embeddings=real_stats,
        )
    recipe.setup(
        gen,
        TrainingData(data.images, data.labels, caption),
        by_index,
        reward,
        evaluation,
        weights,
        realism,
    )
    recipe.train()
    if not parallel.is_main:  # rank 0 writes the outputs; the LoRA is whole on every rank
        parallel.barrier()
        return ModelCard.read(card_path)

    # 4. Outputs: the reward LoRA, the one LoRA of the base model, the curves, the card.
    for name in ("lora", "reward-lora", "start-lora"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    kept_step = recipe.keep_best()
    recipe.save_weights(run_dir)  # -> run_dir/lora: the reward LoRA alone
    (run_dir / "lora").rename(run_dir / "reward-lora")
    parts = [(read_lora(run_dir / "reward-lora"), a.lora_scale)]
    if init.lora_dir:
        parts.insert(0, (read_lora(init_card.parent / init.lora_dir), 1.0))
    write_lora(combine_loras(parts), run_dir / "lora")
    start_lora = None
    if a.handover_t is not None and init.lora_dir:  # the run dir holds both models
        shutil.copytree(init_card.parent / init.lora_dir, run_dir / "start-lora")
        start_lora = "start-lora"
    recipe.write_curves(run_dir / "curves.csv")
    unet_dir = None
    if init.unet_dir:
        unet_dir = os.path.relpath(init_card.parent / init.unet_dir, run_dir)
    card = ModelCard(
        modality=modality,
        method=method,
        seed=seed,
        kind="lora",
        base=init.base,
        revision=init.revision,
        lora_dir="lora",
        unet_dir=unet_dir,
        steps=kept_step,
        config_digest=digest,
        craft_version=code_version(),
        init=k.init,
        reward_lora_dir="reward-lora",
        lora_scale=a.lora_scale,
        handover_t=a.handover_t,
        start_lora_dir=start_lora,
        machine=machine_description(device),
    )
    card.write(card_path)
    recipe.cleanup()
    parallel.barrier()
    log(f"{modality}/{method}/{seed}: aligned from {k.init}, weights of step {kept_step}")
    return card
