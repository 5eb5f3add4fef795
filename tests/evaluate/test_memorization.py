"""``craft memorization``: copies of training images are flagged, fresh phantoms are not."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from craft.errors import CraftError
from craft.evaluate.memorization import memorization
from craft.evaluate.settings import MemorizationConfig
from tests.evaluate.conftest import CXR, CXR_LABELS, drawn_samples, read_train, write_samples


def _run(settings, data, samples, tmp_path):
    out = tmp_path / "run" / "metrics-memorization.json"
    m = memorization(settings, data, samples, out, CXR, "m", 0, "digest")
    assert json.loads(out.read_text())["metrics"]["memorization_rate"] == m["memorization_rate"]
    return m, out.parent


def test_copies_of_training_images_are_memorized(cxr_data, tmp_path):
    train = read_train(cxr_data)
    pick = np.arange(0, len(train), 3)
    samples = write_samples(tmp_path / "s.h5", train.images[pick], train.labels[pick], CXR_LABELS)
    m, run = _run(MemorizationConfig(top_pairs=4), cxr_data, samples, tmp_path)
    assert m["memorization_rate"] == 1.0
    assert m["memorization_rate_pixel"] == 1.0
    assert m["memorization_rate_reference"] == 0.0  # fresh real test images are not copies
    assert all(m[f"memorization_rate__{lab}"] == 1.0 for lab in CXR_LABELS)
    with h5py.File(run / "memorization.h5") as f:
        np.testing.assert_array_equal(f["embedding/nn_index"][()], pick)
        np.testing.assert_array_equal(f["pixels/nn_index"][()], pick)
        assert f["top_pairs/similarity"].shape == (4,)
        assert (f["top_pairs/similarity"][()] > 0.999).all()
    png = run / "memorization-pairs.png"
    assert png.stat().st_size > 5000


def test_fresh_phantoms_are_not_memorized(cxr_data, tmp_path):
    samples = drawn_samples(tmp_path / "s.h5", CXR, CXR_LABELS, 8, seed=123)
    m, _ = _run(MemorizationConfig(), cxr_data, samples, tmp_path)
    assert m["memorization_rate"] == 0.0
    assert m["memorization_rate_pixel"] == 0.0
    assert m["memorization_similarity_median"] < 0.95
    # Fresh phantoms look like real test images to the search.
    assert (
        abs(m["memorization_similarity_median"] - m["memorization_similarity_median_reference"])
        < 0.1
    )


def test_a_few_near_copies_among_fresh_images_are_counted(cxr_data, tmp_path):
    train = read_train(cxr_data)
    fresh = drawn_samples(tmp_path / "f.h5", CXR, CXR_LABELS, 6, seed=321)
    from craft.store import read_samples

    s = read_samples(fresh)
    rng = np.random.default_rng(0)
    noisy = np.clip(train.images[:6].astype(int) + rng.normal(0, 4, train.images[:6].shape), 0, 255)
    images = np.concatenate([s.images, noisy.astype(np.uint8)])
    labels = np.concatenate([s.labels, train.labels[:6]])
    samples = write_samples(tmp_path / "s.h5", images, labels, CXR_LABELS)
    small = MemorizationConfig(chunk_size=5)  # smaller than every set: many blocks, two passes
    m, run = _run(small, cxr_data, samples, tmp_path)
    assert m["memorization_rate"] == pytest.approx(6 / 30)
    with h5py.File(run / "memorization.h5") as f:
        chunked = f["embedding/nn_similarity"][()]
        top = set(f["top_pairs/generated_index"][()].tolist())
    assert top >= set(range(24, 30))  # the near copies are the top pairs
    m2, run2 = _run(MemorizationConfig(chunk_size=10_000), cxr_data, samples, tmp_path / "b")
    with h5py.File(run2 / "memorization.h5") as f:
        np.testing.assert_allclose(f["embedding/nn_similarity"][()], chunked, atol=1e-5)
    assert m2["memorization_rate"] == m["memorization_rate"]


def test_pixels_encoder_and_bad_inputs(cxr_data, derm_data, tmp_path):
    samples = drawn_samples(tmp_path / "s.h5", CXR, CXR_LABELS, 2, seed=5)
    m, _ = _run(MemorizationConfig(encoder="pixels"), cxr_data, samples, tmp_path)
    assert m["memorization_rate"] == m["memorization_rate_pixel"] == 0.0
    with pytest.raises(CraftError, match="has labels") as err:
        memorization(
            MemorizationConfig(), derm_data, samples, tmp_path / "x.json", CXR, "m", 0, "d"
        )
    assert "\n" not in str(err.value)
    with pytest.raises(CraftError, match="does not exist"):
        memorization(
            MemorizationConfig(), tmp_path / "no.h5", samples, tmp_path / "x.json", CXR, "m", 0, "d"
        )
    with pytest.raises(CraftError, match="cannot load image model"):
        memorization(
            MemorizationConfig(encoder=str(tmp_path / "nodir")),
            cxr_data,
            samples,
            tmp_path / "x.json",
            CXR,
            "m",
            0,
            "d",
        )


def test_a_transformers_encoder_dir_loads_and_flags_copies(cxr_data, tmp_path):
    """The cluster path (a DINOv2 dir) with a tiny random Dinov2Model saved like a hub repo."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    src = tmp_path / "dinov2-tiny"
    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    Dinov2Model(cfg).save_pretrained(src)
    BitImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(src)
    train = read_train(cxr_data)
    samples = write_samples(tmp_path / "s.h5", train.images[:8], train.labels[:8], CXR_LABELS)
    m, _ = _run(MemorizationConfig(encoder=str(src)), cxr_data, samples, tmp_path)
    assert m["memorization_rate"] == 1.0


