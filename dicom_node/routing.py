"""Routing rules → one decision per stable series (first match wins).

Pure matching lives here; turning a decision into job rows is `dicom_node.pipeline`'s job.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from config.schema import RoutingMatch, RoutingRule


@dataclass(frozen=True)
class SeriesFacts:
    """The series attributes routing can match on (taken from the index, not from files)."""

    modality: str = ""
    calling_ae: str = ""
    body_part: str = ""
    series_description: str = ""
    rows: int | None = None
    columns: int | None = None


def _one_of(wanted: str | list[str] | None, actual: str) -> bool:
    if wanted is None:
        return True
    options = [wanted] if isinstance(wanted, str) else wanted
    return actual.strip().upper() in {o.strip().upper() for o in options}


def rule_matches(match: RoutingMatch, facts: SeriesFacts) -> bool:
    """True when every field given in `match` agrees with `facts` (AND; strings case-insensitive)."""
    if not _one_of(match.modality, facts.modality):
        return False
    if not _one_of(match.calling_ae, facts.calling_ae):
        return False
    if not _one_of(match.body_part, facts.body_part):
        return False
    if match.series_description is not None and not re.search(
        match.series_description, facts.series_description, flags=re.IGNORECASE
    ):
        return False
    size_checks = (
        (match.rows, facts.rows, lambda want, got: got == want),
        (match.columns, facts.columns, lambda want, got: got == want),
        (match.min_rows, facts.rows, lambda want, got: got >= want),
        (match.max_rows, facts.rows, lambda want, got: got <= want),
    )
    for wanted, actual, ok in size_checks:
        if wanted is not None and (actual is None or not ok(wanted, actual)):
            return False
    return True


def select_rule(rules: list[RoutingRule], facts: SeriesFacts) -> tuple[int, RoutingRule] | None:
    """The first rule (index, rule) whose match agrees with `facts`, or None when none does."""
    for index, rule in enumerate(rules):
        if rule_matches(rule.match, facts):
            return index, rule
    return None


def rule_name(index: int, rule: RoutingRule) -> str:
    """A stable name for a rule: its `name`, else its position (`rule-<index>`)."""
    return rule.name or f"rule-{index}"
