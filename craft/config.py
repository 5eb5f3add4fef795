"""The one config model of craft: defaults, descriptions and validation live here.

``config.yaml`` is validated against :class:`CraftConfig` by the Snakefile before the DAG is
built and by every CLI verb. Unknown keys are errors. A failed validation becomes one
:class:`~craft.errors.CraftError` line naming the field, the bad value and what is allowed.
This module imports no torch (the Snakefile imports it at parse time).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from craft.cas.settings import CasConfig
from craft.errors import CraftError
from craft.knowledge.settings import KnowledgeConfig

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class Strict(BaseModel):
    """Base of every config node: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- data sources


class PhantomSource(Strict):
    """Procedurally drawn images whose findings are known by construction (craft.data.phantoms)."""

    kind: Literal["phantom"]
    phantom: str = Field(description="Phantom modality to draw, e.g. phantom-cxr or phantom-derm.")
    n_per_label: int = Field(200, ge=3, description="Images drawn per label before splitting.")
    seed: int = Field(0, description="Seed of the drawing; the split seed is separate.")


class ManifestSource(Strict):
    """A hospital's image set: a CSV with path,label[,split] and a folder of images."""

    kind: Literal["manifest"]
    manifest: Path = Field(description="CSV file with columns path,label and optional split.")
    image_root: Path = Field(description="Folder that relative paths in the manifest start from.")
    resize: Literal["pad", "crop", "squash"] = "pad"
    color: Literal["convert", "error"] = Field(
        "convert", description="RGB<->grayscale mismatches are converted, or are errors."
    )
    alpha: Literal["error", "composite"] = "error"
    intensity: Literal["minmax", "full"] = Field(
        "minmax", description="How >8-bit images map to uint8: percentile stretch or full range."
    )
    dicom_window: tuple[float, float] | None = Field(
        None, description="DICOM (center, width) overriding the file's own window."
    )


DataSource = Annotated[PhantomSource | ManifestSource, Field(discriminator="kind")]


class Splits(Strict):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sum_to_one(self) -> Splits:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class ModalityConfig(Strict):
    """One image modality: its data, labels and image geometry."""

    source: DataSource
    labels: list[Name] = Field(min_length=2, description="Class labels, in a fixed order.")
    description: str = Field(
        description="What the images are, used in prompts: 'chest radiograph'."
    )
    resolution: int = Field(32, ge=16, le=1024, description="Square side in pixels.")
    channels: Literal[1, 3] = 1
    splits: Splits = Splits()

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


# ----------------------------------------------------------------------------- models


class TinyUNet(Strict):
    """Architecture of the phantom foundation generator (pixel space, UNet2DConditionModel)."""

    block_out_channels: list[int] = [16, 32, 32]
    layers_per_block: int = 1
    attention_levels: list[bool] = Field(
        [False, False, True], description="Cross-attention per resolution level."
    )
    cross_attention_dim: int = 32
    text_layers: int = 2
    text_max_length: int = 24


