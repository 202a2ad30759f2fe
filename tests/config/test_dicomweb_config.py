"""DICOMweb settings: `kind: dicomweb` peers, the `source` routing match, the `store` role, `dicomweb:`."""
from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import ConfigError, parse_config
from config.schema import DicomwebPeerConfig, PeerConfig
from dicom_node.routing import DICOMWEB_SENDER, SeriesFacts, rule_matches, source_of

WEB = {"kind": "dicomweb", "url": "https://archive.example/dicom-web/", "auth": {"type": "bearer", "token_env": "T"}}


def test_a_dicomweb_peer_beside_a_dimse_one(tmp_path: Path) -> None:
    cfg = parse_config({"peers": {"PACS": {"ae_title": "PACS", "host": "h", "port": 104}, "web": WEB},
                        "admin": {"tokens": {"s" * 24: "store"}}}, base_dir=tmp_path, environ={})
    web = cfg.peers["web"]
    assert isinstance(web, DicomwebPeerConfig) and isinstance(cfg.peers["PACS"], PeerConfig)
    assert web.url == "https://archive.example/dicom-web" and web.batch_instances == 32
    assert cfg.peer_by_ae("PACS") is cfg.peers["PACS"]
    assert cfg.admin.token_entries()["s" * 24].role == "store"
    assert cfg.dicomweb.enabled and cfg.dicomweb.cors_origins == [] and cfg.dicomweb.max_stow_mb == 2048
    # A dump loads back to the same config (run-time overrides are stored as dumps); a DIMSE peer's
    # `kind` is left out of it, as before DICOMweb peers existed.
    dumped = cfg.model_dump(mode="json")
    assert "kind" not in dumped["peers"]["PACS"] and dumped["peers"]["web"]["kind"] == "dicomweb"
    assert parse_config(dumped, base_dir=tmp_path, environ={}) == cfg


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ({**WEB, "url": "ftp://archive/dicom-web"}, "peers.web.url"),
        ({**WEB, "auth": {"type": "bearer"}}, "peers.web.auth"),
        ({**WEB, "auth": {"type": "basic", "username": "u"}}, "peers.web.auth"),
        ({**WEB, "batch_instances": 0}, "peers.web.batch_instances"),
        ({**WEB, "ae_title": "X"}, "peers.web.ae_title"),
        ({"kind": "dimse", "ae_title": "X", "host": "h"}, "peers.web.port"),
    ],
)
def test_peer_errors_name_the_key(tmp_path: Path, peer: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        parse_config({"peers": {"web": peer}}, base_dir=tmp_path, environ={})
    assert key in info.value.keys, info.value


def test_routing_tells_stow_rs_from_c_store(tmp_path: Path) -> None:
    cfg = parse_config({"models": {"b": {"arch": "bicubic", "scale": 2}},
                        "routing": [{"match": {"modality": "CT", "source": "dicomweb"}, "model": "b"}]},
                       base_dir=tmp_path, environ={})
    match = cfg.routing[0].match
    assert rule_matches(match, SeriesFacts(modality="CT", calling_ae=DICOMWEB_SENDER,
                                           source=source_of(DICOMWEB_SENDER)))
    assert not rule_matches(match, SeriesFacts(modality="CT", calling_ae="SCANNER", source=source_of("SCANNER")))
    with pytest.raises(ConfigError) as info:
        parse_config({"models": {"b": {"arch": "bicubic", "scale": 2}},
                      "routing": [{"match": {"source": "stow"}, "model": "b"}]}, base_dir=tmp_path, environ={})
    assert "routing.0.match.source" in info.value.keys
