"""Job specs: what each stage's job reads of the config, typed, one model per stage.

A job spec is derived from the validated :class:`~craft.config.CraftConfig` for one job
(stage, modality, and where the stage has them method and evaluator). It holds exactly the
settings that job reads and that change what it makes, and nothing else:

- Settings that change how a job runs but not what it makes are not in it (threads, memory,
  ``checkpoint_every``, gradient checkpointing, ``compile``, a knowledge server's URL, key
  variable, timeouts and retries). Changing them reruns nothing, and a preempted run resumes
  across the change.
- What a job gets from another job arrives as a file (a Snakemake input: the data set, the
  knowledge JSON, a model card, a reference), not as that job's settings nested in this spec.
  An upstream change reruns the upstream job, and its new file reruns this one.
- Files a user provides (a curated knowledge YAML, a review file, a manifest) are rule inputs
  too; their content digest is recorded with the output (:func:`record_job`).
- Variants are tagged unions: a window ``draft`` has ``k``, a window ``refl`` has none, a
  generic reward has no checklist weight. A setting that a variant does not use is absent, so
  changing it alone changes no spec.

The spec's digest is the job's rerun key (each rule's ``params.spec``); the spec itself is
saved beside the output (``job-*.json``) and in each training checkpoint, so that a resume
whose settings differ names the keys that differ (:func:`spec_changes`).
This module imports no torch (the Snakefile derives the specs at parse time).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from craft.cas.settings import CasWeights, EvaluatorTraining, JudgeConfig
from craft.errors import CraftError
from craft.evaluate.settings import (
    REFERENCE_MAX,
    DownstreamConfig,
    FidelityConfig,
    MemorizationConfig,
)

if TYPE_CHECKING:
    from craft.config import CraftConfig, MethodConfig

STAGES = (
    "prepare",
    "knowledge",
    "pretrain",
    "adapt",
    "align",
    "generate",
    "train_evaluator",
    "reference",
    "score",
    "evaluate_oracle",
    "downstream_real",
    "downstream",
    "memorization",
    "audit",
    "fidelity",
    "path",
    "study",
    "report",
)


class Part(BaseModel):
    """Base of every spec node: plain, immutable data."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Spec(Part):
    """Base of a job spec: ``job`` names the stage; the digest is the job's rerun key."""

    job: str

    def plain(self) -> dict[str, Any]:
        """The spec as plain JSON data (what is hashed and saved)."""
        return self.model_dump(mode="json")

    @property
    def digest(self) -> str:
        return digest_of(self.plain())


def digest_of(data: Any) -> str:
    """Short, stable content digest of plain data (sorted-key JSON, sha256)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- shared parts


class Geometry(Part):
    """What a generating or training job reads of a modality: labels, prompt words, size."""

    labels: list[str]
    description: str
    resolution: int
    channels: int


class DrawnModality(Geometry):
    """A job that draws its own phantoms (pretrain, evaluator training)."""

    phantom: str | None


class Generator(Part):
    """The foundation generator a job loads (its weights arrive as a hub id or a dir)."""

    source: str
    revision: str | None
    gpu_precision: Literal["bf16", "float32"]


class LoraShape(Part):
    rank: int
    alpha: float
    target_modules: list[str]


class Training(Part):
    """Optimisation settings of a trained method."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float


class EnrichedPrompts(Part):
    """Training captions drawn from the knowledge stage's enriched prompts (the knowledge JSON
    is an input)."""

    kind: Literal["enriched"] = "enriched"
    label_prompt_share: float | None


class LabelPrompt(Part):
    kind: Literal["label"] = "label"


Prompts = Annotated[EnrichedPrompts | LabelPrompt, Field(discriminator="kind")]


class ZeroShot(Part):
    kind: Literal["zero-shot"] = "zero-shot"


class LoraMethod(Part):
    kind: Literal["lora"] = "lora"
    prompts: Prompts
    training: Training
    lora: LoraShape


class FullMethod(Part):
    kind: Literal["full"] = "full"
    prompts: Prompts
    training: Training


AdaptMethod = Annotated[ZeroShot | LoraMethod | FullMethod, Field(discriminator="kind")]


# -- align: the tagged unions of reward finetuning