class PretrainConfig(Strict):
    """Training of the phantom foundation model (only when models.generator is 'pretrain')."""

    steps: int = Field(600, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
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
    seed: int = 1234
    architecture: TinyUNet = TinyUNet()


class ModelsConfig(Strict):
    generator: str = Field(
        "pretrain",
        description="'pretrain' (train a tiny foundation per modality in the workflow) or any "
        "from_pretrained source: a hub id (runwayml/stable-diffusion-v1-5) or a local dir.",
    )
    revision: str | None = None


# ----------------------------------------------------------------------------- methods


class MethodConfig(Strict):
    """One way of obtaining a generator from the foundation model."""

    kind: Literal["zero-shot", "lora", "full"]
    prompts: Literal["label", "enriched"] = Field(
        "label",
        description="Training captions: the label prompt, or the knowledge stage's enriched "
        "prompts for the label (findings-rich, one drawn per image).",
    )
    steps: int = Field(300, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    rank: int = Field(8, ge=1, description="LoRA rank (kind lora).")
    alpha: float | None = Field(None, description="LoRA alpha; default = rank.")
    target_modules: list[str] = Field(
        ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2"],
        description="UNet module names that get LoRA layers (kind lora).",
    )
    checkpoint_every: int = Field(50, ge=1, description="Steps between resumable checkpoints.")
    weight_decay: float = 0.0


class SamplingConfig(Strict):
    scheduler: Literal["ddim"] = "ddim"
    steps: int = Field(20, ge=1)
    guidance_scale: float = Field(3.0, ge=0)
    timestep_spacing: Literal["trailing", "leading", "linspace"] = Field(
        "trailing", description="'trailing' keeps the last step away from t=0."
    )
    n_per_label: int = Field(64, ge=1, description="Generated images per label per seed.")
    batch_size: int = Field(64, ge=1)


class ReportConfig(Strict):
    grid_per_label: int = Field(8, ge=1, le=32)


class Resources(Strict):
    """Per-rule cluster resources; the SLURM profile may override them."""

    threads: int = Field(1, ge=1)
    mem_mb: int = Field(4000, ge=100)
    runtime: int = Field(60, ge=1, description="Minutes.")
    gpu: int = Field(0, ge=0)


class ResourcesConfig(Strict):
    prepare: Resources = Resources(runtime=30)
    knowledge: Resources = Resources(runtime=60)
    evaluator: Resources = Resources(gpu=1, runtime=120)
    reference: Resources = Resources(gpu=1, runtime=60)
    score: Resources = Resources(gpu=1, runtime=60)
    pretrain: Resources = Resources(gpu=1, runtime=120)
    adapt: Resources = Resources(gpu=1, runtime=240)
    generate: Resources = Resources(gpu=1, runtime=60)
    evaluate: Resources = Resources(runtime=30)
    report: Resources = Resources(runtime=30)


# ----------------------------------------------------------------------------- root


class CraftConfig(Strict):
    """The whole of config.yaml."""

    results: Path = Path("results")
    seeds: list[int] = Field([0], min_length=1)
    modalities: dict[Name, ModalityConfig] = Field(min_length=1)
    methods: dict[Name, MethodConfig] = Field(min_length=1)
    models: ModelsConfig = ModelsConfig()
    pretrain: PretrainConfig = PretrainConfig()
    sampling: SamplingConfig = SamplingConfig()
    knowledge: KnowledgeConfig = KnowledgeConfig()
    cas: CasConfig = CasConfig()
    report: ReportConfig = ReportConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> CraftConfig:
        from craft.data.phantoms import PHANTOMS  # numpy only

        for name, m in self.modalities.items():
            if m.source.kind != "phantom":
                continue
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

    # -- slices: what each job depends on; their digests decide what reruns -------------

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

    def _drawn_modality(self, modality: str) -> dict[str, Any]:
        """The modality fields a job that draws its own phantoms uses (not the data set)."""
        m = self.modality(modality)
        return {
            "phantom": getattr(m.source, "phantom", None),
            **m.model_dump(
                mode="json", include={"labels", "description", "resolution", "channels"}
            ),
        }

    def knowledge_slice(self, modality: str) -> dict[str, Any]:
        m = self.modality(modality)
        phantom = m.source.phantom if m.source.kind == "phantom" else None
        return self.knowledge.slice_for(modality, m.description, list(m.labels), phantom)

    def cas_slice(
        self, stage: str, modality: str, evaluator: str, method: str | None = None
    ) -> dict[str, Any]:
        """What a CAS job uses: ``evaluator`` (training), ``reference`` or ``score``."""
        if evaluator not in self.cas.evaluators:
            raise CraftError(
                f"evaluator '{evaluator}' is not in the config "
                f"(configured: {', '.join(self.cas.evaluators)})"
            )
        ev = self.cas.evaluators[evaluator].model_dump(mode="json")
        out: dict[str, Any] = {"knowledge": self.knowledge_slice(modality), "evaluator": ev}
        if stage == "evaluator":  # trained on its own drawn phantoms, not on the data set
            return {**out, "modality": self._drawn_modality(modality)}
        if ev["source"] != "train":
            ev.pop("train")  # a pretrained evaluator: its training settings do not matter
        cas = self.cas.model_dump(mode="json", exclude={"evaluators"})
        out["cas"] = cas
        if stage == "reference":
            return {**out, "modality": self.slice("prepare", modality)["modality"]}
        if stage == "score":
            return {**out, **self.slice("generate", modality, method)}
        raise ValueError(f"unknown CAS stage {stage!r}")

    def slice(self, stage: str, modality: str, method: str | None = None) -> dict[str, Any]:
        """The plain-data part of the config that one stage's job for (modality, method) uses."""
        m = self.modality(modality).model_dump(mode="json")
        out: dict[str, Any] = {"modality": m}
        if stage == "prepare":
            return out
        if stage == "knowledge":
            return self.knowledge_slice(modality)
        gen = self.models.model_dump(mode="json")
        out["models"] = gen
        if self.models.generator == "pretrain":
            out["pretrain"] = self.pretrain.model_dump(mode="json")
        if stage == "pretrain":
            # The foundation draws its own phantoms: the prepared data set (n_per_label,
            # splits) does not reach it, so changing those must not retrain it.
            out["modality"] = self._drawn_modality(modality)
            return out
        if method is not None:
            out["method"] = self.method(method).model_dump(mode="json")
            if self.method(method).prompts == "enriched":
                out["knowledge"] = self.knowledge_slice(modality)
        if stage == "adapt":
            return out
        out["sampling"] = self.sampling.model_dump(mode="json")
        if stage == "generate":
            return out
        if stage in ("evaluate", "report"):
            out["report"] = self.report.model_dump(mode="json")
            return out
        raise ValueError(f"unknown stage {stage!r}")

    def digest(self, stage: str, modality: str, method: str | None = None) -> str:
        return digest_of(self.slice(stage, modality, method))

    def cas_digest(
        self, stage: str, modality: str, evaluator: str, method: str | None = None
    ) -> str:
        return digest_of(self.cas_slice(stage, modality, evaluator, method))


def digest_of(data: Any) -> str:
    """Short, stable content digest of plain data (sorted-key JSON, sha256)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if re.match(r"^[\w.-]+: ", msg):  # model validators already name the field
        return msg
    more = f" (+{len(err.errors()) - 1} more errors)" if len(err.errors()) > 1 else ""
    return f"{loc or 'config'}: {shown} is invalid: {msg}{more}"


def validate_config(data: dict[str, Any]) -> CraftConfig:
    """Validate plain data (e.g. Snakemake's ``config``) into a CraftConfig or raise CraftError."""
    try:
        return CraftConfig.model_validate(data)
    except ValidationError as err:
        raise CraftError(f"invalid config: {_format_error(err, data)}") from None


def load_config(path: Path | str) -> CraftConfig:
    """Read and validate a config YAML file."""
    path = Path(path)
    if not path.is_file():
        raise CraftError(f"config file {path} does not exist (pass --config PATH)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CraftError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise CraftError(f"{path}: expected a mapping of config keys at the top level")
    try:
        return validate_config(data)
    except CraftError as err:
        raise CraftError(f"{path}: {err}") from None


def dump_config(cfg: CraftConfig) -> str:
    """The resolved config (defaults filled in) as YAML."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
