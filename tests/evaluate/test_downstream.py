"""``craft downstream``: classifiers on synthetic / mixed / real images, tested on real ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from craft.errors import CraftError
from craft.evaluate.downstream import (
    PhaseData,
    PhaseTrainer,
    budget_subset,
    build_classifier,
    classification_metrics,
    downstream,
    real_phases,
)
from craft.evaluate.settings import DownstreamConfig
from craft.store import read_split
from tests.evaluate.conftest import CXR, CXR_LABELS, DERM, DERM_LABELS, read_train, write_samples

#: Small enough for the test budget, large enough to learn chest phantoms.
FAST = DownstreamConfig(width=8, max_epochs=10, patience=3, budgets=[0.25, 0.5])


def _run(settings, data, samples, tmp_path, modality=CXR):
    out = tmp_path / "run" / "metrics-downstream.json"
    return downstream(settings, data, samples, out, modality, "m", 0, "digest"), out


def test_copies_of_real_images_do_as_well_as_real_ones(cxr_data, tmp_path):
    train = read_train(cxr_data)
    samples = write_samples(tmp_path / "s.h5", train.images, train.labels, CXR_LABELS)
    m, out = _run(FAST, cxr_data, samples, tmp_path)
    assert m["downstream_auroc_real"] > 0.85
    assert abs(m["downstream_auroc_synthetic"] - m["downstream_auroc_real"]) < 0.1
    names = {
        "downstream_auroc_synthetic",
        "downstream_auroc_mixed",
        "downstream_auroc_real",
        "downstream_auroc_mixed__b0.25",
        "downstream_auroc_mixed__b0.5",
        "downstream_auroc_real__b0.25",
        "downstream_auroc_real__b0.5",
        "downstream_accuracy_synthetic",
        "downstream_f1_mixed__b0.5",
        "downstream_f1_real",
    } | {
        f"downstream_auroc_{k}__{lab}" for k in ("synthetic", "mixed", "real") for lab in CXR_LABELS
    }
    assert names <= set(m)
    assert "downstream_auroc_real__b1" not in m
    assert m["downstream_auroc_mixed"] == m["downstream_auroc_mixed__b0.5"]
    assert json.loads(out.read_text())["metrics"] == pytest.approx(m)
    # Every phase left its record and no half state; a rerun trains nothing and agrees.
    state = out.parent / "downstream"
    assert sorted(p.name for p in state.iterdir()) == sorted(
        f"{p}.json"
        for p in ("synthetic", "mixed__b0.25", "real__b0.25", "mixed__b0.5", "real__b0.5", "real")
    )
    again, _ = _run(FAST, cxr_data, samples, tmp_path)
    assert again == m


def test_shared_real_only_phases_give_every_method_the_same_numbers(cxr_data, tmp_path):
    """The workflow trains the real-only classifiers once per modality and seed (rule
    downstream_real); each method's job takes them from there. Its numbers must be those of a
    job that trains every phase itself, for each of two methods' samples."""
    train = read_train(cxr_data)
    settings = FAST.model_copy(update={"max_epochs": 4})
    real_json = tmp_path / "shared" / "real-phases.json"
    recorded = real_phases(settings, cxr_data, real_json, 0, "digest")
    assert sorted(recorded) == ["real", "real__b0.25", "real__b0.5"]
    assert json.loads(real_json.read_text())["phases"] == recorded
    flipped = train.images[:, ::-1].copy()
    for name, images in (("copies", train.images), ("flipped", flipped)):
        samples = write_samples(tmp_path / f"{name}.h5", images, train.labels, CXR_LABELS)
        alone = downstream(
            settings, cxr_data, samples, tmp_path / name / "a" / "m.json", CXR, name, 0, "digest"
        )
        out = tmp_path / name / "b" / "m.json"
        shared = downstream(
            settings, cxr_data, samples, out, CXR, name, 0, "digest", real_dir=real_json.parent
        )
        assert shared == alone
        # only the phases with generated images were trained in the method's own job
        assert sorted(p.name for p in (out.parent / "downstream").iterdir()) == [
            "mixed__b0.25.json",
            "mixed__b0.5.json",
            "synthetic.json",
        ]
    # a record made under another config digest is not taken: the phase is trained here
    out = tmp_path / "other" / "m.json"
    downstream(settings, cxr_data, samples, out, CXR, "x", 0, "digest-2", real_dir=real_json.parent)
    assert (out.parent / "downstream" / "real.json").is_file()
    with pytest.raises(CraftError, match="name the file real-phases.json"):
        real_phases(settings, cxr_data, tmp_path / "shared" / "real.json", 0, "digest")


