"""Statistics of the answers: mean rank per model with bootstrap CIs over cases and readers,
Kendall's W between readers, pairwise win rates.

Ranks live in an array R[reader, case, model] (1 = best; NaN where a reader has not answered or,
for the pairwise task, where the model was not shown).
"""
from __future__ import annotations

import warnings

import numpy as np


def rank_array(answers: list[tuple[str, int, dict[str, int]]], readers: list[str], n_cases: int,
               models: list[str]) -> np.ndarray:
    """R[reader, case, model] from (reader, case index, {model: rank}) answers."""
    r = np.full((len(readers), n_cases, len(models)), np.nan)
    ri, mi = {x: i for i, x in enumerate(readers)}, {x: i for i, x in enumerate(models)}
    for reader, case, ranks in answers:
        for model, rank in ranks.items():
            r[ri[reader], case, mi[model]] = rank
    return r


def _nanmean(a: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    n = np.sum(~np.isnan(a), axis=axis)
    s = np.nansum(a, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def mean_ranks(r: np.ndarray) -> np.ndarray:
    """Mean rank per model over every (reader, case) answer."""
    return _nanmean(r, (0, 1))


def bootstrap_ci(r: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> np.ndarray:
    """[model, 2] percentile CI of the mean, resampling cases and readers (two-way, with replacement)."""
    n_readers, n_cases, n_models = r.shape
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, n_models))
    for b in range(n_boot):
        rs = rng.integers(n_readers, size=n_readers)
        cs = rng.integers(n_cases, size=n_cases)
        out[b] = _nanmean(r[rs][:, cs], (0, 1))
    return _percentile_ci(out, level)


def _percentile_ci(samples: np.ndarray, level: float) -> np.ndarray:
    """[model, 2] percentile interval of bootstrap samples [boot, model] (NaN where a model has none)."""
    alpha = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # models without any answer yet: NaN, not noise
        return np.nanpercentile(samples, [100 * alpha, 100 * (1 - alpha)], axis=0).T


def kendalls_w(rankings: np.ndarray) -> float:
    """Kendall's W of m raters ranking n objects, `rankings` [m, n] (no ties): 0 none … 1 full agreement."""
    m, n = rankings.shape
    if m < 2 or n < 2:
        return float("nan")
    totals = rankings.sum(axis=0)
    s = float(((totals - totals.mean()) ** 2).sum())
    return 12 * s / (m**2 * (n**3 - n))


def agreement(r: np.ndarray) -> dict[str, float | int]:
    """Kendall's W per case (readers who ranked it fully) averaged over cases, and W of the readers'
    mean ranks over the whole study."""
    per_case = []
    for c in range(r.shape[1]):
        full = r[:, c][~np.isnan(r[:, c]).any(axis=1)]
        if len(full) >= 2:
            per_case.append(kendalls_w(full))
    means = _nanmean(r, (1,))
    complete = means[~np.isnan(means).any(axis=1)]
    overall = kendalls_w(np.argsort(np.argsort(complete, axis=1), axis=1) + 1.0) if len(complete) >= 2 else float("nan")
    return {
        "w_mean_per_case": float(np.mean(per_case)) if per_case else float("nan"),
        "cases_with_two_readers": len(per_case),
        "w_reader_mean_ranks": overall,
    }


def win_rates(r: np.ndarray) -> np.ndarray:
    """Pairwise task: share of the comparisons each model was in that it won (rank 1 of 2)."""
    shown = ~np.isnan(r)
    wins = (r == 1).sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(shown.sum(axis=(0, 1)) > 0, wins / shown.sum(axis=(0, 1)), np.nan)


def bootstrap_win_ci(r: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> np.ndarray:
    """[model, 2] percentile CI of the win rate, resampling cases and readers."""
    n_readers, n_cases, n_models = r.shape
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, n_models))
    for b in range(n_boot):
        out[b] = win_rates(r[rng.integers(n_readers, size=n_readers)][:, rng.integers(n_cases, size=n_cases)])
    return _percentile_ci(out, level)


def positions(values: np.ndarray, lower_is_better: bool = True) -> list[int | None]:
    """1-based place of each model by `values` (ties share the better place; NaN gets None)."""
    out: list[int | None] = []
    for v in values:
        if np.isnan(v):
            out.append(None)
            continue
        others = values[~np.isnan(values)]
        better = (others < v) if lower_is_better else (others > v)
        out.append(int(better.sum()) + 1)
    return out
