"""config.loader: YAML + SRNODE_ overrides, errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import ConfigError, load_config, parse_config


def test_issue_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        'node: {ae_title: SRNODE, host: 0.0.0.0, port: 11112, storage_dir: var/storage,\n'
        '       database_url: "sqlite:///var/srnode.db", require_known_callers: true, min_free_disk_mb: 1024}\n'
        "peers:\n  PACS: {ae_title: PACS, host: 127.0.0.1, port: 4242}\nseries: {stable_after_s: 15}\n"
    )
    cfg = load_config(path, environ={})
    assert cfg.node.port == 11112 and cfg.series.stable_after_s == 15
    assert cfg.node.storage_dir == (tmp_path / "var" / "storage").resolve()  # relative to the file
    assert cfg.node.database_url == f"sqlite:///{(tmp_path / 'var' / 'srnode.db').resolve()}"
    assert cfg.peer_by_ae("PACS ") is cfg.peers["PACS"]


def test_env_overrides(tmp_path: Path) -> None:
    cfg = parse_config({"node": {"port": 1}}, base_dir=tmp_path,
                       environ={"SRNODE_NODE__PORT": "11113", "SRNODE_NODE__REQUIRE_KNOWN_CALLERS": "false",
                                "SRNODE_SERIES__STABLE_AFTER_S": "2.5"})
    assert cfg.node.port == 11113 and cfg.node.require_known_callers is False and cfg.series.stable_after_s == 2.5


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"node": {"port": 70000}}, "node.port"),
        ({"node": {"ae_title": "A" * 17}}, "node.ae_title"),
        ({"node": {"min_free_disk_mb": -1}}, "node.min_free_disk_mb"),
        ({"nodes": {}}, "nodes"),
        ({"peers": {"PACS": {"ae_title": "PACS", "host": "h"}}}, "peers.PACS.port"),
        ({"series": {"stable_after_s": "soon"}}, "series.stable_after_s"),
        ({"node": {"tls": {"cert": "c.pem"}}}, "node.tls.key"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, data: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=tmp_path, environ={})
    assert key in info.value.keys and key in str(info.value)


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad, environ={})
