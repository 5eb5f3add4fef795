"""The models a research group downloads, in miniature: random weights, the exact on-disk formats.

- ``sd15_pipeline``: a diffusers Stable Diffusion 1.5 pipeline folder as the hub repository has it
  (model_index.json of StableDiffusionPipeline; UNet2DConditionModel, AutoencoderKL with SD's
  latent scaling, CLIPTextModel, CLIPTokenizer with its vocab.json and merges.txt, and SD 1.5's
  PNDM scheduler config: scaled-linear betas, epsilon prediction, steps_offset 1).
- ``tiny_bert`` + ``tiny_biomedclip``: an open_clip model in BiomedCLIP's hub layout whose text
  tower is a second Hugging Face model (its PubMedBERT), named by hub id.
- ``hf_dual_encoder``: a transformers CLIP or SigLIP folder (model, tokenizer, image processor).
- ``timm_classifier``: a timm model saved as timm's hub repositories are (config.json with its
  pretrained_cfg, model.safetensors).
- ``dinov2``: a transformers DINOv2 folder with its image processor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["ct", "mr", "slice", "normal", "lesion", "bright", "round", "dark", "tissue", "image"]

#: SD 1.5's scheduler/scheduler_config.json (values of the hub repository).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def sd15_pipeline(out: Path, seed: int = 0) -> Path:
    """A Stable Diffusion 1.5 pipeline folder (32 px images, latents through a tiny VAE)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from craft.config import TinyUNet
    from craft.models.tiny import build_tiny_generator

    arch = TinyUNet(
        block_out_channels=[8, 16, 16],
        cross_attention_dim=16,
        text_layers=1,
        text_max_length=16,
        prediction_type="epsilon",
    )
    gen = build_tiny_generator(arch, 32, 3, WORDS, with_vae=True, seed=seed)
    gen.vae.register_to_config(scaling_factor=0.18215)
    scheduler = PNDMScheduler.from_config({k: v for k, v in SD15_SCHEDULER.items() if k[0] != "_"})
    pipe = StableDiffusionPipeline(
        vae=gen.vae,
        text_encoder=gen.text_encoder,
        tokenizer=gen.tokenizer,
        unet=gen.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER, indent=2))
    return out


def tiny_bert(out: Path, words: list[str] = WORDS) -> Path:
    """A PubMedBERT-like BertModel folder with its WordPiece tokenizer (``words`` and letters)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    out.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz"]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(out / "vocab.txt")).save_pretrained(out)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    return out


def bert_text_cfg(bert: Path) -> dict:
    """open_clip's text_cfg for a Hugging Face BERT text tower, as BiomedCLIP's."""
    return {
        "hf_model_name": str(bert),
        "hf_tokenizer_name": str(bert),
        "hf_proj_type": "mlp",
        "hf_pooler_type": "cls_last_hidden_state_pooler",
        "context_length": 32,
    }


def tiny_biomedclip(out: Path, bert: Path, text_tower_id: str, image_size: int = 32) -> Path:
    """An open_clip folder in BiomedCLIP's hub layout whose text tower is the Hugging Face
    model ``text_tower_id`` (built here from the local ``bert``, then named by that id)."""
    import open_clip

    from craft.cas.evaluators import OPEN_CLIP_CONFIG, save_open_clip_dir

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": image_size,
            "layers": 1,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": bert_text_cfg(bert),
    }
    torch.manual_seed(0)
    pp = {
        "size": image_size,
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    }
    path = save_open_clip_dir(open_clip.CustomTextCLIP(**cfg), cfg, out, pp)
    saved = json.loads((path / OPEN_CLIP_CONFIG).read_text())
    text = saved["model_cfg"]["text_cfg"]
    text.update(hf_model_name=text_tower_id, hf_tokenizer_name=text_tower_id)
    (path / OPEN_CLIP_CONFIG).write_text(json.dumps(saved, indent=2))
    return path


def hf_dual_encoder(out: Path, family: str, image_size: int = 32, seed: int = 0) -> Path:
    """A transformers CLIPModel or SiglipModel folder with its tokenizer and image processor."""
    from craft.cas.settings import EvaluatorArchitecture, EvaluatorTraining
    from craft.cas.train_evaluator import _image_processor, tiny_dual_encoder
    from craft.models.tokenizer import build_tokenizer

    arch = EvaluatorArchitecture(hidden_size=16, layers=1, projection_dim=16)
    tokenizer = build_tokenizer(WORDS, model_max_length=arch.text_max_length)
    settings = EvaluatorTraining(architecture=arch, seed=seed)
    model = tiny_dual_encoder(family, len(tokenizer), settings, image_size)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _image_processor(family, image_size).save_pretrained(out)
    return out


def timm_classifier(out: Path, architecture: str = "test_resnet") -> Path:
    """A timm model saved as its hub repositories are (config.json + model.safetensors)."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(architecture, num_classes=10)
    out.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, out, safe_serialization=True)
    return out


def dinov2(out: Path, image_size: int = 32) -> Path:
    """A transformers DINOv2 folder with its image processor."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=8,
    )
    torch.manual_seed(0)
    Dinov2Model(cfg).save_pretrained(out)
    BitImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out)
    return out
