"""Vision-language evaluators behind one interface: Hugging Face CLIP/SigLIP and open_clip.

An :class:`Evaluator` embeds images and texts into one space and turns similarities into
logits with the model's own temperature (and bias, for SigLIP). Its image path is
differentiable and starts from what the generator produces (float NCHW in [-1, 1], 1 or 3
channels): channel replication, resizing and normalisation use torch ops and the model's own
preprocessing constants (image size, mean, std, interpolation), so the same code serves
evaluation and the CRAFT reward. The model's weights are frozen; gradients flow to the pixels.

Sources (``load_evaluator``), the same functions for the cluster and for the phantom world:

- Hugging Face ``CLIPModel`` / ``SiglipModel``: a hub id (``openai/clip-vit-base-patch16``,
  ``google/siglip-base-patch16-224``) or a local dir written by ``save_pretrained`` (with its
  tokenizer and ``preprocessor_config.json``);
- open_clip: ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``, or a local dir
  holding ``open_clip_config.json`` and weights (the layout of an open_clip hub repo), loaded by
  ``open_clip.create_model_from_pretrained('local-dir:DIR')``, the function that loads hub ids.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from craft.errors import CraftError
from craft.models.hub import OPEN_CLIP_CONFIG, is_open_clip

__all__ = [
    "Evaluator",
    "HFClipEvaluator",
    "OpenClipEvaluator",
    "load_evaluator",
    "detect_adapter",
    "to_model_range",
    "model_pixels",
    "save_open_clip_dir",
]

Adapter = Literal["auto", "hf", "open_clip"]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images (as stored in HDF5) -> float32 NCHW in [-1, 1] (the sampler's range).

    A float tensor is returned unchanged (it is taken to be NCHW in [-1, 1] already).
    """
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        return images
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise CraftError(f"images must be uint8 NHWC or float NCHW, got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def model_pixels(
    x: torch.Tensor,
    size: tuple[int, int],
    mean: torch.Tensor,
    std: torch.Tensor,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
) -> torch.Tensor:
    """Float NCHW in [-1, 1], 1 or 3 channels -> a model's normalised input, with torch ops.

    Gray images are replicated to RGB; the image is resized (shortest side to the model's
    size, then centre-cropped; or squashed) with the model's interpolation, then normalised
    with its mean and std (shape (1, C, 1, 1)), as its image processor does on [0, 1] pixels.
    """
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise CraftError(f"images must be NCHW with 1 or 3 channels, got {tuple(x.shape)}")
    x = x.float()
    if x.shape[1] == 1 and mean.shape[1] == 3:
        x = x.expand(-1, 3, -1, -1)
    x = (x + 1.0) * 0.5
    th, tw = size
    h, w = x.shape[-2:]
    mode = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"

    def resize(t, hw):
        return F.interpolate(t, size=hw, mode=mode, antialias=True, align_corners=False)

    if (h, w) != (th, tw):
        if resize_mode == "squash" or h == w and th == tw:
            x = resize(x, (th, tw))
        else:
            s = max(th / h, tw / w)
            x = resize(x, (max(th, round(h * s)), max(tw, round(w * s))))
            top = (x.shape[-2] - th) // 2
            left = (x.shape[-1] - tw) // 2
            x = x[..., top : top + th, left : left + tw]
    return (x - mean) / std


