"""The one config model of craft: defaults, descriptions and validation live here.

``config.yaml`` is validated against :class:`CraftConfig` by the Snakefile before the DAG is
built and by every CLI verb. Unknown keys are errors. A failed validation becomes one
:class:`~craft.errors.CraftError` line naming the field, the bad value and what is allowed.
This module imports no torch (the Snakefile imports it at parse time).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from craft.cas.settings import CasConfig, CasWeights
from craft.errors import CraftError
from craft.evaluate.settings import EvaluationConfig
from craft.knowledge.settings import KnowledgeConfig
from craft.specs import Spec, digest_of, job_spec

__all__ = ["CraftConfig", "digest_of", "dump_config", "load_config", "validate_config"]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class Strict(BaseModel):
    """Base of every config node: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------- data sources


class PhantomSource(Strict):
    """Procedurally drawn images whose findings are known by construction (craft.data.phantoms)."""

    kind: Literal["phantom"] = Field(description="Source type: 'phantom' (drawn images).")
    phantom: str = Field(description="Phantom modality to draw, e.g. phantom-cxr or phantom-derm.")
    n_per_label: int = Field(200, ge=3, description="Images drawn per label before splitting.")
    seed: int = Field(0, ge=0, description="Seed of the drawing; the split seed is separate.")


class ManifestSource(Strict):
    """A hospital's image set: a CSV with path,label[,split][,patient] and a folder of images."""

    kind: Literal["manifest"] = Field(description="Source type: 'manifest' (a CSV of images).")
    manifest: Path = Field(
        description="CSV file with columns path,label and optional split and patient (or "
        "patient_id): a patient's images all go to one split."
    )
    image_root: Path = Field(description="Folder that relative paths in the manifest start from.")
    resize: Literal["pad", "crop", "squash"] = Field(
        "pad",
        description="How a non-square image becomes square before it is resized to the "
        "modality's resolution: 'pad' it with black (centred), 'crop' its centre square, or "
        "'squash' it (the aspect ratio is not kept).",
    )
    color: Literal["convert", "error"] = Field(
        "convert", description="RGB<->grayscale mismatches are converted, or are errors."
    )
    alpha: Literal["error", "composite"] = Field(
        "error",
        description="Images with transparency are errors, or are composited onto black.",
    )
    intensity: Literal["minmax", "full"] = Field(
        "minmax", description="How >8-bit images map to uint8: percentile stretch or full range."
    )
    dicom_window: tuple[float, float] | None = Field(
        None, description="DICOM (center, width) overriding the file's own window."
    )

    @field_validator("dicom_window")
    @classmethod
    def _window_width(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[1] < 1:
            raise ValueError(f"the width {v[1]:g} must be at least 1 (give [center, width])")
        return v


DataSource = Annotated[PhantomSource | ManifestSource, Field(discriminator="kind")]


class Splits(Strict):
    """Shares of each label's images in the train, val and test splits (they sum to 1)."""

    train: float = Field(
        0.7, gt=0, lt=1, description="Share in (0, 1) of each label's images used for training."
    )
    val: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="Share in [0, 1) of each label's images held out for validation (0 = none).",
    )
    test: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="Share in (0, 1) of each label's images held out for testing (the real "
        "reference of the evaluations).",
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed of the split assignment; manifest rows with their own split keep it.",
    )

    @model_validator(mode="after")
    def _sum_to_one(self) -> Splits:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self

    @property
    def fractions(self) -> dict[str, float]:
        """{split: share}, as craft.data.manifest.assign_splits takes them."""
        return {"train": self.train, "val": self.val, "test": self.test}


class ModalityConfig(Strict):
    """One image modality: its data, labels and image geometry."""

    source: DataSource = Field(
        description="Where the images come from: drawn phantoms (kind phantom) or a CSV "
        "manifest of image files (kind manifest)."
    )
    labels: list[Name] = Field(min_length=2, description="Class labels, in a fixed order.")
    description: str = Field(
        description="What the images are, used in prompts: 'chest radiograph'."
    )
    resolution: int = Field(32, ge=16, le=1024, description="Square side in pixels.")
    channels: Literal[1, 3] = Field(
        1,
        description="1 (grayscale) or 3 (RGB); a phantom modality must match its phantom.",
    )
    splits: Splits = Field(Splits(), description="Train / val / test shares and their seed.")

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"{v} is not a multiple of 8")
        return v

    @field_validator("labels")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"labels must be unique, got {v}")
        return v

    @property
    def phantom(self) -> str | None:
        """The phantom the modality's images are drawn from; None for a manifest."""
        return self.source.phantom if self.source.kind == "phantom" else None


# ----------------------------------------------------------------------------- models


class TinyUNet(Strict):
    """Architecture of the phantom foundation generator (pixel space, UNet2DConditionModel)."""

    block_out_channels: list[int] = Field(
        [16, 32, 32],
        description="Output channels of each UNet resolution level, finest first (one entry "
        "per level, as in attention_levels).",
    )
    layers_per_block: int = Field(1, description="ResNet layers per UNet block.")
    attention_levels: list[bool] = Field(
        [False, False, True], description="Cross-attention per resolution level."
    )
    cross_attention_dim: int = Field(
        32,
        description="Hidden size of the tiny CLIP text encoder, which the UNet cross-attends to.",
    )
    text_layers: int = Field(2, description="Transformer layers of the tiny text encoder.")
    text_max_length: int = Field(24, description="Tokens per caption (the text encoder's limit).")
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "v_prediction",
        description="What the UNet predicts. v (Salimans & Ho 2022) learns the image's colour and "
        "brightness at the noisiest steps; epsilon cannot there (x0 = (x - eps)/~0).",
    )


