"""The MLLM judge (VQAScore) on a tiny LLaVA built and saved locally."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from craft.cas.judge import MLLMJudge
from craft.data.phantoms import draw_batch
from tests.cas.conftest import PHANTOM
from tests.cas.knowledge_standin import CXR_LABELS

QUESTIONS = ["Is the heart enlarged?", "Is there a nodule in the lungs?"]


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from craft.models.tokenizer import build_tokenizer

    tok = build_tokenizer(["yes", "no", "answer", "is", "there"], model_max_length=256)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ).to_dict(),
        text_config=LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ).to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    proc = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    out = tmp_path_factory.mktemp("llava") / "tiny-llava"
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def test_judge_answers_every_question_for_every_image_with_gradients(tiny_llava):
    judge = MLLMJudge.from_pretrained(str(tiny_llava))
    images, _ = draw_batch(PHANTOM, CXR_LABELS, 0, 32)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).requires_grad_()
    p = judge.item_probabilities(x, questions=QUESTIONS)
    assert p.shape == (4, 2) and ((p > 0) & (p < 1)).all()
    p.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # the differentiable pixel path equals the model's own processor on the same images
    with torch.no_grad():
        want = []
        for q in QUESTIONS:
            inputs = judge._processor_inputs(images, q)
            logits = judge.model(**inputs).logits[:, -1]
            want.append(torch.sigmoid(logits[:, judge.yes_id] - logits[:, judge.no_id]))
    np.testing.assert_allclose(p.detach().numpy(), torch.stack(want, 1).numpy(), atol=1e-4)


def test_judge_scores_the_checklist_inside_cas(
    tiny_llava, cxr_evaluator, cxr_reference, cxr_knowledge
):
    from craft.cas.score import cas_dimensions

    judge = MLLMJudge.from_pretrained(str(tiny_llava))
    images, _ = draw_batch(PHANTOM, CXR_LABELS, 1, 32)
    with torch.no_grad():
        vlm = cas_dimensions(
            cxr_evaluator, images, CXR_LABELS, CXR_LABELS, cxr_knowledge, cxr_reference
        )
        mllm = cas_dimensions(
            cxr_evaluator, images, CXR_LABELS, CXR_LABELS, cxr_knowledge, cxr_reference, judge=judge
        )
    assert torch.equal(vlm["label_fidelity"], mllm["label_fidelity"])
    assert not torch.allclose(vlm["checklist_adherence_raw"], mllm["checklist_adherence_raw"])
    assert ((mllm["checklist_adherence_raw"] > 0) & (mllm["checklist_adherence_raw"] < 1)).all()
