"""`craft init`: a starting config from a site's manifest, that `craft config check` accepts
and whose dry run plans every method."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from PIL import Image

from craft.config import load_config
from craft.errors import CraftError
from craft.starter import init, suggest_resolution
from tests.conftest import BIN, REPO
from tests.site_data import write_site
from tests.workflow.test_workflow import job_counts


def craft(*args, cwd):
    return subprocess.run(
        [str(BIN / "craft"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_init_writes_a_config_that_checks_and_plans_all_six_methods(tmp_path):
    manifest, images = write_site(tmp_path / "hospital", n_patients=12)
    run = craft(
        "init",
        "--manifest",
        str(manifest),
        "--image-root",
        str(images),
        "--out",
        "my.yaml",
        "--modality",
        "ct-slices",
        "--description",
        "CT or MR slice",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "wrote my.yaml" in run.stdout and "wrote " in run.stdout
    # the plan refuses the template until its TODOs are written, naming the line
    check = craft("config", "check", "my.yaml", cwd=tmp_path)
    assert check.returncode == 2 and check.stderr.count("\n") == 1, check.stderr
    assert "knowledge.curated.ct-slices" in check.stderr and "TODO" in check.stderr
    knowledge = tmp_path / "ct-slices.knowledge.yaml"
    written = knowledge.read_text().replace("TODO: ", "").replace("TODO ", "")
    knowledge.write_text(written)
    check = craft("config", "check", "my.yaml", cwd=tmp_path)
    assert check.returncode == 0 and "6 methods x 3 seeds" in check.stdout, check.stderr
    cfg = load_config(tmp_path / "my.yaml")
    m = cfg.modality("ct-slices")
    assert m.labels == ["normal", "lesion"] and m.channels == 1 and m.resolution == 64
    assert list(cfg.methods) == [
        "zero-shot",
        "lora",
        "lora-enriched",
        "full",
        "generic-reward",
        "craft",
    ]
    assert cfg.methods["craft"].align.checklist_weight == 1.0  # the YAML anchor's merge
    text = (tmp_path / "my.yaml").read_text()
    assert "12 patients: splits keep each patient's images together" in text
    # no shipped base knows 'lesion': a template beside the config, named in it
    assert cfg.knowledge.curated == {"ct-slices": str(knowledge)}
    plan = subprocess.run(
        [
            str(BIN / "snakemake"),
            "-s",
            str(REPO / "Snakefile"),
            "-n",
            "--configfile",
            str(tmp_path / "my.yaml"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plan.returncode == 0, plan.stdout[-2000:] + plan.stderr[-2000:]
    counts = job_counts(plan.stdout)
    assert counts["align"] == 6 and counts["adapt"] == 12 and counts["prepare"] == 1, counts
    again = craft(
        "init",
        "--manifest",
        str(manifest),
        "--image-root",
        str(images),
        "--out",
        "my.yaml",
        cwd=tmp_path,
    )
    assert again.returncode == 2 and "my.yaml exists; pass --force" in again.stderr


def test_labels_a_shipped_base_knows_use_it_and_colour_images_give_three_channels(tmp_path):
    root = tmp_path / "derm"
    root.mkdir()
    rows = ["path,label"]
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (600, 700, 3), np.uint8)).save(root / f"{i}.png")
        rows.append(f"{i}.png,{('mel', 'nv')[i % 2]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    written = init(root / "labels.csv", root, tmp_path / "derm.yaml")
    assert written == [tmp_path / "derm.yaml"]  # no template: ham10000 knows mel and nv
    cfg = load_config(tmp_path / "derm.yaml")
    assert cfg.knowledge.curated == {"derm": "ham10000"}
    assert cfg.modality("derm").channels == 3 and cfg.modality("derm").resolution == 512


def test_init_refuses_a_manifest_of_one_label_in_one_line(tmp_path):
    root = tmp_path / "one"
    root.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a.png")
    (root / "m.csv").write_text("path,label\na.png,normal\n")
    with pytest.raises(CraftError, match=r"1 label\(s\) \(normal\); craft needs at least two"):
        init(root / "m.csv", root, tmp_path / "x.yaml")
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize(("side", "want"), [(28, 64), (200, 192), (511, 448), (2048, 512)])
def test_suggested_resolution(side, want):
    assert suggest_resolution(side) == want


def test_init_names_a_label_that_is_not_a_craft_name_and_a_fix(tmp_path):
    """A hospital's label column says 'Pleural Effusion': one line naming the label and a name
    that works, not a validation error about a temporary file."""
    root = tmp_path / "site"
    root.mkdir()
    rows = ["path,label"]
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / f"{i}.png")
        rows.append(f"{i}.png,{('normal', 'Pleural Effusion')[i % 2]}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(CraftError) as err:
        init(root / "m.csv", root, tmp_path / "x.yaml")
    msg = str(err.value)
    assert "label 'Pleural Effusion' is not a craft name" in msg and "'pleural-effusion'" in msg
    assert ".tmp" not in msg and "\n" not in msg
    assert not (tmp_path / "x.yaml").exists()
