"""Config nodes of the CAS stages (``cas:`` in config.yaml), part of the one pydantic tree.

craft/config.py mounts :class:`CasConfig` as ``CraftConfig.cas``. This module imports only
pydantic (the Snakefile validates the config at parse time).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_NAME = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class EvaluatorArchitecture(_Strict):
    """Size of a tiny phantom evaluator (HF CLIPModel / SiglipModel, ViT + text transformer)."""

    hidden_size: int = Field(64, ge=8, description="Width of both towers.")
    layers: int = Field(2, ge=1, description="Transformer layers per tower.")
    heads: int = Field(2, ge=1, description="Attention heads per transformer layer.")
    patch_size: int = Field(4, ge=1, description="ViT patch side in pixels.")
    projection_dim: int = Field(64, ge=8, description="Width of the shared embedding space.")
    text_max_length: int = Field(32, ge=8, description="Tokens per text (SigLIP pads to it).")


class EvaluatorTraining(_Strict):
    """Training of a phantom evaluator on phantoms paired with the knowledge stage's texts."""

    steps: int = Field(700, ge=1, description="Optimizer steps (time_limit_s may stop earlier).")
    batch_size: int = Field(64, ge=2, description="Training images per optimizer step.")
    lr: float = Field(
        2e-3,
        gt=0,
        description="Peak AdamW learning rate: linear warmup over the first 5% of the steps, "
        "then cosine decay.",
    )
    n_images: int = Field(3000, ge=16, description="Phantoms drawn for training (own seed).")
    hybrid_fraction: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Share of phantoms drawn with contradictory findings (both-sided effusion, "
        "two nodules, a large nevus, ...) so that the checklist's absence items are learned.",
    )
    degraded_fraction: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Extra share of degraded copies (blur, noise, lost contrast) whose texts "
        "follow what the oracle still finds in them.",
    )
    seed: int = Field(0, description="Seed of the weights and of the data order.")
    data_seed: int = Field(4242, description="Seed of the drawn training phantoms.")
    time_limit_s: float | None = Field(
        None, gt=0, description="Stop early after this many seconds (the steps stay the cap)."
    )
    architecture: EvaluatorArchitecture = Field(
        EvaluatorArchitecture(), description="Size of the tiny evaluator that is trained."
    )


class JudgeConfig(_Strict):
    """An MLLM that answers the checklist instead of the VLM (VQAScore: P("yes"))."""

    source: str = Field(description="Image-text-to-text model: hub id or dir (LLaVA, Qwen2-VL).")
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit); None = the default branch."
    )
    prompt: str = Field(
        "{question} Answer yes or no.", description="Asked per item; {question} is filled in."
    )
    yes: str = Field(
        "yes", description="Answer word whose probability is P(item holds); must be one token."
    )
    no: str = Field(
        "no", description="Answer word of the negation; P(yes) is renormalised over the two."
    )


class EvaluatorConfig(_Strict):
    """One evaluator: a vision-language model that scores CAS."""

    family: str = Field(
        description="Model family, e.g. clip, siglip, biomedclip. Out-of-family evaluators must "
        "differ from the reward evaluator's family. With source 'train': clip or siglip."
    )
    source: str = Field(
        "train",
        description="'train' (a tiny evaluator trained on phantoms by the workflow) or a "
        "from_pretrained source: a Hugging Face hub id or dir (CLIPModel, SiglipModel), an "
        "open_clip 'hf-hub:ORG/NAME' id, or a dir with open_clip_config.json.",
    )
    adapter: Literal["auto", "hf", "open_clip"] = Field(
        "auto", description="Loader; 'auto' picks open_clip for hf-hub:/open_clip dirs."
    )
    revision: str | None = Field(
        None,
        description="Hub revision (branch, tag or commit) of a pretrained source; None = the "
        "default branch.",
    )
    role: Literal["reward", "out-of-family"] = Field(
        description="The one reward evaluator (CRAFT's reward and in-family CAS) or an "
        "out-of-family evaluator that only scores."
    )
    batch_size: int = Field(64, ge=1, description="Images per batch when scoring.")
    judge: JudgeConfig | None = Field(
        None, description="Optional MLLM judge of the checklist (else the VLM itself)."
    )
    train: EvaluatorTraining = Field(
        EvaluatorTraining(), description="Training of the tiny evaluator (source 'train' only)."
    )

    @model_validator(mode="after")
    def _trainable(self) -> EvaluatorConfig:
        if self.source == "train" and self.family not in ("clip", "siglip"):
            raise ValueError(f"family: source 'train' builds clip or siglip, got '{self.family}'")
        return self

    @model_validator(mode="after")
    def _revision_loadable(self) -> EvaluatorConfig:
        """open_clip loads an 'hf-hub:' id from its default branch only: a revision there would
        be fetched by `craft models fetch` but never loaded, so it is refused."""
        from craft.models.hub import is_open_clip  # no heavy imports

        if self.revision is None or self.source == "train":
            return self
        if self.adapter == "open_clip" or (self.adapter == "auto" and is_open_clip(self.source)):
            raise ValueError(
                f"revision: open_clip loads '{self.source}' from its default branch only; "
                "remove revision, or download that revision into a folder and give the folder "
                "as source"
            )
        return self


