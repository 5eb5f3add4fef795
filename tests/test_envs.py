"""envs/: the conda environment (and the Apptainer definition) the rules name, written from the
venv's own pins, so the two cannot drift; and bin/craft, which runs the checkout's craft in an
environment that has only its dependencies. Conda and Apptainer themselves cannot run here (no
channel or registry is reachable): what can be checked is."""

import os
import subprocess
import sys
import tomllib

import yaml

from tests.conftest import REPO


def test_envs_are_what_scripts_envs_writes_from_the_venvs_pins():
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts/envs.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    env = yaml.safe_load((REPO / "envs/craft.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert f"python={project['requires-python'].removeprefix('>=')}" in env["dependencies"]
    # every dependency of the venv, with the venv's own specifier or its constraint
    assert pip == [*project["dependencies"], *project["optional-dependencies"]["distributed"]]
    constraints = (REPO / "requirements/constraints.txt").read_text()
    for pinned in ("torch==2.14.1", "torchvision==0.29.1"):
        assert pinned in constraints and pinned in pip
    definition = (REPO / "envs/craft.def").read_text()
    assert all(f'"{r}"' in definition for r in pip)


def test_a_drifted_env_is_named(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("envs", REPO / "scripts/envs.py")
    envs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(envs)
    stale = tmp_path / "craft.yaml"
    stale.write_text(envs.conda_env().replace("torch==2.14.1", "torch==2.13.0"))
    monkeypatch.setattr(envs, "ENV_FILE", stale)
    monkeypatch.setattr(envs, "DEF_FILE", REPO / "envs/craft.def")
    assert envs.main(["--check"]) == 1


def test_bin_craft_runs_the_checkouts_craft_without_craft_on_path(tmp_path):
    """A conda env of envs/craft.yaml has python and the dependencies, no `craft`: the PATH of
    such a job has the env's python first and the checkout's bin/ last (rules/common.smk)."""
    env_bin = tmp_path / "env-bin"
    env_bin.mkdir()
    # the env's python: one with the dependencies (this venv's, by its own path), no craft
    (env_bin / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (env_bin / "python").chmod(0o755)
    path = os.pathsep.join([str(env_bin), "/usr/bin", "/bin", str(REPO / "bin")])
    r = subprocess.run(
        ["sh", "-c", "command -v craft && craft config check config.yaml"],
        cwd=REPO,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == str(REPO / "bin" / "craft")
    assert ": ok" in r.stdout