class DraftWindow(Part):
    """DRaFT-K: gradients through the last ``k`` denoising steps."""

    kind: Literal["draft"] = "draft"
    k: int


class AlignPropWindow(Part):
    kind: Literal["alignprop"] = "alignprop"


class ReflWindow(Part):
    kind: Literal["refl"] = "refl"


class DraftLvWindow(Part):
    """DRaFT-LV: the last step re-noised ``lv_draws`` times."""

    kind: Literal["draft-lv"] = "draft-lv"
    lv_draws: int


Window = Annotated[
    DraftWindow | AlignPropWindow | ReflWindow | DraftLvWindow, Field(discriminator="kind")
]


class CasReward(Part):
    """CRAFT's reward: the differentiable CAS of the reward evaluator."""

    kind: Literal["cas"] = "cas"
    form: Literal["cas", "log-cas"]
    power: float
    checklist_weight: float
    # settings added later are left out of the digest while unset, so that adding them
    # reruns no job whose config does not use them
    cap_quantile: float | None = Field(None, exclude_if=lambda v: v is None)
    dimension_weights: dict[str, float] | None = Field(None, exclude_if=lambda v: v is None)


class GenericReward(Part):
    """generic-reward: the reward evaluator's similarity to the plain label prompt."""

    kind: Literal["generic"] = "generic"


Reward = Annotated[CasReward | GenericReward, Field(discriminator="kind")]


class Realism(Part):
    weight: float
    real_per_label: int
    features: Literal["reward-evaluator", "image-statistics"] = Field(
        "reward-evaluator", exclude_if=lambda v: v == "reward-evaluator"
    )


class EarlyStopping(Part):
    patience: int
    tolerance_se: float | None


class Evaluations(Part):
    """Held-out evaluations during reward finetuning (curves.csv; early stopping)."""

    every: int
    per_label: int
    evaluator: str
    early_stopping: EarlyStopping | None


class Rollout(Part):
    """The sampler reward finetuning trains through."""

    scheduler: str
    steps: int
    guidance_scale: float
    timestep_spacing: str


class EvaluatorSource(Part):
    """An evaluator as a job loads it (a trained one's weights arrive as its dir)."""

    name: str
    family: str
    source: str
    adapter: str
    revision: str | None
    judge: JudgeConfig | None


class AlignMethod(Part):
    kind: Literal["craft", "generic-reward"]
    init: str
    prompts: Prompts
    holdout_prompts: float
    training: Training
    lora: LoraShape
    window: Window
    reward: Reward
    realism: Realism | None
    diffusion_weight: float
    kl_weight: float
    lora_scale: float
    handover_t: int | None = Field(None, exclude_if=lambda v: v is None)
    evaluations: Evaluations | None
    zero_stage: int
    processes: int


# ----------------------------------------------------------------------------- job specs


class PrepareSpec(Spec):
    job: Literal["prepare"] = "prepare"
    source: dict[str, Any] = Field(description="The data source (its files are inputs).")
    labels: list[str]
    resolution: int
    channels: int
    splits: dict[str, float | int]


class CuratedKnowledge(Part):
    kind: Literal["curated"] = "curated"
    base: str | None = Field(description="Shipped base name or YAML path (an input).")
    include_label_prompt: bool


class ModelKnowledge(Part):
    """A chat model writes the knowledge: the model and how it is asked, not where it runs."""

    kind: Literal["model"] = "model"
    backend: dict[str, Any]
    n_prompts: int
    max_items_per_label: int
    max_modality_items: int
    max_attempts: int
    include_label_prompt: bool


class ReviewedKnowledge(Part):
    """A clinician's review file, used verbatim (the file is an input)."""

    kind: Literal["review"] = "review"
    review: str


class KnowledgeSpec(Spec):
    job: Literal["knowledge"] = "knowledge"
    modality: str
    description: str
    labels: list[str]
    phantom: str | None
    knowledge: Annotated[
        CuratedKnowledge | ModelKnowledge | ReviewedKnowledge, Field(discriminator="kind")
    ]


class PretrainSpec(Spec):
    job: Literal["pretrain"] = "pretrain"
    modality: DrawnModality
    pretrain: dict[str, Any]


