"""The transformers backend on a tiny chat model built here: chat template, generation
settings, batching, and the clean failure on its (noise) answers."""

from __future__ import annotations

import json

import pytest

from craft.errors import CraftError
from craft.knowledge.backends import TransformersChat
from craft.knowledge.build import build_knowledge
from craft.knowledge.settings import EnrichmentConfig, KnowledgeConfig, TransformersBackend
from tests.knowledge.tiny_chat_model import build_tiny_chat_model

CONV = [
    {"role": "system", "content": "You answer in JSON."},
    {"role": "user", "content": "List two findings."},
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"))


def _backend(model_dir, **kw) -> TransformersChat:
    opts = dict(
        kind="transformers", model=str(model_dir), device="cpu", max_new_tokens=20, batch_size=2
    )
    opts.update(kw)
    return TransformersChat(TransformersBackend(**opts))


def test_chat_template_is_applied(tiny_model):
    b = _backend(tiny_model)
    (text,) = b.render([CONV])
    assert text == (
        "<|system|>\nYou answer in JSON.<|end|>\n<|user|>\nList two findings.<|end|>\n"
        "<|assistant|>\n"
    )


def test_generation_settings_and_batching(tiny_model):
    b = _backend(tiny_model)
    b.load()
    calls = []
    generate = b.model.generate

    def spy(**kw):
        out = generate(**kw)
        calls.append((kw, out.shape, kw["input_ids"].shape))
        return out

    b.model.generate = spy
    convs = [CONV, [{"role": "user", "content": "A much longer question than the first one."}]]
    first = b.generate(convs)
    assert b.generate(convs) == first  # greedy: deterministic
    kw, out_shape, in_shape = calls[0]
    assert kw["max_new_tokens"] == 20 and kw["do_sample"] is False
    assert kw["temperature"] is None and kw["top_p"] is None
    assert in_shape[0] == 2 and out_shape[1] - in_shape[1] <= 20  # one left-padded batch
    assert b.tokenizer.padding_side == "left"
    assert kw["attention_mask"][1].all() and not kw["attention_mask"][0].all()
    ident = b.identity()
    assert ident["do_sample"] is False and ident["max_new_tokens"] == 20
    assert "temperature" not in ident  # not used by greedy decoding, not part of the digest

    sampled = _backend(tiny_model, do_sample=True, temperature=0.5, top_p=0.8)
    sampled.load()
    assert sampled.generation_kwargs()["temperature"] == 0.5
    assert sampled.identity()["top_p"] == 0.8


def test_noise_answers_fail_cleanly_with_raw_text_saved(tiny_model, tmp_path):
    settings = KnowledgeConfig(
        backend=TransformersBackend(
            kind="transformers",
            model=str(tiny_model),
            device="cpu",
            max_new_tokens=24,
            batch_size=3,
        ),
        enrichment=EnrichmentConfig(n_prompts=2, max_items_per_label=3, max_attempts=2),
    )
    out = tmp_path / "knowledge" / "phantom-derm.json"
    with pytest.raises(CraftError) as exc:
        build_knowledge(
            settings,
            "phantom-derm",
            "dermoscopy image",
            ["nevus", "melanoma"],
            out,
            phantom="phantom-derm",
        )
    msg = str(exc.value)
    assert "\n" not in msg and "gave no usable answer to 'label-nevus' in 2 tries" in msg
    assert "(2 other requests failed too)" in msg
    saved = sorted((out.parent / "phantom-derm.failed").glob("*.txt"))
    assert [p.name for p in saved] == ["label-melanoma.txt", "label-nevus.txt", "modality.txt"]
    assert str(saved[1]) in msg and not out.exists()

    # The saved raw text is what the model really answered to the first request.
    b = _backend(tiny_model, max_new_tokens=24)
    from craft.knowledge.enrich import label_task

    task = label_task(
        "phantom-derm", "dermoscopy image", ["nevus", "melanoma"], "nevus", settings.enrichment
    )
    (raw,) = b.generate([task.messages])
    text = saved[1].read_text()
    assert "===== answer 1 (request " in text and f"\n{raw}\n===== problem:" in text
    # Failed answers leave the cache (a rerun asks again).
    cache = out.parent / "cache"
    assert not list(cache.rglob("*.json"))


def test_cached_answers_never_load_the_model(tiny_model, tmp_path):
    """All answers cached: the model is never loaded (no GPU needed on rerun)."""
    from craft.knowledge.cache import ResponseCache, request_digest
    from craft.knowledge.enrich import label_task, modality_task
    from tests.knowledge.chat_server import valid_answer

    settings = KnowledgeConfig(
        backend=TransformersBackend(kind="transformers", model=str(tiny_model), device="cpu"),
        enrichment=EnrichmentConfig(n_prompts=2, max_items_per_label=3),
    )
    labels = ["normal", "cardiomegaly", "effusion", "nodule"]
    b = TransformersChat(settings.backend)
    cache = ResponseCache(tmp_path / "cache")
    tasks = [
        label_task("phantom-cxr", "chest radiograph", labels, lab, settings.enrichment)
        for lab in labels
    ]
    tasks.append(modality_task("phantom-cxr", "chest radiograph", labels, settings.enrichment))
    for t in tasks:
        cache.put(
            request_digest(b.identity(), t.messages),
            b.identity(),
            t.messages,
            valid_answer({"messages": t.messages}),
        )
    k = build_knowledge(
        settings,
        "phantom-cxr",
        "chest radiograph",
        labels,
        tmp_path / "phantom-cxr.json",
        backend=b,
    )
    assert b.model is None
    assert k.labels["nodule"].prompts[1].source == str(tiny_model)
    assert json.loads(k.provenance["identity"])["backend"] == "transformers"
