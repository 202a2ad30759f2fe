"""Per-reader case sequence, balanced display orders and opaque candidate ids.

Display order is balanced in blocks: for the rank task every block of m cases is a randomised Latin
square (each model once in each position); for the pairwise task every block of m(m-1)/2 cases
shows each pair once, and each pair alternates sides between its occurrences. The reader's browser
only ever sees ids that are an HMAC of the study's secret, the reader and the candidate.
"""
from __future__ import annotations

import hashlib
import hmac
import itertools
from dataclasses import dataclass

import numpy as np


def reader_rng(seed: int, reader: str) -> np.random.Generator:
    """A generator fixed by the study seed and the reader (the same plan on every call)."""
    return np.random.default_rng([seed, int(hashlib.sha256(reader.encode()).hexdigest()[:15], 16)])


def latin_orders(n_cases: int, m: int, rng: np.random.Generator) -> list[list[int]]:
    """Orders of m candidates for n cases: each block of m cases is a randomised Latin square."""
    orders: list[list[int]] = []
    while len(orders) < n_cases:
        symbols, rows, cols = rng.permutation(m), rng.permutation(m), rng.permutation(m)
        for r in rows:
            orders.append([int(symbols[(r + c) % m]) for c in cols])
    return orders[:n_cases]


def pair_orders(n_cases: int, m: int, rng: np.random.Generator) -> list[list[int]]:
    """Two candidates per case: each block shows every pair once; a pair swaps sides each time it recurs."""
    pairs = list(itertools.combinations(range(m), 2))
    flip = {p: bool(rng.integers(2)) for p in pairs}
    orders: list[list[int]] = []
    while len(orders) < n_cases:
        for i in rng.permutation(len(pairs)):
            a, b = pairs[i]
            orders.append([b, a] if flip[pairs[i]] else [a, b])
            flip[pairs[i]] = not flip[pairs[i]]
    return orders[:n_cases]


@dataclass(frozen=True)
class Presentation:
    """Case `case_index` shown at `position` of the reader's sequence, candidates in `order` (model indices)."""

    case_index: int
    position: int
    order: list[int]


def reader_plan(n_cases: int, n_models: int, task: str, seed: int, reader: str) -> list[Presentation]:
    """The reader's own case sequence (shuffled) with a balanced display order per case."""
    rng = reader_rng(seed, reader)
    sequence = rng.permutation(n_cases)
    orders = (latin_orders if task == "rank" else pair_orders)(n_cases, n_models, rng)
    return [Presentation(int(case), pos, orders[pos]) for pos, case in enumerate(sequence)]


def opaque_id(secret: str, reader: str, what: str) -> str:
    """The id a reader's browser uses for a candidate (or the reference): meaningless without the secret."""
    return hmac.new(secret.encode(), f"{reader}|{what}".encode(), hashlib.sha256).hexdigest()[:20]


def labels(n: int) -> list[str]:
    """A, B, C... for the displayed candidates."""
    return [chr(ord("A") + i) for i in range(n)]