class PretrainConfig(Strict):
    """Training of the phantom foundation model (only when models.generator is 'pretrain')."""

    steps: int = Field(
        600, ge=1, description="Optimizer steps of the full finetune (UNet and text encoder)."
    )
    batch_size: int = Field(64, ge=1, description="Images per optimizer step.")
    lr: float = Field(
        2e-3,
        gt=0,
        description="AdamW learning rate, warmed up linearly over the first tenth of the steps "
        "(at most 50).",
    )
    label_caption_prob: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of captions that name the clinical label (e.g. 'cardiomegaly').",
    )
    findings_caption_prob: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Share of captions that describe the drawn findings in lay words ('a large "
        "heart'), as web captions do; the rest name only the modality. The foundation thus "
        "knows what findings look like but not the clinical label words.",
    )
    n_images: int = Field(4000, ge=16, description="Phantoms drawn for pretraining (own seed).")
    seed: int = Field(
        1234, description="Seed of the drawn phantoms, their captions, the weights and training."
    )
    architecture: TinyUNet = Field(
        TinyUNet(), description="Architecture of the foundation generator that is trained."
    )


class ModelsConfig(Strict):
    """The foundation generator that every method starts from."""

    generator: str = Field(
        "pretrain",
        description="'pretrain' (train a tiny foundation per modality in the workflow) or any "
        "from_pretrained source: a hub id (stable-diffusion-v1-5/stable-diffusion-v1-5) or a "
        "local dir; "
        "'{modality}' in it is replaced by the modality's name (one model per modality, e.g. "
        "the shipped phantom foundations: assets/phantom-foundation/{modality}).",
    )
    revision: str | None = Field(
        None,
        description="Hub revision (branch, tag or commit) of the generator; None = the default "
        "branch.",
    )
    gpu_precision: Literal["bf16", "float32"] = Field(
        "bf16",
        description="On a GPU, adapt, align and generate keep the generator's frozen parts "
        "(text encoder, VAE, and the UNet under a LoRA) in bf16 and compute under bf16 "
        "autocast; trained weights, their optimizer state, latents, losses and rewards stay "
        "float32. 'float32' runs everything in float32 (twice the memory, slower). The CPU "
        "always runs float32.",
    )

    def generator_for(self, modality: str) -> str:
        """The generator source of one modality ('{modality}' filled in)."""
        return self.generator.replace("{modality}", modality)


# ----------------------------------------------------------------------------- methods


ALIGN_KINDS = ("craft", "generic-reward")