class Evaluator(nn.Module):
    """A frozen image-text model: differentiable image embeddings, cached text embeddings.

    Subclasses implement ``_image_features`` (normalised pixels -> features),
    ``_text_features`` (strings -> features), ``logit_scale`` and ``logit_bias``.
    """

    #: 'softmax' (CLIP: contrastive over a batch) or 'sigmoid' (SigLIP: per pair).
    loss_kind: str = "softmax"

    def __init__(
        self,
        name: str,
        family: str,
        source: str,
        image_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
    ):
        super().__init__()
        self.name = name
        self.family = family
        self.source = source
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.interpolation = interpolation
        self.resize_mode = resize_mode
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self._text_cache: dict[str, torch.Tensor] = {}

    # -- what each adapter provides ------------------------------------------------------

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def logit_scale(self) -> torch.Tensor:
        raise NotImplementedError

    def logit_bias(self) -> torch.Tensor | None:
        return None

    # -- the shared interface -------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def freeze(self) -> Evaluator:
        """Evaluation mode, no gradients into the weights (gradients still reach the pixels)."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Float NCHW in [-1, 1], 1 or 3 channels -> the model's input (differentiable)."""
        return model_pixels(
            x.to(self.device),
            self.image_size,
            self.mean,
            self.std,
            self.interpolation,
            self.resize_mode,
        )

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) L2-normalised embeddings of float NCHW images in [-1, 1]; differentiable."""
        return F.normalize(self._image_features(self.preprocess(x)).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """(N, D) L2-normalised text embeddings; cached per string, never with gradients."""
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        for i in range(0, len(missing), batch_size):
            chunk = missing[i : i + batch_size]
            emb = F.normalize(self._text_features(chunk).float(), dim=-1)
            for t, e in zip(chunk, emb, strict=True):
                self._text_cache[t] = e.detach()
        if not texts:
            return torch.zeros((0, self.embed_dim()), device=self.device)
        return torch.stack([self._text_cache[t] for t in texts]).to(self.device)

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def embed_dim(self) -> int:
        """Width D of the shared embedding space."""
        return int(self.encode_texts(["a"]).shape[-1])

    def similarity_logits(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """(N, M) logits: scale * cosine (+ bias for SigLIP), as the model was trained."""
        logits = self.logit_scale() * img_emb @ txt_emb.T
        bias = self.logit_bias()
        return logits + bias if bias is not None else logits

    def statement_log_odds(
        self, img_emb: torch.Tensor, statements: torch.Tensor, negations: torch.Tensor
    ) -> torch.Tensor:
        """(N, K) log-odds that statement k holds, from a softmax over [statement, negation].

        Both texts share the bias, so this is the same for CLIP and SigLIP:
        scale * (cos(img, statement) - cos(img, negation)).
        """
        return self.logit_scale() * img_emb @ (statements - negations).T

    def statement_probability(
        self, img_emb: torch.Tensor, statements: torch.Tensor, negations: torch.Tensor
    ) -> torch.Tensor:
        """(N, K) P(statement k holds | image) = sigmoid of :meth:`statement_log_odds`."""
        return torch.sigmoid(self.statement_log_odds(img_emb, statements, negations))

    def describe(self) -> dict:
        """Plain facts about this evaluator, for provenance in output files."""
        return {
            "name": self.name,
            "family": self.family,
            "source": self.source,
            "adapter": type(self).__name__,
            "image_size": list(self.image_size),
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "interpolation": self.interpolation,
        }


# ----------------------------------------------------------------------------- Hugging Face


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; older ones a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFClipEvaluator(Evaluator):
    """A Hugging Face ``CLIPModel`` or ``SiglipModel`` with its tokenizer and image processor."""

    def __init__(
        self,
        name: str,
        source: str,
        model,
        tokenizer,
        image_size,
        mean,
        std,
        interpolation,
        resize_mode: str,
    ):
        family = model.config.model_type
        super().__init__(name, family, source, image_size, mean, std, interpolation, resize_mode)
        self.model = model
        self.tokenizer = tokenizer
        self.loss_kind = "sigmoid" if family == "siglip" else "softmax"
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        name: str | None = None,
        revision: str | None = None,
        device: str | torch.device = "cpu",
    ) -> HFClipEvaluator:
        """Load from a hub id or a ``save_pretrained`` dir (model, tokenizer, image processor)."""
        from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel

        kw = {"revision": revision} if revision else {}
        try:
            config = AutoConfig.from_pretrained(source, **kw)
        except (OSError, ValueError) as err:
            raise CraftError(f"cannot load evaluator '{source}': {err}") from None
        classes = {"clip": CLIPModel, "siglip": SiglipModel}
        if config.model_type not in classes:
            raise CraftError(
                f"evaluator '{source}' is a '{config.model_type}' model; the Hugging Face adapter "
                f"loads {sorted(classes)} (use adapter open_clip for open_clip models)"
            )
        model = classes[config.model_type].from_pretrained(source, **kw)
        tokenizer = AutoTokenizer.from_pretrained(source, **kw)
        vision_size = int(config.vision_config.image_size)
        proc = _preprocessor_config(source, kw)
        size, mean, std, interp, mode = _hf_preprocessing(proc, config.model_type, vision_size)
        ev = cls(name or Path(source).name, source, model, tokenizer, size, mean, std, interp, mode)
        return ev.to(device).freeze()

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        # SigLIP was trained on texts padded to the full length (it pools the last position).
        padding = "max_length" if self.family == "siglip" else True
        tok = self.tokenizer(
            texts, padding=padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        kw = {"attention_mask": tok["attention_mask"]} if self.family != "siglip" else {}
        return _pooled(self.model.get_text_features(input_ids=tok["input_ids"], **kw))

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def logit_bias(self) -> torch.Tensor | None:
        return getattr(self.model, "logit_bias", None)


def _preprocessor_config(source: str, kw: Mapping) -> SimpleNamespace | None:
    """The fields of ``preprocessor_config.json`` that craft uses, or None if there is none.

    Read as JSON rather than through AutoImageProcessor, whose import pulls in torchvision and
    torch._dynamo (about 3 s per process; a workflow starts dozens of scoring processes).
    """
    from transformers.utils import cached_file

    try:
        path = cached_file(
            source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False, **kw
        )
    except (OSError, ValueError):
        return None
    if path is None:
        return None
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CraftError(
            f"evaluator '{source}': unreadable preprocessor_config.json: {err}"
        ) from None
    return SimpleNamespace(
        image_mean=d.get("image_mean", CLIP_MEAN),
        image_std=d.get("image_std", CLIP_STD),
        resample=d.get("resample", 3),
        do_center_crop=d.get("do_center_crop", False),
        crop_size=_size_dict(d.get("crop_size")),
        size=_size_dict(d.get("size")) or {},
    )


def _size_dict(size) -> dict | None:
    """An image processor's size field as a dict (old configs store a bare int)."""
    if size is None or isinstance(size, dict):
        return size
    return {"height": int(size), "width": int(size)}


