"""`craft study export` / `craft study analyze` on a tiny config, through the real CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from craft import cli
from craft.paths import Layout
from craft.study.schema import read_key
from tests.conftest import tiny_config, write_config
from tests.study.helpers import write_answers, write_samples

if "study" not in {g.name for g in cli.app.registered_groups}:  # until cli.py has the verbs
    pytest.skip("craft/cli.py has no `study` verbs yet", allow_module_level=True)


def test_export_then_analyze(tmp_path):
    cfg = tiny_config(str(tmp_path / "results"))
    config = write_config(tmp_path / "config.yaml", cfg)
    lay = Layout(tmp_path / "results")
    labels = cfg["modalities"]["phantom-cxr"]["labels"]
    for method in ("lora-enriched", "lora"):
        path = lay.samples("phantom-cxr", method, 0)
        path.parent.mkdir(parents=True)
        write_samples(path, method, labels=labels, n_per_label=4)
    runner = CliRunner()
    args = ["study", "export", "-c", str(config), "-m", "phantom-cxr", "--pairs-per-label", "3"]
    res = runner.invoke(cli.app, [*args, "--method-a", "lora-enriched", "--method-b", "lora"])
    assert res.exit_code == 0, res.output
    study = tmp_path / "results" / "study" / "phantom-cxr"
    assert sorted(p.name for p in study.iterdir()) == ["key.json", "study.html"]

    key = read_key(study / "key.json")
    answers = write_answers(
        tmp_path / "r1.json", key, "r1", {p.pair_id: ("a", "neither") for p in key.pairs}
    )
    res = runner.invoke(
        cli.app, ["study", "analyze", str(answers), "--key", str(study / "key.json")]
    )
    assert res.exit_code == 0, res.output
    assert "finding: lora-enriched preferred over lora 1.00" in res.output
    summary = json.loads((study / "study_summary.json").read_text())
    assert summary["questions"]["finding"]["overall"]["wins_a"] == 4 * 3

    res = runner.invoke(cli.app, [*args, "--method-a", "nope", "--method-b", "lora"])
    assert res.exit_code != 0 and "not in the config" in str(res.exception)
