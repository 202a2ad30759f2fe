"""Display-order balance on 1,000 generated cases, opaque ids, and the statistics on known inputs."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from dicom_node.reader_study import stats
from dicom_node.reader_study.randomise import opaque_id, reader_plan

N_CASES = 1000


@pytest.mark.parametrize("m", [3, 5, 10])
def test_rank_orders_are_balanced_over_1000_cases(m: int) -> None:
    plan = reader_plan(N_CASES, m, "rank", seed=42, reader="abcd1234")
    assert sorted(p.case_index for p in plan) == list(range(N_CASES))  # every case once
    assert plan != sorted(plan, key=lambda p: p.case_index)  # in a shuffled sequence
    counts = np.zeros((m, m), int)  # [model, position]
    before = np.zeros((m, m), int)  # [a, b]: a shown left of b
    for p in plan:
        assert sorted(p.order) == list(range(m))
        for pos, model in enumerate(p.order):
            counts[model, pos] += 1
        for i, j in itertools.combinations(range(m), 2):
            before[p.order[i], p.order[j]] += 1
    # Latin-square blocks: every model in every position equally often, up to the last partial block.
    assert counts.max() - counts.min() <= 1, counts
    # Relative order (carry-over) is not fixed: each pair left/right about half the time.
    for a, b in itertools.combinations(range(m), 2):
        n = before[a, b] + before[b, a]
        z = (before[a, b] - n / 2) / np.sqrt(n / 4)  # binomial(n, 1/2), normal approximation
        assert abs(z) < 3.3, (a, b, before[a, b], n)  # two-sided p > 0.001


def test_pairwise_orders_are_balanced_over_1000_cases() -> None:
    m = 4
    plan = reader_plan(N_CASES, m, "pairwise", seed=3, reader="r1")
    pairs = {}
    sides = np.zeros((m, 2), int)
    for p in plan:
        assert len(p.order) == 2 and p.order[0] != p.order[1]
        key = tuple(sorted(p.order))
        pairs[key] = pairs.get(key, 0) + 1
        sides[p.order[0], 0] += 1
        sides[p.order[1], 1] += 1
    assert len(pairs) == 6 and max(pairs.values()) - min(pairs.values()) <= 1, pairs
    assert np.abs(sides[:, 0] - sides[:, 1]).max() <= 6, sides  # each pair alternates sides


def test_plans_differ_between_readers_and_repeat_for_a_reader() -> None:
    a = reader_plan(50, 3, "rank", seed=1, reader="reader-a")
    assert a == reader_plan(50, 3, "rank", seed=1, reader="reader-a")
    assert a != reader_plan(50, 3, "rank", seed=1, reader="reader-b")
    assert a != reader_plan(50, 3, "rank", seed=2, reader="reader-a")


def test_opaque_ids_depend_on_secret_and_reader() -> None:
    ids = {opaque_id(s, r, "c1") for s in ("s1", "s2") for r in ("a", "b")}
    assert len(ids) == 4 and all(len(i) == 20 for i in ids)


def test_kendalls_w_known_values() -> None:
    same = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]], float)
    assert stats.kendalls_w(same) == pytest.approx(1.0)
    opposite = np.array([[1, 2, 3, 4], [4, 3, 2, 1]], float)
    assert stats.kendalls_w(opposite) == pytest.approx(0.0)
    # Textbook example: W = 12 S / (m^2 (n^3 - n)) with m=3 raters, n=3 objects.
    r = np.array([[1, 2, 3], [1, 3, 2], [2, 1, 3]], float)  # totals 4, 6, 8 → S = 8
    assert stats.kendalls_w(r) == pytest.approx(12 * 8 / (9 * 24))


def test_mean_ranks_and_bootstrap_ci() -> None:
    rng = np.random.default_rng(0)
    readers, cases, models = 3, 40, 3
    r = np.empty((readers, cases, models))
    for i in range(readers):
        for c in range(cases):
            # Model 0 is usually best, model 2 usually worst.
            r[i, c] = np.argsort(np.argsort(np.array([0.0, 1.0, 2.0]) + rng.normal(0, 0.8, 3))) + 1
    means = stats.mean_ranks(r)
    assert np.allclose(means, r.mean(axis=(0, 1)))
    ci = stats.bootstrap_ci(r, n_boot=500)
    assert np.all(ci[:, 0] <= means) and np.all(means <= ci[:, 1])
    assert ci[0, 1] < ci[2, 0]  # clearly separated
    assert stats.positions(means) == [1, 2, 3]
    r[0, 5] = np.nan  # a missing answer is left out, not counted as a rank
    assert np.isfinite(stats.mean_ranks(r)).all()
    agree = stats.agreement(r)
    assert 0 < agree["w_mean_per_case"] < 1 and agree["cases_with_two_readers"] == cases
