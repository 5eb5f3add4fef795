"""The shipped knowledge bases: valid, visually checkable, with absence items; the phantom ones
mirror the oracle; config labels may be a subset under the data sets' class codes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from craft.errors import CraftError
from craft.knowledge.checks import item_problem, not_visual_reason
from craft.knowledge.curated import (
    CURATED_DIR,
    curated_knowledge,
    load_curated,
    resolve_base,
    shipped_bases,
)

REAL = ["chexpert", "fundus-dr", "ham10000", "nct-crc-he"]
PHANTOMS = ["phantom-cxr", "phantom-derm"]
SIZES = {
    "chexpert": 14,
    "ham10000": 7,
    "fundus-dr": 5,
    "nct-crc-he": 9,
    "phantom-cxr": 4,
    "phantom-derm": 2,
}


def test_every_base_is_shipped_and_valid():
    assert shipped_bases() == sorted(REAL + PHANTOMS)
    for name in shipped_bases():
        base, digest = load_curated(name)
        assert base.name == name and len(digest) == 64
        k = base.knowledge()
        assert len(k.labels) == SIZES[name]
        for lab in k.labels:
            assert len(k.prompts_for(lab)) >= 3, (name, lab)
            assert not any(not_visual_reason(p) for p in k.prompts_for(lab)), (name, lab)
        for it in k.checklist:
            assert item_problem(it) is None, (name, it.id)
            assert it.question.endswith("?"), (name, it.id)
        assert any(it.scope == "modality" for it in k.checklist), name


def _is_absence(item, label) -> bool:
    """The item says something must NOT be in an image of ``label``."""
    return item.scope == "label" and (item.polarity == "present") != item.expected[label]


@pytest.mark.parametrize("name", REAL)
def test_real_bases_have_absence_items_for_every_label(name):
    k = load_curated(name)[0].knowledge()
    for lab in k.labels:
        items = k.items_for(lab)
        assert any(_is_absence(it, lab) for it in items), (name, lab)
        assert sum(it.scope == "label" for it in items) >= 2, (name, lab)


@pytest.mark.parametrize("name", PHANTOMS)
def test_phantom_items_mirror_the_oracle(name):
    from craft.data.oracle import label_criteria

    base = load_curated(name)[0]
    assert base.phantom == name
    k = base.knowledge()
    crit = label_criteria(name)
    assert set(k.labels) == set(crit)
    linked = {}
    for it in k.checklist:
        assert it.oracle_criterion is not None, it.id
        for lab, want in crit.items():
            assert it.oracle_criterion in want, (it.id, it.oracle_criterion)
            holds = (
                want[it.oracle_criterion]
                if it.polarity == "present"
                else not want[it.oracle_criterion]
            )
            assert it.expected[lab] == holds, (it.id, lab)
        linked[it.oracle_criterion] = it.id
    assert set(linked) == set(next(iter(crit.values())))  # every criterion has its item
    for lab, want in crit.items():  # the labels with absent findings have absence items
        if not all(want.values()):
            assert any(_is_absence(it, lab) for it in k.items_for(lab)), lab


def _caption_words() -> list[str]:
    """CAPTION_WORDS of craft/train/pretrain.py, read without importing torch."""
    tree = ast.parse((Path(__file__).parents[2] / "craft/train/pretrain.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CAPTION_WORDS":
            return ast.literal_eval(node.value)
    return []


@pytest.mark.parametrize("name", PHANTOMS)
def test_phantom_prompts_use_the_tiny_text_encoders_words(name):
    from craft.models.tokenizer import BASE_WORDS

    base = load_curated(name)[0]
    known = set(BASE_WORDS) | set(_caption_words()) | set(base.description.split())
    for lab, v in base.labels.items():
        for p in v.prompts:
            words = set(re.findall(r"[a-z0-9]+", p.lower()))
            assert words <= known | {lab}, (lab, p, sorted(words - known - {lab}))


def test_subset_of_labels_under_class_codes():
    base = load_curated("ham10000")[0]
    k = curated_knowledge(base, "derm", "dermoscopy", ["MEL", "nv"])
    assert list(k.labels) == ["MEL", "nv"]
    assert "melanoma" in k.prompts_for("MEL")[0]
    for it in k.checklist:
        assert set(it.expected) <= {"MEL", "nv"}
        if it.scope == "modality":
            assert it.expected == {"MEL": True, "nv": True}
    assert not any(it.finding == "lacunae" and "MEL" not in it.expected for it in k.checklist)
    assert "arborizing_vessels" in {it.id for it in k.checklist}  # nevus: false, so kept
    assert "strawberry_pattern" in {it.id for it in k.checklist}
    assert "no_pigment_network" not in {it.id for it in k.checklist}  # neither label: dropped
    fundus = curated_knowledge(load_curated("fundus-dr")[0], "f", "fundus", ["0", "4"])
    assert list(fundus.labels) == ["0", "4"]


def test_unknown_labels_and_bases_are_one_line_errors(tmp_path):
    base = load_curated("phantom-cxr")[0]
    with pytest.raises(CraftError, match=r"has no label \['pneumothorax'\]"):
        curated_knowledge(base, "cxr", "chest", ["normal", "pneumothorax"])
    with pytest.raises(CraftError, match="no curated knowledge for modality 'retina'"):
        resolve_base({}, "retina", None)
    assert resolve_base({}, "cxr", "phantom-cxr") == "phantom-cxr"
    assert resolve_base({}, "chexpert", None) == "chexpert"
    assert resolve_base({"cxr": "chexpert"}, "cxr", "phantom-cxr") == "chexpert"
    with pytest.raises(CraftError, match="neither a shipped knowledge base"):
        load_curated("no-such-base")
    bad = tmp_path / "mine.yaml"
    bad.write_text(
        (CURATED_DIR / "phantom-cxr.yaml")
        .read_text()
        .replace(
            "expected: {normal: false, cardiomegaly: true,",
            "expected: {normal: false, cardio: true,",
        )
    )
    with pytest.raises(CraftError, match=r"mine.yaml: invalid curated knowledge: .*'cardio'"):
        load_curated(str(bad))


def test_a_template_is_refused_until_filled_in_and_then_builds_knowledge(tmp_path):
    from craft.knowledge.curated import TODO, template

    labels = ["0", "mel", "no finding"]  # a grade, a class code, a name with a space
    path = tmp_path / "retina.yaml"
    path.write_text(template("retina", "fundus photograph", labels))
    with pytest.raises(CraftError, match=r"retina.yaml: line \d+ still holds a TODO of the te"):
        load_curated(str(path))
    filled = "\n".join(
        line.replace(f"{TODO} ", "").replace(f"{TODO}: ", "").replace(TODO, "it")
        if not line.lstrip().startswith("#")
        else line
        for line in path.read_text().splitlines()
    )
    path.write_text(filled)
    base, digest = load_curated(str(path))
    assert list(base.labels) == labels and len(digest) == 64
    kn = curated_knowledge(base, "retina", "fundus photograph", labels)
    assert list(kn.labels) == labels
    items = {it.id: it for it in kn.checklist}
    assert items["view_and_anatomy"].scope == "modality"
    assert items["no_finding_finding"].expected == {"0": False, "mel": False, "no finding": True}


def test_cli_writes_a_template_for_a_configs_modality_and_the_schema(tmp_path):
    import json
    import subprocess

    import yaml

    from tests.conftest import BIN, tiny_config

    cfg = tiny_config()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    craft = [str(BIN / "craft"), "knowledge"]
    run = subprocess.run(
        [*craft, "template", "-c", "c.yaml", "-m", "phantom-derm"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    written = yaml.safe_load((tmp_path / "phantom-derm.yaml").read_text())
    assert list(written["labels"]) == ["nevus", "melanoma"]
    again = subprocess.run(
        [*craft, "template", "-c", "c.yaml", "-m", "phantom-derm"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    schema = subprocess.run([*craft, "schema"], capture_output=True, text=True, timeout=120)
    props = json.loads(schema.stdout)["$defs"]["CuratedItem"]["properties"]
    assert all(p.get("description") for p in props.values()), props


def test_the_documented_example_is_a_valid_base(tmp_path):
    """docs/knowledge.md's example file loads as written."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "knowledge.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "checklist:" in b)
    (tmp_path / "retina.yaml").write_text(block)
    base, _ = load_curated(str(tmp_path / "retina.yaml"))
    kn = curated_knowledge(base, "retina", base.description, ["0", "moderate"])
    assert list(kn.labels) == ["0", "moderate"] and len(kn.checklist) == 3