class AdaptSpec(Spec):
    job: Literal["adapt"] = "adapt"
    modality: Geometry
    generator: Generator
    method: AdaptMethod


class AlignSpec(Spec):
    job: Literal["align"] = "align"
    modality: Geometry
    gpu_precision: str
    method: AlignMethod
    rollout: Rollout
    reward_evaluator: EvaluatorSource
    out_of_family_evaluator: EvaluatorSource | None


class GenerateSpec(Spec):
    job: Literal["generate"] = "generate"
    modality: Geometry
    gpu_precision: str
    prompts: Literal["label", "enriched"]
    sampling: dict[str, Any]


class TrainEvaluatorSpec(Spec):
    job: Literal["train_evaluator"] = "train_evaluator"
    modality: DrawnModality
    family: str
    train: EvaluatorTraining


class Calibration(Part):
    """How a reference calibrates CAS on real images."""

    weights: CasWeights
    aggregation: str
    tail_quantile: float
    knn_k: int
    bandwidth_scale: float
    reference_max_per_label: int


class ReferenceSpec(Spec):
    job: Literal["reference"] = "reference"
    modality: Geometry
    evaluator: EvaluatorSource
    batch_size: int
    calibration: Calibration


class ScoreSpec(Spec):
    job: Literal["score"] = "score"
    modality: Geometry
    evaluator: EvaluatorSource
    batch_size: int
    bootstrap: int


class OracleSpec(Spec):
    job: Literal["evaluate_oracle"] = "evaluate_oracle"
    phantom: str
    description: str
    labels: list[str]


class DownstreamSpec(Spec):
    job: Literal["downstream"] = "downstream"
    labels: list[str]
    downstream: DownstreamConfig


class MemorizationSpec(Spec):
    job: Literal["memorization"] = "memorization"
    labels: list[str]
    memorization: MemorizationConfig

    @field_serializer("memorization")
    def _memorization(self, m: MemorizationConfig) -> dict[str, Any]:
        # reference_max is left out at its default: it binds only above 2,000 test images,
        # which no run made before it had, so those runs keep their digests
        out = m.model_dump(mode="json")
        if m.reference_max == REFERENCE_MAX:
            del out["reference_max"]
        return out


class AuditSpec(Spec):
    job: Literal["audit"] = "audit"
    modality: Geometry
    phantom: str | None
    auditors: list[EvaluatorSource | Literal["oracle"]]
    batch_size: int


class FidelitySpec(Spec):
    job: Literal["fidelity"] = "fidelity"
    labels: list[str]
    fidelity: FidelityConfig


class PathSpec(Spec):
    """A reward method's path: its scales, and every job spec whose work it repeats at a
    scale (the sampling plan, the oracle, each out-of-family score, fidelity)."""

    job: Literal["path"] = "path"
    scales: list[float]
    generate: GenerateSpec
    oracle: OracleSpec | None
    scores: dict[str, ScoreSpec]
    fidelity: FidelitySpec


class StudySpec(Spec):
    job: Literal["study"] = "study"
    description: str
    labels: list[str]
    method_a: str
    method_b: str
    seed: int
    pairs_per_label: int
    study_seed: int


class ReportSpec(Spec):
    job: Literal["report"] = "report"
    modalities: list[str]
    methods: dict[str, str] = Field(description="Method name -> kind, in config order.")
    seeds: list[int]
    evaluators: dict[str, str] = Field(description="Evaluator name -> role.")
    grid_per_label: int
    claim: dict[str, Any] = Field(default_factory=dict, description="claim: budget and axis.")


# ----------------------------------------------------------------------------- derivation


def _geometry(cfg: CraftConfig, modality: str) -> Geometry:
    m = cfg.modality(modality)
    return Geometry(
        labels=list(m.labels),
        description=m.description,
        resolution=m.resolution,
        channels=m.channels,
    )


def _phantom(cfg: CraftConfig, modality: str) -> str | None:
    src = cfg.modality(modality).source
    return src.phantom if src.kind == "phantom" else None


def _drawn(cfg: CraftConfig, modality: str) -> DrawnModality:
    return DrawnModality(**_geometry(cfg, modality).model_dump(), phantom=_phantom(cfg, modality))


