"""The review file: exact round trip, edits, pinning in the build, and the show table."""

from __future__ import annotations

import pytest
from rich.console import Console

from craft.errors import CraftError
from craft.knowledge.build import build_knowledge, review_path
from craft.knowledge.curated import load_curated, shipped_bases
from craft.knowledge.review import file_digest, load_review, render_review, write_review
from craft.knowledge.schema import PromptRecord, load_knowledge
from craft.knowledge.settings import KnowledgeConfig
from craft.knowledge.show import print_knowledge, read_knowledge_file, show_table

LABELS = ["normal", "cardiomegaly", "effusion", "nodule"]


@pytest.mark.parametrize("name", shipped_bases())
def test_round_trip_is_exact(name, tmp_path):
    k = load_curated(name)[0].knowledge()
    k.labels[next(iter(k.labels))].prompts.append(
        PromptRecord(
            text="a prompt: with 'quotes', #hash and ü", source="m/x", request_digest="ab" * 32
        )
    )
    k.provenance = {"backend": "curated", "note": "multi\nline"}
    path = write_review(k, tmp_path / f"{name}.review.yaml")
    back = load_review(path)
    assert back == k
    assert render_review(back) == path.read_text()  # rewriting changes no byte


def _build(tmp_path, settings=None, labels=LABELS):
    return build_knowledge(
        settings or KnowledgeConfig(),
        "phantom-cxr",
        "chest radiograph",
        labels,
        tmp_path / "knowledge" / "phantom-cxr.json",
        phantom="phantom-cxr",
    )


def test_edited_review_is_pinned_verbatim(tmp_path):
    k = _build(tmp_path)
    out = tmp_path / "knowledge" / "phantom-cxr.json"
    written = review_path(out)
    assert written.name == "phantom-cxr.review.yaml" and load_review(written) == k

    edited = tmp_path / "reviews" / "phantom-cxr.review.yaml"
    edited.parent.mkdir()
    text = written.read_text().replace(
        "statement: a small round nodule is visible inside a lung",
        "statement: one small round nodule is visible inside one lung",
    )
    text = text.replace(
        "weight: 1.0\n  expected: {normal: false, cardiomegaly: true",
        "weight: 2.0\n  expected: {normal: false, cardiomegaly: true",
    )
    edited.write_text(text)
    pinned = _build(tmp_path, KnowledgeConfig(review={"phantom-cxr": edited}))
    nodule = next(it for it in pinned.checklist if it.id == "nodule_present")
    assert nodule.statement == "one small round nodule is visible inside one lung"
    assert next(it for it in pinned.checklist if it.id == "heart_enlarged").weight == 2.0
    assert pinned.provenance["review_digest"] == file_digest(edited)
    assert pinned.provenance["review_file"] == str(edited)
    assert load_knowledge(out) == pinned
    assert pinned.labels == k.labels  # the rest verbatim (no label prompt added twice)


def test_invalid_edits_are_one_line_errors(tmp_path):
    _build(tmp_path)
    written = review_path(tmp_path / "knowledge" / "phantom-cxr.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        written.read_text().replace(
            "effusion: false, nodule: true}", "effusion: false, nodules: true}", 1
        )
    )
    with pytest.raises(CraftError) as exc:
        load_review(bad)
    msg = str(exc.value)
    assert "\n" not in msg and "['nodules'] are not labels" in msg
    bad.write_text("labels: [\n")
    with pytest.raises(CraftError, match="not valid YAML"):
        load_review(bad)
    with pytest.raises(CraftError, match="has labels"):
        _build(tmp_path, KnowledgeConfig(review={"phantom-cxr": written}), labels=LABELS[:2])


def test_show_table_lists_every_item_and_label(tmp_path):
    k = _build(tmp_path)
    t = show_table(k)
    assert t.row_count == len(k.checklist)
    headers = [c.header for c in t.columns]
    assert headers[:5] == ["id", "finding", "statement", "pol.", "w"]
    assert headers[5:9] == LABELS and headers[-1] == "oracle"
    console = Console(width=200, record=True, color_system=None)
    out = tmp_path / "knowledge" / "phantom-cxr.json"
    assert read_knowledge_file(out) == read_knowledge_file(review_path(out)) == k
    print_knowledge(k, prompts=True, console=console)
    text = console.export_text()
    assert "costophrenic_angles_sharp" in text and "✓" in text and "✗" in text
    assert "chest radiograph, cardiomegaly, a large heart, clear lungs" in text


def test_show_table_lists_many_labels_by_name():
    k = load_curated("chexpert")[0].knowledge()
    t = show_table(k)
    assert [c.header for c in t.columns][5:] == ["✓ holds for", "✗ must not hold for"]
    console = Console(width=250, record=True, color_system=None)
    console.print(t)
    text = console.export_text()
    assert "pleural_effusion" in text and "all" in text