class AlignSettings(Strict):
    """Reward finetuning of an align method (kind craft, generic-reward): ``methods.X.align``.

    The loop samples with the generator's scheduler, keeps gradients only inside a backprop
    window of the denoising chain, scores the decoded images with the reward and steps a LoRA.
    """

    window: Literal["draft", "alignprop", "refl", "draft-lv"] = Field(
        "draft",
        description="Backprop window: 'draft' the last k steps (DRaFT-K, Clark et al. 2023); "
        "'alignprop' a random truncation point per step (AlignProp, Prabhudesai et al. 2023); "
        "'refl' one random late step scored on its predicted clean image (ReFL, Xu et al. "
        "2023); 'draft-lv' the last step re-noised lv_draws times (DRaFT-LV).",
    )
    k: int = Field(1, ge=1, description="Denoising steps with gradients (window draft).")
    reward: Literal["cas", "log-cas"] = Field(
        "cas",
        description="CRAFT's reward per image: 'cas' (in [0, 1]) or 'log-cas' (the mean log "
        "calibrated dimension, linear far below the real images). On phantoms 'log-cas' let "
        "a few off-distribution images' gradients drive the batch: the reward evaluator's "
        "held-out CAS fell 0.37 -> 0.09 in 30 steps, where 'cas' raised it to 0.46. The "
        "price of 'cas': an image that fails an item gets almost no gradient (34 of 64 chest "
        "'nodule' images with two nodules, CAS 0.02 against 0.66, gave 6% of the batch's "
        "pixel-gradient norm under 'cas' and 89% under 'log-cas'). With the phantom "
        "benchmark's recipe (whole chain, KL) on seed 3, 'log-cas' gave oracle agreement "
        "dermoscopy 0.953 vs 0.898 but the chest's held-out out-of-family CAS fell from its "
        "start (0.530 -> 0.467 at step 25; step 0 kept, oracle 0.789 vs 0.898).",
    )
    reward_power: float = Field(
        1.0,
        gt=0,
        le=1,
        description="With reward 'cas': train on CAS ** reward_power. Below 1 it gives images "
        "that fail an item more gradient than 'cas' (at 0.5: 2x at CAS 0.06, 0.6x at 0.73) "
        "without the unbounded weight 'log-cas' gives them. Phantom benchmark recipe, seed 3, "
        "0.5 against 1: dermoscopy oracle agreement 0.930 vs 0.898, but the chest's held-out "
        "out-of-family CAS never rose above its start (step 0 kept; oracle 0.789 vs 0.898), "
        "so the benchmark keeps 1.",
    )
    checklist_weight: float = Field(
        0.0,
        ge=0,
        description="Kind craft: add this times the checklist's log-likelihood (the mean over "
        "the label's checklist items of log P(item as expected), from the reward evaluator) to "
        "the reward. CAS is flat at 0 for an image that surely fails an item (a chest "
        "'effusion' with fluid in both lungs scores CAS 0.00), so under 'cas' such images get "
        "no gradient and reward finetuning leaves them as they are; this term gives each wrong "
        "item a gradient near 1 and fades once the item is right (it is at most 0). Measured "
        "on craft's chest results: pixel-gradient norm of CAS 0.06 on the wrong images vs 1.29 "
        "on the right, of this term 1.60 vs 0.03, so weight 1 evens them. Phantom benchmark, "
        "seeds 0-2, from lora-enriched with label_prompt_share 0.5, chest oracle agreement "
        "0.928 ± 0.029 vs 0.883 ± 0.048 without it (dermoscopy 0.961 vs 0.956); on seed 3 "
        "from the start without the share, chest 0.844 vs 0.898 (dermoscopy 0.914 vs 0.898).",
    )
    realism_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of a realism term: the squared maximum mean discrepancy (Gaussian "
        "kernel, per label) between the reward evaluator's embeddings of the batch's images "
        "and of realism_real real training images of each of its labels. Its cross term pulls "
        "each image towards real ones of its label, its self term pushes images of one label "
        "apart: a reward that cannot be raised by drawing every finding the same way. One more "
        "image forward of the reward evaluator per step; needs two images of each label per "
        "process. Phantom benchmark, seven seeds, weight 1 against 0: oracle distribution "
        "shift cxr / derm 0.293 / 0.558 vs 0.334 / 0.578, but oracle agreement 0.895 / 0.938 "
        "vs 0.912 / 0.970 and out-of-family CAS 0.497 / 0.657 vs 0.538 / 0.668: a trade, so "
        "the benchmark keeps 0.",
    )
    realism_real: int = Field(
        16,
        ge=2,
        description="Real training images per label drawn each step for the realism term.",
    )
    realism_features: Literal["reward-evaluator", "image-statistics"] = Field(
        "reward-evaluator",
        description="Where the realism term compares images with real ones: the reward "
        "evaluator's embeddings, or image-statistics (no model: quantiles of each channel's "
        "intensities and local contrast at three scales, standardised by the real training "
        "images; craft.evaluate.features.ImageStatistics), which see brightness, contrast and "
        "grain but not where findings lie. Phantom benchmark, seed 3 (dermoscopy; the chest "
        "keeps step 0 with or without it), weight 1: oracle agreement 0.859 and distribution "
        "shift 0.545 against 0.984 / 0.640 without the term (start 0.898 / 0.527); weight 4 "
        "kept step 0. On the chest alone, weight 0.5, seeds 0-2: shift 0.253 vs 0.341 (start "
        "0.227), but 14 of 24 claim rows vs 18 (out-of-family CAS and tail lost). Not adopted.",
    )
    lv_draws: int = Field(2, ge=1, description="Noise draws of the last step (window draft-lv).")
    sample_steps: int | None = Field(
        None, ge=1, description="Denoising steps while training; default sampling.steps."
    )
    diffusion_weight: float = Field(
        0.0, ge=0, description="Weight of the diffusion loss on real labelled training images."
    )
    kl_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the KL-style penalty ||eps - eps_start||^2 to the starting "
        "model's noise predictions along the window (DPOK, Fan et al. 2023); one extra UNet "
        "call per window step.",
    )
    lora_scale: float = Field(
        1.0,
        ge=0,
        le=2,
        description="Scale of the reward LoRA on top of the starting model when sampling "
        "(early-stopping evaluations and the final model): 0 = the starting model.",
    )
    cas_cap_quantile: float | None = Field(
        None,
        gt=0,
        le=100,
        description="Kind craft: CAS above this percentile of the real test images' CAS of "
        "the image's label (the reward evaluator's reference) earns no more reward, so "
        "images already as aligned as real ones are not pushed past them (the gradient goes "
        "to those below). None = no cap.",
    )
    reward_weights: CasWeights | None = Field(
        None,
        description="Kind craft: the weights of the four calibrated dimensions in the "
        "reward's CAS (cas.weights is what evaluations report, and stays so). None = "
        "cas.weights. Zero leaves a dimension out of the reward. Phantom benchmark: label "
        "fidelity and plausibility at 0 left craft's distribution shift as it was (fresh "
        "seeds 8, 9); prompt alignment alone with checklist_weight 0, seeds 0-2: shift cxr / "
        "derm 0.305 / 0.528 vs 0.341 / 0.574 (start 0.227 / 0.512), oracle agreement a tie "
        "with generic-reward, 11 of 24 claim rows vs 18. Not adopted.",
    )
    handover_t: int | None = Field(
        None,
        ge=1,
        le=999,
        description="Below this diffusion timestep (of the 1000 of the training schedule) the "
        "starting model draws every denoising step, in training rollouts, held-out "
        "evaluations and generation: the reward LoRA shapes the noisy steps that lay an image "
        "out (which findings, how many, where), the start the late steps that draw its "
        "texture. None = the reward LoRA on every step.",
    )
    eval_every: int = Field(
        0, ge=0, description="Steps between held-out evaluations (0 = none, no early stopping)."
    )
    eval_per_label: int = Field(4, ge=1, description="Images per label of each evaluation.")
    patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without a better out-of-family CAS and "
        "keep the best evaluated weights (None = run all steps, keep the last).",
    )
    tolerance_se: float | None = Field(
        None,
        ge=0,
        description="Early stopping's allowance for evaluation noise, in paired standard "
        "errors of the held-out out-of-family CAS (per-image differences from the best "
        "evaluation, same prompts and seeds): a later evaluation within this many of the best "
        "counts as good as it, so its weights are kept and patience starts again (None = only "
        "a higher mean counts). On the phantom benchmark's seven seeds, 1 kept later weights "
        "in 10 of 28 reward runs and the oracle fell in 7 of them (docs/benchmark.md).",
    )
    holdout_prompts: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="Share of each label's enriched prompts kept out of training for the "
        "evaluations (at least one where a label has two or more).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Keep only each block's inputs of the UNet calls inside the window and of "
        "the VAE decode, and recompute the rest in the backward pass: one more forward of "
        "each for much less activation memory (the same gradients). Not part of run digests.",
    )
    compile: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] | None = Field(
        None,
        description="torch.compile the UNet and the VAE's decoder with this mode (None = "
        "eager); the first steps compile (minutes at Stable Diffusion size). On this project's "
        "CPU, a tiny K=1 step took 0.18 s compiled against 0.32 s eager after 17 s of "
        "compiling; bench/bench_reward_step.py measures it against eager on a GPU.",
    )
    zero_stage: Literal[0, 1, 2] = Field(
        0,
        description="DeepSpeed ZeRO stage of data-parallel training over resources.align.gpu "
        "processes (torchrun); 0 = plain PyTorch in one process.",
    )

    @model_validator(mode="after")
    def _power_needs_cas(self) -> AlignSettings:
        if self.reward_power != 1.0 and self.reward != "cas":
            raise ValueError(
                f"reward_power {self.reward_power} applies to reward 'cas' only; set reward: "
                "cas or remove reward_power"
            )
        if self.handover_t is not None and self.window not in ("draft", "alignprop"):
            raise ValueError(
                f"handover_t {self.handover_t}: window '{self.window}' takes its gradient from "
                "the last steps, which the starting model draws below the handover; use window "
                "draft or alignprop, or remove handover_t"
            )
        return self


