"""The console entry point: how errors and interruptions reach the user and the scheduler."""

from __future__ import annotations

import pytest

import craft.cli as cli
from craft.errors import CraftError, Interrupted


def _run_main(monkeypatch, exc: Exception) -> int:
    def app():
        raise exc

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as stop:
        cli.main()
    return stop.value.code


def test_a_job_stopped_by_sigterm_exits_143_with_one_line(monkeypatch, capsys):
    """Preemption: one line saying how to resume, and a status Snakemake and SLURM read as
    'not finished' (a traceback here used to fill the job log)."""
    code = _run_main(monkeypatch, Interrupted("stopped by SIGTERM at step 7; checkpoint saved"))
    assert code == cli.EXIT_INTERRUPTED == 143
    err = capsys.readouterr().err
    assert err == (
        "craft: stopped by SIGTERM at step 7; checkpoint saved; rerun the same command to resume\n"
    )


def test_user_errors_exit_2_with_one_line(monkeypatch, capsys):
    code = _run_main(monkeypatch, CraftError("seeds: 1 is listed twice;\n list each seed once"))
    assert code == 2
    err = capsys.readouterr().err
    assert err == "craft: error: seeds: 1 is listed twice; list each seed once\n"


def test_other_errors_keep_their_traceback(monkeypatch):
    """A bug is not a user error: it propagates (with its traceback) instead of one line."""
    monkeypatch.setattr(cli, "app", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main()
