"""Routing rules: first match wins; every match field; skip and on-demand rules."""
from __future__ import annotations

import pytest

from config.loader import ConfigError, parse_config
from config.schema import RoutingRule
from dicom_node.routing import SeriesFacts, rule_matches, rule_name, select_rule

CT = SeriesFacts(modality="CT", calling_ae="SCANNER1", body_part="CHEST",
                 series_description="Thorax 1.0 B70f", rows=512, columns=512)


def rules(*dicts: dict) -> list[RoutingRule]:
    return [RoutingRule.model_validate(d) for d in dicts]


def test_first_match_wins() -> None:
    rs = rules({"match": {"modality": "MR"}, "model": "a"},
               {"match": {"modality": "CT"}, "model": "b"},
               {"match": {}, "model": "c"})
    assert select_rule(rs, CT) == (1, rs[1])


def test_no_rule_matches() -> None:
    assert select_rule(rules({"match": {"modality": "MR"}, "model": "a"}), CT) is None


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"modality": "ct"}, True),
        ({"modality": ["MR", "CT"]}, True),
        ({"modality": "MR"}, False),
        ({"calling_ae": "SCANNER1"}, True),
        ({"calling_ae": "OTHER"}, False),
        ({"body_part": ["head", "chest"]}, True),
        ({"body_part": "HEAD"}, False),
        ({"series_description": r"b70f$"}, True),
        ({"series_description": r"^lung"}, False),
        ({"rows": 512, "columns": 512}, True),
        ({"rows": 256}, False),
        ({"min_rows": 256, "max_rows": 512}, True),
        ({"max_rows": 256}, False),
        ({"modality": "CT", "body_part": "HEAD"}, False),  # AND of fields
    ],
)
def test_match_fields(match: dict, expected: bool) -> None:
    assert rule_matches(RoutingRule.model_validate({"match": match, "model": "m"}).match, CT) is expected


def test_size_match_needs_known_size() -> None:
    unknown = SeriesFacts(modality="CT")
    assert not rule_matches(RoutingRule.model_validate({"match": {"rows": 512}, "model": "m"}).match, unknown)


def test_skip_rule_stops_matching() -> None:
    rs = rules({"match": {"series_description": "scout"}, "skip": True},
               {"match": {"modality": "CT"}, "model": "b"})
    scout = SeriesFacts(modality="CT", series_description="Scout 1")
    index, rule = select_rule(rs, scout)  # type: ignore[misc]
    assert index == 0 and rule.skip
    assert select_rule(rs, CT) == (1, rs[1])


def test_rule_names() -> None:
    rs = rules({"name": "ct-chest", "model": "a"}, {"model": "b"})
    assert rule_name(0, rs[0]) == "ct-chest"
    assert rule_name(1, rs[1]) == "rule-1"


def test_issue_shape_parses_and_bad_regex_is_a_config_error() -> None:
    cfg = parse_config({
        "peers": {"PACS": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
        "models": {"realesrgan-ct": {"arch": "realesrgan", "scale": 4}},
        "routing": [{"match": {"modality": "CT"}, "model": "realesrgan-ct", "destinations": ["PACS"]}],
        "broker_url": None,
    }, environ={})
    assert select_rule(cfg.routing, CT)[1].model == "realesrgan-ct"  # type: ignore[index]
    with pytest.raises(ConfigError) as err:
        parse_config({"routing": [{"match": {"series_description": "("}, "model": "m"}]}, environ={})
    assert "routing.0.match.series_description" in err.value.keys[0]