class MethodConfig(Strict):
    """One way of obtaining a generator: from the foundation model (zero-shot, lora, full), or
    by reward finetuning another method's result (craft, generic-reward)."""

    kind: Literal["zero-shot", "lora", "full", "craft", "generic-reward"] = Field(
        description="'zero-shot' (the foundation model as is), 'lora' (a LoRA trained with the "
        "diffusion loss on real images), 'full' (the whole UNet finetuned so), 'craft' (reward "
        "finetuning with CAS) or 'generic-reward' (reward finetuning with the evaluator's "
        "similarity of image and plain label prompt, no knowledge)."
    )
    prompts: Literal["label", "enriched"] = Field(
        "label",
        description="Training captions and sampling prompts: the label prompt, or the "
        "knowledge stage's enriched prompts for the label (findings-rich; one drawn per "
        "training image; `craft generate` cycles through them). Align methods sample with "
        "them while training (enriched: the label's enriched prompts and its label prompt).",
    )
    init: Name | None = Field(
        None,
        description="Align methods: the method whose result reward finetuning starts from "
        "(a zero-shot, lora or full method, e.g. lora-enriched).",
    )
    steps: int = Field(
        300,
        ge=0,
        description="Optimizer steps of training: diffusion-loss steps (lora, full) or reward "
        "steps (align methods). Kinds lora and full with 0 train nothing; zero-shot ignores it.",
    )
    batch_size: int = Field(
        32,
        ge=1,
        description="Images per optimizer step (align methods: over all GPUs together, so a "
        "multiple of their number).",
    )
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    rank: int = Field(8, ge=1, description="LoRA rank (kind lora and align methods).")
    alpha: float | None = Field(None, description="LoRA alpha; default = rank.")
    target_modules: list[str] = Field(
        ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2"],
        description="UNet module names that get LoRA layers (kind lora and align methods).",
    )
    label_prompt_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Methods with prompts: enriched: share of training captions (and, for "
        "craft, reward prompts) that are the label's plain prompt ('dermoscopy image, "
        "nevus'), the rest drawn uniformly from its enriched prompts; None = the plain prompt "
        "is drawn uniformly with the others. lora-enriched, craft's start, draws the wrong "
        "lesion for many plain dermoscopy prompts; the share trains that prompt more. Phantom "
        "benchmark recipe, set on craft alone, oracle agreement: on seed 3, 0.5 / 0.75 against "
        "None gave dermoscopy 0.945 / 0.961 vs 0.898 (its plain prompts 0.875 / 0.906 vs "
        "0.781), chest 0.867 / 0.836 vs 0.898, so 0.5 was chosen; seeds 0-2 then showed no "
        "gain (dermoscopy 0.831 ± 0.012 vs 0.831 ± 0.027, plain prompts 0.52 vs 0.50; chest "
        "0.885 vs 0.898), so the benchmark keeps None there. Set on lora-enriched instead (so "
        "craft and generic-reward start from it), seeds 0-2: lora-enriched's plain-prompt nevi "
        "0.77 right (0.23 before), craft's dermoscopy agreement 0.956 ± 0.023 (best other "
        "generic-reward 0.849), but the chest's 0.883 ± 0.048 against generic-reward's 0.917 "
        "(0.898 vs 0.888 before): one losing row traded for another. With craft's "
        "align.checklist_weight 1.0 added, the chest's rose to 0.928 ± 0.029 and every row "
        "was won on the mean, so the benchmark sets 0.5 on lora-enriched.",
    )
    checkpoint_every: int = Field(
        50,
        ge=1,
        description="Steps between resumable checkpoints. Not part of run digests: changing "
        "it reruns nothing, and a preempted run resumes from its last checkpoint.",
    )
    weight_decay: float = Field(0.0, description="AdamW weight decay (0 = none).")
    gradient_checkpointing: bool = Field(
        False,
        description="Kinds lora and full: keep only each UNet block's inputs and recompute the "
        "rest in the backward pass (one more forward for much less activation memory; the "
        "same gradients up to float rounding), e.g. to fit a full Stable Diffusion finetune "
        "on one GPU. Not part of run digests. Align methods: align.gradient_checkpointing.",
    )
    align: AlignSettings | None = Field(
        None, description="Reward finetuning settings (align methods only; defaults if omitted)."
    )

    @property
    def is_align(self) -> bool:
        """Reward finetuning of another method's result (the ``align`` stage)."""
        return self.kind in ALIGN_KINDS

    @property
    def align_settings(self) -> AlignSettings:
        return self.align if self.align is not None else AlignSettings()


