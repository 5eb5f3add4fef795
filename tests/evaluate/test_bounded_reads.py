"""The evaluation stages read a data file's splits a batch or chunk at a time: with reads
capped at 256 images (craft.store.SplitImages.max_rows_per_read; the largest batch a stage
takes), each stage still runs on a data file whose splits are larger (320 train, 280 val and
280 test images), and gives the numbers it gives uncapped. A stage that loaded a whole split,
as they all did before, fails here."""

from __future__ import annotations

import numpy as np
import pytest

from craft.evaluate.downstream import downstream
from craft.evaluate.fidelity import fidelity
from craft.evaluate.memorization import memorization
from craft.evaluate.oracle import distribution_shift, measure_in_chunks
from craft.evaluate.settings import DownstreamConfig, FidelityConfig, MemorizationConfig
from craft.store import SplitImages, read_split
from tests.evaluate.conftest import CXR, CXR_LABELS, drawn_samples, write_data

CAP = 256


@pytest.fixture(scope="module")
def cxr_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "cxr.h5"
    return write_data(path, CXR, CXR_LABELS, {"train": 80, "val": 70, "test": 70})


@pytest.fixture
def capped(monkeypatch):
    monkeypatch.setattr(SplitImages, "max_rows_per_read", CAP)


def test_the_cap_refuses_a_whole_split(cxr_data, capped):
    train = read_split(cxr_data, "train")
    assert len(train) > CAP
    with pytest.raises(RuntimeError, match=r"320 images read at once .* \(256 allowed\)"):
        np.asarray(train.images)
    assert train.images[:CAP].shape == (CAP, 32, 32, 1)


def test_fidelity_downstream_and_memorization_stream_and_keep_their_numbers(
    cxr_data, tmp_path, monkeypatch
):
    samples = drawn_samples(tmp_path / "s.h5", CXR, CXR_LABELS, 6, seed=11)
    runs = {
        "fidelity": lambda d: fidelity(
            FidelityConfig(), cxr_data, samples, d / "f.json", CXR, "m", 0, "d"
        ),
        "downstream": lambda d: downstream(
            DownstreamConfig(width=4, max_epochs=2, budgets=[0.5]),
            *(cxr_data, samples, d / "ds.json", CXR, "m", 0, "d"),
        ),
        "memorization": lambda d: memorization(
            MemorizationConfig(chunk_size=CAP, top_pairs=2),
            *(cxr_data, samples, d / "m.json", CXR, "m", 0, "d"),
        ),
    }
    for name, run in runs.items():
        free = run(tmp_path / f"{name}-free")
        monkeypatch.setattr(SplitImages, "max_rows_per_read", CAP)
        assert run(tmp_path / f"{name}-capped") == pytest.approx(free, nan_ok=True), name
        monkeypatch.setattr(SplitImages, "max_rows_per_read", None)


def test_the_oracle_measures_a_split_chunk_by_chunk_as_it_measures_it_whole(cxr_data, capped):
    from craft.data import oracle

    test = read_split(cxr_data, "test")
    chunked = measure_in_chunks(CXR, test.images, chunk=100)
    SplitImages.max_rows_per_read = None
    whole = oracle.measure(CXR, np.asarray(test.images))
    assert np.array_equal(chunked.predicted, whole.predicted)
    for key, values in whole.measurements.items():
        np.testing.assert_array_equal(chunked.measurements[key], values)
    for key, values in whole.criteria.items():
        np.testing.assert_array_equal(chunked.criteria[key], values)
    SplitImages.max_rows_per_read = CAP
    names = [test.label_names[i] for i in test.labels]
    val = read_split(cxr_data, "val")
    shift = distribution_shift(
        CXR,
        np.asarray(test.images[:100]),
        names[:100],
        (test.images, names),
        (val.images, [val.label_names[i] for i in val.labels]),
    )
    assert "oracle_distribution_shift" in shift
