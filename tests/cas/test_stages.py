"""The CAS stages as the CLI calls them, and the config nodes they read."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from craft.cas import stages
from craft.cas.settings import CasConfig, EvaluatorConfig, EvaluatorTraining
from craft.cas.train_evaluator import CARD
from craft.data.phantoms import draw_batch
from craft.errors import CraftError
from craft.store import STR, atomic_h5, image_dataset
from tests.cas.conftest import PHANTOM
from tests.cas.knowledge_standin import CXR_LABELS


def _modality(kind="phantom"):
    return SimpleNamespace(
        source=SimpleNamespace(kind=kind, phantom=PHANTOM),
        phantom=PHANTOM if kind == "phantom" else None,  # ModalityConfig.phantom
        labels=CXR_LABELS,
        description="chest radiograph",
        resolution=32,
        channels=1,
    )


def test_default_cas_config_has_a_reward_and_an_out_of_family_evaluator():
    cas = CasConfig()
    assert cas.reward_evaluator == "clip"
    assert {e.family for e in cas.evaluators.values()} == {"clip", "siglip"}
    assert cas.evaluators["clip"].train.seed != cas.evaluators["siglip"].train.seed
    assert cas.tail_quantile == 10.0


def test_cas_config_rejects_bad_roles_and_families():
    two = {"a": {"family": "clip", "role": "reward"}, "b": {"family": "siglip", "role": "reward"}}
    with pytest.raises(ValidationError, match="exactly one"):
        CasConfig(evaluators=two)
    same = {
        "a": {"family": "clip", "role": "reward"},
        "b": {"family": "clip", "role": "out-of-family"},
    }
    with pytest.raises(ValidationError, match="share the reward evaluator's family"):
        CasConfig(evaluators=same)
    with pytest.raises(ValidationError, match="clip or siglip"):
        EvaluatorConfig(family="biomedclip", role="reward")  # source 'train'
    paper = CasConfig(
        evaluators={
            "biomedclip": {
                "family": "biomedclip",
                "role": "reward",
                "source": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            },
            "siglip": {
                "family": "siglip",
                "role": "out-of-family",
                "source": "google/siglip-base-patch16-224",
            },
        }
    )
    assert paper.reward_evaluator == "biomedclip"


def test_train_stage_trains_saves_and_refuses_what_it_cannot_train(
    tmp_path, monkeypatch, cxr_knowledge
):
    monkeypatch.setattr(stages, "_knowledge", lambda path: cxr_knowledge)
    cas = CasConfig(
        evaluators={
            "clip": {
                "family": "clip",
                "role": "reward",
                "train": EvaluatorTraining(steps=3, batch_size=16, n_images=48).model_dump(),
            },
            "hub": {"family": "x", "role": "out-of-family", "source": "org/model"},
        }
    )
    out = tmp_path / "clip"
    acc = stages.train_phantom_evaluator(cas, "clip", "cxr", _modality(), tmp_path / "k.json", out)
    assert 0.0 <= acc["label_accuracy"] <= 1.0
    card = json.loads((out / CARD).read_text())
    assert card["steps_done"] == 3 and card["settings"]["n_images"] == 48
    with pytest.raises(CraftError, match="only source 'train'"):
        stages.train_phantom_evaluator(cas, "hub", "cxr", _modality(), tmp_path / "k.json", out)
    with pytest.raises(CraftError, match="not a phantom"):
        stages.train_phantom_evaluator(cas, "clip", "cxr", _modality("manifest"), tmp_path, out)
    with pytest.raises(CraftError, match="not in the config"):
        stages.evaluator_config(cas, "nope")


def test_reference_and_score_stages_write_what_the_report_reads(
    tmp_path, monkeypatch, trained_cxr, cxr_knowledge, cxr_data
):
    from craft.report.summary import load_metrics_file

    monkeypatch.setattr(stages, "_knowledge", lambda path: cxr_knowledge)
    cas = CasConfig(
        evaluators={
            "clip": {
                "family": "clip",
                "role": "reward",
                "source": str(trained_cxr[0]),
                "batch_size": 16,
            }
        }
    )
    paths = stages.default_paths(tmp_path / "results")
    ref = stages.build_configured_reference(
        cas,
        "clip",
        "cxr",
        _modality(),
        cxr_data,
        tmp_path / "k.json",
        paths,
        paths.reference("cxr", "clip"),
        "digest-ref",
    )
    labels = [i % 4 for i in range(24)]
    images, _ = draw_batch(PHANTOM, [CXR_LABELS[i] for i in labels], 4, 32)
    samples = tmp_path / "samples.h5"
    with atomic_h5(samples, "samples", "s", attrs={"labels": CXR_LABELS}) as f:
        image_dataset(f, "images", images)
        f.create_dataset("labels", data=np.array(labels))
        f.create_dataset(
            "prompts", data=[f"chest radiograph, {CXR_LABELS[i]}" for i in labels], dtype=STR
        )
        f.create_dataset("seeds", data=np.arange(24))
    metrics = stages.score_configured_samples(
        cas,
        "clip",
        "cxr",
        _modality(),
        "lora",
        0,
        samples,
        ref,
        tmp_path / "k.json",
        paths,
        paths.cas_scores("cxr", "lora", 0, "clip"),
        paths.metrics("cxr", "lora", 0, "cas-clip"),
        "d",
    )
    mf = load_metrics_file(paths.metrics("cxr", "lora", 0, "cas-clip"))
    assert mf.stage == "cas-clip" and mf.metrics["cas_mean__clip"] == metrics["cas_mean__clip"]
    assert "cas_oracle_spearman__clip" in mf.metrics
    # plain label prompts (the lora method's) calibrate like real images with them
    assert 0.3 <= metrics["cas_mean__clip"] <= 0.7


def test_the_reference_reads_each_split_a_batch_at_a_time(
    cxr_evaluator, cxr_data, cxr_knowledge, monkeypatch
):
    """With reads capped below every split's size, the reference still builds, and builds the
    same numbers (its digest) as uncapped."""
    from craft.cas.reference import build_reference
    from craft.store import SplitImages, read_split

    sizes = [len(read_split(cxr_data, s)) for s in ("train", "val", "test")]
    assert min(sizes) > 64, sizes
    free = build_reference(cxr_evaluator, cxr_data, cxr_knowledge, batch_size=32)
    monkeypatch.setattr(SplitImages, "max_rows_per_read", 32)
    capped = build_reference(cxr_evaluator, cxr_data, cxr_knowledge, batch_size=32)
    assert capped.digest == free.digest
    assert np.array_equal(capped.real_test_cas, free.real_test_cas)


def test_the_reference_calibrates_on_at_most_max_per_label_images_a_label(
    cxr_evaluator, cxr_data, cxr_knowledge
):
    """reference_max_per_label also caps the val images behind each calibration kernel CDF
    (a seeded subset), so that calibrating a batch costs the same at any data set size; below
    the cap every val image is used."""
    from craft.cas.reference import build_reference
    from craft.store import read_split

    val = read_split(cxr_data, "val")
    free = build_reference(cxr_evaluator, cxr_data, cxr_knowledge, batch_size=32)
    assert free.meta["n_calibration_images"] == len(val)
    cap = 5
    assert min(np.bincount(val.labels)) > cap
    capped = build_reference(
        cxr_evaluator, cxr_data, cxr_knowledge, batch_size=32, max_per_label=cap
    )
    assert capped.meta["n_calibration_images"] == cap * len(free.label_names)
    for lab in free.label_names:
        n_prompts = len(capped.meta["prompts"][lab])
        for dim, values in capped.calibration.items():
            assert len(values[lab]) == cap * n_prompts, (dim, lab)
        # an image's similarity to a prompt does not depend on the others: a subset of all
        # (to float32 rounding: a batch of other images sums in another order)
        kept, every = (
            capped.calibration["prompt_alignment"][lab],
            free.calibration["prompt_alignment"][lab],
        )
        assert np.abs(kept[:, None] - every[None, :]).min(axis=1).max() < 1e-5
        assert len(every) == int((val.labels == free.label_names.index(lab)).sum()) * n_prompts