class SamplingConfig(Strict):
    """How generators sample images (craft generate, and align methods' rollouts)."""

    scheduler: Literal["ddim"] = Field(
        "ddim", description="Sampler of the denoising chain (DDIM, the only one)."
    )
    steps: int = Field(
        20, ge=1, description="Denoising steps per image (align methods: see align.sample_steps)."
    )
    guidance_scale: float = Field(
        3.0,
        ge=0,
        description="Classifier-free guidance scale: 0 = unconditional, 1 = the conditional "
        "prediction alone, higher follows the prompt more closely.",
    )
    timestep_spacing: Literal["trailing", "leading", "linspace"] = Field(
        "trailing", description="'trailing' keeps the last step away from t=0."
    )
    n_per_label: int = Field(64, ge=1, description="Generated images per label per seed.")
    batch_size: int = Field(64, ge=1, description="Images generated together (craft generate).")


class StudyConfig(Strict):
    """The blinded physician preference study: which two methods' images are paired."""

    method_a: Name = Field(description="The method whose win rate is reported (craft).")
    method_b: Name = Field(description="The comparison: the strongest baseline.")
    seed: int | None = Field(None, description="Run seed whose samples are paired (first seed).")
    pairs_per_label: int = Field(
        8, ge=1, le=200, description="Image pairs (one of each method) shown per label."
    )
    study_seed: int = Field(0, description="Seed of the pair choice, their order and sides.")


class ReportConfig(Strict):
    """The HTML report of ``craft report``."""

    grid_per_label: int = Field(
        8,
        ge=1,
        le=32,
        description="Generated images per label of each method in the report's sample grids "
        "(the first of each label); the page shows at most 8.",
    )


class ClaimConfig(Strict):
    """How ``craft claim`` and the report judge the reward methods (docs/benchmark.md)."""

    realism_budget: float = Field(
        0.01,
        ge=0,
        description="The verdict compares reward methods where each one's path first gives up "
        "this much realism against its own start (the realism axis' units: the oracle's "
        "distribution shift on phantoms); a path that never does is judged at its end.",
    )
    realism: Literal["oracle", "fd", "kid"] | None = Field(
        None,
        description="The realism axis of the paths: the oracle's distribution shift, or the "
        "mean per-label FD or KID of the fidelity stage against real test images. None: the "
        "oracle on phantom modalities, fd on the others (set the budget in its units).",
    )


class Resources(Strict):
    """One rule's cluster resources: the one place a job's threads, memory, runtime, GPUs and
    nodes are set (the SLURM profile holds only the site: account, partitions, QoS). A rule
    with ``gpu > 0`` is a GPU job (the profile's partition file sends it to a GPU partition);
    every other rule is a CPU job. Not part of any job spec: changing them reruns nothing."""

    threads: int = Field(1, ge=1, description="CPU threads of the job (sbatch --cpus-per-task).")
    mem_mb: int = Field(4000, ge=100, description="Memory of the job in MB (sbatch --mem).")
    runtime: int = Field(60, ge=1, description="Wall-clock limit in minutes (sbatch --time).")
    gpu: int = Field(
        0,
        ge=0,
        description="GPUs of the job (the SLURM plugin asks sbatch for --gpus=N on one node, "
        "--gres=gpu:N per node on several); 0 = a CPU job. align with more "
        "than one GPU runs one process per GPU (torchrun, DeepSpeed ZeRO).",
    )
    gpu_model: str | None = Field(
        None, description="GPU type to ask for (--gpus=MODEL:N), e.g. a100; None: any."
    )
    nodes: int = Field(
        1,
        ge=1,
        description="Nodes of the job (align only): one torchrun per node under srun, joined "
        "by a c10d rendezvous on the first node.",
    )
    modules: list[str] = Field(
        default_factory=list,
        description="Environment modules the job loads (Lmod or Environment Modules, e.g. "
        "['cuda/12.4']) where Snakemake runs with `--sdm env-modules`: the rule's `envmodules`. "
        "Empty: none. Not in any job spec, but Snakemake's software-env rerun trigger reruns "
        "a finished job whose modules change.",
    )
    retry_growth: float = Field(
        1.5,
        ge=1,
        le=10,
        description="How much more memory and time each retry of the job asks for than the "
        "attempt before (attempt n: mem_mb and runtime x retry_growth^(n-1)), so that a job "
        "killed for memory or time (OUT_OF_MEMORY, TIMEOUT) is not retried with the limits it "
        "just exceeded; the profile's `retries` sets how many attempts there are. 1: every "
        "attempt the same.",
    )


