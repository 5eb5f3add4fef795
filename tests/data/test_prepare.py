"""``craft prepare`` on a hospital's data set: real DICOM slices and PNGs, several per patient."""

from __future__ import annotations

from collections import defaultdict

from craft.config import validate_config
from craft.data.prepare import prepare
from craft.store import read_split
from tests.conftest import tiny_config
from tests.site_data import LABELS, write_site


def site_config(manifest, images, splits=None) -> dict:
    cfg = tiny_config()
    cfg["modalities"] = {
        "site-ct": {
            "source": {"kind": "manifest", "manifest": str(manifest), "image_root": str(images)},
            "labels": LABELS,
            "description": "CT or MR slice",
            "resolution": 32,
            "channels": 1,
            **({"splits": splits} if splits else {}),
        }
    }
    # Real data needs a pretrained generator and evaluators (hub ids: prepare loads none), and
    # knowledge from a model (no curated base knows these labels).
    cfg["models"] = {"generator": "org/stable-diffusion"}
    cfg["knowledge"] = {
        "backend": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "site/chat"}
    }
    cfg["cas"]["evaluators"] = {
        "clip": {"family": "clip", "role": "reward", "source": "org/clip"},
        "siglip": {"family": "siglip", "role": "out-of-family", "source": "org/siglip"},
    }
    return cfg


def test_prepare_keeps_each_patient_in_one_split_and_records_the_patients(tmp_path):
    manifest, images = write_site(tmp_path / "site", n_patients=24)
    cfg = validate_config(site_config(manifest, images))
    out = prepare(cfg, "site-ct", tmp_path / "site-ct.h5")
    where: dict[str, set[str]] = defaultdict(set)
    n = 0
    for split in ("train", "val", "test"):
        s = read_split(out, split)
        assert len(s.patients) == len(s) and all(s.patients), split
        assert set(s.label_names) == set(LABELS)
        assert set(s.labels.tolist()) == {0, 1}, split  # every label in every split
        for p in s.patients:
            where[p].add(split)
        n += len(s)
    assert len(where) == 24 and all(len(v) == 1 for v in where.values()), where
    assert n == sum(1 for _ in manifest.open()) - 1  # every row, once


def test_a_manifests_prepare_spec_says_its_splits_keep_patients_together(tmp_path):
    """So that upgrading reruns prepare where splits were drawn per image before; phantom
    sources' specs (and so the shipped configs' reruns) are unchanged."""
    manifest, images = write_site(tmp_path / "site", n_patients=4)
    cfg = validate_config(site_config(manifest, images))
    assert cfg.spec("prepare", "site-ct").plain()["source"]["split_by"] == "patient"
    phantom = validate_config(tiny_config())
    assert "split_by" not in phantom.spec("prepare", "phantom-cxr").plain()["source"]


def _site(tmp_path, n_patients, resolution=32, channels=1):
    manifest, images = write_site(tmp_path / f"site{n_patients}", n_patients=n_patients)
    raw = site_config(manifest, images)
    raw["results"] = str(tmp_path / "results")
    raw["modalities"]["site-ct"].update(resolution=resolution, channels=channels)
    return validate_config(raw)


