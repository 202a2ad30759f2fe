"""Retention and quota: which series may go (eligibility), how much is used (usage), removing
series crash-safely (recycler) in a background service. See docs/storage.md, "Retention and quota".

    eligibility.eligible_series ─▶ recycler.plan (age rules, then quota, oldest first)
        ─▶ recycler.recycle_series: mark series.recycling_at (commit) ─▶ delete rows (one transaction,
           audited) ─▶ unlink files ─▶ drop the series row (or keep it for its job history)
"""
from __future__ import annotations

KINDS = ("original", "derived")
MIB = 1024 * 1024