def _gpu(runtime: int, gpu: int = 1) -> Resources:
    return Resources(gpu=gpu, runtime=runtime)


class ResourcesConfig(Strict):
    """Resources per rule (``evaluate`` serves evaluate_oracle, memorization, audit and
    fidelity; ``downstream`` serves downstream and downstream_real; ``report`` serves report and
    study_export; ``evaluator`` train_evaluator), and whether a run's evaluation jobs share one
    cluster job (``group_evaluations``)."""

    prepare: Resources = Field(Resources(runtime=30), description="craft prepare.")
    knowledge: Resources = Field(
        Resources(runtime=60), description="craft knowledge build (a GPU for a model backend)."
    )
    evaluator: Resources = Field(_gpu(120), description="craft evaluator train.")
    reference: Resources = Field(_gpu(60), description="craft reference.")
    score: Resources = Field(_gpu(60), description="craft score.")
    pretrain: Resources = Field(_gpu(120), description="craft pretrain.")
    adapt: Resources = Field(_gpu(240), description="craft adapt.")
    align: Resources = Field(_gpu(240), description="craft align (the only rule with nodes).")
    generate: Resources = Field(_gpu(60), description="craft generate.")
    evaluate: Resources = Field(
        Resources(runtime=30),
        description="evaluate_oracle, memorization, audit, fidelity.",
    )
    report: Resources = Field(Resources(runtime=30), description="craft report, study export.")
    downstream: Resources = Field(_gpu(120), description="craft downstream and downstream-real.")
    container: str | None = Field(
        None,
        description="The Apptainer image every rule runs in under `snakemake --sdm apptainer` "
        "(a .sif built from envs/craft.def, or docker://...): each rule's `container`. None: "
        "none. Not in any job spec.",
    )
    group_evaluations: bool = Field(
        True,
        description="Run the evaluation jobs of one run (score per evaluator, evaluate_oracle, "
        "audit, downstream, fidelity, memorization) as one cluster job: a Snakemake group per "
        "modality, method and seed, merged where the profile sets group-components "
        "(profiles/slurm does). The group job holds the most threads, memory and GPUs of "
        "score, downstream and evaluate, for the sum of their runtimes; each job keeps its "
        "own output, log and benchmark, and a failed one reruns alone. Local runs ignore "
        "groups. With it, score, downstream and evaluate take no gpu_model.",
    )

    @model_validator(mode="after")
    def _nodes_for_align(self) -> ResourcesConfig:
        for name in type(self).model_fields:
            r = getattr(self, name)
            if not isinstance(r, Resources):
                continue
            if name != "align" and r.nodes != 1:
                raise ValueError(
                    f"resources.{name}.nodes: only align spans nodes; remove nodes here"
                )
        if self.align.nodes > 1 and self.align.gpu < 1:
            raise ValueError(
                "resources.align.nodes: several nodes train one process per GPU; set "
                "resources.align.gpu to 1 or more"
            )
        if self.group_evaluations:
            # Snakemake refuses a group whose members ask for different string resources,
            # and a CPU member asks for no GPU model at all
            for name in ("score", "downstream", "evaluate"):
                if getattr(self, name).gpu_model is not None:
                    raise ValueError(
                        f"resources.{name}.gpu_model: the evaluation jobs of a run share "
                        "one cluster job (resources.group_evaluations), which asks for no "
                        "GPU model; remove gpu_model or set group_evaluations: false"
                    )
        return self


# ----------------------------------------------------------------------------- root


