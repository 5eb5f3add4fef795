"""The config contract: validation errors are one line naming the field (reruns: test_specs)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from craft.config import CraftConfig, dump_config, load_config, validate_config
from craft.errors import CraftError
from tests.conftest import BIN, REPO, write_config

DEFAULT = REPO / "config.yaml"


def default_data() -> dict:
    """config.yaml with the foundation trained in the workflow, so every stage has a slice."""
    data = yaml.safe_load(DEFAULT.read_text())
    data["models"]["generator"] = "pretrain"
    return data


def error_of(data: dict) -> str:
    """The CraftError message that validating ``data`` raises (the test fails if none)."""
    with pytest.raises(CraftError) as info:
        validate_config(data)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def changed(mutate) -> dict:
    data = default_data()
    mutate(data)
    return data


# ----------------------------------------------------------------------------- validation


def test_default_config_validates():
    cfg = load_config(DEFAULT)
    assert isinstance(cfg, CraftConfig)
    assert set(cfg.modalities) == {"phantom-cxr", "phantom-derm"}
    assert list(cfg.methods) == [
        "zero-shot",
        "lora",
        "lora-enriched",
        "full",
        "generic-reward",
        "craft",
    ]
    # The resolved dump validates again to the same config (defaults filled in, nothing lost).
    again = validate_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_resolution_not_multiple_of_8_names_field_and_value():
    msg = error_of(changed(lambda d: d["modalities"]["phantom-cxr"].update(resolution=100)))
    assert "modalities.phantom-cxr.resolution" in msg
    assert "100 is not a multiple of 8" in msg


def test_unknown_key_is_named():
    msg = error_of(changed(lambda d: d["modalities"]["phantom-derm"].update(resoluton=32)))
    assert "modalities.phantom-derm.resoluton" in msg
    assert "unknown key" in msg
    msg = error_of(changed(lambda d: d.update(sampling_steps=3)))
    assert "sampling_steps" in msg and "unknown key" in msg


def test_label_not_of_the_phantom():
    msg = error_of(
        changed(lambda d: d["modalities"]["phantom-cxr"].update(labels=["normal", "melanoma"]))
    )
    assert "modalities.phantom-cxr.labels" in msg
    assert "melanoma" in msg
    assert "cardiomegaly" in msg  # says what is allowed


def test_channels_must_match_the_phantom():
    msg = error_of(changed(lambda d: d["modalities"]["phantom-cxr"].update(channels=3)))
    assert "modalities.phantom-cxr.channels" in msg and "3" in msg


def test_splits_must_sum_to_one():
    msg = error_of(
        changed(
            lambda d: d["modalities"]["phantom-cxr"].update(
                splits={"train": 0.8, "val": 0.15, "test": 0.15}
            )
        )
    )
    assert "modalities.phantom-cxr.splits" in msg
    assert "sum to 1" in msg and "1.1" in msg


def test_duplicate_seeds():
    msg = error_of(changed(lambda d: d.update(seeds=[0, 1, 0])))
    assert msg.count("seeds") >= 1 and "[0, 1, 0]" in msg and "duplicate" in msg


def test_bad_value_names_value_and_field():
    msg = error_of(changed(lambda d: d["methods"]["lora"].update(lr="fast")))
    assert "methods.lora.lr" in msg and '"fast"' in msg
    msg = error_of(changed(lambda d: d["methods"]["lora"].update(kind="lorax")))
    assert "methods.lora.kind" in msg and "lorax" in msg and "full" in msg


def test_field_path_inside_data_source_has_no_union_tag():
    msg = error_of(
        changed(lambda d: d["modalities"]["phantom-cxr"]["source"].update(n_per_label=1))
    )
    assert "modalities.phantom-cxr.source.n_per_label: 1" in msg


def test_load_config_names_the_file(tmp_path):
    data = changed(lambda d: d["modalities"]["phantom-cxr"].update(resolution=100))
    path = write_config(tmp_path / "bad.yaml", data)
    with pytest.raises(CraftError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "100 is not a multiple of 8" in str(info.value)
    with pytest.raises(CraftError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("seeds: [0\nmodalities: {")
    with pytest.raises(CraftError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["methods"]["lora"].update(lr=float("inf")), "methods.lora.lr"),
        (lambda d: d["sampling"].update(guidance_scale=float("inf")), "sampling.guidance_scale"),
        (lambda d: d["methods"]["lora"].update(weight_decay=float("nan")), "weight_decay"),
        (lambda d: d["cas"].update(tail_quantile=float("nan")), "cas.tail_quantile"),
        (lambda d: d.update(seeds=[-1]), "seeds.0"),
    ],
)
def test_non_finite_numbers_and_negative_seeds_are_refused(mutate, field):
    message = error_of(changed(mutate))
    assert field in message, message


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("seeds: [0]\nseeds: [1]\n", r"line 2: key 'seeds' is written twice \(first on line 1\)"),
        ("modalities:\n  a: {}\n  a: {}\n", r"line 3: key 'a' is written twice"),
        ("seeds: [0\nmodalities: {", r"line \d+, column \d+: not valid YAML"),
        ("seeds: [0]\n".encode("utf-16"), "saved as UTF-16; save it as UTF-8"),
        (b"seeds: \xff\xfe\x00\x01", "not UTF-8 text"),
        (b"seeds: [0]\x00\x00", "binary bytes"),
        ("- a\n- b\n", "expected a mapping of config keys"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, content, says):
    path = tmp_path / "bad.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(CraftError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert re.search(says, message), message


def test_a_config_path_that_is_a_folder_says_so(tmp_path):
    with pytest.raises(CraftError, match=r"is a folder, not a file; give the path of a config"):
        load_config(tmp_path)


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    """'<<: *anchor' merges (craft init writes them) are no key written twice."""
    data = default_data()
    path = write_config(tmp_path / "merge.yaml", data)
    text = path.read_text().replace("methods:\n", "base: &b {steps: 3}\nmethods:\n", 1)
    text = text.replace("  lora:\n", "  lora:\n    <<: *b\n", 1)
    path.write_text(text.replace("base: &b", "x-anchors: &b", 1))
    with pytest.raises(CraftError, match="x-anchors"):  # an unknown top-level key, not a twin
        load_config(path)
    assert (
        yaml.safe_load(path.read_text())["methods"]["lora"]["steps"]
        == data["methods"]["lora"]["steps"]
    )


# ----------------------------------------------------------------------------- CLI


def craft(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "craft"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_config_check_and_show(tmp_path):
    ok = craft("config", "check", str(DEFAULT), cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout and "2 modalities x 6 methods x 1 seeds" in ok.stdout
    # its generator is a relative path: from another folder, jobs would not find it
    elsewhere = craft("config", "check", str(DEFAULT), cwd=tmp_path)
    assert elsewhere.returncode == 2 and "Traceback" not in elsewhere.stderr
    assert (
        "models.generator: 'assets/phantom-foundation/phantom-derm': no such folder (relative "
        f"paths start at {tmp_path})" in elsewhere.stderr
    ), elsewhere.stderr

    shown = craft("config", "show", "--config", str(DEFAULT), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    resolved = yaml.safe_load(shown.stdout)
    assert resolved["sampling"]["timestep_spacing"] == "trailing"  # a default, filled in
    assert validate_config(resolved) == load_config(DEFAULT)

    # every field of every node is printed, at its default too (none is left out)
    def missing(node, model, path=""):
        out = []
        for name, field in model.model_fields.items():
            where = f"{path}{name}"
            if name not in node:
                out.append(where)
                continue
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel) and node[name] is not None:
                out += missing(node[name], kind, where + ".")
        return out

    assert missing(resolved, CraftConfig) == []
    craft_align = resolved["methods"]["craft"]["align"]
    for name in ("reward_power", "realism_weight", "tolerance_se", "compile"):
        assert name in craft_align, name
    assert "gpu_precision" in resolved["models"]

    schema = craft("config", "schema", cwd=tmp_path)
    assert schema.returncode == 0, schema.stderr
    defs = json.loads(schema.stdout)["$defs"]
    assert "reward_power" in defs["AlignSettings"]["properties"]


@pytest.mark.parametrize(
    "verb", [("config", "check", "{path}"), ("config", "show", "-c", "{path}")]
)
def test_cli_bad_config_is_one_line_exit_2(tmp_path, verb):
    data = changed(lambda d: d["modalities"]["phantom-cxr"].update(resolution=100))
    path = write_config(tmp_path / "bad.yaml", data)
    r = craft(*[a.format(path=path) for a in verb], cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("craft: error:")
    assert (
        "modalities.phantom-cxr.resolution" in lines[0] and "100 is not a multiple of 8" in lines[0]
    )
    assert r.stdout == ""


def test_cli_missing_config_exit_2(tmp_path):
    r = craft("config", "show", cwd=tmp_path)  # default config.yaml, absent here
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "config.yaml" in r.stderr and "does not exist" in r.stderr


def test_cli_runner_check(tmp_path):
    """The typer app itself (no console wrapper): a valid config passes, a bad one raises."""
    from typer.testing import CliRunner

    from craft.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["config", "check", str(DEFAULT)])
    assert result.exit_code == 0, result.output
    bad = write_config(tmp_path / "bad.yaml", changed(lambda d: d.update(seeds=[1, 1])))
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert isinstance(result.exception, CraftError)
    assert "seeds" in str(result.exception)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:sk-LEAKME@host:8000/v1",
        "http://sk-LEAKME@host:8000/v1",
        "http://host:8000/v1?api_key=sk-LEAKME",
        "http://host:8000/v1#token=sk-LEAKME",
        "htp://sk-LEAKME@host/v1",
    ],
)
def test_a_key_inside_the_servers_url_is_refused_without_repeating_it(url):
    data = changed(
        lambda d: d.update(knowledge={"backend": {"kind": "openai", "base_url": url, "model": "m"}})
    )
    message = error_of(data)
    assert message.startswith("invalid config: knowledge.backend.base_url: "), message
    assert "LEAKME" not in message, message


def test_a_runs_evaluations_are_grouped_by_default_and_then_take_no_gpu_model():
    """resources.group_evaluations: on by default; a GPU model on a grouped rule's entry is
    refused while it is on (Snakemake refuses a group whose jobs differ in a string resource,
    and the CPU evaluations ask for none), and allowed with it off."""
    from tests.conftest import tiny_config

    data = tiny_config()
    assert validate_config(data).resources.group_evaluations is True
    for stage in ("score", "downstream", "evaluate"):
        bad = {**data, "resources": {stage: {"gpu": 1, "gpu_model": "a100"}}}
        with pytest.raises(CraftError, match=rf"resources.{stage}.gpu_model: .*group_evaluations"):
            validate_config(bad)
        off = {**data, "resources": {stage: {"gpu": 1, "gpu_model": "a100"}}}
        off["resources"]["group_evaluations"] = False
        assert getattr(validate_config(off).resources, stage).gpu_model == "a100"
    ok = {**data, "resources": {"adapt": {"gpu": 1, "gpu_model": "a100"}}}
    assert validate_config(ok).resources.adapt.gpu_model == "a100"