def _training(k: MethodConfig) -> Training:
    return Training(steps=k.steps, batch_size=k.batch_size, lr=k.lr, weight_decay=k.weight_decay)


def _lora(k: MethodConfig) -> LoraShape:
    alpha = float(k.alpha if k.alpha is not None else k.rank)
    return LoraShape(rank=k.rank, alpha=alpha, target_modules=list(k.target_modules))


def _prompts(k: MethodConfig) -> EnrichedPrompts | LabelPrompt:
    if k.prompts == "enriched":
        return EnrichedPrompts(label_prompt_share=k.label_prompt_share)
    return LabelPrompt()


def evaluator_source(cfg: CraftConfig, name: str) -> EvaluatorSource:
    """An evaluator as the jobs that load it read it (not its training settings: a trained
    evaluator arrives as its dir)."""
    if name not in cfg.cas.evaluators:
        raise CraftError(
            f"evaluator '{name}' is not in the config (configured: {', '.join(cfg.cas.evaluators)})"
        )
    e = cfg.cas.evaluators[name]
    return EvaluatorSource(
        name=name,
        family=e.family,
        source=e.source,
        adapter=e.adapter,
        revision=e.revision,
        judge=e.judge,
    )


def _knowledge(cfg: CraftConfig, modality: str) -> KnowledgeSpec:
    m = cfg.modality(modality)
    kn = cfg.knowledge
    if modality in kn.review:
        part: Any = ReviewedKnowledge(review=str(kn.review[modality]))
    elif kn.backend.kind == "curated":
        part = CuratedKnowledge(
            base=kn.curated.get(modality), include_label_prompt=kn.include_label_prompt
        )
    else:
        part = ModelKnowledge(
            backend=kn.backend.model_dump(mode="json", exclude=set(RUNTIME_BACKEND_FIELDS)),
            **kn.enrichment.model_dump(),
            include_label_prompt=kn.include_label_prompt,
        )
    return KnowledgeSpec(
        modality=modality,
        description=m.description,
        labels=list(m.labels),
        phantom=_phantom(cfg, modality),
        knowledge=part,
    )


#: Settings of a knowledge server that say where and how it is reached, not what it answers.
RUNTIME_BACKEND_FIELDS = (
    "base_url",
    "api_key_env",
    "timeout_s",
    "max_retries",
    "backoff_s",
    "max_backoff_s",
    "requests_per_minute",
)


def _adapt(cfg: CraftConfig, modality: str, method: str) -> AdaptSpec:
    k = cfg.method(method)
    if k.is_align:
        raise CraftError(f"method '{method}' is kind {k.kind}: its job is align, not adapt")
    if k.kind == "zero-shot":
        part: Any = ZeroShot()
    elif k.kind == "lora":
        part = LoraMethod(prompts=_prompts(k), training=_training(k), lora=_lora(k))
    else:
        part = FullMethod(prompts=_prompts(k), training=_training(k))
    return AdaptSpec(
        modality=_geometry(cfg, modality),
        generator=Generator(
            source=cfg.models.generator_for(modality),
            revision=cfg.models.revision,
            gpu_precision=cfg.models.gpu_precision,
        ),
        method=part,
    )


def _window(a: Any) -> Any:
    if a.window == "draft":
        return DraftWindow(k=a.k)
    if a.window == "draft-lv":
        return DraftLvWindow(lv_draws=a.lv_draws)
    return AlignPropWindow() if a.window == "alignprop" else ReflWindow()