class CraftConfig(Strict):
    """The whole of config.yaml."""

    results: Path = Field(
        Path("results"),
        description="Folder of every stage's outputs (data, knowledge, models, runs, report).",
    )

    @field_validator("results", mode="before")
    @classmethod
    def _results_named(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError("empty; name the folder for every stage's outputs (e.g. results)")
        return v

    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        [0],
        min_length=1,
        description="Run seeds: every method is trained and sampled once per seed and modality.",
    )
    modalities: dict[Name, ModalityConfig] = Field(
        min_length=1, description="The image modalities, by name (lowercase, digits, _ and -)."
    )
    methods: dict[Name, MethodConfig] = Field(
        min_length=1, description="The methods compared, by name (lowercase, digits, _ and -)."
    )
    models: ModelsConfig = Field(
        ModelsConfig(), description="The foundation generator and its GPU precision."
    )
    pretrain: PretrainConfig = Field(
        PretrainConfig(),
        description="Training of the phantom foundations (only with models.generator 'pretrain').",
    )
    sampling: SamplingConfig = Field(
        SamplingConfig(), description="How images are sampled from the generators."
    )
    knowledge: KnowledgeConfig = Field(
        KnowledgeConfig(), description="The knowledge stage: enriched prompts and checklists."
    )
    cas: CasConfig = Field(
        CasConfig(), description="The Clinical Alignment Score: evaluators, weights, the tail."
    )
    evaluation: EvaluationConfig = Field(
        EvaluationConfig(),
        description="Evaluations beyond CAS: downstream, memorization, audit, fidelity.",
    )
    study: StudyConfig | None = Field(
        None, description="Export a blinded study page per modality (None: no study)."
    )
    report: ReportConfig = Field(ReportConfig(), description="The HTML report.")
    claim: ClaimConfig = Field(
        ClaimConfig(), description="How the claim is judged: at matched realism, then as trained."
    )
    resources: ResourcesConfig = Field(
        ResourcesConfig(), description="Cluster resources of each workflow rule."
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> CraftConfig:
        for name, m in self.modalities.items():
            if m.source.kind != "phantom":
                continue
            from craft.data.phantoms import PHANTOMS  # numpy and scipy: phantom configs only

            spec = PHANTOMS.get(m.source.phantom)
            if spec is None:
                raise ValueError(
                    f"modalities.{name}.source.phantom: unknown phantom '{m.source.phantom}' "
                    f"(allowed: {', '.join(sorted(PHANTOMS))})"
                )
            unknown = sorted(set(m.labels) - set(spec.labels))
            if unknown:
                raise ValueError(
                    f"modalities.{name}.labels: {unknown} are not labels of {spec.name} "
                    f"(allowed: {', '.join(spec.labels)})"
                )
            if m.channels != spec.channels:
                raise ValueError(
                    f"modalities.{name}.channels: {m.channels} does not match {spec.name}, "
                    f"which has {spec.channels}"
                )
        self.knowledge.check_modalities(list(self.modalities))
        for name, pinned in self.knowledge.review.items():
            own = self.results / "knowledge" / f"{name}.review.yaml"
            if Path(pinned).resolve() == own.resolve():
                raise ValueError(
                    f"knowledge.review.{name}: {pinned} is the file the knowledge stage writes; "
                    "copy it elsewhere (e.g. reviews/{name}.yaml), edit it and pin the copy"
                )
        for name, ev in self.cas.evaluators.items():
            bad = [n for n, m in self.modalities.items() if m.source.kind != "phantom"]
            if ev.source == "train" and bad:
                raise ValueError(
                    f"cas.evaluators.{name}.source: 'train' builds phantom evaluators only, but "
                    f"{bad} are not phantoms; name a pretrained model (hub id or dir)"
                )
        self._check_align_methods()
        for m in self.modalities.values():  # auditors: never the reward evaluator
            self.evaluation.audit.auditor_names(self.cas, m.phantom)
        if self.study is not None:
            for field in ("method_a", "method_b"):
                name = getattr(self.study, field)
                if name not in self.methods:
                    raise ValueError(
                        f"study.{field}: '{name}' is not a configured method "
                        f"(configured: {', '.join(self.methods)}); name one of them, or set "
                        "'study: null' to skip the study"
                    )
            if self.study.method_a == self.study.method_b:
                raise ValueError("study.method_b: must differ from study.method_a")
            if self.study.seed is not None and self.study.seed not in self.seeds:
                raise ValueError(f"study.seed: {self.study.seed} is not one of seeds {self.seeds}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: {self.seeds} has duplicates")
        if self.models.generator == "pretrain":
            bad = [n for n, m in self.modalities.items() if m.source.kind != "phantom"]
            if bad:
                raise ValueError(
                    f"models.generator: 'pretrain' trains phantom foundations only, but "
                    f"{bad} are not phantoms; name a pretrained model (hub id or dir)"
                )
        return self

    @property
    def out_of_family_evaluators(self) -> list[str]:
        """Evaluators that only score (the align stage's early stopping uses the first)."""
        return [n for n, e in self.cas.evaluators.items() if e.role == "out-of-family"]

    def _check_align_methods(self) -> None:
        """Align methods start from a configured non-align method; the others have no align
        fields; early stopping needs an out-of-family evaluator."""
        kinds = " or ".join(ALIGN_KINDS)
        for name, k in self.methods.items():
            where = f"methods.{name}"
            if k.label_prompt_share is not None and (
                k.prompts != "enriched" or k.kind in ("zero-shot", "generic-reward")
            ):
                raise ValueError(
                    f"{where}.label_prompt_share: only for methods that train with prompts: "
                    f"enriched (this kind {k.kind} one trains on the plain prompt alone or not "
                    "at all); remove it"
                )
            if k.gradient_checkpointing and k.kind not in ("lora", "full"):
                fix = "use align.gradient_checkpointing" if k.is_align else "remove it"
                raise ValueError(
                    f"{where}.gradient_checkpointing: only kinds lora and full train with the "
                    f"diffusion loss; {fix}"
                )
            if not k.is_align:
                if k.init is not None:
                    raise ValueError(
                        f"{where}.init: only align methods (kind {kinds}) start from another "
                        f"method; remove it from this kind {k.kind} method"
                    )
                if k.align is not None:
                    raise ValueError(
                        f"{where}.align: only for kind {kinds}; remove it from this kind "
                        f"{k.kind} method"
                    )
                continue
            if k.init is None:
                raise ValueError(
                    f"{where}.init: kind {k.kind} reward-finetunes another method's result; "
                    "name that method (e.g. init: lora-enriched)"
                )
            if k.init not in self.methods:
                raise ValueError(
                    f"{where}.init: '{k.init}' is not a configured method "
                    f"(configured: {', '.join(self.methods)})"
                )
            if self.methods[k.init].is_align:
                raise ValueError(
                    f"{where}.init: '{k.init}' is itself an align method; start from a "
                    "zero-shot, lora or full method"
                )
            a = k.align_settings
            if a.checklist_weight and k.kind != "craft":
                raise ValueError(
                    f"{where}.align.checklist_weight: only kind craft scores the checklist "
                    f"(this kind {k.kind} method's reward knows no checklist); remove it"
                )
            for name in ("reward_weights", "cas_cap_quantile"):  # settings of the CAS reward
                if getattr(a, name) is not None and k.kind != "craft":
                    raise ValueError(
                        f"{where}.align.{name}: only kind craft's reward is CAS (this "
                        f"kind {k.kind} method's is not); remove it"
                    )
            gpus = max(self.resources.align.gpu, 1) * self.resources.align.nodes
            if gpus > 1 and a.zero_stage == 0:
                raise ValueError(
                    f"{where}.align.zero_stage: resources.align.gpu is {gpus}; several GPUs "
                    "train with DeepSpeed: set zero_stage 1 or 2 (or resources.align.gpu 1)"
                )
            if k.batch_size % max(gpus, 1):
                raise ValueError(
                    f"{where}.batch_size: {k.batch_size} does not split over the {gpus} GPUs of "
                    "resources.align.gpu; use a multiple"
                )
            if a.patience is not None and a.eval_every == 0:
                raise ValueError(
                    f"{where}.align.patience: early stopping needs evaluations; set "
                    "align.eval_every > 0 or remove patience"
                )
            if a.tolerance_se is not None and a.patience is None:
                raise ValueError(
                    f"{where}.align.tolerance_se: it decides which evaluated weights early "
                    "stopping keeps; set align.patience or remove tolerance_se"
                )
            if a.eval_every and not self.out_of_family_evaluators:
                raise ValueError(
                    f"{where}.align.eval_every: evaluations score with an out-of-family "
                    "evaluator, but cas.evaluators has none; add one or set eval_every: 0"
                )

    def modality(self, name: str) -> ModalityConfig:
        try:
            return self.modalities[name]
        except KeyError:
            raise CraftError(
                f"modality '{name}' is not in the config (configured: {', '.join(self.modalities)})"
            ) from None

    def method(self, name: str) -> MethodConfig:
        try:
            return self.methods[name]
        except KeyError:
            raise CraftError(
                f"method '{name}' is not in the config (configured: {', '.join(self.methods)})"
            ) from None

    @property
    def craft_method(self) -> str | None:
        """The method the claim judges: the first of kind craft (None without one)."""
        return next((k for k, m in self.methods.items() if m.kind == "craft"), None)

    @property
    def baseline_methods(self) -> list[str]:
        """The methods craft is compared with: every method not of kind craft."""
        return [k for k, m in self.methods.items() if m.kind != "craft"]

    def align_evaluators(self, method: str) -> list[str]:
        """Evaluators an align method uses: the reward one, and the out-of-family one that its
        held-out evaluations (early stopping) score with."""
        a = self.method(method).align_settings
        return [self.cas.reward_evaluator] + self.out_of_family_evaluators[: int(a.eval_every > 0)]

    def spec(
        self,
        stage: str,
        modality: str | None = None,
        method: str | None = None,
        evaluator: str | None = None,
    ) -> Spec:
        """The typed spec of one job (craft.specs): what it reads; its digest reruns it."""
        return job_spec(self, stage, modality, method, evaluator)


# ----------------------------------------------------------------------------- loading


def _field_path(loc: tuple, data: Any) -> str:
    """The error location as the user wrote it: pydantic puts union tags (e.g. the data
    source's ``phantom``) and validator names into ``loc``; keep only real keys of ``data``."""
    parts, node, tag_seen = [], data, False
    for p in loc:
        if str(p).startswith(("function-", "tagged")):
            continue  # a validator's name, not a key the user wrote
        if isinstance(node, dict) and node.get("kind") == p and not tag_seen:
            tag_seen = True  # a discriminated union's tag (source.kind), once per node
            continue
        tag_seen = False
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node):
            node = node[p]
        else:
            node = None
        parts.append(str(p))
    return ".".join(parts)


