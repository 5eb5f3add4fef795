"""craft.report.frontier: where a realism budget stops a reward method's path (worked
numbers, checked by hand)."""

from __future__ import annotations

import pytest

from craft.errors import CraftError
from craft.report.frontier import PathPoint, at_budget, crossing


def path(*rows):
    """Points from (scale, realism, agreement, out-of-family CAS) rows."""
    return [PathPoint(s, r, {"agree": a, "oof_cas": c}) for s, r, a, c in rows]


# realism goes up, back down, up again: 0.20 -> 0.30 -> 0.25 -> 0.40
WANDERING = path(
    (0.0, 0.20, 0.70, 0.40),
    (0.5, 0.30, 0.80, 0.50),
    (1.0, 0.25, 0.90, 0.60),
    (1.5, 0.40, 0.95, 0.55),
)


def test_the_first_crossing_counts_not_a_later_one():
    assert crossing([0.20, 0.30, 0.25, 0.40], 0.25) == (0, pytest.approx(0.5))
    assert crossing([0.20, 0.30, 0.25, 0.40], 0.35) == (2, pytest.approx(2 / 3))
    assert crossing([0.20, 0.30], 0.50) is None
    assert crossing([0.20], 0.20) is None  # one point has no segment


def test_a_budget_stops_a_path_at_its_first_crossing_interpolated():
    # start 0.20 + 0.05 = 0.25: halfway from scale 0 to 0.5, not at scale 1 where 0.25 returns
    stop = at_budget(WANDERING, 0.05)
    assert stop.crossed
    assert stop.point.scale == pytest.approx(0.25)
    assert stop.point.realism == pytest.approx(0.25)
    assert stop.point.metrics == pytest.approx({"agree": 0.75, "oof_cas": 0.45})
    # 0.20 + 0.15 = 0.35 is first reached between scales 1 and 1.5, two thirds of the way
    far = at_budget(WANDERING, 0.15)
    assert far.point.scale == pytest.approx(1 + 0.5 * 2 / 3)
    assert far.point.metrics["agree"] == pytest.approx(0.90 + 0.05 * 2 / 3)


def test_a_path_that_never_reaches_the_budget_is_judged_at_its_end():
    stop = at_budget(WANDERING, 0.5)
    assert not stop.crossed and stop.point == WANDERING[-1]


def test_a_budget_of_zero_stops_at_the_start():
    stop = at_budget(WANDERING, 0.0)
    assert stop.crossed and stop.point == WANDERING[0]


def test_each_method_is_measured_from_its_own_start():
    # a path that starts further from real images is stopped later in absolute realism
    late = path((0.0, 0.30, 0.6, 0.4), (1.0, 0.40, 0.9, 0.5))
    assert at_budget(late, 0.05).point.realism == pytest.approx(0.35)
    assert at_budget(late, 0.05).point.metrics["agree"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("points", "budget", "says"),
    [
        ([], 0.1, "at least its start"),
        (path((0.5, 0.2, 0.7, 0.4), (1.0, 0.3, 0.8, 0.5)), 0.1, "must start at 0"),
        (path((0.0, 0.2, 0.7, 0.4), (0.0, 0.3, 0.8, 0.5)), 0.1, "increase"),
        (path((0.0, 0.2, 0.7, 0.4), (1.0, float("nan"), 0.8, 0.5)), 0.1, "no realism"),
        (WANDERING, -0.01, "0 or more"),
        (
            [PathPoint(0.0, 0.2, {"agree": 0.7}), PathPoint(1.0, 0.4, {"oof_cas": 0.5})],
            0.1,
            "differ in metrics",
        ),
    ],
)
def test_bad_paths_and_budgets_are_refused_in_one_line(points, budget, says):
    with pytest.raises(CraftError, match=says) as err:
        at_budget(points, budget)
    assert "\n" not in str(err.value)
