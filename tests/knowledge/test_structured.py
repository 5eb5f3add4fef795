"""Answer repair, item checks and merging, without a model."""

from __future__ import annotations

import pytest

from craft.knowledge.checks import cap_prompt, merge_duplicates, not_visual_reason
from craft.knowledge.enrich import AnswerReader
from craft.knowledge.schema import ChecklistItem
from craft.knowledge.settings import EnrichmentConfig
from craft.knowledge.structured import AnswerError, extract_json


@pytest.mark.parametrize(
    "text, value",
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure!\n```json\n{"a": [1, 2,], "b": "x}"}\n```\nDone.', {"a": [1, 2], "b": "x}"}),
        ('```\n{"a": {"b": "\\"quoted\\" {"}}\n```', {"a": {"b": '"quoted" {'}}),
        ('<think>plan</think> {"a": 1} and {"b": 2}', {"a": 1}),
    ],
)
def test_extract_json_repairs(text, value):
    assert extract_json(text) == value


@pytest.mark.parametrize(
    "text, problem",
    [
        ("no json here", "no JSON object"),
        ('{"prompts": ["a", "b"', "cut off"),
        ('```json\n{"prompts": ["a" "b"]}\n```', "malformed"),
    ],
)
def test_extract_json_names_the_problem(text, problem):
    with pytest.raises(AnswerError, match=problem):
        extract_json(text)


@pytest.mark.parametrize(
    "text",
    [
        "the patient reports itching",
        "a history of sunburn",
        "the lesion grew over 3 months",
        "elevated HbA1c levels",
        "the patient is 60 years old",
        "positive for CK20",
        "fever and cough",
    ],
)
def test_not_visual(text):
    assert not_visual_reason(text)


@pytest.mark.parametrize(
    "text",
    [
        "an air-fluid level in the lung",
        "a large heart in the image",
        "the stage of the image",
        "brown globules at the periphery",
    ],
)
def test_visual(text):
    assert not_visual_reason(text) is None


def test_cap_prompt_cuts_at_a_word():
    assert cap_prompt("a  b\n c", 10) == "a b c"
    assert cap_prompt("one two three four", 12) == "one two"


def _it(id_, statement, negation, expected):
    return ChecklistItem(
        id=id_,
        finding="f",
        statement=statement,
        negation=negation,
        question="?",
        polarity="present",
        expected=expected,
    )


def test_merge_duplicates_and_inverses():
    items = [
        _it("a", "The heart is large.", "the heart is normal", {"x": True}),
        _it("b", "the heart is large", "heart normal", {"x": False, "y": False}),
        _it("c", "the heart is normal", "the heart is large", {"z": True}),
        _it("d", "a nodule", "no nodule", {"x": False}),
    ]
    kept, merged = merge_duplicates(items)
    assert [it.id for it in kept] == ["a", "d"] and merged == 2
    assert kept[0].expected == {"x": True, "y": False, "z": False}  # first wins; c inverted


def test_answer_reader_keeps_good_items_and_drops_bad_ones():
    read = AnswerReader(["normal", "nodule"], "nodule", EnrichmentConfig(n_prompts=2))
    good = {
        "finding": "Nodule",
        "statement": "a round nodule",
        "negation": "no nodule",
        "expected": {"Nodule": "yes", "NORMAL": False, "other": True},
    }
    parsed = read(
        {
            "prompts": [
                "chest x-ray, nodule",
                "chest x-ray, nodule",
                3,
                "a patient with cough",
                "third prompt",
                "fourth",
            ],
            "items": [
                good,
                {**good, "statement": "x" * 300},
                {**good, "polarity": "maybe"},
                {**good, "expected": {"normal": False}},
                {**good, "statement": "the patient reports pain"},
                "not an object",
            ],
        }
    )
    assert parsed.prompts == ["chest x-ray, nodule", "third prompt"]
    assert len(parsed.items) == 1
    it = parsed.items[0]
    assert it.finding == "nodule" and it.expected == {"nodule": True, "normal": False}
    assert it.question == "Is it true that a round nodule?"
    assert len(parsed.dropped) == 7
    with pytest.raises(AnswerError, match="no usable checklist item"):
        read({"prompts": ["p"], "items": [{**good, "expected": {}}]})
    with pytest.raises(AnswerError, match='"prompts" must be a list'):
        read({"items": [good]})
