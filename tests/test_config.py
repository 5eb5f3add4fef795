"""The config contract: validation errors are one line naming the field, slices decide reruns."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from craft.config import CraftConfig, dump_config, load_config, validate_config
from craft.errors import CraftError
from tests.conftest import BIN, REPO, write_config

DEFAULT = REPO / "config.yaml"
STAGES = ("prepare", "pretrain", "adapt", "generate", "evaluate", "report")


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


# ----------------------------------------------------------------------------- slices


def digests(cfg: CraftConfig) -> dict[tuple[str, str, str | None], str]:
    """Every (stage, modality, method) digest of a config."""
    out = {}
    for m in cfg.modalities:
        for stage in ("prepare", "pretrain"):
            out[(stage, m, None)] = cfg.digest(stage, m)
        for k in cfg.methods:
            for stage in STAGES:
                out[(stage, m, k)] = cfg.digest(stage, m, k)
    return out


def changed_keys(mutate) -> set[tuple[str, str, str | None]]:
    before = digests(validate_config(default_data()))
    after = digests(validate_config(changed(mutate)))
    assert before.keys() == after.keys()
    return {key for key in before if before[key] != after[key]}


def test_digest_is_stable_and_plain_data():
    a, b = validate_config(default_data()), validate_config(default_data())
    assert digests(a) == digests(b)
    s = a.slice("generate", "phantom-cxr", "lora")
    assert yaml.safe_load(yaml.safe_dump(s)) == s  # plain scalars, lists and dicts only
    with pytest.raises(CraftError, match="nope"):
        a.digest("adapt", "nope", "lora")
    with pytest.raises(CraftError, match="nope"):
        a.digest("adapt", "phantom-cxr", "nope")


def test_modality_change_touches_only_that_modality():
    keys = changed_keys(lambda d: d["modalities"]["phantom-cxr"].update(resolution=24))
    every_cxr = {k for k in digests(validate_config(default_data())) if k[1] == "phantom-cxr"}
    assert keys == every_cxr


def test_method_change_touches_only_that_methods_downstream_digests():
    keys = changed_keys(lambda d: d["methods"]["lora"].update(steps=151))
    assert keys, "changing methods.lora.steps changed no digest"
    assert {k[2] for k in keys} == {"lora"}
    assert {k[1] for k in keys} == {"phantom-cxr", "phantom-derm"}
    assert {"adapt", "generate"} <= {k[0] for k in keys}
    assert not {k[0] for k in keys} & {"prepare", "pretrain"}


def test_sampling_change_reruns_training_only_where_it_samples_with_it():
    def stages_changed(**sampling) -> set[tuple[str, str]]:
        keys = changed_keys(lambda d: d["sampling"].update(sampling))
        return {(k[0], k[2]) for k in keys}

    align_methods = {k for k, m in default_data()["methods"].items() if "align" in m}
    trained = lambda pairs: {m for stage, m in pairs if stage in ("prepare", "pretrain", "adapt")}  # noqa: E731
    # what generate alone reads (images per label, batch size) retrains nothing; nor do
    # sampling.steps, which the default's align methods replace by align.sample_steps
    for change in ({"n_per_label": 5}, {"batch_size": 7}, {"steps": 16}):
        pairs = stages_changed(**change)
        assert "generate" in {stage for stage, _ in pairs} and not trained(pairs), change
    # the guidance scale is what reward finetuning samples with: it reruns, and only it
    assert trained(stages_changed(guidance_scale=4.0)) == align_methods

    def without_sample_steps(d):
        for name in align_methods:
            d["methods"][name]["align"].pop("sample_steps")

    before = validate_config(changed(without_sample_steps))
    after = validate_config(
        changed(lambda d: (without_sample_steps(d), d["sampling"].update(steps=16)))
    )
    for name in align_methods:
        assert before.digest("align", "phantom-cxr", name) != after.digest(
            "align", "phantom-cxr", name
        )
    assert before.digest("adapt", "phantom-cxr", "lora") == after.digest(
        "adapt", "phantom-cxr", "lora"
    )


def test_pretrain_change_does_not_touch_prepare():
    keys = changed_keys(lambda d: d.setdefault("pretrain", {}).update(steps=301))
    stages = {k[0] for k in keys}
    assert "pretrain" in stages and "adapt" in stages
    assert "prepare" not in stages


def test_data_set_change_does_not_retrain_the_foundation():
    keys = changed_keys(lambda d: d["modalities"]["phantom-cxr"]["source"].update(n_per_label=77))
    stages = {k[0] for k in keys if k[1] == "phantom-cxr"}
    assert {"prepare", "adapt", "generate"} <= stages
    assert "pretrain" not in stages
    assert {k[1] for k in keys} == {"phantom-cxr"}


def test_gpu_precision_reruns_the_generator_stages_only_when_changed():
    base = validate_config(default_data())
    assert "gpu_precision" not in base.slice("generate", "phantom-cxr", "lora")["models"]
    mutate = lambda d: d.setdefault("models", {}).update(gpu_precision="float32")  # noqa: E731
    keys = changed_keys(mutate)
    assert {"adapt", "generate"} <= {k[0] for k in keys}
    assert not {k[0] for k in keys} & {"prepare", "pretrain"}
    f32 = validate_config(changed(mutate))
    assert f32.digest("align", "phantom-cxr", "craft") != base.digest(
        "align", "phantom-cxr", "craft"
    )


def test_method_settings_that_change_nothing_rerun_nothing():
    def method(name: str, **values):
        return lambda d: d["methods"][name].update(values)

    # where a preempted run restarts is not what it learns: no method reruns, on any stage
    for name in ("lora", "full", "craft"):
        assert changed_keys(method(name, checkpoint_every=7)) == set(), name
    for name in ("lora", "full"):  # memory, not what is learnt
        assert changed_keys(method(name, gradient_checkpointing=True)) == set(), name
    with pytest.raises(CraftError, match=r"methods.craft.gradient_checkpointing: .*align\."):
        validate_config(changed(method("craft", gradient_checkpointing=True)))
    zero_shot = {"steps": 9, "batch_size": 3, "lr": 0.1, "weight_decay": 0.1}
    lora_shape = {"rank": 2, "alpha": 4.0, "target_modules": ["to_q"]}
    for name, values in (("zero-shot", zero_shot), ("zero-shot", lora_shape), ("full", lora_shape)):
        for key, value in values.items():
            assert changed_keys(method(name, **{key: value})) == set(), (name, key)
    # what they do change still reruns
    assert {k[2] for k in changed_keys(method("lora", rank=2))} == {"lora"}
    assert {k[2] for k in changed_keys(method("lora-enriched", label_prompt_share=0.5))} == {
        "lora-enriched",
        "generic-reward",
        "craft",
    }
    assert {k[2] for k in changed_keys(method("full", lr=0.1))} == {"full"}
    # dumps (craft config show) keep what the file says
    data = default_data()
    method("full", rank=2)(data)
    assert validate_config(data).method("full").model_dump()["rank"] == 2


def test_resources_and_seeds_change_no_digest():
    assert changed_keys(lambda d: d.update(resources={"adapt": {"threads": 4}})) == set()
    assert changed_keys(lambda d: d.update(seeds=[0, 1, 2])) == set()


# ----------------------------------------------------------------------------- CLI


def craft(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "craft"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_config_check_and_show(tmp_path):
    ok = craft("config", "check", str(DEFAULT), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout and "2 modalities x 6 methods x 1 seeds" in ok.stdout

    shown = craft("config", "show", "--config", str(DEFAULT), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    resolved = yaml.safe_load(shown.stdout)
    assert resolved["sampling"]["timestep_spacing"] == "trailing"  # a default, filled in
    assert validate_config(resolved) == load_config(DEFAULT)


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