class CasWeights(_Strict):
    """Weights of the four calibrated dimensions in CAS (normalised to sum to one)."""

    label_fidelity: float = Field(
        1.0, ge=0, description="Weight of label fidelity, P(requested label | image)."
    )
    prompt_alignment: float = Field(
        1.0, ge=0, description="Weight of prompt alignment, the image's similarity to its prompt."
    )
    checklist_adherence: float = Field(
        1.0,
        ge=0,
        description="Weight of checklist adherence, the weighted share of the label's checklist "
        "items that hold as expected.",
    )
    plausibility: float = Field(
        1.0,
        ge=0,
        description="Weight of plausibility, the closeness to real training images of the "
        "label (soft k-NN).",
    )

    @model_validator(mode="after")
    def _positive(self) -> CasWeights:
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("at least one CAS weight must be positive")
        return self


def _default_evaluators() -> dict[str, EvaluatorConfig]:
    return {
        "clip": EvaluatorConfig(family="clip", role="reward", train=EvaluatorTraining(seed=0)),
        "siglip": EvaluatorConfig(
            family="siglip",
            role="out-of-family",
            train=EvaluatorTraining(seed=1, data_seed=5151, steps=600),
        ),
    }


class CasConfig(_Strict):
    """The Clinical Alignment Score: evaluators, weights, calibration and the tail."""

    evaluators: dict[_NAME, EvaluatorConfig] = Field(
        default_factory=_default_evaluators,
        min_length=1,
        description="The evaluators by name: exactly one with role reward, the others "
        "out-of-family (default: a tiny CLIP reward evaluator, a tiny SigLIP out-of-family).",
    )
    weights: CasWeights = Field(
        CasWeights(), description="Weights of the four calibrated dimensions in CAS."
    )
    aggregation: Literal["geometric", "arithmetic"] = Field(
        "geometric",
        description="How CAS averages its calibrated dimensions (weighted): geometric, so that "
        "an image must hold on every dimension (noise that the evaluator calls confidently "
        "'normal' stays in the tail), or arithmetic.",
    )
    tail_quantile: float = Field(
        10.0, gt=0, lt=100, description="tau = this percentile of real test images' CAS."
    )
    knn_k: int = Field(10, ge=1, description="Neighbours of the plausibility soft k-NN.")
    bandwidth_scale: float = Field(
        1.0, gt=0, description="Multiplies Silverman's bandwidth of the calibration kernel CDF."
    )
    reference_max_per_label: int = Field(
        2000,
        ge=3,
        description="At most this many real images per label as neighbours (train split) and "
        "as the calibration kernels (val split): a seeded subset of a larger split, so that "
        "the reference, scoring and the reward cost the same memory whatever the data set's "
        "size (each calibration is a batch x kernels matrix).",
    )
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples of the tail rate CI.")

    @model_validator(mode="after")
    def _roles(self) -> CasConfig:
        reward = [n for n, e in self.evaluators.items() if e.role == "reward"]
        if len(reward) != 1:
            raise ValueError(f"evaluators: exactly one must have role 'reward', got {reward}")
        fam = self.evaluators[reward[0]].family
        same = [n for n, e in self.evaluators.items() if e.role != "reward" and e.family == fam]
        if same:
            raise ValueError(
                f"evaluators: {same} are out-of-family but share the reward evaluator's family "
                f"'{fam}'"
            )
        return self

    @property
    def reward_evaluator(self) -> str:
        return next(n for n, e in self.evaluators.items() if e.role == "reward")
