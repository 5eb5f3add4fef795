"""A reward method's path from its start, and where a realism budget stops it.

A run of a reward method (kind craft or generic-reward) keeps its reward LoRA apart from its
start's. Scaled from 0 (the start) through 1 (the run as trained) and beyond, it traces a
path: at each scale, how far the images are from real ones (``realism``, lower is more real)
and the metrics that methods are compared on. End points sit at different realism, so the
claim compares methods where each first gives up the same realism against its own start
(reward against distance from the starting policy, Gao et al. 2022, arXiv 2210.10760; LoRA
scale interpolation as in DRaFT, arXiv 2309.17400). Equal distance is not equal cost for
every method: the budget is a common yardstick, not a price (docs/benchmark.md, "Within a
realism budget").

This module is the arithmetic: the first crossing of a target along a path, interpolated
between the two scales around it, and the stop of a path at a budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from craft.errors import CraftError


@dataclass(frozen=True)
class PathPoint:
    """One scale of a path: its distance from real images and its compared metrics."""

    scale: float
    realism: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetStop:
    """Where a path stops at a budget: the (interpolated) point, and whether the path crossed
    the budget there (False: it never did, and is judged at its end)."""

    point: PathPoint
    crossed: bool


def crossing(values: Sequence[float], target: float) -> tuple[int, float] | None:
    """Walking ``values`` in order, the first segment (i, i + 1) that reaches ``target``, as
    (i, w) with the target at ``values[i] + w * (values[i + 1] - values[i])``; None if no
    segment does. A path may cross a value, come back and cross it again: the first counts."""
    for i in range(len(values) - 1):
        a, b = values[i], values[i + 1]
        if min(a, b) <= target <= max(a, b):
            return i, 0.0 if a == b else (target - a) / (b - a)
    return None


def _between(p: PathPoint, q: PathPoint, w: float) -> PathPoint:
    def mix(a: float, b: float) -> float:
        return a + w * (b - a)

    missing = set(p.metrics) ^ set(q.metrics)
    if missing:
        raise CraftError(
            f"path points at scales {p.scale:g} and {q.scale:g} differ in metrics "
            f"{sorted(missing)}; measure every scale alike"
        )
    return PathPoint(
        mix(p.scale, q.scale),
        mix(p.realism, q.realism),
        {k: mix(v, q.metrics[k]) for k, v in p.metrics.items()},
    )


def at_budget(points: Sequence[PathPoint], budget: float) -> BudgetStop:
    """The path stopped where its realism first exceeds its start's (scale 0) by ``budget``,
    interpolated between the scales around the crossing; its end where it never does. A budget
    of 0 stops it at its start."""
    if not points:
        raise CraftError("a path needs at least its start (scale 0)")
    if not budget >= 0:
        raise CraftError(f"realism budget must be 0 or more, got {budget}")
    scales = [p.scale for p in points]
    if scales[0] != 0 or any(b <= a for a, b in zip(scales, scales[1:], strict=False)):
        raise CraftError(f"a path's scales must start at 0 (its start) and increase, got {scales}")
    if any(not math.isfinite(p.realism) for p in points):
        raise CraftError(f"a path point has no realism: {[p.realism for p in points]}")
    target = points[0].realism + budget
    found = crossing([p.realism for p in points], target)
    if found is None:
        return BudgetStop(points[-1], False)
    i, w = found
    return BudgetStop(_between(points[i], points[i + 1], w), True)


# ----------------------------------------------------------------------------- the claim on paths

#: How a claim row is judged: where each reward method's path first gives up the budget's
#: realism against its own start, or at the end points as the runs were trained.
MATCHED, AS_TRAINED = "matched realism", "as trained"
#: The metric of a path point each realism axis reads (craft.evaluate.paths).
AXES = {"oracle": "oracle_distribution_shift", "fd": "realism_fd", "kid": "realism_kid"}


def axis_of(axis: str | None, phantom: bool) -> str:
    """The realism axis of a modality: the configured one, or the oracle's shift on
    phantoms and the per-label FD elsewhere."""
    return axis or ("oracle" if phantom else "fd")


def path_of(by_scale: dict[float, dict[str, float]], axis: str) -> list[PathPoint]:
    """A path's points in scale order, ``axis`` (a key of :data:`AXES`) as their realism."""
    key = AXES[axis]
    points = []
    for scale in sorted(by_scale):
        metrics = dict(by_scale[scale])
        if key not in metrics:
            raise CraftError(
                f"path point at scale {scale:g} has no {key}: choose claim.realism among "
                f"{[a for a, k in AXES.items() if k in metrics]}"
            )
        points.append(PathPoint(scale, metrics.pop(key), metrics))
    return points
