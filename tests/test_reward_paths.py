"""scripts/reward_paths.py: the path arithmetic behind docs/benchmark.md's matched-realism
comparison (its measuring needs a finished benchmark run and is run by hand)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from argparse import Namespace
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reward_paths.py"


@pytest.fixture(scope="module")
def paths():
    spec = importlib.util.spec_from_file_location("reward_paths", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_along_takes_the_first_crossing_in_scale_order(paths):
    # (scale, agree, shift, oof_cas, oof_tail); shift goes up, back down, up again
    points = [(0, 0.7, 0.20, 0, 0), (0.5, 0.8, 0.30, 0, 0), (1, 0.9, 0.25, 0, 0)]
    assert paths.along(points, 0.25, 2, 1) == pytest.approx(0.75)  # first crossing, not last
    assert paths.along(points, 0.85, 1, 2) == pytest.approx(0.275)
    assert math.isnan(paths.along(points, 0.35, 2, 1))  # never reaches it
    assert math.isnan(paths.along(points, 0.10, 2, 1))


def test_the_table_compares_each_path_at_the_other_runs_shift_and_agreement(
    paths, tmp_path, capsys
):
    rows = []
    for seed, lift in ((0, 0.0), (1, 0.02)):
        for scale, agree, shift in ((0, 0.70, 0.20), (1, 0.90 + lift, 0.40)):
            rows.append(("craft", seed, scale, agree, shift))
        rows.append(("generic-reward", seed, 0, 0.70, 0.20))
        rows.append(("generic-reward", seed, 1, 0.85, 0.25))
    with (tmp_path / paths.RESULTS).open("w") as f:
        for method, seed, scale, agree, shift in rows:
            row = {"mod": "m", "method": method, "seed": seed, "scale": scale, "agree": agree}
            row |= {"shift": shift, "oof_cas": agree / 2, "oof_tail": 1 - agree}
            f.write(json.dumps(row) + "\n")
    paths.table(Namespace(folder=tmp_path, against="generic-reward", budget=None))
    out = capsys.readouterr().out

    def value(name: str) -> tuple[float, float, str]:
        line = rf"m craft - generic-reward, {name}: ([-+.0-9]+) ± ([.0-9]+) \(.*; (.*)\)"
        m = re.search(line, out)
        assert m, out
        return float(m[1]), float(m[2]), m[3]

    # craft at generic-reward's shift 0.25 is a quarter of the way along: agreement 0.75
    # (seed 0) and 0.755 (seed 1), against 0.85
    mean, se, won = value("agree")
    assert mean == pytest.approx(-0.0975, abs=1e-3) and se == pytest.approx(0.0025, abs=1e-3)
    assert won == "better on 0 of 2 seeds"
    # it reaches agreement 0.85 at shift 0.35 (seed 0) and 0.2 + 0.2 * 0.15 / 0.22 (seed 1)
    mean, _, won = value("shift at equal agreement")
    assert mean == pytest.approx((0.10 + 0.2 * 0.15 / 0.22 - 0.05) / 2, abs=1e-3)
    assert won == "better on 0 of 2 seeds"


def test_a_path_within_its_realism_budget_stops_where_it_first_exceeds_it(paths, capsys):
    points = [(0, 0.7, 0.20, 0.4, 0.2), (0.5, 0.8, 0.30, 0.5, 0.1), (1, 0.9, 0.25, 0.6, 0.0)]
    assert paths.at_budget(points, 0.05) == pytest.approx((0.25, 0.75, 0.25, 0.45, 0.15))
    assert paths.at_budget(points, 0.2) == points[-1]  # never exceeds it: its end
    # each method against its own start: craft starts higher, so at the same budget it goes on
    other = [(0, 0.7, 0.10, 0.4, 0.2), (1, 0.8, 0.30, 0.5, 0.1)]
    by = {("m", "craft"): {0: points}, ("m", "generic-reward"): {0: other}}
    paths.within_budget(by, "generic-reward", 0.05)
    out = capsys.readouterr().out
    # generic-reward reaches shift 0.15 a quarter of the way: agreement 0.725
    assert "m craft - generic-reward, agree: +0.025" in out, out


def test_a_budget_without_a_method_to_compare_with_is_refused(paths, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["reward_paths.py", "table", str(tmp_path), "--budget", "0.01"])
    with pytest.raises(SystemExit):
        paths.main()
    assert "name it with --against" in capsys.readouterr().err
