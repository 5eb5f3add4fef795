"""craft evaluate oracle's metrics: overall, per label, per prompt kind, and the distribution
shift of the right images from real ones."""

from __future__ import annotations

import numpy as np
import pytest

from craft.data.phantoms import draw_batch
from craft.errors import CraftError
from craft.evaluate.oracle import _shift, distribution_shift, oracle_metrics


def test_agreement_is_split_by_plain_and_enriched_prompts():
    # 20 nevi asked for as "nevus" with the plain prompt: right; 20 melanomas asked for as
    # "nevus" with enriched prompts: wrong. Overall 0.5 hides which prompts fail.
    images, _ = draw_batch("phantom-derm", ["nevus"] * 20 + ["melanoma"] * 20, seed=3)
    requested = ["nevus"] * 40
    plain = np.array([True] * 20 + [False] * 20)
    m = oracle_metrics("phantom-derm", images, requested, plain)
    assert m["oracle_label_agreement"] == pytest.approx(0.5, abs=0.1)
    assert m["oracle_label_agreement_plain_prompt"] >= 0.9
    assert m["oracle_label_agreement_enriched_prompts"] <= 0.1
    # swapped: the enriched prompts are the right ones
    m = oracle_metrics("phantom-derm", images, requested, ~plain)
    assert m["oracle_label_agreement_plain_prompt"] <= 0.1
    # one kind of prompt only (or no prompt information): no split
    for only in (np.ones(40, bool), np.zeros(40, bool), None):
        m = oracle_metrics("phantom-derm", images, requested, only)
        assert not any(k.endswith(("_plain_prompt", "_enriched_prompts")) for k in m)


def _real(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    labels = ["effusion"] * n + ["normal"] * n
    images, _ = draw_batch("phantom-cxr", labels, seed=seed)
    return images, labels


def test_effusions_all_in_one_lung_shift_from_real_ones_that_label_agreement_accepts():
    test, val = _real(60, seed=11), _real(60, seed=12)
    one_side, _ = draw_batch(
        "phantom-cxr",
        ["effusion"] * 40,
        seed=13,
        overrides={"effusion_left": 1, "effusion_right": 0},
    )
    either_side, _ = draw_batch("phantom-cxr", ["effusion"] * 40, seed=13)
    requested = ["effusion"] * 40
    collapsed = distribution_shift("phantom-cxr", one_side, requested, test, val)
    varied = distribution_shift("phantom-cxr", either_side, requested, test, val)
    # Both are right on (nearly) every image: agreement cannot tell them apart.
    for images in (one_side, either_side):
        assert oracle_metrics("phantom-cxr", images, requested)["oracle_label_agreement"] >= 0.9
    # Which lung holds the fluid: about half the real effusions are left-sided, all 40 here.
    side = "oracle_distribution_shift__effusion__effusion_left"
    assert collapsed[side] >= 0.35
    assert varied[side] <= 0.2
    assert collapsed["oracle_distribution_shift"] > varied["oracle_distribution_shift"] + 0.03
    # Only the requested labels are compared; the reference is real val against real test.
    assert not any("normal" in k for k in collapsed)
    assert (
        varied["oracle_distribution_shift"] <= 2 * collapsed["oracle_distribution_shift_reference"]
    )


def test_measurements_the_label_fixes_are_left_out_and_no_right_image_is_the_largest_shift():
    test = _real(40, seed=21)
    normals, _ = draw_batch("phantom-cxr", ["normal"] * 30, seed=22)
    m = distribution_shift("phantom-cxr", normals, ["normal"] * 15 + ["effusion"] * 15, test)
    # No real normal lung holds fluid, so the fluid measurements do not count for 'normal'.
    assert "oracle_distribution_shift__normal__effusion_left" not in m
    assert "oracle_distribution_shift__normal__cardiothoracic_ratio" in m
    # Normal images asked for as effusions: no right effusion to compare, the largest shift.
    assert m["oracle_distribution_shift__effusion"] == 1.0
    assert m["oracle_distribution_shift"] == pytest.approx(
        (m["oracle_distribution_shift__normal"] + 1.0) / 2
    )
    assert not any(k.startswith("oracle_distribution_shift_reference") for k in m)


def test_a_real_split_without_the_requested_labels_is_refused():
    test = _real(10, seed=31)
    images, _ = draw_batch("phantom-cxr", ["nodule"] * 4, seed=32)
    with pytest.raises(CraftError, match="real test split has no image"):
        distribution_shift("phantom-cxr", images, ["nodule"] * 4, test)


def test_less_variety_than_real_is_a_shift_even_where_the_mean_matches():
    # Lost variety (every image alike) keeps the mean: the shift compares whole distributions.
    rng = np.random.default_rng(0)
    real = {"effusion": {"width": rng.normal(0.0, 1.0, 200)}}
    alike = {"effusion": {"width": rng.normal(0.0, 0.2, 200)}}
    varied = {"effusion": {"width": rng.normal(0.0, 1.0, 200)}}
    assert abs(alike["effusion"]["width"].mean() - real["effusion"]["width"].mean()) < 0.15
    assert _shift(alike, real, "s", per_measurement=True)["s"] >= 0.25
    assert _shift(varied, real, "s", per_measurement=True)["s"] <= 0.15