def test_noise_teaches_nothing(derm_data, tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    samples = write_samples(tmp_path / "s.h5", noise, np.arange(32) % 2, DERM_LABELS)
    settings = FAST.model_copy(update={"budgets": [1.0]})
    m, _ = _run(settings, derm_data, samples, tmp_path, DERM)
    assert m["downstream_auroc_real"] > 0.9
    assert m["downstream_auroc_synthetic"] < 0.8
    assert "downstream_auroc_mixed__b1" in m and "downstream_auroc_real__b1" not in m


def _phase_data(data) -> PhaseData:
    tr, va, te = (read_split(data, s) for s in ("train", "val", "test"))
    return PhaseData(tr.images, tr.labels, va.images, va.labels, te.images, te.labels, CXR_LABELS)


def test_a_killed_phase_resumes_to_the_same_result(cxr_data, tmp_path):
    settings = FAST.model_copy(update={"patience": 10, "max_epochs": 4})
    d = _phase_data(cxr_data)
    whole = PhaseTrainer(settings, "real", d, tmp_path / "a", "dg", 0)
    whole.run()
    want = whole.test()
    part = PhaseTrainer(settings, "real", d, tmp_path / "b", "dg", 0)
    assert part.run(epochs=2) is False  # "killed" after two epochs, state on disk
    assert (tmp_path / "b" / "real.pt").is_file()
    resumed = PhaseTrainer(settings, "real", d, tmp_path / "b", "dg", 0)
    assert resumed.epoch == 2
    assert resumed.run() is True and resumed.epoch == 4
    assert resumed.test() == want
    # State from another config is not resumed.
    other = PhaseTrainer(settings, "real", d, tmp_path / "b", "other-digest", 0)
    assert other.finished_metrics() is None and other.epoch == 0


def test_budget_subsets_are_stratified_and_nested():
    y = np.repeat(np.arange(3), [10, 20, 4])
    small, large = budget_subset(y, 0.25, 1), budget_subset(y, 0.5, 1)
    assert np.bincount(y[small]).tolist() == [2, 5, 1]
    assert np.bincount(y[large]).tolist() == [5, 10, 2]
    assert set(small) <= set(large)
    assert len(budget_subset(y, 1.0, 1)) == len(y)


def test_metrics_follow_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    p = rng.dirichlet(np.ones(3), 30)
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    with pytest.raises(CraftError, match="no images of"):
        classification_metrics(y[:20], p[:20], ["a", "b", "c"])


def test_grey_images_into_a_model_with_rgb_statistics_use_their_means():
    import torch

    from craft.evaluate.downstream import _Resized

    seen = []
    wrapped = _Resized(
        lambda x: seen.append(x) or x, None, mean=(0.2, 0.4, 0.6), std=(0.1, 0.2, 0.3)
    )
    wrapped(torch.ones(1, 1, 2, 2))  # white: 1.0 on the 0..1 scale
    torch.testing.assert_close(seen[0], torch.full((1, 1, 2, 2), (1 - 0.4) / 0.2))


def test_classifier_sources_and_bad_inputs(cxr_data, derm_data, tmp_path):
    import torch

    timm_model = build_classifier(DownstreamConfig(classifier="resnet10t"), 1, 4)
    assert timm_model(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
    # A transformers image classifier dir (3 channels, 2 labels) becomes a 4-label gray one.
    from transformers import ViTConfig, ViTForImageClassification

    vit = ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        num_labels=2,
    )
    ViTForImageClassification(vit).save_pretrained(tmp_path / "vit")
    hf_model = build_classifier(DownstreamConfig(classifier=str(tmp_path / "vit")), 1, 4)
    assert hf_model(torch.zeros(2, 1, 24, 24)).shape == (2, 4)
    assert hf_model.stats is None and timm_model.stats is None  # no processor; not pretrained
    # a model that ships its processor gets the inputs its weights were trained on
    from transformers import ViTImageProcessor

    ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.25, 0.5]).save_pretrained(
        tmp_path / "vit"
    )
    hf_model = build_classifier(DownstreamConfig(classifier=str(tmp_path / "vit")), 1, 4)
    assert hf_model.stats == ((0.1, 0.2, 0.3), (0.5, 0.25, 0.5))
    seen = []
    hf_model.model.forward = lambda pixel_values: (
        seen.append(pixel_values) or type("Out", (), {"logits": pixel_values})
    )
    hf_model(torch.zeros(1, 1, 32, 32))  # mid-grey, expanded to RGB
    want = torch.tensor([(0.5 - 0.1) / 0.5, (0.5 - 0.2) / 0.25, (0.5 - 0.3) / 0.5])
    torch.testing.assert_close(seen[0][0, :, 0, 0], want)
    with pytest.raises(CraftError, match="classifier") as err:
        build_classifier(DownstreamConfig(classifier=str(tmp_path / "nothing")), 1, 4)
    assert "\n" not in str(err.value)
    train = read_train(derm_data)
    samples = write_samples(tmp_path / "s.h5", train.images[:4], train.labels[:4], DERM_LABELS)
    with pytest.raises(CraftError, match="has labels"):
        _run(FAST, cxr_data, samples, tmp_path)
    with pytest.raises(ValueError, match="budgets"):
        DownstreamConfig(budgets=[0.0, 0.5])
