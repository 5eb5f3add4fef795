"""The phantom generator: registry, shapes, determinism, findings true to the label, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from craft.data.phantoms import (
    PHANTOMS,
    border_irregularity,
    draw,
    draw_batch,
    shape_asymmetry,
)
from craft.errors import CraftError

RESOLUTIONS = (24, 32, 48, 64)


def test_registry_labels_channels_and_findings():
    cxr, derm = PHANTOMS["phantom-cxr"], PHANTOMS["phantom-derm"]
    assert cxr.labels == ("normal", "cardiomegaly", "effusion", "nodule")
    assert derm.labels == ("nevus", "melanoma")
    assert (cxr.channels, derm.channels) == (1, 3)
    assert {"cardiothoracic_ratio", "effusion_left", "effusion_right", "nodule_count"} <= set(
        cxr.findings
    )
    assert {"asymmetry", "border_irregularity", "n_colours", "blue_white_veil"} <= set(
        derm.findings
    )
    assert "diameter_fraction" in derm.findings
    for name, spec in PHANTOMS.items():
        assert spec.name == name and spec.description


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("modality", sorted(PHANTOMS))
def test_draw_shapes_dtypes_and_findings_keys(modality, resolution):
    spec = PHANTOMS[modality]
    rng = np.random.default_rng(0)
    for label in spec.labels:
        img, findings = draw(modality, label, rng, resolution)
        assert img.shape == (resolution, resolution, spec.channels)
        assert img.dtype == np.uint8
        assert img.std() > 10  # an actual picture, not a flat field
        assert set(findings) == set(spec.findings)
        assert all(type(v) is float for v in findings.values())
    batch, table = draw_batch(modality, list(spec.labels) * 2, seed=1, resolution=resolution)
    assert batch.shape == (2 * len(spec.labels), resolution, resolution, spec.channels)
    assert batch.dtype == np.uint8 and len(table) == batch.shape[0]


def test_draw_batch_is_deterministic_in_seed_and_order():
    labels = ["normal", "effusion", "nodule", "cardiomegaly"] * 3
    a, fa = draw_batch("phantom-cxr", labels, seed=5)
    b, fb = draw_batch("phantom-cxr", labels, seed=5)
    assert np.array_equal(a, b) and fa == fb
    c, _ = draw_batch("phantom-cxr", labels, seed=6)
    assert not np.array_equal(a, c)
    # image i depends on (seed, i, label_i) only: a prefix is reproduced exactly
    d, fd = draw_batch("phantom-cxr", labels[:5], seed=5)
    assert np.array_equal(d, a[:5]) and fd == fa[:5]
    # the order matters: the same labels reversed give different images at each position
    e, _ = draw_batch("phantom-cxr", labels[::-1], seed=5)
    assert not np.array_equal(e, a[::-1])
    m1, _ = draw_batch("phantom-derm", ["melanoma", "nevus"], seed=5)
    m2, _ = draw_batch("phantom-derm", ["melanoma", "nevus"], seed=5)
    assert np.array_equal(m1, m2)


@pytest.mark.parametrize("modality", sorted(PHANTOMS))
def test_images_of_one_label_vary(modality):
    for label in PHANTOMS[modality].labels:
        imgs, _ = draw_batch(modality, [label] * 8, seed=3)
        x = imgs.astype(np.float64)
        diffs = [np.abs(x[i] - x[j]).mean() for i in range(8) for j in range(i + 1, 8)]
        assert min(diffs) > 2.0, f"{modality}/{label} images are near-identical"
        # the anatomy moves and changes between images, not only the noise
        smooth = x.reshape(8, 8, 4, 8, 4, -1).mean((2, 4, 5))  # 8x8 blocks of 4x4 pixels
        assert smooth.std(0).mean() > 2.0


def _findings(modality, label, n=150, resolution=32):
    _, table = draw_batch(modality, [label] * n, seed=11, resolution=resolution)
    return {k: np.array([f[k] for f in table]) for k in table[0]}


def test_cxr_findings_match_labels():
    normal = _findings("phantom-cxr", "normal")
    cardio = _findings("phantom-cxr", "cardiomegaly")
    eff = _findings("phantom-cxr", "effusion")
    nod = _findings("phantom-cxr", "nodule")
    assert (cardio["cardiothoracic_ratio"] > 0.55).all()
    for f in (normal, eff, nod):
        assert (f["cardiothoracic_ratio"] < 0.45).all()
        assert f["cardiothoracic_ratio"].min() > 0.33
    # effusion: exactly one side, both sides occur
    sides = eff["effusion_left"] + eff["effusion_right"]
    assert (sides == 1).all()
    assert 0.3 < eff["effusion_left"].mean() < 0.7
    assert (eff["effusion_height_fraction"] > 0.3).all()
    for f in (normal, cardio, nod):
        assert (f["effusion_left"] == 0).all() and (f["effusion_right"] == 0).all()
    assert (nod["nodule_count"] == 1).all() and (nod["nodule_diameter_fraction"] > 0).all()
    for f in (normal, cardio, eff):
        assert (f["nodule_count"] == 0).all()


def test_derm_findings_match_labels():
    nev = _findings("phantom-derm", "nevus")
    mel = _findings("phantom-derm", "melanoma")
    assert (nev["n_colours"] <= 2).all() and (mel["n_colours"] >= 3).all()
    assert (nev["blue_white_veil"] == 0).all() and (mel["blue_white_veil"] == 1).all()
    assert nev["diameter_fraction"].max() < 0.4 < 0.45 < mel["diameter_fraction"].min()
    assert nev["asymmetry"].max() < mel["asymmetry"].min()
    assert nev["border_irregularity"].max() < 0.03 < mel["border_irregularity"].min()


def test_overrides_force_findings():
    rng = np.random.default_rng(2)
    _, f = draw("phantom-cxr", "effusion", rng, overrides={"effusion_left": 1, "effusion_right": 1})
    assert f["effusion_left"] == f["effusion_right"] == 1.0
    _, f = draw("phantom-cxr", "nodule", rng, overrides={"nodule_count": 2})
    assert f["nodule_count"] == 2.0
    _, f = draw("phantom-cxr", "normal", rng, overrides={"cardiothoracic_ratio": 0.6})
    assert f["cardiothoracic_ratio"] == pytest.approx(0.6)
    _, f = draw("phantom-derm", "nevus", rng, overrides={"blue_white_veil": 1})
    assert f["blue_white_veil"] == 1.0
    # the override really changes the image: two nodules add bright pixels inside the lungs
    one, _ = draw("phantom-cxr", "nodule", np.random.default_rng(9))
    two, _ = draw("phantom-cxr", "nodule", np.random.default_rng(9), overrides={"nodule_count": 2})
    assert not np.array_equal(one, two)
    with pytest.raises(CraftError, match="cannot override 'veil_size'"):
        draw("phantom-cxr", "normal", rng, overrides={"veil_size": 0.5})
    with pytest.raises(CraftError, match="n_colours.*melanoma phantoms only"):
        draw("phantom-derm", "nevus", rng, overrides={"n_colours": 2})


def test_melanoma_colour_overrides_keep_every_other_draw():
    """``n_colours`` caps the colours painted (the veil kept first), ``veil_size`` sets the
    veil's radius; both still make every random draw, so a cap no lower than the drawn colours
    gives the very same image and the rest of the lesion is unchanged."""
    labels = ["melanoma"] * 12
    plain, f_plain = draw_batch("phantom-derm", labels, 4)
    capped, f_capped = draw_batch("phantom-derm", labels, 4, overrides={"n_colours": 9})
    assert np.array_equal(plain, capped) and f_plain == f_capped
    two, f_two = draw_batch("phantom-derm", labels, 4, overrides={"n_colours": 2})
    assert all(f["n_colours"] == 2 and f["blue_white_veil"] == 1 for f in f_two)
    assert [f["diameter_fraction"] for f in f_two] == [f["diameter_fraction"] for f in f_plain]
    assert not np.array_equal(plain, two)
    big, f_big = draw_batch("phantom-derm", labels, 4, overrides={"veil_size": 0.55})
    assert [f["n_colours"] for f in f_big] == [f["n_colours"] for f in f_plain]

    # the veil's blue-grey: more of the lesion turns bluish with the bigger veil
    def blue(images):
        rgb = images.astype(float)
        return (rgb[..., 2] - rgb[..., 0] > 0).mean()

    assert blue(big) > blue(plain)


def test_unknown_modality_label_resolution_raise_craft_error():
    rng = np.random.default_rng(0)
    with pytest.raises(CraftError, match=r"'phantom-mri'.*phantom-cxr, phantom-derm") as err:
        draw("phantom-mri", "normal", rng)
    assert "\n" not in str(err.value)
    with pytest.raises(CraftError, match=r"'melanoma'.*phantom-cxr.*normal, cardiomegaly"):
        draw("phantom-cxr", "melanoma", rng)
    with pytest.raises(CraftError, match=r"'pneumonia'"):
        draw_batch("phantom-cxr", ["normal", "pneumonia"], seed=0)
    with pytest.raises(CraftError, match="resolution"):
        draw("phantom-cxr", "normal", rng, resolution=8)
    with pytest.raises(CraftError, match="resolution"):
        draw_batch("phantom-derm", ["nevus"], seed=0, resolution=32.5)


def test_shape_measures():
    t = np.arange(64) * 2 * np.pi / 64
    circle = np.ones(64)
    ellipse = 1.0 / np.sqrt((np.cos(t) / 1.3) ** 2 + (np.sin(t) / 0.8) ** 2)
    lopsided = 1 + 0.15 * np.cos(t) + 0.1 * np.cos(2 * t + 1.0) + 0.1 * np.cos(3 * t + 2.0)
    notched = 1 + 0.08 * np.cos(7 * t)
    assert shape_asymmetry(circle) == pytest.approx(0.0, abs=1e-12)
    assert shape_asymmetry(ellipse) == pytest.approx(0.0, abs=1e-9)
    assert shape_asymmetry(np.roll(ellipse, 5)) == pytest.approx(0.0, abs=1e-9)
    assert shape_asymmetry(lopsided) > 0.05
    assert border_irregularity(ellipse) == pytest.approx(0.0, abs=1e-9)
    assert border_irregularity(np.roll(ellipse, 3)) == pytest.approx(0.0, abs=1e-9)
    assert border_irregularity(notched) == pytest.approx(0.08 / np.sqrt(2), rel=0.05)
    assert border_irregularity(lopsided) > 0.03


@pytest.mark.parametrize("modality", sorted(PHANTOMS))
def test_drawing_is_fast(modality):
    labels = list(PHANTOMS[modality].labels) * (500 // len(PHANTOMS[modality].labels))
    draw_batch(modality, labels[:10], seed=0)  # warm caches
    t0 = time.process_time()  # CPU time: other jobs on the machine do not count
    draw_batch(modality, labels, seed=0)
    elapsed = time.process_time() - t0
    # ~1 s per 1000 images on one core; a generous bound against regressions (loaded CI)
    assert elapsed < 2.0, f"{len(labels)} {modality} images took {elapsed:.2f} s"
