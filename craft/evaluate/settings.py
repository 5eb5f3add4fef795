"""Config nodes of the evaluation stages (``evaluation:`` in config.yaml), part of the one tree.

craft/config.py mounts :class:`EvaluationConfig` as ``CraftConfig.evaluation``. This module
imports only pydantic (the Snakefile validates the config at parse time). The defaults are
CPU-cheap for 32x32 phantoms (each stage a few seconds per run); a cluster config names real
models: ``downstream.classifier: densenet121``, ``memorization.encoder: facebook/dinov2-base``,
``fidelity.features: inception`` (needs torch-fidelity) or a DINOv2 hub id.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NAME = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DownstreamConfig(_Strict):
    """``craft downstream``: classifiers trained on synthetic / mixed / real images, tested on
    the REAL test split."""

    classifier: str = Field(
        "tiny",
        description="'tiny' (a small CNN for phantoms), a timm model name (densenet121, "
        "resnet50, vit_small_patch16_224, or 'hf-hub:ORG/NAME') or a transformers image "
        "classification hub id or local dir.",
    )
    pretrained: bool = Field(
        False, description="timm only: start from the model's pretrained weights (needs the hub)."
    )
    image_size: int | None = Field(
        None, ge=16, description="Resize images to this square side; None keeps the data's."
    )
    width: int = Field(16, ge=4, description="Channels of the tiny CNN's first block.")
    budgets: list[float] = Field(
        [0.1, 0.5],
        min_length=1,
        description="Shares of the real train split (stratified, seeded) mixed with the "
        "synthetic images; real-only classifiers at the same shares are the reference.",
    )
    max_epochs: int = Field(20, ge=1, description="Epochs at most per classifier.")
    patience: int = Field(
        4, ge=1, description="Stop after this many epochs without a lower real val loss."
    )
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(32, ge=2, description="Images per training step.")
    seed: int = Field(0, description="Seed of weights, data order and budget subsets.")

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[float]) -> list[float]:
        bad = [b for b in v if not 0 < b <= 1]
        if bad:
            raise ValueError(f"budgets must lie in (0, 1], got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"budgets has duplicates: {v}")
        return sorted(v)


#: MemorizationConfig.reference_max's default.
REFERENCE_MAX = 2000


class MemorizationConfig(_Strict):
    """``craft memorization``: nearest training image of every generated image."""

    encoder: str = Field(
        "tiny",
        description="'tiny' (a fixed, seeded random-conv net), 'pixels' (the pixel view only) "
        "or a transformers image model hub id / dir (DINOv2-style: facebook/dinov2-small).",
    )
    threshold: float = Field(
        0.97,
        gt=-1,
        le=1,
        description="An image whose nearest training image has a higher cosine similarity of "
        "embeddings counts as memorized. Measured on 32px phantoms (tiny encoder, centred, 400 "
        "train images): real test images reach at most 0.89 (chest) and 0.97 (dermoscopy, whose "
        "small nevi look alike), copies with noise (sd 8 grey levels) at least 0.965.",
    )
    pixel_threshold: float = Field(
        0.95, gt=-1, le=1, description="The same for the pixel view (correlation of images)."
    )
    centre: bool = Field(
        True,
        description="Subtract the training images' mean embedding (mean image in the pixel "
        "view) before the cosine: what all images of a modality share (anatomy, skin) then "
        "does not count as similarity.",
    )
    pixel_size: int = Field(
        64, ge=8, description="Pixel view: images larger than this are area-downsampled to it."
    )
    chunk_size: int = Field(
        4096,
        ge=1,
        description="Rows per block of the similarity computation (memory ~ chunk_size^2).",
    )
    batch_size: int = Field(64, ge=1, description="Images per encoder batch.")
    top_pairs: int = Field(8, ge=1, description="Most similar pairs shown in the figure.")
    seed: int = Field(
        0,
        description="Seed of the tiny encoder's fixed random weights, and of the reference's "
        "subset of real test images (reference_max).",
    )
    reference_max: int = Field(
        REFERENCE_MAX,
        ge=1,
        description="Real test images in the reference search at most: a larger test split "
        "gives a seeded subset of this many. Its memory is the query vectors, which grow with "
        "the test split (CheXpert's ~34k test images in the pixel view at 512 px: 1.7 GB a "
        "copy); the reference rate's standard error at 2,000 images is at most 0.011.",
    )


class AuditConfig(_Strict):
    """``craft audit``: checklist pass rates judged by auditors other than the reward evaluator."""

    auditors: list[_NAME] | None = Field(
        None,
        min_length=1,
        description="'oracle' (phantoms: the measured criterion behind each item) and/or names "
        "of out-of-family evaluators in cas.evaluators (their MLLM judge if they have one). "
        "None: the oracle (phantom modalities) and every out-of-family evaluator. The reward "
        "evaluator is refused.",
    )
    batch_size: int = Field(64, ge=1, description="Images per evaluator batch.")

    @field_validator("auditors")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"auditors has duplicates: {v}")
        return v

    def auditor_names(self, cas: Any, phantom: str | None) -> list[str]:
        """The auditors of a modality (``phantom``: its phantom or None), checked against the
        CAS config ``cas``; ValueError naming the field for the reward evaluator, an unknown
        name, or no auditor left. 'oracle' is dropped for a modality that is not a phantom."""
        if self.auditors is None:
            names = ["oracle"] + [n for n, e in cas.evaluators.items() if e.role != "reward"]
        else:
            names = list(self.auditors)
        for name in names:
            if name == "oracle":
                continue
            if name not in cas.evaluators:
                raise ValueError(
                    f"evaluation.audit.auditors: '{name}' is neither 'oracle' nor an evaluator "
                    f"of cas.evaluators ({', '.join(cas.evaluators)})"
                )
            if cas.evaluators[name].role == "reward":
                raise ValueError(
                    f"evaluation.audit.auditors: '{name}' is the reward evaluator; audit with an "
                    "out-of-family evaluator or 'oracle'"
                )
        if phantom is None:
            names = [n for n in names if n != "oracle"]
            if not names:
                raise ValueError(
                    "evaluation.audit.auditors: 'oracle' measures phantoms only; name an "
                    "out-of-family evaluator of cas.evaluators for this modality"
                )
        return names


class FidelityConfig(_Strict):
    """``craft fidelity``: Frechet distance and KID against the real test split."""

    features: str = Field(
        "tiny",
        description="'tiny' (a fixed, seeded random-conv net), 'inception' (InceptionV3 pool "
        "features, the FID standard; needs torch-fidelity) or a transformers image model hub "
        "id / dir (e.g. facebook/dinov2-base, FD_DINOv2).",
    )
    kid_subset_size: int = Field(
        1000, ge=2, description="KID subset size (capped by the smaller image set)."
    )
    kid_subsets: int = Field(100, ge=1, description="KID subsets averaged.")
    batch_size: int = Field(64, ge=1, description="Images per feature batch.")
    seed: int = Field(0, description="Seed of the tiny features and of KID's subsets.")


class PathsConfig(_Strict):
    """``craft path``: each reward method's path from its start (craft.evaluate.paths): its
    kept reward LoRA at several scales on top of the start, each scale sampled with the run's
    own sampling plan and measured like a run (oracle, out-of-family CAS, fidelity)."""

    scales: list[float] = Field(
        [0.0, 0.5, 1.0, 1.5],
        min_length=2,
        description="Scales of the reward LoRA: 0 is the start (its own samples and metrics, "
        "not sampled again), 1 the run as trained (likewise); the others are sampled. Must "
        "hold 0 and 1; one above 1 shows where the path goes past the trained run.",
    )

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: list[float]) -> list[float]:
        bad = [s for s in v if not 0 <= s <= 10]
        if bad:
            raise ValueError(f"scales must lie in [0, 10], got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"scales has duplicates: {v}")
        if 0 not in v or 1 not in v:
            raise ValueError(f"scales must hold 0 (the start) and 1 (the run), got {v}")
        return sorted(float(s) for s in v)


class EvaluationConfig(_Strict):
    """Evaluations that do not come from the reward evaluator."""

    downstream: DownstreamConfig = Field(
        DownstreamConfig(), description="Classifiers trained on generated images (downstream)."
    )
    memorization: MemorizationConfig = Field(
        MemorizationConfig(), description="Nearest training images of the generated ones."
    )
    audit: AuditConfig = Field(
        AuditConfig(), description="Checklist pass rates by auditors other than the reward one."
    )
    fidelity: FidelityConfig = Field(
        FidelityConfig(), description="Frechet distance and KID against the real test split."
    )
    paths: PathsConfig = Field(
        PathsConfig(), description="Each reward method's path from its start (craft path)."
    )