def _align(cfg: CraftConfig, modality: str, method: str) -> AlignSpec:
    k = cfg.method(method)
    if not k.is_align:
        raise CraftError(f"method '{method}' is kind {k.kind}: its job is adapt, not align")
    a = k.align_settings
    craft = k.kind == "craft"
    reward: Any = (
        CasReward(
            form=a.reward,
            power=a.reward_power,
            checklist_weight=a.checklist_weight,
            cap_quantile=a.cas_cap_quantile,
            dimension_weights=None if a.reward_weights is None else a.reward_weights.model_dump(),
        )
        if craft
        else GenericReward()
    )
    evaluations = None
    oof = None
    if a.eval_every:
        oof = evaluator_source(cfg, cfg.out_of_family_evaluators[0])
        stopping = None
        if a.patience is not None:
            stopping = EarlyStopping(patience=a.patience, tolerance_se=a.tolerance_se)
        evaluations = Evaluations(
            every=a.eval_every,
            per_label=a.eval_per_label,
            evaluator=oof.name,
            early_stopping=stopping,
        )
    res = cfg.resources.align
    return AlignSpec(
        modality=_geometry(cfg, modality),
        gpu_precision=cfg.models.gpu_precision,
        method=AlignMethod(
            kind=k.kind,
            init=k.init,
            # generic-reward trains on the plain label prompt whatever its prompts say
            prompts=_prompts(k) if craft else LabelPrompt(),
            holdout_prompts=a.holdout_prompts,
            training=_training(k),
            lora=_lora(k),
            window=_window(a),
            reward=reward,
            realism=Realism(
                weight=a.realism_weight,
                real_per_label=a.realism_real,
                features=a.realism_features,
            )
            if a.realism_weight
            else None,
            diffusion_weight=a.diffusion_weight,
            kl_weight=a.kl_weight,
            lora_scale=a.lora_scale,
            handover_t=a.handover_t,
            evaluations=evaluations,
            zero_stage=a.zero_stage,
            # the batch is sharded over the processes: the same run but for rounding (and for
            # the realism term, which each process takes over its own share of the batch)
            processes=max(res.gpu, 1) * res.nodes,
        ),
        rollout=Rollout(
            scheduler=cfg.sampling.scheduler,
            steps=a.sample_steps or cfg.sampling.steps,
            guidance_scale=cfg.sampling.guidance_scale,
            timestep_spacing=cfg.sampling.timestep_spacing,
        ),
        reward_evaluator=evaluator_source(cfg, cfg.cas.reward_evaluator),
        out_of_family_evaluator=oof,
    )


def _generate(cfg: CraftConfig, modality: str, method: str) -> GenerateSpec:
    k = cfg.method(method)
    return GenerateSpec(
        modality=_geometry(cfg, modality),
        gpu_precision=cfg.models.gpu_precision,
        prompts=k.prompts,
        sampling=cfg.sampling.model_dump(mode="json"),
    )


def _calibration(cfg: CraftConfig) -> Calibration:
    c = cfg.cas
    return Calibration(
        weights=c.weights,
        aggregation=c.aggregation,
        tail_quantile=c.tail_quantile,
        knn_k=c.knn_k,
        bandwidth_scale=c.bandwidth_scale,
        reference_max_per_label=c.reference_max_per_label,
    )


def _auditors(cfg: CraftConfig, modality: str) -> list[Any]:
    names = cfg.evaluation.audit.auditor_names(cfg.cas, _phantom(cfg, modality))
    return ["oracle" if n == "oracle" else evaluator_source(cfg, n) for n in names]


