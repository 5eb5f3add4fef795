"""`craft profile install` and the GPU resource names of the rules and the SLURM profile.

snakemake-executor-plugin-slurm reads the resource ``gpu`` (-> ``sbatch --gpus=N``). A rule or a
profile entry that says ``gpus`` is silently ignored and the job lands on a CPU node, so the
names are checked here statically, without a cluster.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from craft.errors import CraftError
from craft.profile import default_dest_root, install_profile, render_profile

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"
SLURM_TEMPLATE = PROFILES / "slurm" / "config.yaml"
# Stages that need a GPU on a cluster (align and score come with later stages).
GPU_RULES = {
    "pretrain",
    "adapt",
    "generate",
    "align",
    "train_evaluator",
    "reference",
    "score",
    "downstream",
}
# Rules whose GPU need depends on the config (knowledge: a curated base needs none, a
# transformers backend one; the evaluation stages: tiny phantom encoders need none, DINOv2 or
# an auditing VLM one); they declare `gpu=` from config.resources but the profile leaves
# them on the CPU partition unless the site uncomments their block.
OPTIONAL_GPU_RULES = {"knowledge", "memorization", "audit", "fidelity"}


def comments(text: str) -> list[str]:
    return [ln.split("#", 1)[1].strip() for ln in text.splitlines() if "#" in ln]


# ----------------------------------------------------------------------------- install


def test_install_fills_values_and_keeps_comments(tmp_path):
    dest = install_profile("slurm", "lab_42", "batch", "a100", dest_root=tmp_path)
    assert dest == tmp_path / "slurm" / "config.yaml"
    text = dest.read_text()
    got = yaml.safe_load(text)
    template = yaml.safe_load(SLURM_TEMPLATE.read_text())

    assert got["executor"] == "slurm"
    assert got["default-resources"]["slurm_account"] == "lab_42"
    assert got["default-resources"]["slurm_partition"] == "batch"
    gpu_rules = {r for r, res in template["set-resources"].items() if res.get("gpu", 0)}
    assert gpu_rules >= {"pretrain", "adapt", "generate"}
    for rule in gpu_rules:
        assert got["set-resources"][rule]["slurm_partition"] == "a100", rule
        assert got["set-resources"][rule]["gpu"] == template["set-resources"][rule]["gpu"]
    # everything else is the template's
    for key in template:
        if key not in ("default-resources", "set-resources"):
            assert got[key] == template[key], key
    # every comment of the template survives, in order (plus our two-line header)
    kept = comments(text)
    assert kept[2:] == comments(SLURM_TEMPLATE.read_text())
    assert kept[0].startswith("Installed by: craft profile install slurm --account lab_42")
    assert "<ACCOUNT>" not in text.split("Installed by")[0]
    assert not re.search(r"^\s*slurm_account:\s*\"<", text, re.M)


def test_install_without_gpu_partition_uses_the_cpu_partition(tmp_path):
    dest = install_profile("slurm", "root", "main", None, dest_root=tmp_path)
    got = yaml.safe_load(dest.read_text())
    assert got["default-resources"]["slurm_partition"] == "main"
    for rule in ("pretrain", "adapt", "generate"):
        assert got["set-resources"][rule]["slurm_partition"] == "main"
        assert got["set-resources"][rule]["gpu"] == 1


def test_install_refuses_to_overwrite_without_force(tmp_path):
    dest = install_profile("slurm", "root", "cpu", "gpu", dest_root=tmp_path)
    first = dest.read_text()
    # same values again: identical file, nothing to refuse
    assert install_profile("slurm", "root", "cpu", "gpu", dest_root=tmp_path) == dest
    # other values: refused, file untouched, one line naming --force
    with pytest.raises(CraftError, match="--force") as err:
        install_profile("slurm", "other", "cpu", "gpu", dest_root=tmp_path)
    assert "\n" not in str(err.value) and str(dest) in str(err.value)
    assert dest.read_text() == first
    # a hand-edited profile is not overwritten either
    dest.write_text(first + "# my edit\n")
    with pytest.raises(CraftError, match="--force"):
        install_profile("slurm", "root", "cpu", "gpu", dest_root=tmp_path)
    assert dest.read_text().endswith("# my edit\n")


def test_install_force_overwrites(tmp_path):
    install_profile("slurm", "root", "cpu", "gpu", dest_root=tmp_path)
    dest = install_profile("slurm", "other", "cpu2", "gpu2", dest_root=tmp_path, force=True)
    got = yaml.safe_load(dest.read_text())
    assert got["default-resources"]["slurm_account"] == "other"
    assert got["set-resources"]["adapt"]["slurm_partition"] == "gpu2"
    assert not list(dest.parent.glob(".*tmp"))  # no temporary file left behind


@pytest.mark.parametrize(
    "account,partition,gpu_partition",
    [
        ("my lab", "cpu", "gpu"),
        ('lab"', "cpu", "gpu"),
        ("lab'", "cpu", "gpu"),
        ("a,b", "cpu", "gpu"),
        ("", "cpu", "gpu"),
        ("root", "cpu gpu", "gpu"),
        ("root", "cpu", "gp'u"),
        ("root", "cpu", "$(rm -rf x)"),
        ("root", "-p", "gpu"),
    ],
)
def test_install_rejects_bad_names(tmp_path, account, partition, gpu_partition):
    with pytest.raises(CraftError, match="not a valid name"):
        install_profile("slurm", account, partition, gpu_partition, dest_root=tmp_path)
    assert not (tmp_path / "slurm").exists()


def test_install_unknown_profile_names_the_available_ones(tmp_path):
    with pytest.raises(CraftError, match=r"no profile template .*available: .*slurm"):
        install_profile("pbs", "root", "cpu", None, dest_root=tmp_path)
    with pytest.raises(CraftError, match="not a valid name"):
        install_profile("../slurm", "root", "cpu", None, dest_root=tmp_path)


def test_install_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(CraftError, match="no profile template"):
        install_profile("slurm", "root", "cpu", None, dest_root=tmp_path, source=tmp_path / "nope")


def test_install_refuses_a_shadowing_profile_file(tmp_path):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "profile.yaml").write_text("executor: local\n")
    with pytest.raises(CraftError, match="profile.yaml"):
        install_profile("slurm", "root", "cpu", "gpu", dest_root=tmp_path)


def test_default_dest_is_where_snakemake_looks(tmp_path, monkeypatch):
    """`snakemake --profile slurm` finds what install_profile wrote by default."""
    from platformdirs import AppDirs
    from snakemake import cli

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("snakemake.common.APPDIRS", None)
    assert default_dest_root() == Path(AppDirs("snakemake", "snakemake").user_config_dir)
    dest = install_profile("slurm", "root", "cpu", "gpu")
    assert dest == tmp_path / "xdg" / "snakemake" / "slurm" / "config.yaml"
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found = cli.get_profile_dir("slurm")
    assert found is not None and Path(found[1]) == dest


def test_default_dest_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_dest_root() == tmp_path / ".config" / "snakemake"


def test_render_keeps_non_gpu_overrides(tmp_path):
    template = (
        "executor: slurm\n"
        "default-resources:\n"
        '  slurm_account: "<ACCOUNT>"  # account\n'
        "  slurm_partition: cpu\n"
        "set-resources:\n"
        "  report:\n"
        "    slurm_partition: bigmem   # stays\n"
        "  adapt:\n"
        "    slurm_partition: gpu\n"
        "    gpu: 1\n"
    )
    text = render_profile(template, "acc", "short", "v100")
    got = yaml.safe_load(text)
    assert got["default-resources"] == {"slurm_account": "acc", "slurm_partition": "short"}
    assert got["set-resources"]["report"]["slurm_partition"] == "bigmem"
    assert got["set-resources"]["adapt"]["slurm_partition"] == "v100"
    assert '"acc"  # account' in text and "# stays" in text


# ----------------------------------------------------------------------------- GPU names


def rule_resources(rules_dir: Path = REPO / "rules") -> dict[str, dict[str, str]]:
    """{rule: {resource key: expression}} from the `resources:` blocks of rules/*.smk."""
    out: dict[str, dict[str, str]] = {}
    for smk in sorted(Path(rules_dir).glob("*.smk")):
        rule = None
        section = None
        section_indent = 0
        for line in smk.read_text().splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            indent = len(line) - len(line.lstrip())
            m = re.match(r"^(?:rule|checkpoint)\s+(\w+)\s*:", line)
            if m:
                rule, section = m.group(1), None
                out[rule] = {}
                continue
            if indent == 0:
                rule, section = None, None
                continue
            if rule is None:
                continue
            m = re.match(r"^(\s+)(\w+)\s*:", line)
            if m and (section is None or len(m.group(1)) <= section_indent):
                section, section_indent = m.group(2), len(m.group(1))
                continue
            if section == "resources":
                km = re.match(r"^\s+(\w+)\s*=\s*(.*?),?\s*$", line)
                if km:
                    out[rule][km.group(1)] = km.group(2)
    return out


def test_rule_parser_sees_the_rules():
    res = rule_resources()
    assert {"prepare", "pretrain", "adapt", "generate", "report"} <= set(res)
    assert "runtime" in res["prepare"] and "mem_mb" in res["prepare"]


def gpu_name_problems(rules_dir: Path = REPO / "rules") -> list[str]:
    """What is wrong with the GPU requests of the rules in rules_dir (empty: nothing)."""
    res = rule_resources(rules_dir)
    problems = []
    for rule, keys in res.items():
        wrong = sorted(k for k in keys if k in ("gpus", "gpu_count", "ngpus", "num_gpus"))
        if wrong:
            problems.append(f"rule {rule} asks for {wrong}: the SLURM plugin reads `gpu`")
        if "gpu" in keys and rule not in GPU_RULES | OPTIONAL_GPU_RULES:
            problems.append(f"rule {rule} asks for a GPU but is not a known GPU stage")
    for rule in sorted(GPU_RULES & set(res)):
        if "gpu" not in res[rule]:
            problems.append(f"GPU rule {rule} declares no `gpu=` resource")
    return problems


def test_gpu_rules_ask_for_gpu_by_the_plugins_name():
    assert GPU_RULES & set(rule_resources()) >= {"pretrain", "adapt", "generate"}
    assert gpu_name_problems() == []


def test_gpu_name_check_catches_gpus(tmp_path):
    """The check itself works: `gpus=` in a GPU rule is caught (it would land on a CPU node)."""
    for smk in (REPO / "rules").glob("*.smk"):
        (tmp_path / smk.name).write_text(smk.read_text().replace("gpu=res(", "gpus=res(", 1))
    assert any("gpus" in p for p in gpu_name_problems(tmp_path))
    assert any("declares no `gpu=`" in p for p in gpu_name_problems(tmp_path))


def test_gpu_defaults_in_config_model():
    from craft.config import ResourcesConfig

    r = ResourcesConfig()
    for stage in ("pretrain", "adapt", "generate"):
        assert getattr(r, stage).gpu == 1, stage
    for stage in ("prepare", "evaluate", "report"):
        assert getattr(r, stage).gpu == 0, stage


def test_slurm_profile_gives_exactly_the_gpu_rules_a_gpu():
    prof = yaml.safe_load(SLURM_TEMPLATE.read_text())
    assert prof["executor"] == "slurm"
    defaults = prof["default-resources"]
    assert not {"gpu", "gpus", "gres"} & set(defaults), "default-resources must not ask for GPUs"
    set_res = prof["set-resources"]
    rules = set(rule_resources())
    for rule, res in set_res.items():
        assert "gpus" not in res, f"set-resources.{rule} says `gpus`; the SLURM plugin reads `gpu`"
        assert rule in rules or rule in GPU_RULES, f"set-resources.{rule}: no such rule"
    with_gpu = {r for r, res in set_res.items() if res.get("gpu")}
    present = GPU_RULES & rules
    assert present <= with_gpu, f"GPU rules without a GPU in the profile: {present - with_gpu}"
    assert with_gpu <= GPU_RULES, f"non-GPU rules given a GPU: {with_gpu - GPU_RULES}"
    for rule in with_gpu:
        assert set_res[rule]["gpu"] == 1, rule
        assert set_res[rule]["slurm_partition"] == "gpu", rule
    # sacct says "CANCELLED by <uid>" for a scancel-ed job, which plugin 2.8.0 takes for a
    # running job (the workflow then waits forever); squeue says "CANCELLED".
    assert prof.get("slurm-status-command") == "squeue"
    assert defaults["slurm_account"] == "<ACCOUNT>"
    assert defaults["slurm_partition"] == "cpu"