def _hf_preprocessing(proc, model_type: str, vision_size: int):
    """(size, mean, std, interpolation, resize mode) from an image processor, or the defaults."""
    siglip = model_type == "siglip"
    if proc is None:
        mean, std = ((0.5,) * 3, (0.5,) * 3) if siglip else (CLIP_MEAN, CLIP_STD)
        return (vision_size, vision_size), mean, std, "bicubic", "squash" if siglip else "shortest"
    mean = tuple(proc.image_mean)
    std = tuple(proc.image_std)
    resample = getattr(proc, "resample", 3)
    interp = _PIL_RESAMPLE.get(int(resample), "bicubic") if resample is not None else "bicubic"
    crop = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
    if crop is not None and crop.get("height"):
        return (int(crop["height"]), int(crop["width"])), mean, std, interp, "shortest"
    size = proc.size
    if size.get("height"):
        return (int(size["height"]), int(size["width"])), mean, std, interp, "squash"
    side = int(size.get("shortest_edge") or vision_size)
    return (side, side), mean, std, interp, "shortest"


# ----------------------------------------------------------------------------- open_clip


class OpenClipEvaluator(Evaluator):
    """An open_clip model (BiomedCLIP, OpenCLIP, open_clip SigLIP) with its tokenizer."""

    def __init__(self, name: str, source: str, model, tokenizer):
        import open_clip

        pp = open_clip.get_model_preprocess_cfg(model)
        size = pp.get("size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        mode = {"squash": "squash"}.get(pp.get("resize_mode", "shortest"), "shortest")
        super().__init__(
            name,
            "open_clip",
            source,
            size,
            pp.get("mean", CLIP_MEAN),
            pp.get("std", CLIP_STD),
            pp.get("interpolation", "bicubic"),
            mode,
        )
        self.model = model
        self.tokenizer = tokenizer
        self.loss_kind = "sigmoid" if getattr(model, "logit_bias", None) is not None else "softmax"

    @staticmethod
    def model_name(source: str) -> str:
        """The open_clip model name for a source: 'hf-hub:...', 'local-dir:...', or a dir."""
        if source.startswith(("hf-hub:", "local-dir:")):
            return source
        if Path(source, OPEN_CLIP_CONFIG).is_file():
            return f"local-dir:{Path(source).resolve()}"
        raise CraftError(
            f"open_clip evaluator source '{source}' is neither 'hf-hub:ORG/NAME' nor a dir with "
            f"{OPEN_CLIP_CONFIG}"
        )

    @classmethod
    def from_pretrained(
        cls, source: str, name: str | None = None, device: str | torch.device = "cpu"
    ) -> OpenClipEvaluator:
        """Load with ``open_clip.create_model_from_pretrained`` (hub id or local dir alike)."""
        import open_clip

        model_name = cls.model_name(source)
        try:
            model = open_clip.create_model_from_pretrained(
                model_name, device=device, return_transform=False
            )
            tokenizer = open_clip.get_tokenizer(model_name)
        except (OSError, RuntimeError, ValueError) as err:
            raise CraftError(f"cannot load open_clip evaluator '{source}': {err}") from None
        default = source.removeprefix("hf-hub:").removeprefix("local-dir:").rstrip("/")
        return cls(name or Path(default).name, source, model, tokenizer).to(device).freeze()

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def logit_bias(self) -> torch.Tensor | None:
        return getattr(self.model, "logit_bias", None)


def save_open_clip_dir(
    model, model_cfg: Mapping, out: Path, preprocess_cfg: Mapping | None = None
) -> Path:
    """Write ``model`` as an open_clip hub repo lays it out: open_clip_config.json, safetensors
    weights and, for a Hugging Face text tower (BiomedCLIP's BERT), the tokenizer's files.

    ``open_clip.create_model_from_pretrained('local-dir:OUT')`` loads it back, the same call
    that loads ``hf-hub:`` ids (open_clip reads a local dir's tokenizer from the dir itself).
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": dict(model_cfg), "preprocess_cfg": dict(preprocess_cfg or {})}
    (out / OPEN_CLIP_CONFIG).write_text(json.dumps(cfg, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    hf_tokenizer = model_cfg.get("text_cfg", {}).get("hf_tokenizer_name")
    if hf_tokenizer:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(hf_tokenizer).save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- loading


def detect_adapter(source: str) -> Literal["hf", "open_clip"]:
    """Which adapter loads ``source``: open_clip for 'hf-hub:'/'local-dir:' ids and dirs with
    open_clip_config.json, Hugging Face otherwise."""
    return "open_clip" if is_open_clip(source) else "hf"


def load_evaluator(
    source: str | Path,
    name: str | None = None,
    adapter: Adapter = "auto",
    device: str | torch.device = "cpu",
    revision: str | None = None,
) -> Evaluator:
    """Load a frozen evaluator from a hub id or a local dir, with the matching adapter."""
    source = str(source)
    kind = detect_adapter(source) if adapter == "auto" else adapter
    if kind == "open_clip":
        return OpenClipEvaluator.from_pretrained(source, name, device=device)
    return HFClipEvaluator.from_pretrained(source, name, revision=revision, device=device)