def job_spec(
    cfg: CraftConfig,
    stage: str,
    modality: str | None = None,
    method: str | None = None,
    evaluator: str | None = None,
) -> Spec:
    """The spec of one job: ``stage`` (see :data:`STAGES`) for ``modality`` and, where the
    stage has them, ``method`` and ``evaluator``."""
    if stage == "report":
        return ReportSpec(
            modalities=list(cfg.modalities),
            methods={n: k.kind for n, k in cfg.methods.items()},
            seeds=list(cfg.seeds),
            evaluators={n: e.role for n, e in cfg.cas.evaluators.items()},
            grid_per_label=cfg.report.grid_per_label,
            claim=cfg.claim.model_dump(mode="json"),
        )
    if modality is None:
        raise ValueError(f"job spec of stage {stage!r} needs a modality")
    m = cfg.modality(modality)
    needs = {"method": method, "evaluator": evaluator}
    wanted = {
        "adapt": ("method",),
        "align": ("method",),
        "generate": ("method",),
        "train_evaluator": ("evaluator",),
        "reference": ("evaluator",),
        "score": ("evaluator",),
        "path": ("method",),
    }.get(stage, ())
    for name in wanted:
        if needs[name] is None:
            raise ValueError(f"job spec of stage {stage!r} needs a {name}")
    if method is not None:
        cfg.method(method)  # a clear error for an unknown name
    labels = list(m.labels)
    if stage == "prepare":
        source = m.source.model_dump(mode="json")
        if m.source.kind == "manifest":  # its splits keep each patient's images together
            source["split_by"] = "patient"
        return PrepareSpec(
            source=source,
            labels=labels,
            resolution=m.resolution,
            channels=m.channels,
            splits=m.splits.model_dump(),
        )
    if stage == "knowledge":
        return _knowledge(cfg, modality)
    if stage == "pretrain":
        return PretrainSpec(modality=_drawn(cfg, modality), pretrain=cfg.pretrain.model_dump())
    if stage == "adapt":
        return _adapt(cfg, modality, method)
    if stage == "align":
        return _align(cfg, modality, method)
    if stage == "generate":
        return _generate(cfg, modality, method)
    if stage in ("train_evaluator", "reference", "score"):
        ev = evaluator_source(cfg, evaluator)
        e = cfg.cas.evaluators[evaluator]
        if stage == "train_evaluator":
            return TrainEvaluatorSpec(
                modality=_drawn(cfg, modality), family=e.family, train=e.train
            )
        if stage == "reference":
            return ReferenceSpec(
                modality=_geometry(cfg, modality),
                evaluator=ev,
                batch_size=e.batch_size,
                calibration=_calibration(cfg),
            )
        return ScoreSpec(
            modality=_geometry(cfg, modality),
            evaluator=ev,
            batch_size=e.batch_size,
            bootstrap=cfg.cas.bootstrap,
        )
    if stage == "evaluate_oracle":
        phantom = _phantom(cfg, modality)
        if phantom is None:
            raise CraftError(
                f"modality '{modality}' is not a phantom: the oracle measures phantoms"
            )
        return OracleSpec(phantom=phantom, description=m.description, labels=labels)
    ev = cfg.evaluation
    if stage in ("downstream", "downstream_real"):  # the real-only phases: the same settings
        return DownstreamSpec(labels=labels, downstream=ev.downstream)
    if stage == "memorization":
        return MemorizationSpec(labels=labels, memorization=ev.memorization)
    if stage == "fidelity":
        return FidelitySpec(labels=labels, fidelity=ev.fidelity)
    if stage == "path":
        if not cfg.method(method).is_align:
            raise CraftError(f"method '{method}' has no path: only reward methods (align) have")
        return PathSpec(
            scales=list(ev.paths.scales),
            generate=_generate(cfg, modality, method),
            oracle=None
            if _phantom(cfg, modality) is None
            else job_spec(cfg, "evaluate_oracle", modality),
            scores={
                e: job_spec(cfg, "score", modality, method, e) for e in cfg.out_of_family_evaluators
            },
            fidelity=FidelitySpec(labels=labels, fidelity=ev.fidelity),
        )
    if stage == "audit":
        return AuditSpec(
            modality=_geometry(cfg, modality),
            phantom=_phantom(cfg, modality),
            auditors=_auditors(cfg, modality),
            batch_size=ev.audit.batch_size,
        )
    if stage == "study":
        st = cfg.study
        if st is None:
            raise CraftError("the config has no study section")
        return StudySpec(
            description=m.description,
            labels=labels,
            method_a=st.method_a,
            method_b=st.method_b,
            seed=cfg.seeds[0] if st.seed is None else st.seed,
            pairs_per_label=st.pairs_per_label,
            study_seed=st.study_seed,
        )
    raise ValueError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")


#: A job of the workflow: (stage, modality, method, evaluator); absent parts are None.
Job = tuple[str, str | None, str | None, str | None]