def test_prepares_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Images are decoded a task at a time and written as they come: growing the data set
    fourfold adds far less than its images' bytes to the peak (holding them, as prepare did
    before, adds all of them)."""
    import tracemalloc

    res = 128
    peaks = {}
    prepare(_site(tmp_path, 8, res, 3), "site-ct", tmp_path / "warm.h5")  # one-time allocations
    for n_patients in (16, 64):
        cfg = _site(tmp_path, n_patients, resolution=res, channels=3)
        tracemalloc.start()
        out = prepare(cfg, "site-ct", tmp_path / f"{n_patients}.h5")
        peaks[n_patients] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peaks[f"n{n_patients}"] = sum(len(read_split(out, s)) for s in ("train", "val", "test"))
    extra_images = peaks["n64"] - peaks["n16"]
    assert extra_images > 100, peaks
    grown = peaks[64] - peaks[16]
    assert grown < 0.1 * extra_images * res * res * 3, peaks


def test_gray_images_are_kept_once_and_read_as_rgb_and_workers_change_nothing(tmp_path):
    import h5py
    import numpy as np

    from craft.data.images import read_image
    from craft.data.prepare import _options

    cfg = _site(tmp_path, 12, channels=3)
    one = prepare(cfg, "site-ct", tmp_path / "one.h5", threads=1)
    two = prepare(cfg, "site-ct", tmp_path / "two.h5", threads=2)
    opts = _options(cfg.modality("site-ct"))
    for split in ("train", "val", "test"):
        with h5py.File(one, "r") as f, h5py.File(two, "r") as g:
            assert f[split]["images"].shape[-1] == 1  # the site's images are all gray
            assert np.array_equal(f[split]["images"][()], g[split]["images"][()])
        s = read_split(one, split)
        assert s.images.shape[-1] == 3
        for image, path in zip(s.images, s.paths, strict=True):
            assert np.array_equal(image, read_image(path, opts))  # what was stored before


def test_an_image_column_widens_to_rgb_at_the_first_colour_image(tmp_path):
    import h5py
    import numpy as np

    from craft.store import ImageColumn, expand_channels

    rng = np.random.default_rng(0)
    gray = [np.repeat(rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), 3, axis=2) for _ in range(3)]
    colour = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    images = [gray[0], gray[1], colour, gray[2]]
    with h5py.File(tmp_path / "c.h5", "w") as f:
        col = ImageColumn(f, "images", 4, 8, 3)
        for i in (0, 1):
            col.write(i, images[i])
        assert f["images"].shape == (4, 8, 8, 1)
        col.write(2, colour)
        col.write(3, gray[2][..., :1])  # a decode worker hands gray over with one channel
        assert f["images"].shape == (4, 8, 8, 3)
        assert np.array_equal(expand_channels(f["images"][()], 3), np.stack(images))


def _many_rows(tmp_path, n_rows: int):
    """A manifest of ``n_rows`` distinct 4x4 PNGs (three rows a patient, long paths as a site's
    are), its config, and the split cache filled as the plan fills it."""
    import io

    import numpy as np
    from PIL import Image

    from craft.data.manifest import ManifestSpec, manifest_problems

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 90, np.uint8)).save(buf, format="PNG")
    root = tmp_path / f"rows{n_rows}"
    lines = ["path,label,patient"]
    for i in range(n_rows):
        rel = f"patient-{i // 3:06d}/study-{i % 3}/view1_frontal_acquired_upright.png"
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / rel).write_bytes(buf.getvalue())
        lines.append(f"{rel},{LABELS[(i // 3) % 2]},patient-{i // 3:06d}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    raw = site_config(root / "manifest.csv", root / "images")
    raw["results"] = str(tmp_path / f"results{n_rows}")
    raw["modalities"]["site-ct"].update(resolution=16, channels=1)
    cfg = validate_config(raw)
    assert manifest_problems(ManifestSpec.of(cfg, "site-ct")) == []  # the plan's check
    return cfg


def test_prepare_holds_no_string_a_row_after_the_plan(tmp_path, monkeypatch):
    """The rows' files and patients are read from the manifest as they are written, not
    held: a manifest four times as long adds a few bytes a row to prepare's peak (lines,
    labels, splits, a patient hash), where holding each row's file and patient is over 100
    (the columns of ManifestRows) and a ManifestRow object a row about 1 kB."""
    import tracemalloc

    import craft.data.prepare

    monkeypatch.setattr(craft.data.prepare, "STRINGS_PER_WRITE", 128)  # chunks below both sizes
    peaks = {}
    prepare(_many_rows(tmp_path, 300), "site-ct", tmp_path / "warm.h5")  # one-time allocations
    for n in (1500, 6000):
        cfg = _many_rows(tmp_path, n)
        tracemalloc.start()
        out = prepare(cfg, "site-ct", tmp_path / f"{n}.h5")
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert sum(len(read_split(out, s)) for s in ("train", "val", "test")) == n
    per_row = (peaks[6000] - peaks[1500]) / 4500
    assert per_row < 40, (per_row, peaks)
