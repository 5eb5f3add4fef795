"""``craft audit``: the oracle audits clean phantoms as the checklist expects; the reward
evaluator is refused."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from craft.cas.settings import CasConfig
from craft.data.phantoms import draw_batch
from craft.errors import CraftError
from craft.evaluate.audit import audit
from craft.evaluate.settings import AuditConfig
from craft.knowledge.curated import curated_knowledge, load_curated
from tests.evaluate.conftest import CXR, CXR_LABELS, DERM, DERM_LABELS, drawn_samples, write_samples


def _knowledge(phantom: str, labels: list[str]):
    base, _ = load_curated(phantom)
    return curated_knowledge(base, phantom, base.description, labels)


ORACLE_ONLY = AuditConfig(auditors=["oracle"])


@pytest.mark.parametrize(("phantom", "labels"), [(CXR, CXR_LABELS), (DERM, DERM_LABELS)])
def test_oracle_passes_clean_phantoms_on_every_item(phantom, labels, tmp_path):
    samples = drawn_samples(tmp_path / "s.h5", phantom, labels, 6, seed=4)
    out = tmp_path / "run" / "metrics-audit.json"
    k = _knowledge(phantom, labels)
    m = audit(ORACLE_ONLY, CasConfig(), samples, k, out, phantom, "m", 0, "d", phantom=phantom)
    assert m["audit_pass_rate"] == m["audit_pass_rate__oracle"] == 1.0
    rows = list(csv.DictReader((out.parent / "audit.csv").open()))
    applicable = {(it.id, lab) for it in k.checklist for lab in it.expected}
    assert {(r["item"], r["label"]) for r in rows} == applicable
    assert all(float(r["pass_rate"]) == 1.0 and int(r["n_images"]) == 6 for r in rows)
    assert (out.parent / "audit.png").stat().st_size > 5000
    assert json.loads(out.read_text())["metrics"]["audit_pass_rate"] == 1.0


def test_oracle_fails_the_items_a_wrong_image_breaks(tmp_path):
    # Normal chests requested as cardiomegaly: the heart item fails, the absence items pass.
    images, _ = draw_batch(CXR, ["normal"] * 8, 9, 32)
    samples = write_samples(tmp_path / "s.h5", images, np.full(8, 1), CXR_LABELS)
    k = _knowledge(CXR, CXR_LABELS)
    out = tmp_path / "metrics-audit.json"
    m = audit(ORACLE_ONLY, CasConfig(), samples, k, out, CXR, "m", 0, "d", phantom=CXR)
    rows = {
        r["item"]: float(r["pass_rate"]) for r in csv.DictReader((tmp_path / "audit.csv").open())
    }
    assert rows["heart_enlarged"] == 0.0
    assert rows["nodule_present"] == 1.0 and rows["lungs_visible"] == 1.0
    n_items = len(rows)
    assert m["audit_pass_rate__oracle__cardiomegaly"] == pytest.approx((n_items - 1) / n_items)


class _AlwaysYes(torch.nn.Module):
    """A stand-in VLM that says every statement holds (log-odds +1)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1))

    @property
    def device(self):
        return self.mean.device

    def encode_texts(self, texts):
        return torch.zeros(len(texts), 4)

    def encode_images(self, x):
        return torch.zeros(len(x), 4)

    def statement_log_odds(self, img, st, neg):
        return torch.ones(len(img), len(st))


def test_an_out_of_family_evaluator_audits_through_item_log_odds(tmp_path):
    samples = drawn_samples(tmp_path / "s.h5", DERM, DERM_LABELS, 4, seed=2)
    k = _knowledge(DERM, DERM_LABELS)
    settings = AuditConfig(auditors=["oracle", "siglip"])
    loaded = []

    def load(name):
        loaded.append(name)
        return _AlwaysYes(), None

    out = tmp_path / "metrics-audit.json"
    m = audit(settings, CasConfig(), samples, k, out, DERM, "m", 0, "d", DERM, load)
    assert loaded == ["siglip"]
    # 'Always yes' passes exactly the (image, item) pairs whose statement should hold.
    pairs = [(lab, it.expected[lab]) for it in k.checklist for lab in DERM_LABELS]
    want = np.mean([exp for _, exp in pairs])
    assert m["audit_pass_rate__siglip"] == pytest.approx(want)
    assert m["audit_pass_rate"] == pytest.approx((want + 1.0) / 2)
    rows = list(csv.DictReader((tmp_path / "audit.csv").open()))
    assert {r["auditor"] for r in rows} == {"oracle", "siglip"}


def test_the_reward_evaluator_and_unknown_auditors_are_refused(tmp_path):
    samples = drawn_samples(tmp_path / "s.h5", CXR, CXR_LABELS, 1, seed=1)
    k = _knowledge(CXR, CXR_LABELS)
    args = (CasConfig(), samples, k, tmp_path / "x.json", CXR, "m", 0, "d", CXR)
    with pytest.raises(CraftError, match="'clip' is the reward evaluator") as err:
        audit(AuditConfig(auditors=["oracle", "clip"]), *args)
    assert "\n" not in str(err.value)
    with pytest.raises(CraftError, match="neither 'oracle' nor an evaluator"):
        audit(AuditConfig(auditors=["gpt"]), *args)
    with pytest.raises(CraftError, match="phantoms only"):
        audit(ORACLE_ONLY, *args[:-1], None)
    with pytest.raises(CraftError, match="lacks"):
        audit(ORACLE_ONLY, *args[:2], _knowledge(CXR, CXR_LABELS[:2]), *args[3:])
    with pytest.raises(ValueError, match="duplicates"):
        AuditConfig(auditors=["oracle", "oracle"])


def test_default_auditors_are_the_oracle_and_every_out_of_family_evaluator():
    cas = CasConfig()
    assert AuditConfig().auditor_names(cas, CXR) == ["oracle", "siglip"]
    assert AuditConfig().auditor_names(cas, None) == ["siglip"]  # not a phantom: no oracle
    assert AuditConfig(auditors=["oracle", "siglip"]).auditor_names(cas, None) == ["siglip"]