def workflow_jobs(cfg: CraftConfig) -> list[Job]:
    """Every job the workflow runs for ``cfg`` (one seed: seeds share their specs)."""
    jobs: list[Job] = []
    for m, mc in cfg.modalities.items():
        phantom = mc.source.kind == "phantom"
        jobs += [("prepare", m, None, None), ("knowledge", m, None, None)]
        if cfg.models.generator == "pretrain":
            jobs.append(("pretrain", m, None, None))
        for ev, e in cfg.cas.evaluators.items():
            if e.source == "train":
                jobs.append(("train_evaluator", m, None, ev))
            jobs.append(("reference", m, None, ev))
        jobs.append(("downstream_real", m, None, None))
        for k in cfg.methods:
            jobs += [(run_stage(cfg, k), m, k, None), ("generate", m, k, None)]
            jobs += [("score", m, k, ev) for ev in cfg.cas.evaluators]
            evals = ["downstream", "memorization", "audit", "fidelity"]
            jobs += [(st, m, k, None) for st in (["evaluate_oracle"] if phantom else []) + evals]
            if cfg.methods[k].is_align:
                jobs.append(("path", m, k, None))
        if cfg.study is not None:
            jobs.append(("study", m, None, None))
    jobs.append(("report", None, None, None))
    return jobs


def workflow_digests(cfg: CraftConfig) -> dict[Job, str]:
    """The spec digest of every job of the workflow."""
    return {job: job_spec(cfg, *job).digest for job in workflow_jobs(cfg)}


def run_stage(cfg: CraftConfig, method: str) -> str:
    """The stage that makes a method's model: adapt or align."""
    return "align" if cfg.method(method).is_align else "adapt"


# ----------------------------------------------------------------------------- differences


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of nested plain data by dotted path (lists are leaves)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out if out or not prefix else {prefix: data}
    return {prefix: data}


def spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two plain specs, as 'key: old -> new' strings
    (a key only one of them has shows as absent)."""
    a, b = _leaves(old), _leaves(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, _ABSENT) != b.get(key, _ABSENT):
            out.append(f"{key}: {_show(a.get(key, _ABSENT))} -> {_show(b.get(key, _ABSENT))}")
    return out


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """One clause naming what differs, for a log line ('method.training.lr: 0.001 -> 0.002,
    +1 more'); 'settings of an older craft' when the old spec is unknown."""
    if old is None:
        return "settings of a craft from before job specs (no spec recorded)"
    changes = spec_changes(old, new)
    if not changes:
        return "the same settings"
    more = f", +{len(changes) - 2} more" if len(changes) > 2 else ""
    return ", ".join(changes[:2]) + more


# ----------------------------------------------------------------------------- provenance

#: Files up to this size are hashed whole; larger ones (data sets, samples) by size and
#: modification time, which is what Snakemake's own rerun trigger looks at.
HASH_LIMIT = 64 * 2**20


def file_digest(path: Path) -> str:
    """Content digest of a file (sha256 prefix), or of a folder's file list and their digests;
    files over :data:`HASH_LIMIT` by size and mtime ('stat:...')."""
    path = Path(path)
    if path.is_dir():
        parts = []
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            parts.append(f"{p.relative_to(path)}={file_digest(p)}")
        return "dir:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    st = path.stat()
    if st.st_size > HASH_LIMIT:
        return f"stat:{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def spec_path(output: Path) -> Path:
    """Where a job's spec is saved: ``job-<output stem>.json`` beside a file output (so that
    no ``metrics-*.json`` glob finds it), ``job.json`` inside a folder output."""
    output = Path(output)
    if output.is_dir():
        return output / "job.json"
    return output.with_name(f"job-{output.name.split('.')[0]}.json")


def record_job(
    output: Path,
    spec: Spec,
    inputs: dict[str, Path | list[Path]] | None = None,
    job: dict[str, Any] | None = None,
) -> Path:
    """Save ``spec``, the job's identity (stage, modality, method, seed, evaluator) and the
    digests of the input files it read beside ``output`` (see :func:`spec_path`)."""
    digests: dict[str, Any] = {}
    for name, value in (inputs or {}).items():
        if isinstance(value, list):
            found = {str(p): file_digest(Path(p)) for p in value if Path(p).exists()}
            if found:
                digests[name] = found
        elif Path(value).exists():
            digests[name] = {str(value): file_digest(Path(value))}
    record = {"job": job or {}, "digest": spec.digest, "spec": spec.plain(), "inputs": digests}
    path = spec_path(output)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_job(output: Path) -> dict[str, Any] | None:
    """The record :func:`record_job` saved beside ``output`` (None if there is none)."""
    path = spec_path(output)
    return json.loads(path.read_text()) if path.is_file() else None