def test_the_train_vector_cache_changes_nothing_and_is_removed(cxr_data, tmp_path):
    from craft.evaluate.features import RandomConvEncoder, embed
    from craft.evaluate.memorization import nearest_training

    enc = RandomConvEncoder(1, grid=8)
    rng = np.random.default_rng(1)
    queries = [
        rng.integers(0, 256, (7, 32, 32, 1), dtype=np.uint8),
        read_train(cxr_data).images[:5],
    ]

    def vectorise(x):
        return embed(enc, x)

    cached = nearest_training(cxr_data, queries, vectorise, 9, True, tmp_path / "cache")
    direct = nearest_training(cxr_data, queries, vectorise, 9, True, None)
    for (ci, cs), (di, ds) in zip(cached, direct, strict=True):
        np.testing.assert_array_equal(ci, di)
        np.testing.assert_allclose(cs, ds, atol=1e-6)
    np.testing.assert_array_equal(cached[1][0], np.arange(5))
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_patients_second_scan_in_test_is_left_out_of_the_reference(cxr_data, tmp_path, capsys):
    """Test images that are near copies of their own patient's train images: counted as
    memorized by the reference while patients are unknown, left out once they are known; the
    log says which, in the report's words."""
    import shutil

    from craft.evaluate.memorization import patients_note
    from craft.store import STR

    data = shutil.copyfile(cxr_data, tmp_path / "cxr.h5")
    train = read_train(cxr_data)
    rng = np.random.default_rng(0)
    with h5py.File(data, "r+") as f:
        n_test = f["test/labels"].shape[0]
        rescan = train.images[:n_test].astype(int) + rng.normal(0, 3, train.images[:n_test].shape)
        f["test/images"][...] = np.clip(rescan, 0, 255).astype(np.uint8)
        f["test/labels"][...] = train.labels[:n_test]
    samples = drawn_samples(tmp_path / "s.h5", CXR, CXR_LABELS, 4, seed=77)
    unknown, _ = _run(MemorizationConfig(), data, samples, tmp_path / "a")
    assert unknown["memorization_reference_patients_known"] == 0.0
    assert unknown["memorization_rate_reference"] > 0.9  # rescans look like copies
    assert patients_note(0.0) in capsys.readouterr().err
    with h5py.File(data, "r+") as f:
        f["train"].create_dataset("patients", data=[f"P{i}" for i in range(len(train))], dtype=STR)
        f["test"].create_dataset("patients", data=[f"P{i}" for i in range(n_test)], dtype=STR)
    known, run = _run(MemorizationConfig(), data, samples, tmp_path / "b")
    assert known["memorization_reference_patients_known"] == 1.0
    assert known["memorization_rate_reference"] < 0.1
    assert patients_note(1.0) in capsys.readouterr().err
    with h5py.File(run / "memorization.h5") as f:
        ref = f["embedding/reference_nn_index"][()]
    assert (ref != np.arange(n_test)).all()  # never the patient's own train image
    assert known["memorization_rate"] == unknown["memorization_rate"]  # generated: unchanged


def test_reference_rows_are_all_test_rows_or_a_seeded_subset():
    from craft.evaluate.memorization import reference_rows

    np.testing.assert_array_equal(reference_rows(7, 7, 0), np.arange(7))
    rows = reference_rows(50, 10, 0)
    assert len(rows) == 10 and len(set(rows.tolist())) == 10
    assert (np.diff(rows) > 0).all() and rows.max() < 50  # file order
    np.testing.assert_array_equal(rows, reference_rows(50, 10, 0))
    assert not np.array_equal(rows, reference_rows(50, 10, 1))


def test_a_capped_reference_is_the_full_search_at_its_rows(cxr_data, tmp_path):
    """reference_max below the test split: the reference searches a subset, each of its
    images with the result the uncapped search gives it; the generated images are unchanged."""
    samples = drawn_samples(tmp_path / "s.h5", CXR, CXR_LABELS, 4, seed=5)
    full, run_full = _run(MemorizationConfig(), cxr_data, samples, tmp_path / "full")
    with h5py.File(cxr_data) as f:
        n_test = f["test/labels"].shape[0]
    cap = n_test // 3
    capped, run_cap = _run(MemorizationConfig(reference_max=cap), cxr_data, samples, tmp_path / "c")
    with h5py.File(run_full / "memorization.h5") as a, h5py.File(run_cap / "memorization.h5") as b:
        rows = b["reference_rows"][()]
        assert len(rows) == cap and len(a["reference_rows"][()]) == n_test
        for view in ("embedding", "pixels"):
            for key in ("reference_nn_index", "reference_nn_similarity"):
                np.testing.assert_array_equal(b[f"{view}/{key}"][()], a[f"{view}/{key}"][()][rows])
            np.testing.assert_array_equal(b[f"{view}/nn_index"][()], a[f"{view}/nn_index"][()])
    for key in ("memorization_rate", "memorization_rate_pixel", "memorization_similarity_median"):
        assert capped[key] == full[key]


def test_reference_max_at_its_default_leaves_the_job_spec_as_it_was():
    """Runs made before reference_max keep their memorization digests; another value is in."""
    from craft.evaluate.settings import REFERENCE_MAX
    from craft.specs import MemorizationSpec

    spec = MemorizationSpec(labels=["a"], memorization=MemorizationConfig())
    assert "reference_max" not in spec.plain()["memorization"]
    assert "seed" in spec.plain()["memorization"]
    other = MemorizationSpec(
        labels=["a"], memorization=MemorizationConfig(reference_max=REFERENCE_MAX + 1)
    )
    assert other.plain()["memorization"]["reference_max"] == REFERENCE_MAX + 1
    assert other.digest != spec.digest
