"""``craft fidelity``: FD / KID through torchmetrics with the tiny feature extractor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from craft.data.phantoms import draw_batch
from craft.errors import CraftError
from craft.evaluate.features import RandomConvEncoder, embed
from craft.evaluate.fidelity import TINY_GRID, fidelity, frechet_and_kid
from craft.evaluate.settings import FidelityConfig
from tests.evaluate.conftest import CXR, CXR_LABELS, DERM, DERM_LABELS, drawn_samples, write_samples


def _features(phantom: str, label: str, n: int, seed: int) -> np.ndarray:
    images, _ = draw_batch(phantom, [label] * n, seed, 32)
    return embed(RandomConvEncoder(images.shape[-1], grid=TINY_GRID), images)


@pytest.mark.parametrize(
    ("phantom", "same", "other"), [(CXR, "normal", "cardiomegaly"), (DERM, "nevus", "melanoma")]
)
def test_distances_order_sets_by_likeness(phantom, same, other):
    a1, a2 = _features(phantom, same, 24, 0), _features(phantom, same, 24, 1)
    b = _features(phantom, other, 24, 2)
    fd_self, kid_self, _ = frechet_and_kid(a1, a1, kid_subset_size=12)
    assert fd_self == pytest.approx(0.0, abs=1e-6)
    fd_same, kid_same, _ = frechet_and_kid(a1, a2, kid_subset_size=12)
    fd_other, kid_other, _ = frechet_and_kid(a1, b, kid_subset_size=12)
    assert abs(kid_self) < 0.5 * kid_other  # unbiased, subsets of 12: about 0 with itself
    assert fd_other > 2 * fd_same > 0  # measured: 3.0x (chest), 50x (dermoscopy) at n=24
    assert kid_other > kid_same


def test_kid_is_seeded_and_small_sets_are_nan():
    a, b = _features(CXR, "normal", 10, 0), _features(CXR, "nodule", 10, 1)
    assert frechet_and_kid(a, b, 5, 20, seed=3) == frechet_and_kid(a, b, 5, 20, seed=3)
    assert all(np.isnan(frechet_and_kid(a[:1], b)))
    with pytest.raises(CraftError, match="alike"):
        frechet_and_kid(a, b[:, :5])


def test_stage_per_label_and_reference(cxr_data, tmp_path):
    fresh = drawn_samples(tmp_path / "fresh.h5", CXR, CXR_LABELS, 8, seed=11)
    out = tmp_path / "fresh" / "metrics-fidelity.json"
    m = fidelity(FidelityConfig(), cxr_data, fresh, out, CXR, "m", 0, "d")
    assert json.loads(out.read_text())["stage"] == "fidelity"
    assert {"fd", "kid", "kid_std", "fd_reference", "kid_reference"} <= set(m)
    assert all(f"fd__{lab}" in m and f"kid__{lab}" in m for lab in CXR_LABELS)
    # Every image drawn as 'normal' but requested as its label: far from real test images of
    # the other labels, as close as fresh ones for 'normal'.
    lab = [x for x in CXR_LABELS for _ in range(8)]
    normal, _ = draw_batch(CXR, ["normal"] * len(lab), 11, 32)
    wrong = write_samples(
        tmp_path / "wrong.h5", normal, np.array([CXR_LABELS.index(x) for x in lab]), CXR_LABELS
    )
    w = fidelity(FidelityConfig(), cxr_data, wrong, tmp_path / "w.json", CXR, "m", 0, "d")
    assert w["fd"] > 2 * m["fd"]
    # 8 real test images per label: measured 2.2x (a per-label FD of so few images is noisy)
    assert w["fd__cardiomegaly"] > 1.5 * m["fd__cardiomegaly"]
    assert w["fd__normal"] < 2 * m["fd__normal"] + 1e-3
    assert m["fd"] < 3 * m["fd_reference"]  # fresh phantoms are as close as real val images


def test_bad_inputs(cxr_data, derm_data, tmp_path):
    s = drawn_samples(tmp_path / "s.h5", DERM, DERM_LABELS, 2, seed=1)
    with pytest.raises(CraftError, match="has labels"):
        fidelity(FidelityConfig(), cxr_data, s, tmp_path / "x.json", CXR, "m", 0, "d")
    one = drawn_samples(tmp_path / "one.h5", DERM, DERM_LABELS[:1] + DERM_LABELS[1:], 1, seed=1)
    fidelity(FidelityConfig(), derm_data, one, tmp_path / "ok.json", DERM, "m", 0, "d")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(CraftError, match="torch-fidelity"):
            fidelity(
                FidelityConfig(features="inception"),
                derm_data,
                s,
                tmp_path / "x.json",
                DERM,
                "m",
                0,
                "d",
            )
