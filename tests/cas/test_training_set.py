"""The evaluator's training set: what the oracle says of every text, hybrids included."""

from __future__ import annotations

import numpy as np

from craft.cas.train_evaluator import build_training_set
from tests.cas.knowledge_standin import DERM_LABELS, phantom_knowledge


def _column(ts, text):
    return ts.truth[:, ts.texts.index(text)]


def test_derm_training_set_teaches_that_a_veil_is_not_three_colours():
    """Reward finetuning drew melanomas whose oversized veil left two colours, and evaluators
    trained without such phantoms called them multicoloured (P = 1.00). The training set holds
    them now, with the oracle's truth: veil yes, three colours no, label prompts false."""
    kb = phantom_knowledge("phantom-derm")
    ts = build_training_set(
        "phantom-derm", DERM_LABELS, "dermoscopy image", kb, 32, 600, 0.5, seed=0
    )
    veil = _column(ts, "a blue white veil")
    colours = _column(ts, "three or more colours")
    melanoma_prompt = _column(ts, "dermoscopy image, melanoma")
    drawn_melanoma = ts.labels == DERM_LABELS.index("melanoma")
    veil_only = drawn_melanoma & veil & ~colours
    # 300 hybrids over six kinds, 50 of them two-colour veiled melanomas (the oracle finds 49;
    # a training set built without that kind has none)
    assert veil_only.sum() >= 40
    assert not melanoma_prompt[veil_only].any()
    assert (_column(ts, "one or two similar brown colours")[veil_only]).all()
    # and veiled melanomas that do show three colours are there too, so the veil alone
    # decides nothing
    assert (drawn_melanoma & veil & colours).sum() >= 100
    assert np.isin(ts.labels, [0, 1]).all()
