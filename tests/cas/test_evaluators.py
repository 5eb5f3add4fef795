"""Evaluator adapters: tiny stand-ins of each family, saved to dirs, loaded by hub code paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from craft.cas.evaluators import (
    HFClipEvaluator,
    OpenClipEvaluator,
    detect_adapter,
    load_evaluator,
    save_open_clip_dir,
    to_model_range,
)
from craft.errors import CraftError

BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
WORDS = "a chest radiograph the heart is enlarged normal lung nodule fluid".split()


def test_to_model_range_maps_uint8_nhwc_to_float_nchw():
    img = np.zeros((2, 4, 5, 1), np.uint8)
    img[0, 0, 0, 0] = 255
    x = to_model_range(img)
    assert x.shape == (2, 1, 4, 5) and x.dtype == torch.float32
    assert x[0, 0, 0, 0] == 1.0 and x[1].max() == -1.0
    with pytest.raises(CraftError, match="uint8 NHWC"):
        to_model_range(np.zeros((2, 4, 4), np.uint8))


def test_hf_clip_preprocessing_matches_its_constants(cxr_evaluator):
    ev = cxr_evaluator
    assert isinstance(ev, HFClipEvaluator) and ev.family == "clip"
    assert ev.image_size == (32, 32)
    gray = torch.rand(3, 1, 32, 32) * 2 - 1
    got = ev.preprocess(gray)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    want = ((gray.expand(-1, 3, -1, -1) + 1) / 2 - mean) / std
    assert torch.allclose(got, want, atol=1e-6)
    # another size is resized to the model's and stays differentiable
    big = (torch.rand(2, 3, 48, 64) * 2 - 1).requires_grad_()
    out = ev.encode_images(big)
    assert out.shape[0] == 2 and torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    out.sum().backward()
    assert torch.isfinite(big.grad).all() and big.grad.abs().sum() > 0


def test_text_embeddings_are_cached_and_normalised(cxr_evaluator):
    ev = cxr_evaluator
    t = ev.encode_texts(["the heart is enlarged", "a round nodule in a lung field"])
    assert t.shape[0] == 2 and not t.requires_grad
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert "the heart is enlarged" in ev._text_cache
    assert torch.equal(ev.encode_texts(["the heart is enlarged"])[0], t[0])


def _tiny_open_clip(tmp_path):
    import open_clip

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    pp = {
        "size": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bilinear",
        "resize_mode": "shortest",
    }
    return model, save_open_clip_dir(model, cfg, tmp_path / "tiny-open-clip", pp)


def test_open_clip_dir_loads_like_a_hub_repo(tmp_path):
    model, path = _tiny_open_clip(tmp_path)
    assert detect_adapter(str(path)) == "open_clip"
    ev = load_evaluator(path, name="oc")
    assert isinstance(ev, OpenClipEvaluator) and ev.name == "oc"
    assert ev.image_size == (32, 32) and ev.interpolation == "bilinear"
    assert torch.allclose(ev.mean.flatten(), torch.full((3,), 0.5))
    for k, v in model.state_dict().items():
        assert torch.equal(ev.model.state_dict()[k], v), k
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    want = model.encode_image(((x.expand(-1, 3, -1, -1) + 1) / 2 - 0.5) / 0.25, normalize=True)
    assert torch.allclose(ev.encode_images(x), want, atol=1e-5)
    txt = ev.encode_texts(["a chest radiograph", "an enlarged heart"])
    logits = ev.similarity_logits(ev.encode_images(x), txt)
    assert logits.shape == (2, 2)
    assert torch.allclose(logits, model.logit_scale.exp() * want @ txt.T, atol=1e-4)


def test_hub_ids_go_through_the_same_open_clip_call(monkeypatch, tmp_path):
    """A hub id reaches open_clip.create_model_from_pretrained unchanged, as a dir does as
    'local-dir:' (no network here: the call is recorded and answered with the tiny model)."""
    import open_clip

    model, path = _tiny_open_clip(tmp_path)
    calls = []
    real_create = open_clip.create_model_from_pretrained

    def create(name, **kw):
        calls.append(name)
        return real_create(f"local-dir:{path}", **kw)

    monkeypatch.setattr(open_clip, "create_model_from_pretrained", create)
    monkeypatch.setattr(
        open_clip, "get_tokenizer", lambda name, **kw: open_clip.SimpleTokenizer(context_length=16)
    )
    ev = load_evaluator(BIOMEDCLIP, name="biomedclip")
    load_evaluator(path)
    assert calls == [BIOMEDCLIP, f"local-dir:{path.resolve()}"]
    assert ev.name == "biomedclip" and ev.family == "open_clip"


def test_biomedclip_shaped_stand_in(tmp_path):
    """BiomedCLIP's structure in miniature: a timm ViT image tower and a Hugging Face BERT text
    tower with its own tokenizer (CustomTextCLIP), loaded from an open_clip dir."""
    import open_clip

    from tests.site_models import bert_text_cfg, tiny_bert

    bert = tiny_bert(tmp_path / "tiny-bert", WORDS)
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "timm_model_name": "vit_tiny_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": bert_text_cfg(bert),
    }
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(**cfg)
    path = save_open_clip_dir(
        model,
        cfg,
        tmp_path / "tiny-biomedclip",
        {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    )
    ev = load_evaluator(path, name="biomedclip")
    assert ev.image_size == (224, 224)
    x = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_()  # 32x32 gray, upsampled inside
    img = ev.encode_images(x)
    txt = ev.encode_texts(["the heart is enlarged", "normal lung"])
    p = ev.statement_probability(img, txt[:1], txt[1:])
    assert p.shape == (2, 1) and ((p > 0) & (p < 1)).all()
    p.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_siglip_evaluator_trains_saves_and_loads(tmp_path, cxr_knowledge):
    """The second family: a SiglipModel trained a few steps (sigmoid loss), with a logit bias."""
    from craft.cas.settings import EvaluatorTraining
    from craft.cas.train_evaluator import CARD, EvaluatorRecipe

    settings = EvaluatorTraining(steps=5, batch_size=16, n_images=64, seed=1)
    recipe = EvaluatorRecipe(
        "phantom-cxr",
        ["normal", "cardiomegaly", "effusion", "nodule"],
        "chest radiograph",
        32,
        "siglip",
        settings,
        cxr_knowledge,
        "siglip",
    )
    recipe.setup()
    recipe.train()
    assert recipe.steps_done == 5 and np.isfinite(recipe.losses).all()
    out = recipe.save(tmp_path / "siglip")
    ev = load_evaluator(out, name="siglip")
    assert isinstance(ev, HFClipEvaluator) and ev.family == "siglip" and ev.loss_kind == "sigmoid"
    assert ev.logit_bias() is not None
    assert ev.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    e, t = ev.encode_images(x), ev.encode_texts(["the heart is enlarged"])
    want = recipe.evaluator.model.logit_scale.exp() * e @ t.T + recipe.evaluator.model.logit_bias
    assert torch.allclose(ev.similarity_logits(e, t), want, atol=1e-5)
    card = json.loads((out / CARD).read_text())
    assert card["family"] == "siglip" and card["steps_done"] == 5


def test_unknown_sources_fail_with_one_line(tmp_path):
    with pytest.raises(CraftError, match="cannot load evaluator"):
        load_evaluator(tmp_path / "missing", adapter="hf")
    with pytest.raises(CraftError, match="open_clip_config.json"):
        load_evaluator(tmp_path, adapter="open_clip")
