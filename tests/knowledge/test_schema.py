"""The knowledge file format: validation, accessors, load and save."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from craft.errors import CraftError
from craft.knowledge.schema import (
    SCHEMA_VERSION,
    ChecklistItem,
    ModalityKnowledge,
    load_knowledge,
    save_knowledge,
)
from craft.prompts import enriched_prompts


def _item(**kw) -> dict:
    d = dict(
        id="heart_enlarged",
        finding="cardiomegaly",
        statement="the heart is enlarged",
        negation="the heart has a normal size",
        question="Is the heart enlarged?",
        polarity="present",
        expected={"normal": False, "cardiomegaly": True},
    )
    d.update(kw)
    return d


def _data(**kw) -> dict:
    d = dict(
        schema_version=SCHEMA_VERSION,
        modality="cxr",
        description="chest radiograph",
        labels={
            lab: {
                "label": lab,
                "prompts": [{"text": f"chest radiograph, {lab}", "source": "curated"}],
            }
            for lab in ("normal", "cardiomegaly", "nodule")
        },
        checklist=[
            _item(),
            _item(
                id="lungs",
                finding="lungs",
                statement="two lungs are visible",
                negation="no lungs",
                question="Are two lungs visible?",
                expected={},
                scope="modality",
            ),
        ],
        provenance={"backend": "curated"},
    )
    d.update(kw)
    return d


def test_accessors_and_modality_items():
    k = ModalityKnowledge.model_validate(_data())
    assert k.prompts_for("nodule") == ["chest radiograph, nodule"]
    assert [it.id for it in k.items_for("cardiomegaly")] == ["heart_enlarged", "lungs"]
    assert [it.id for it in k.items_for("nodule")] == ["lungs"]  # heart item: not applicable
    assert k.checklist[1].expected == {"normal": True, "cardiomegaly": True, "nodule": True}
    with pytest.raises(CraftError, match="label 'effusion' is not in the cxr knowledge"):
        k.items_for("effusion")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["checklist"].append(_item()), "item id 'heart_enlarged' is used twice"),
        (
            lambda d: d["checklist"][0]["expected"].update(effusion=True),
            "'effusion'] are not labels",
        ),
        (lambda d: d["checklist"][0].update(statement=""), "must not be empty"),
        (lambda d: d["checklist"][0].update(statement="x " * 150), "more than 200"),
        (lambda d: d["checklist"][0].update(weight=0), "greater than 0"),
        (lambda d: d["checklist"][0].update(id="Heart"), "should match pattern"),
        (lambda d: d["checklist"][0].update(polarity="maybe"), "'present' or 'absent'"),
        (lambda d: d["checklist"][0].update(expected={}), "names no label"),
        (
            lambda d: d["checklist"][1].update(expected={"normal": False}),
            "must hold for every label",
        ),
        (lambda d: d["labels"]["normal"].update(prompts=[]), "at least 1 item"),
        (lambda d: d["labels"]["normal"].update(label="other"), "expected 'normal'"),
        (lambda d: d.update(colour="red"), "Extra inputs are not permitted"),
        (lambda d: d["checklist"][0].update(extra=1), "Extra inputs are not permitted"),
        (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
    ],
)
def test_invalid_knowledge_is_rejected(change, message):
    d = _data()
    change(d)
    with pytest.raises(ValidationError, match=message):
        ModalityKnowledge.model_validate(d)


def test_save_and_load(tmp_path):
    k = ModalityKnowledge.model_validate(_data())
    path = save_knowledge(k, tmp_path / "k" / "cxr.json")
    assert load_knowledge(path) == k
    assert [p.name for p in path.parent.iterdir()] == ["cxr.json"]  # no temporary left


def test_enriched_prompt_banks_of_a_knowledge_file(tmp_path):
    d = _data()
    d["labels"]["nodule"]["prompts"].append({"text": "one small round spot", "source": "llm"})
    path = save_knowledge(ModalityKnowledge.model_validate(d), tmp_path / "cxr.json")
    banks = enriched_prompts(path, "cxr", ["nodule", "normal"])
    assert banks == {
        "nodule": ["chest radiograph, nodule", "one small round spot"],
        "normal": ["chest radiograph, normal"],
    }
    with pytest.raises(CraftError, match="no knowledge file; run `craft knowledge build -m cxr`"):
        enriched_prompts(tmp_path / "missing.json", "cxr", ["nodule"])


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(CraftError, match="no knowledge file; run `craft knowledge build` first"):
        load_knowledge(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CraftError, match="not valid JSON"):
        load_knowledge(bad)
    d = _data()
    d["checklist"][0]["expected"]["effusion"] = True
    bad.write_text(json.dumps(d))
    with pytest.raises(CraftError) as exc:
        load_knowledge(bad)
    assert "\n" not in str(exc.value) and "checklist.heart_enlarged.expected" in str(exc.value)


def test_request_digest_may_be_empty_or_absent():
    k = ModalityKnowledge.model_validate(_data())
    assert k.labels["normal"].prompts[0].request_digest is None
    ChecklistItem.model_validate(_item())
    d = _data()
    d["labels"]["normal"]["prompts"][0]["request_digest"] = ""
    ModalityKnowledge.model_validate(d)


def test_cas_standin_is_valid_under_the_real_schema():
    """The CAS tests' stand-in knowledge follows this schema (the contract)."""
    from tests.cas.knowledge_standin import phantom_knowledge

    for m in ("phantom-cxr", "phantom-derm"):
        k = phantom_knowledge(m, use_real_schema=True)
        assert isinstance(k, ModalityKnowledge)
        ModalityKnowledge.model_validate(k.model_dump())
