"""Every pretrained model a config names: is it there for an offline compute node, and fetch it.

Compute nodes of many clusters have no internet. There, a hub id loads only from the Hugging
Face cache (``HF_HUB_OFFLINE=1``), and a model missing from it fails late, in a job, after
retries. ``craft models fetch`` runs on a login node and downloads every model the config names
into that cache, with what they need besides (an open_clip model such as BiomedCLIP builds its
text tower from a second hub model, its BERT, and reads that model's tokenizer);
``craft models check`` says, one line per model, what a job could not load offline. The
Snakefile runs the check when the workflow is planned with ``HF_HUB_OFFLINE`` set.

Imports no torch (it runs at Snakefile parse time); only a timm classifier's hub id is looked
up in timm, where one is configured.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from craft.errors import CraftError

if TYPE_CHECKING:
    from craft.config import CraftConfig

#: The file that marks an open_clip model folder (BiomedCLIP's hub layout).
OPEN_CLIP_CONFIG = "open_clip_config.json"
#: The parts every generator folder has (a Stable Diffusion pipeline folder; ``vae/`` optional).
PIPELINE_PARTS = ("unet", "text_encoder", "tokenizer", "scheduler")

Loader = Literal[
    "pipeline", "transformers", "open_clip", "text_tower", "tokenizer", "text_model", "timm"
]

#: The files each kind of model needs (any one of a tuple), relative to its repository root.
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
NEEDED: dict[str, list[tuple[str, ...]]] = {
    "pipeline": [
        ("model_index.json",),
        ("unet/config.json",),
        tuple(f"unet/{w}" for w in _DIFFUSERS_WEIGHTS),
        ("text_encoder/config.json",),
        tuple(f"text_encoder/{w}" for w in _WEIGHTS),
        ("tokenizer/tokenizer_config.json", "tokenizer/vocab.json"),
        ("scheduler/scheduler_config.json",),
    ],
    "transformers": [("config.json",), _WEIGHTS],
    "open_clip": [
        (OPEN_CLIP_CONFIG,),
        ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
    ],
    # open_clip builds a Hugging Face text tower from its config alone (the weights come from
    # the open_clip checkpoint), and reads its tokenizer's files
    "text_tower": [("config.json",)],
    "tokenizer": [("tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.json")],
    # one repository serving as both (BiomedCLIP's PubMedBERT)
    "text_model": [
        ("config.json",),
        ("tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.json"),
    ],
    "timm": [("config.json",), ("model.safetensors", "pytorch_model.bin")],
}
#: What a fetch leaves out: other frameworks' weights, whole-model checkpoints, half variants.
IGNORE = [
    "*.msgpack",
    "*.h5",
    "*.onnx",
    "*.onnx_data",
    "*.ot",
    "*.tflite",
    "*.ckpt",
    "flax_model*",
    "tf_model*",
    "rust_model*",
    "*.fp16.*",
    "*non_ema*",
    "*.md",
    ".git*",
]


@dataclass(frozen=True)
class ModelRef:
    """One pretrained model a job loads: which config field names it, and from where."""

    field: str  # e.g. "cas.evaluators.biomedclip.source"
    source: str  # as the config writes it: a hub id, 'hf-hub:ORG/NAME', a local dir
    loader: Loader
    revision: str | None = None
    needed_by: str | None = None  # for a dependency: what needs it ("the text tower of ...")

    @property
    def repo_id(self) -> str:
        return self.source.removeprefix("hf-hub:")

    @property
    def local(self) -> bool:
        """A folder on disk (existing or not) rather than a hub id."""
        return self.source.startswith("local-dir:") or looks_local(self.source)

    @property
    def path(self) -> Path:
        return Path(self.source.removeprefix("local-dir:")).expanduser()

    def describe(self) -> str:
        what = f"{self.field}: '{self.source}'"
        return f"{what} ({self.needed_by})" if self.needed_by else what


def _transformers_like(source: str) -> bool:
    return source not in ("tiny", "pixels", "inception", "train", "pretrain")


def looks_local(source: str) -> bool:
    """Whether a model source names a folder (existing or not) rather than a hub id 'org/name':
    it exists, starts with '.', '/' or '~', or has more than one '/'."""
    return Path(source).exists() or source.startswith((".", "/", "~")) or source.count("/") > 1


def is_open_clip(source: str) -> bool:
    """Whether open_clip loads ``source``: an 'hf-hub:' / 'local-dir:' id or a folder with
    open_clip_config.json (the evaluators' 'auto' adapter)."""
    return source.startswith(("hf-hub:", "local-dir:")) or Path(source, OPEN_CLIP_CONFIG).is_file()


def _timm_hub_id(name: str) -> str | None:
    """The hub repository of a timm model's pretrained weights (None: timm has none)."""
    if name.startswith("hf-hub:"):
        return name.removeprefix("hf-hub:")
    import timm  # only for a configured pretrained timm classifier

    if not timm.is_model(name):
        return None
    cfg = timm.models.get_pretrained_cfg(name)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def config_models(cfg: CraftConfig, local_only: bool = False) -> list[ModelRef]:
    """Every pretrained model the config names (phantom-only parts it trains are not models).

    ``local_only``: only the local folders, as the plan checks them; a downstream classifier
    named by a timm architecture is then not resolved to its hub repository (that imports
    timm and torch: 4 s of every plan)."""
    refs: list[ModelRef] = []
    if cfg.models.generator != "pretrain":
        for m in cfg.modalities:
            src = cfg.models.generator_for(m)
            ref = ModelRef("models.generator", src, "pipeline", cfg.models.revision)
            if ref not in refs:
                refs.append(ref)
    for name, ev in cfg.cas.evaluators.items():
        if ev.source != "train":
            open_clip = (
                is_open_clip(ev.source) if ev.adapter == "auto" else ev.adapter == "open_clip"
            )
            loader = "open_clip" if open_clip else "transformers"
            refs.append(ModelRef(f"cas.evaluators.{name}.source", ev.source, loader, ev.revision))
        if ev.judge is not None:
            refs.append(
                ModelRef(
                    f"cas.evaluators.{name}.judge.source",
                    ev.judge.source,
                    "transformers",
                    ev.judge.revision,
                )
            )
    backend = cfg.knowledge.backend
    if backend.kind == "transformers":
        refs.append(
            ModelRef("knowledge.backend.model", backend.model, "transformers", backend.revision)
        )
    ev = cfg.evaluation
    ds = ev.downstream
    if ds.classifier != "tiny" and local_only:
        if looks_local(ds.classifier) and not ds.classifier.startswith("hf-hub:"):
            refs.append(ModelRef("evaluation.downstream.classifier", ds.classifier, "transformers"))
    elif ds.classifier != "tiny":
        hub = None
        if ds.classifier.startswith("hf-hub:") or not Path(ds.classifier).exists():
            try:
                hub = _timm_hub_id(ds.classifier)
            except ImportError:
                hub = None
        if hub is not None or ds.classifier.startswith("hf-hub:"):
            if ds.pretrained:  # a timm architecture alone needs no download
                refs.append(ModelRef("evaluation.downstream.classifier", f"hf-hub:{hub}", "timm"))
        else:
            refs.append(ModelRef("evaluation.downstream.classifier", ds.classifier, "transformers"))
    if _transformers_like(ev.memorization.encoder):
        refs.append(
            ModelRef("evaluation.memorization.encoder", ev.memorization.encoder, "transformers")
        )
    if _transformers_like(ev.fidelity.features):
        refs.append(ModelRef("evaluation.fidelity.features", ev.fidelity.features, "transformers"))
    return refs


# ----------------------------------------------------------------------------- dependencies


def _open_clip_config(ref: ModelRef) -> dict | None:
    """An open_clip model's open_clip_config.json, from its folder or the cache (else None)."""
    if ref.local:
        path = ref.path / OPEN_CLIP_CONFIG
    else:
        path = _cached(ref.repo_id, OPEN_CLIP_CONFIG, ref.revision)
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def dependencies(ref: ModelRef) -> list[ModelRef]:
    """Models that loading ``ref`` also needs: an open_clip model's Hugging Face text tower
    (its config) and, for a hub id, its tokenizer (a local open_clip folder holds its own)."""
    if ref.loader != "open_clip":
        return []
    cfg = _open_clip_config(ref)
    text = (cfg or {}).get("model_cfg", {}).get("text_cfg", {})
    tower = text.get("hf_model_name")
    tokenizer = text.get("hf_tokenizer_name") if not ref.local else None
    if tower and tower == tokenizer:
        what = f"the text tower and tokenizer of '{ref.source}'"
        return [ModelRef(ref.field, tower, "text_model", needed_by=what)]
    deps = []
    if tower:
        what = f"the text tower of '{ref.source}'"
        deps.append(ModelRef(ref.field, tower, "text_tower", needed_by=what))
    if tokenizer:
        what = f"the tokenizer of '{ref.source}'"
        deps.append(ModelRef(ref.field, tokenizer, "tokenizer", needed_by=what))
    return deps


def with_dependencies(refs: list[ModelRef]) -> Iterator[ModelRef]:
    """``refs`` and what each needs besides (known once the model itself is there)."""
    for ref in refs:
        yield ref
        yield from dependencies(ref)


# ----------------------------------------------------------------------------- availability


def _cached(repo_id: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, filename, revision=revision)
    except ValueError:  # not a valid repo id
        return None
    return hit if isinstance(hit, str) else None


def _needed(ref: ModelRef, find) -> list[tuple[str, ...]]:
    """The files ``ref`` needs; a pipeline whose model_index.json names a VAE needs it too."""
    needed = list(NEEDED[ref.loader])
    if ref.loader == "pipeline":
        index = find("model_index.json")
        try:
            has_vae = index is not None and "vae" in json.loads(Path(index).read_text())
        except (OSError, json.JSONDecodeError):
            has_vae = False
        if has_vae:
            needed += [("vae/config.json",), tuple(f"vae/{w}" for w in _DIFFUSERS_WEIGHTS)]
    return needed


def missing(ref: ModelRef) -> str | None:
    """Why a job on an offline node could not load ``ref`` (None: it could)."""
    if ref.local:
        if not ref.path.is_dir():
            return "no such folder"

        def find(name: str) -> Path | None:
            return ref.path / name if (ref.path / name).is_file() else None

    else:

        def find(name: str) -> str | None:
            return _cached(ref.repo_id, name, ref.revision)

    needed = _needed(ref, find)
    absent = [" or ".join(alts) for alts in needed if not any(find(a) for a in alts)]
    if not absent:
        return None
    if ref.local:
        return f"the folder has no {', '.join(absent)}"
    if len(absent) == len(needed):
        return "not in the Hugging Face cache"
    return f"in the Hugging Face cache without {', '.join(absent)}"


def hub_offline() -> bool:
    """Whether the hub is switched off (HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "on", "yes", "true")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def fix_for(ref: ModelRef, config: str = "CONFIG") -> str:
    if ref.local:
        return f"fix {ref.field} or copy the model there"
    return f"run `craft models fetch --config {config}` on a machine with internet"


def problem(ref: ModelRef, config: str = "CONFIG") -> str | None:
    """The line saying why a job could not load ``ref`` offline and how to fix it (None: it
    could); a relative folder says where relative paths start."""
    why = missing(ref)
    if why is None:
        return None
    if ref.local and not ref.path.is_absolute():
        why += f" (relative paths start at {Path.cwd()})"
    return f"{ref.describe()}: {why}; {fix_for(ref, config)}"


def check_offline(cfg: CraftConfig, config: str = "CONFIG") -> list[str]:
    """One line per model (or dependency) that a job could not load offline; [] when all are."""
    lines = (problem(ref, config) for ref in with_dependencies(config_models(cfg)))
    return [line for line in lines if line is not None]


# ----------------------------------------------------------------------------- fetching


def fetch(ref: ModelRef) -> Path:
    """Download ``ref`` into the Hugging Face cache (a local folder is only checked)."""
    if ref.local:
        line = problem(ref)
        if line is not None:
            raise CraftError(line)
        return ref.path
    from huggingface_hub import snapshot_download

    allow, ignore = None, list(IGNORE)
    if ref.loader == "pipeline":  # its parts only, not the single-file checkpoints beside them
        allow = ["model_index.json", *(f"{p}/*" for p in PIPELINE_PARTS), "vae/*"]
    elif ref.loader == "text_tower":
        allow = ["config.json"]
    elif ref.loader in ("tokenizer", "text_model"):
        allow = ["*.json", "*.txt", "*.model", "*.tiktoken"]
    try:
        if ref.loader in ("transformers", "timm", "open_clip"):
            from huggingface_hub import list_repo_files

            files = list_repo_files(ref.repo_id, revision=ref.revision)
            if any(f.endswith(".safetensors") for f in files):
                ignore.append("*.bin")  # the same weights twice
        return Path(
            snapshot_download(
                ref.repo_id, revision=ref.revision, allow_patterns=allow, ignore_patterns=ignore
            )
        )
    except Exception as err:  # network, authentication, unknown repository: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CraftError(
            f"{ref.describe()}: download failed: {first}; check the id, your network and, for "
            "a gated model, `huggingface-cli login`"
        ) from None


def fetch_all(cfg: CraftConfig, log=print) -> list[tuple[ModelRef, Path]]:
    """Fetch every model of the config, then what each needs besides."""
    done = []
    todo = list(config_models(cfg))
    while todo:
        ref = todo.pop(0)
        log(f"fetching {ref.describe()}")
        done.append((ref, fetch(ref)))
        todo[:0] = dependencies(ref)
    return done


def load_error(field: str, source: str, err: BaseException) -> CraftError:
    """One line for a model that did not load: the field, the source and the likely fix."""
    text = " ".join(str(err).split())
    ref = ModelRef(field, source, "transformers")
    if not ref.local and hub_offline():
        return CraftError(
            f"{field}: '{source}' could not be loaded from the Hugging Face cache and the hub is "
            f"offline (HF_HUB_OFFLINE); {fix_for(ref)}, or name a local folder"
        )
    if not ref.local and ("connect" in text.lower() or "resolve" in text.lower()):
        return CraftError(
            f"{field}: '{source}' could not be downloaded (no network?): {text[:200]}; on a "
            f"node without internet {fix_for(ref)} and set HF_HUB_OFFLINE=1"
        )
    return CraftError(f"{field}: cannot load '{source}': {text[:300]}")
