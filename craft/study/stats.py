"""Statistics of the preference study: win rate with binomial test and Wilson interval, kappas."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest

#: Unblinded outcome of one judgment: method A preferred, method B preferred, or neither.
OUTCOMES = ("a", "b", "neither")


@dataclass
class WinRate:
    """Method A's wins over B among decisive judgments ('neither' excluded from the test)."""

    wins_a: int
    wins_b: int
    neither: int
    n: int  # decisive judgments: wins_a + wins_b
    win_rate: float | None  # wins_a / n
    ci_low: float | None  # Wilson 95% interval of win_rate
    ci_high: float | None
    p_value: float | None  # two-sided exact binomial test of win_rate = 0.5

    def as_dict(self) -> dict:
        return asdict(self)


def win_rate(outcomes: Sequence[str], confidence: float = 0.95) -> WinRate:
    """Win rate of A over B from outcomes in OUTCOMES, with binomtest p and Wilson interval."""
    wins_a = sum(o == "a" for o in outcomes)
    wins_b = sum(o == "b" for o in outcomes)
    neither = sum(o == "neither" for o in outcomes)
    n = wins_a + wins_b
    if n == 0:
        return WinRate(wins_a, wins_b, neither, 0, None, None, None, None)
    test = binomtest(wins_a, n, p=0.5, alternative="two-sided")
    ci = test.proportion_ci(confidence_level=confidence, method="wilson")
    return WinRate(
        wins_a, wins_b, neither, n, wins_a / n, float(ci.low), float(ci.high), float(test.pvalue)
    )


def cohen_kappa(ratings_1: Sequence[str], ratings_2: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters over the same items (scikit-learn); None if undefined."""
    from sklearn.metrics import cohen_kappa_score

    if len(ratings_1) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # expected agreement 1: sklearn warns and returns nan
        value = float(cohen_kappa_score(ratings_1, ratings_2, labels=list(OUTCOMES)))
    return None if math.isnan(value) else value


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa from an (items, categories) table of rater counts; None if undefined.

    Fleiss (1971): P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P = mean_i P_i,
    p_j = sum_i n_ij / (N n), P_e = sum_j p_j^2, kappa = (P - P_e) / (1 - P_e).
    Every item must be rated by the same number n >= 2 of raters.
    """
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or len(counts) == 0:
        return None
    n = counts.sum(axis=1)
    if not np.all(n == n[0]) or n[0] < 2:
        raise ValueError("every item needs the same number (>= 2) of ratings")
    n = n[0]
    p_item = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_bar = p_item.mean()
    p_cat = counts.sum(axis=0) / counts.sum()
    p_e = float((p_cat**2).sum())
    if math.isclose(p_e, 1.0):
        return None
    return float((p_bar - p_e) / (1 - p_e))
