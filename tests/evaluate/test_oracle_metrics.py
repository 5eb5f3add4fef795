"""craft evaluate oracle's metrics: overall, per label, per prompt kind, and the distribution
shift of the right images from real ones."""

from __future__ import annotations

import numpy as np
import pytest

from craft.data.phantoms import draw_batch
from craft.errors import CraftError
from craft.evaluate.oracle import _label_shift, distribution_shift, oracle_metrics


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
    # Only the requested labels are compared.
    assert not any("normal" in k for k in collapsed)


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


def test_the_reference_is_what_as_many_real_images_give_and_a_real_sample_lands_near_it():
    test, val = _real(40, seed=41), _real(80, seed=42)
    few, many = _real(10, seed=43), _real(60, seed=44)
    at_few = distribution_shift("phantom-cxr", *few, test, val)
    at_many = distribution_shift("phantom-cxr", *many, test, val)
    ref = "oracle_distribution_shift_reference"
    # Fewer images, more sampling noise: the reference follows the method's count.
    assert at_few[ref] > at_many[ref] + 0.05
    # Real phantoms standing in for a perfect generator shift about as much as the reference.
    for m in (at_few, at_many):
        assert abs(m["oracle_distribution_shift"] - m[ref]) <= 0.1, m
    # Drawn with a fixed seed: the same inputs give the same reference.
    assert distribution_shift("phantom-cxr", *few, test, val)[ref] == at_few[ref]


def test_a_label_without_two_right_real_images_is_left_out_of_what_it_cannot_judge():
    test = _real(20, seed=51)
    # 'effusion' test images drawn without fluid: the oracle calls none of them an effusion.
    dry, _ = draw_batch(
        "phantom-cxr",
        ["effusion"] * 20,
        seed=52,
        overrides={"effusion_left": 0, "effusion_right": 0},
    )
    no_effusion = (np.concatenate([test[0][20:], dry]), ["normal"] * 20 + ["effusion"] * 20)
    generated = _real(10, seed=53)
    m = distribution_shift("phantom-cxr", *generated, no_effusion, (dry, ["effusion"] * 20))
    assert "oracle_distribution_shift__normal" in m
    assert not any("effusion__" in k or k.endswith("__effusion") for k in m)
    # ... and a validation split without right images of a label gives it no reference.
    assert "oracle_distribution_shift_reference" not in m
    # No requested label judgeable at all, or nothing generated: a one-line error.
    with pytest.raises(CraftError, match="fewer than two images the oracle calls effusion"):
        distribution_shift("phantom-cxr", generated[0][:10], ["effusion"] * 10, no_effusion)
    with pytest.raises(CraftError, match="samples file has no images"):
        distribution_shift("phantom-cxr", generated[0][:0], [], test)


def test_less_variety_than_real_is_a_shift_even_where_the_mean_matches():
    # Lost variety (every image alike) keeps the mean: the shift compares whole distributions.
    rng = np.random.default_rng(0)
    real = {"width": rng.normal(0.0, 1.0, 200)}
    alike = {"width": rng.normal(0.0, 0.2, 200)}
    varied = {"width": rng.normal(0.0, 1.0, 200)}
    assert abs(alike["width"].mean() - real["width"].mean()) < 0.15
    assert _label_shift(alike, real)["width"] >= 0.25
    assert _label_shift(varied, real)["width"] <= 0.15
    # One value on every real image: left out where the generated agree, counted where not.
    fixed = {"fluid": np.zeros(50)}
    assert _label_shift({"fluid": np.zeros(30)}, fixed) == {}
    assert _label_shift({"fluid": np.r_[np.zeros(20), np.ones(10)]}, fixed)["fluid"] == (
        pytest.approx(1 / 3)
    )


def test_a_given_measurement_is_used_as_is_and_gives_the_same_metrics(monkeypatch):
    # evaluate_oracle measures the samples once and hands the result to both metrics.
    from craft.data import oracle

    test = _real(20, seed=21)
    images, _ = draw_batch("phantom-cxr", ["effusion"] * 12 + ["normal"] * 12, seed=22)
    requested = ["effusion"] * 12 + ["normal"] * 12
    result = oracle.measure("phantom-cxr", images)
    expected = {
        **oracle_metrics("phantom-cxr", images, requested),
        **distribution_shift("phantom-cxr", images, requested, test),
    }
    real_measure = oracle.measure

    def measure(phantom, batch):
        assert batch is not images, "the samples were measured again"
        return real_measure(phantom, batch)

    monkeypatch.setattr(oracle, "measure", measure)
    given = {
        **oracle_metrics("phantom-cxr", images, requested, result=result),
        **distribution_shift("phantom-cxr", images, requested, test, result=result),
    }
    assert given == expected
    with pytest.raises(CraftError, match="unknown label 'melanoma'"):
        oracle_metrics("phantom-cxr", images, ["melanoma"] * 24, result=result)
    with pytest.raises(CraftError, match="the oracle result has 24 rows for 12 images"):
        distribution_shift("phantom-cxr", images[:12], requested[:12], test, result=result)
