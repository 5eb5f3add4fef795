"""`craft profile install`, the SLURM profile (the site only) and the rules' resources.

A job's resources come from config.yaml (craft.launch.rule_resources); the profile holds the
account and a partition file from which snakemake-executor-plugin-slurm picks a GPU partition
for a job that asks for GPUs and a CPU partition for every other job.
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
    assert got["default-resources"] == {"slurm_account": "lab_42"}
    assert "set-resources" not in got  # a job's resources come from config.yaml
    # the partitions: CPU jobs to one without GPUs, GPU jobs to the GPU partition
    parts = yaml.safe_load((dest.parent / "partitions.yaml").read_text())["partitions"]
    assert parts == {"batch": {"max_gpu": 0}, "a100": {"max_gpu": 8}}
    assert got["slurm-partition-config"] == "partitions.yaml"
    # everything else is the template's
    for key in template:
        if key != "default-resources":
            assert got[key] == template[key], key
    # every comment of the template survives, in order (plus our two-line header)
    kept = comments(text)
    assert kept[2:] == comments(SLURM_TEMPLATE.read_text())
    assert kept[0].startswith("Installed by: craft profile install slurm --account lab_42")
    assert "<ACCOUNT>" not in text.split("Installed by")[0]
    assert not re.search(r"^\s*slurm_account:\s*\"<", text, re.M)


def test_install_without_gpu_partition_uses_the_cpu_partition(tmp_path):
    dest = install_profile("slurm", "root", "main", None, dest_root=tmp_path)
    parts = yaml.safe_load((dest.parent / "partitions.yaml").read_text())["partitions"]
    assert parts == {"main": {"max_gpu": 8}}  # CPU and GPU jobs share it


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
    parts = yaml.safe_load((dest.parent / "partitions.yaml").read_text())["partitions"]
    assert set(parts) == {"cpu2", "gpu2"}
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


def test_render_refuses_per_rule_resources(tmp_path):
    template = (
        'default-resources:\n  slurm_account: "<ACCOUNT>"\nset-resources:\n  a:\n    gpu: 1\n'
    )
    with pytest.raises(CraftError, match="resources section"):
        render_profile(template, "acc")
    text = render_profile('default-resources:\n  slurm_account: "<ACCOUNT>"  # account\n', "acc")
    assert '"acc"  # account' in text


# ----------------------------------------------------------------------------- resources


def test_slurm_profile_holds_only_the_site():
    prof = yaml.safe_load(SLURM_TEMPLATE.read_text())
    assert prof["executor"] == "slurm"
    assert "set-resources" not in prof
    assert set(prof["default-resources"]) == {"slurm_account"}
    assert prof["default-resources"]["slurm_account"] == "<ACCOUNT>"
    parts = yaml.safe_load((SLURM_TEMPLATE.parent / "partitions.yaml").read_text())
    assert parts["partitions"]["cpu"]["max_gpu"] == 0 and parts["partitions"]["gpu"]["max_gpu"]
    # sacct says "CANCELLED by <uid>" for a scancel-ed job, which plugin 2.8.0 takes for a
    # running job (the workflow then waits forever); squeue says "CANCELLED".
    assert prof.get("slurm-status-command") == "squeue"
    # what recovering needs: retries (whose memory and time grow, config resources), an
    # interrupted run's incomplete outputs redone, and the rest going on past a failed job
    assert prof["retries"] >= 1 and prof["rerun-incomplete"] is True
    assert prof["keep-going"] is True


def test_the_plugin_sends_gpu_jobs_to_the_gpu_partition_and_the_rest_to_the_cpu_one():
    """The plugin's own partition choice, on the partition file craft writes, for the
    resources every rule of the paper config asks for."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    from craft.config import Resources, load_config
    from craft.launch import rule_resources

    cfg = load_config(REPO / "configs/craft-paper.yaml")
    path = REPO / "profiles/slurm/partitions.yaml"
    partitions = read_partition_file(path)
    log = SimpleNamespace(info=lambda *a: None, debug=lambda *a: None, warning=lambda *a: None)
    for name in type(cfg.resources).model_fields:
        r = getattr(cfg.resources, name)
        if not isinstance(r, Resources):  # group_evaluations, container
            continue
        res = {k: v(None, 1) if callable(v) else v for k, v in rule_resources(r).items()}
        job = SimpleNamespace(
            resources=SimpleNamespace(get=res.get, **res), threads=r.threads, name=name
        )
        want = "gpu" if r.gpu else "cpu"
        assert get_best_partition(partitions, job, log) == want, (name, res)


def test_rule_resources_follow_the_config():
    from craft.config import Resources
    from craft.launch import align_launcher, rule_resources

    assert rule_resources(Resources(threads=4, mem_mb=8000, runtime=90, retry_growth=1)) == {
        "runtime": 90,
        "mem_mb": 8000,
        "cpus_per_task": 4,
    }
    # by default a retry asks for 1.5x the memory and time of the attempt before
    grown = rule_resources(Resources(threads=4, mem_mb=8000, runtime=90))
    assert [grown["mem_mb"](None, a) for a in (1, 2, 3)] == [8000, 12000, 18000]
    assert [grown["runtime"](None, a) for a in (1, 2, 3)] == [90, 135, 203]
    assert grown["cpus_per_task"] == 4
    one = rule_resources(Resources(gpu=2, gpu_model="a100"))
    assert one["gpu"] == 2 and one["gpu_model"] == "a100" and "nodes" not in one
    two = rule_resources(Resources(gpu=4, nodes=2))
    assert two["nodes"] == 2 and two["gres"] == "gpu:4" and "gpu" not in two
    assert two["mpi"] == "srun" and two["tasks"] == 2  # one task per node for srun
    assert align_launcher(1) == "craft" and align_launcher(0) == "craft"
    assert align_launcher(2) == (
        "torchrun --standalone --nproc_per_node=${SLURM_GPUS_ON_NODE:-2} -m craft.cli"
    )
    multi = align_launcher(4, 2)
    assert multi.startswith("srun --nodes=2 --ntasks-per-node=1")
    assert "torchrun --nnodes=2 --nproc_per_node=${SLURM_GPUS_ON_NODE:-4}" in multi
    assert "--rdzv_backend=c10d" in multi and "SLURM_JOB_NODELIST" in multi


def test_gpu_defaults_in_config_model():
    from craft.config import ResourcesConfig

    r = ResourcesConfig()
    for stage in ("pretrain", "adapt", "generate"):
        assert getattr(r, stage).gpu == 1, stage
    for stage in ("prepare", "evaluate", "report"):
        assert getattr(r, stage).gpu == 0, stage


def test_the_slurm_profile_merges_the_evaluation_group_of_the_rules():
    """profiles/slurm's group-components names the group of a run's evaluation jobs
    (craft.launch.EVALUATION_GROUP, rules/*.smk), with more components than a run has."""
    from craft.launch import EVALUATION_GROUP

    prof = yaml.safe_load(SLURM_TEMPLATE.read_text())
    entries = [e.split("=") for e in prof["group-components"]]
    assert [name for name, _ in entries] == [EVALUATION_GROUP]
    assert int(entries[0][1]) >= 5 + 10  # five evaluations and a score per evaluator
