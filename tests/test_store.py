"""The HDF5 contract: atomic writes, provenance attrs, refusing readers, resumable appends."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from craft import __version__
from craft.errors import CraftError
from craft.store import (
    STR,
    AppendWriter,
    atomic_h5,
    image_dataset,
    open_h5,
    read_samples,
    read_split,
)
from craft.version import code_version

RES, CH = 8, 3


def images(n: int, offset: int = 0) -> np.ndarray:
    return (
        ((np.arange(n * RES * RES * CH) + offset) % 251).astype(np.uint8).reshape(n, RES, RES, CH)
    )


def write_samples_file(path, digest="d1", n=4, command="craft generate -m x"):
    with atomic_h5(path, "samples", digest, command=command, attrs={"labels": ["a", "b"]}) as f:
        image_dataset(f, "images", images(n))
        f["labels"] = np.arange(n) % 2
        f.create_dataset(
            "prompts", data=np.array([f"p{i}" for i in range(n)], dtype=object), dtype=STR
        )
        f["seeds"] = np.arange(n, dtype=np.int64) + 100
    return path


def write_data_file(path, digest="d1", splits=("train", "val", "test")):
    with atomic_h5(path, "data", digest, attrs={"labels": ["a", "b"]}) as f:
        for i, s in enumerate(splits):
            g = f.create_group(s)
            image_dataset(g, "images", images(3, i))
            g["labels"] = np.array([0, 1, 0])
            g.create_dataset("paths", data=np.array(["x", "y", "z"], dtype=object), dtype=STR)
    return path


def leftovers(folder) -> list[str]:
    return sorted(os.listdir(folder))


# ----------------------------------------------------------------------------- atomic_h5


def test_atomic_h5_leaves_no_file_when_the_body_raises(tmp_path):
    path = tmp_path / "sub" / "samples.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_h5(path, "samples", "d1") as f:
            image_dataset(f, "images", images(2))
            raise RuntimeError("boom")
    assert not path.exists()
    assert leftovers(path.parent) == []  # no temporary either


def test_atomic_h5_does_not_clobber_a_good_file_when_rewrite_fails(tmp_path):
    path = write_samples_file(tmp_path / "samples.h5", digest="old")
    with pytest.raises(RuntimeError):
        with atomic_h5(path, "samples", "new") as f:
            f["x"] = 1
            raise RuntimeError("killed")
    with open_h5(path, "samples", "old") as f:
        assert f["images"].shape == (4, RES, RES, CH)
    assert leftovers(tmp_path) == ["samples.h5"]


def test_atomic_h5_stamps_provenance(tmp_path):
    path = write_samples_file(
        tmp_path / "samples.h5", digest="abc123", command="craft generate -k lora"
    )
    with h5py.File(path, "r") as f:
        assert f.attrs["craft_version"] == code_version()
        assert code_version().startswith(__version__ + "+")
        assert f.attrs["config_digest"] == "abc123"
        assert f.attrs["command"] == "craft generate -k lora"
        assert f.attrs["craft_kind"] == "samples"
        created = f.attrs["created"]
        assert isinstance(created, str) and created[:2] == "20" and "T" in created
    s = read_samples(path, "abc123")
    assert s.label_names == ["a", "b"]
    assert s.prompts == ["p0", "p1", "p2", "p3"]
    np.testing.assert_array_equal(s.images, images(4))
    np.testing.assert_array_equal(s.seeds, np.arange(4) + 100)


def test_atomic_h5_default_command_is_this_process(tmp_path):
    with atomic_h5(tmp_path / "a.h5", "samples", "d") as f:
        f["x"] = 1
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f.attrs["command"]  # non-empty provenance even when the caller passes none


def test_images_are_one_chunk_per_image(tmp_path):
    path = write_samples_file(tmp_path / "samples.h5")
    with h5py.File(path, "r") as f:
        assert f["images"].dtype == np.uint8
        assert f["images"].chunks == (1, RES, RES, CH)
    with pytest.raises(ValueError, match="uint8 NHWC"):
        with atomic_h5(tmp_path / "b.h5", "samples", "d") as f:
            image_dataset(f, "images", images(2).astype(np.float32))
    assert not (tmp_path / "b.h5").exists()


# ----------------------------------------------------------------------------- open_h5


def refused(path, kind, digest=None) -> str:
    with pytest.raises(CraftError) as info:
        open_h5(path, kind, digest)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "\n" not in msg
    return msg


def test_open_h5_accepts_the_right_file(tmp_path):
    path = write_samples_file(tmp_path / "samples.h5", digest="d1")
    with open_h5(path, "samples", "d1") as f:
        assert len(f["images"]) == 4
    with open_h5(path, "samples") as f:  # no digest: any config
        assert f.attrs["config_digest"] == "d1"
    split = read_split(write_data_file(tmp_path / "data.h5"), "val", "d1")
    assert len(split) == 3 and split.paths == ["x", "y", "z"]
    np.testing.assert_array_equal(split.images, images(3, 1))


def test_open_h5_refuses_wrong_kind(tmp_path):
    path = write_samples_file(tmp_path / "samples.h5")
    msg = refused(path, "data")
    assert "samples" in msg and "data" in msg


def test_open_h5_refuses_missing_attrs(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["images"] = images(2)
    assert "craft" in refused(path, "samples")


def test_open_h5_refuses_other_digest(tmp_path):
    path = write_samples_file(tmp_path / "samples.h5", digest="d1")
    msg = refused(path, "samples", "d2")
    assert "d1" in msg and "d2" in msg


def test_open_h5_refuses_missing_datasets(tmp_path):
    path = tmp_path / "samples.h5"
    with atomic_h5(path, "samples", "d1") as f:
        image_dataset(f, "images", images(2))
        f["labels"] = np.array([0, 1])
        f["seeds"] = np.array([1, 2])
    assert "prompts" in refused(path, "samples", "d1")
    data = tmp_path / "data.h5"
    with atomic_h5(data, "data", "d1") as f:
        g = f.create_group("train")
        image_dataset(g, "images", images(2))
        g["labels"] = np.array([0, 1])  # no paths
    assert "train/paths" in refused(data, "data", "d1")


def test_open_h5_refuses_non_hdf5_and_missing(tmp_path):
    path = tmp_path / "samples.h5"
    path.write_text("not an hdf5 file at all\n")
    refused(path, "samples")
    assert "does not exist" in refused(tmp_path / "absent.h5", "samples")


def test_read_split_names_missing_split(tmp_path):
    path = write_data_file(tmp_path / "data.h5", splits=("train", "test"))
    with pytest.raises(CraftError, match="val"):
        read_split(path, "val")


# ----------------------------------------------------------------------------- AppendWriter

FIELDS = {
    "images": ((RES, RES, CH), np.uint8),
    "labels": ((), np.int64),
    "prompts": ((), STR),
    "seeds": ((), np.int64),
}
TOTAL = 10


def writer(path, digest="d1", total=TOTAL) -> AppendWriter:
    return AppendWriter(
        path, "samples", digest, FIELDS, total, command="test", attrs={"labels": ["a"]}
    )


def rows(start: int, n: int) -> dict[str, np.ndarray]:
    return {
        "images": images(n, start * RES * RES * CH),
        "labels": np.arange(start, start + n),
        "prompts": np.array([f"p{i}" for i in range(start, start + n)], dtype=object),
        "seeds": np.arange(start, start + n) * 7,
    }


def test_append_writer_resumes_after_kill(tmp_path):
    path = tmp_path / "samples.h5"
    w = writer(path)
    assert w.done == 0
    w.append(rows(0, 3))
    w.append(rows(3, 3))
    w.close()  # simulated kill: never finished
    assert not path.exists()
    assert (tmp_path / "samples.h5.partial").is_file()

    w = writer(path)
    assert w.done == 6
    w.append(rows(6, 4))
    w.finish()
    w.close()
    assert path.is_file() and not (tmp_path / "samples.h5.partial").exists()
    with open_h5(path, "samples", "d1") as f:
        assert f.attrs["command"] == "test"
        np.testing.assert_array_equal(f["images"][()], images(TOTAL))  # one continuous stream
        np.testing.assert_array_equal(f["labels"][()], np.arange(TOTAL))
        assert [p.decode() for p in f["prompts"][()]] == [f"p{i}" for i in range(TOTAL)]
        assert f["images"].chunks == (1, RES, RES, CH)


def test_append_writer_starts_over_with_another_digest(tmp_path, capsys):
    path = tmp_path / "samples.h5"
    w = writer(path, "d1")
    w.append(rows(0, 5))
    w.close()
    w = writer(path, "d2")
    assert w.done == 0
    assert "another config" in capsys.readouterr().err
    w.append(rows(0, TOTAL))
    w.finish()
    with open_h5(path, "samples", "d2") as f:
        assert f.attrs["rows_done"] == TOTAL


def test_append_writer_starts_over_with_another_total(tmp_path):
    path = tmp_path / "samples.h5"
    w = writer(path)
    w.append(rows(0, 5))
    w.close()
    w = writer(path, total=12)
    assert w.done == 0
    w.close()


def test_append_writer_starts_over_from_a_corrupt_partial(tmp_path, capsys):
    path = tmp_path / "samples.h5"
    w = writer(path)
    w.append(rows(0, 5))
    w.close()
    partial = tmp_path / "samples.h5.partial"
    size = partial.stat().st_size
    with open(partial, "r+b") as f:
        f.truncate(size // 3)  # killed mid-write
    w = writer(path)
    assert w.done == 0
    assert "unreadable" in capsys.readouterr().err
    w.append(rows(0, TOTAL))
    w.finish()
    with open_h5(path, "samples", "d1") as f:
        np.testing.assert_array_equal(f["labels"][()], np.arange(TOTAL))


def test_append_writer_refuses_overflow_and_early_finish(tmp_path):
    path = tmp_path / "samples.h5"
    w = writer(path)
    w.append(rows(0, 8))
    with pytest.raises(ValueError, match="exceed"):
        w.append(rows(8, 3))
    with pytest.raises(ValueError, match="8 of 10"):
        w.finish()
    w.close()
    assert not path.exists()
    assert writer(path).done == 8  # the refused rows were not counted


def test_a_split_view_reads_any_rows_in_any_order_with_repeats(tmp_path):
    """SplitImages reads runs of consecutive rows as slices: the rows asked for, in order."""
    import numpy as np

    from craft.store import STR, atomic_h5, image_dataset, read_split

    images = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
    with atomic_h5(tmp_path / "d.h5", "data", "d", attrs={"labels": ["a"]}) as f:
        g = f.create_group("train")
        image_dataset(g, "images", images)
        g.create_dataset("labels", data=np.zeros(10, np.int64))
        g.create_dataset("paths", data=[str(i) for i in range(10)], dtype=STR)
    view = read_split(tmp_path / "d.h5", "train").images
    for idx in ([7, 2, 3, 3, 9, 0, 1], [4], [9, 8, 7], np.arange(10) % 2 == 0, [-1, 0]):
        np.testing.assert_array_equal(view[idx], images[idx])
    np.testing.assert_array_equal(view[2:9:3], images[2:9:3])
    np.testing.assert_array_equal(view.subset([5, 1])[[1, 0, 1]], images[[1, 5, 1]])
    assert view[3].shape == (2, 2, 1) and len(view) == 10