#: Fields whose value may hold a credential by mistake: an error never repeats the value.
SECRET_PRONE = ("base_url",)


def _format_error(err: ValidationError, data: Any = None) -> str:
    """First validation error as one line: 'path.to.field: value ... (allowed ...)'."""
    e = err.errors()[0]
    loc = _field_path(e["loc"], data)
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        return f"{loc}: unknown key (remove it or check its spelling)"
    if e["type"] == "missing":
        return f"{loc}: required field is missing"
    value = e.get("input")
    shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
    if loc.endswith(SECRET_PRONE):  # may hold a key: never repeated
        shown = "the value"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if re.match(r"^[\w.-]+: ", msg):  # a model validator names the field, under its model
        return msg if not loc or msg.startswith(f"{loc}.") else f"{loc}.{msg}"
    more = f" (+{len(err.errors()) - 1} more errors)" if len(err.errors()) > 1 else ""
    return f"{loc or 'config'}: {shown} is invalid: {msg}{more}"


def validate_config(data: dict[str, Any]) -> CraftConfig:
    """Validate plain data (e.g. Snakemake's ``config``) into a CraftConfig or raise CraftError."""
    try:
        return CraftConfig.model_validate(data)
    except ValidationError as err:
        raise CraftError(f"invalid config: {_format_error(err, data)}") from None


def read_config_file(
    path: Path | str, hint: str = "give the path of a config YAML file"
) -> dict[str, Any]:
    """A config file's raw mapping (not validated): each problem is one line naming the file."""
    from craft.yamlfile import read_yaml

    data = read_yaml(Path(path), "config file", hint)
    if not isinstance(data, dict):
        raise CraftError(f"{path}: expected a mapping of config keys at the top level")
    return data


def load_config(path: Path | str) -> CraftConfig:
    """Read and validate a config YAML file."""
    path = Path(path)
    data = read_config_file(path)
    try:
        return validate_config(data)
    except CraftError as err:
        raise CraftError(f"{path}: {err}") from None


def dump_config(cfg: CraftConfig) -> str:
    """The resolved config (defaults filled in) as YAML."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
