"""craft evaluate oracle's metrics: overall, per label, and per prompt kind."""

from __future__ import annotations

import numpy as np
import pytest

from craft.data.phantoms import draw_batch
from craft.evaluate.oracle import oracle_metrics


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
