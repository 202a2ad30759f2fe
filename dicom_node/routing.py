"""Routing rules → one decision per stable series (first match wins).

Pure matching lives here; turning a decision into job rows is `dicom_node.pipeline`'s job.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from config.schema import RoutingMatch, RoutingRule, duplicate_rule_name, rule_name  # noqa: F401 - re-exported: the node names rules through this module

# The sender recorded for instances received by STOW-RS (Instance.sender_ae, Series.calling_ae). A
# backslash is never in an AE title (PS3.5), so no C-STORE caller can be mistaken for DICOMweb.
DICOMWEB_SENDER = "\\DICOMweb"


def source_of(calling_ae: str) -> str:
    """How a series arrived, from its recorded sender: "dicomweb" (STOW-RS) or "dimse" (C-STORE)."""
    return "dicomweb" if calling_ae == DICOMWEB_SENDER else "dimse"


@dataclass(frozen=True)
class SeriesFacts:
    """The series attributes routing can match on (taken from the index, not from files)."""

    modality: str = ""
    calling_ae: str = ""
    body_part: str = ""
    series_description: str = ""
    rows: int | None = None
    columns: int | None = None
    source: str = "dimse"  # see source_of


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
    if match.source is not None and match.source != facts.source:
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


def is_general_rule(rule: RoutingRule, modality: str) -> bool:
    """True for a rule that ordinary series of `modality` hit: it matches on the modality alone
    (not on a description, caller or size) and runs a model for every such series (not skip or
    on-demand)."""
    others = rule.match.model_dump(exclude={"modality"}, exclude_none=True)
    return (not others and not rule.skip and not rule.on_demand and rule.match.modality is not None
            and _one_of(rule.match.modality, modality))


def general_rule(rules: list[RoutingRule], modality: str) -> int | None:
    """Index of the first general rule for `modality` (see is_general_rule), or None."""
    return next((i for i, rule in enumerate(rules) if is_general_rule(rule, modality)), None)
