"""Every bad input of tests/bad_input_cases.py is refused where it should be, in one line that
names the field or file, with exit status 2 (1 for `craft data check`'s findings), no
traceback, no secret repeated and nothing left behind; every valid control passes every
stage; and the doubtful inputs accepted on purpose are accepted.

The commands run in this process (craft.cli.main, as the console script does) so that the
whole table takes seconds; tests/workflow covers the Snakefile's plan-time refusals.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import pytest

import craft.cli as cli
from tests.bad_input_cases import ALL, MODALITY, SECRET, Case, workspace
from tests.conftest import BIN, REPO
from tests.site_data import write_site


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site-template")
    write_site(root, n_patients=12)
    return root


def craft(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """Run ``craft ARGS`` in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["craft", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def files_under(root: Path) -> set[Path]:
    """Every file and folder below ``root`` but the split cache, which a plan writes when it
    found a manifest sound (results/data/.splits: what any later plan reads, whatever else it
    refused)."""
    cache = ("results", "data", ".splits")

    def kept(p: Path) -> bool:
        parts = p.relative_to(root).parts
        return parts[:3] != cache and parts != cache[: len(parts)]

    return {p for p in root.rglob("*") if kept(p)}


def one_line(err: str, prefix: str, case: Case, root: Path) -> str:
    """The one refusal line of ``err`` (others may only be progress lines)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    others = [line for line in err.splitlines() if not line.startswith(("[craft ", prefix))]
    assert len(lines) == 1 and not others, f"{case.id}: not one line:\n{err}"
    line = lines[0]
    for s in case.says:
        assert s.format(root=root) in line, f"{case.id}: {s!r} not in: {line}"
    if case.line is not None:
        assert f"line {case.line}:" in line, f"{case.id}: no CSV line {case.line} in: {line}"
    assert SECRET not in err, f"{case.id}: the secret was repeated: {line}"
    return line


def arrange(case: Case, template: Path, tmp_path: Path, monkeypatch):
    """The case's workspace in ``tmp_path`` (the working folder) and its config file."""
    monkeypatch.chdir(tmp_path)
    ws = workspace(template, tmp_path)
    case.mutate(ws)
    return ws, ws.write_config()


def by_when(*when: str) -> list:
    return [pytest.param(c, id=c.id) for c in ALL if c.when in when]


@pytest.mark.parametrize("case", by_when("plan", "plan-many"))
def test_refused_at_plan_time_in_one_line(case, template, tmp_path, capsys, monkeypatch):
    ws, path = arrange(case, template, tmp_path, monkeypatch)
    before = files_under(tmp_path)
    code, out, err = craft(capsys, monkeypatch, "config", "check", str(path))
    assert code == 2, f"{case.id}: exit {code}\n{out}{err}"
    if case.when == "plan":
        one_line(err, "craft: error:", case, tmp_path)
    else:
        _first_of_many(err, case)
    assert out == ""
    assert files_under(tmp_path) == before, f"{case.id}: left files behind"


def _first_of_many(err: str, case: Case) -> str:
    """A manifest with many problems: at most five lines and one that counts the rest."""
    lines = err.splitlines()
    assert "Traceback" not in err and len(lines) == 6, err
    assert all(line.startswith("craft: error:") for line in lines), err
    assert "more problem(s)" in lines[-1] and "craft data check" in lines[-1], lines[-1]
    assert all(s in lines[0] for s in case.says), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", by_when("job"))
def test_refused_when_decoded_with_its_csv_line(case, template, tmp_path, capsys, monkeypatch):
    """Only decoding finds these: the plan passes, `craft data check` lists the file with its
    CSV line (exit 1), and prepare refuses it in one line naming the line, writing nothing."""
    ws, path = arrange(case, template, tmp_path, monkeypatch)
    code, out, err = craft(capsys, monkeypatch, "config", "check", str(path))
    assert code == 0, f"{case.id}: the plan refused it:\n{err}"
    before = files_under(tmp_path)
    code, out, err = craft(capsys, monkeypatch, "data", "check", "-c", str(path))
    assert code == 1, f"{case.id}: data check exit {code}\n{out}{err}"
    one_line(err, "craft: bad:", case, tmp_path)
    assert f"{MODALITY}: " in out and "1 problem(s)" in out, out
    out_h5 = tmp_path / "out.h5"
    code, _, err = craft(capsys, monkeypatch, "prepare", "-c", str(path), "-m", MODALITY,
                         "-o", str(out_h5))  # fmt: skip
    assert code == 2, f"{case.id}: prepare exit {code}\n{err}"
    one_line(err, "craft: error:", case, tmp_path)
    assert err.splitlines()[-1].startswith("craft: error:"), "the refusal is not the last line"
    assert files_under(tmp_path) == before, f"{case.id}: left {files_under(tmp_path) - before}"


@pytest.mark.parametrize("case", by_when("ok", "accepted"))
def test_valid_and_accepted_inputs_pass_every_stage(case, template, tmp_path, capsys, monkeypatch):
    ws, path = arrange(case, template, tmp_path, monkeypatch)
    for args in (("config", "check", str(path)), ("data", "check", "-c", str(path))):
        code, out, err = craft(capsys, monkeypatch, *args)
        assert code == 0, f"{case.id}: {' '.join(args[:2])} exit {code}\n{out}{err}"
    out_h5 = tmp_path / "out.h5"
    code, _, err = craft(capsys, monkeypatch, "prepare", "-c", str(path), "-m", MODALITY,
                         "-o", str(out_h5))  # fmt: skip
    assert code == 0, f"{case.id}: prepare exit {code}\n{err}"
    with h5py.File(out_h5) as f:
        n = sum(len(f[s]["labels"]) for s in ("train", "val", "test"))
    assert n == len(ws.rows()) - 1 - ws.manifest.read_text().count("\n\n")


def test_the_table_is_large_and_each_id_unique():
    ids = [c.id for c in ALL]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    bad = [c for c in ALL if c.when != "ok"]
    assert len(bad) >= 150 and all(c.why for c in ALL if c.when == "accepted")


def test_data_check_lists_every_bad_file_in_one_pass(template, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = workspace(template, tmp_path)
    for line in (2, 5, 9):
        ws.image(line).write_bytes(b"not an image")
    rows = ws.rows()
    rows[3][0] = "patient-000/gone.png"  # line 4: a missing file, found without decoding
    ws.write_rows(rows)
    path = ws.write_config()
    code, out, err = craft(capsys, monkeypatch, "data", "check", "-c", str(path))
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("craft: bad:")]
    assert [line.split(" line ")[1].split(":")[0] for line in lines] == ["4", "2", "5", "9"], err
    assert f"{MODALITY}: {len(rows) - 5} image(s) read, 4 problem(s)" in out
    written = {p for p in files_under(tmp_path) if p.is_relative_to(tmp_path / "results")}
    assert not written, f"a refused plan wrote results: {written}"


#: Cases the Snakefile must refuse too, before planning any job (one of each kind).
PLANNED = (
    "duplicate-seeds",
    "lr-inf",
    "url-query-key",
    "manifest-unknown-label",
    "manifest-file-missing",
    "manifest-dotdot",
    "manifest-too-few-patients",
    "curated-todo",
    "review-wrong-labels",
    "generator-no-unet",
)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in ALL if c.id in PLANNED])
def test_the_snakefile_refuses_before_planning(case, template, tmp_path, env):
    """`snakemake -n --configfile` refuses what `craft config check` refuses, in one line
    and without a traceback, before any job is planned."""
    ws = workspace(template, tmp_path)
    case.mutate(ws)
    path = ws.write_config()
    run = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-n", "--configfile", str(path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0, run.stdout[-2000:]
    text = run.stdout + run.stderr
    line = one_line(run.stderr, "craft: error:", case, tmp_path)
    assert "Traceback" not in text and SECRET not in text and line
    written = {p for p in files_under(tmp_path) if p.is_relative_to(tmp_path / "results")}
    assert not written, f"a refused plan wrote results: {written}"
