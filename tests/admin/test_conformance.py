"""docs/conformance.md lists exactly what the running node's AE negotiates (read from the AE)."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.loader import parse_config
from config.schema import NodeConfig
from dicom_node.ae import MAX_PDU_SIZE
from dicom_node.derive.writer import TRANSFER_SYNTAXES
from dicom_node.wiring import build_node

UID_IN_TICKS = re.compile(r"`(\d+(?:\.\d+)+)`")


@pytest.fixture(scope="module")
def doc(repo_root: Path) -> str:
    return (repo_root / "docs" / "conformance.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def ae(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    tmp = tmp_path_factory.mktemp("conformance")
    cfg = parse_config({"node": {"host": "127.0.0.1", "port": 0, "storage_dir": str(tmp / "storage"),
                                 "database_url": f"sqlite:///{tmp / 'index.db'}"}}, environ={})
    node = build_node(cfg, services=[])  # the AE as `srnode serve` builds it
    node.start()
    yield node.ae
    node.stop(0)


def _block(doc: str, name: str) -> list[list[str]]:
    m = re.search(rf"<!-- BEGIN {name} -->\n(.*?)<!-- END {name} -->", doc, re.S)
    assert m, f"docs/conformance.md has no {name} table"
    rows = [line for line in m.group(1).splitlines() if line.startswith("|")][2:]  # skip header + rule
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def _is_storage(cx: object) -> bool:
    return bool(cx.scu_role and cx.scp_role)  # type: ignore[attr-defined]


def test_non_storage_scp_classes_and_syntaxes(doc: str, ae: object) -> None:
    documented = {}
    for cells in _block(doc, "scp-services"):
        (sop,) = UID_IN_TICKS.findall(cells[1])
        documented[sop] = set(UID_IN_TICKS.findall(cells[3]))
        assert cells[2] == "SCP"
    actual = {cx.abstract_syntax: set(cx.transfer_syntax) for cx in ae.supported_contexts if not _is_storage(cx)}
    assert documented == actual


def test_storage_scp_classes(doc: str, ae: object) -> None:
    documented = {UID_IN_TICKS.findall(cells[1])[0] for cells in _block(doc, "scp-storage")}
    storage = [cx for cx in ae.supported_contexts if _is_storage(cx)]
    assert documented == {cx.abstract_syntax for cx in storage}
    assert len(documented) > 100  # every storage SOP class, not a sample


def test_storage_transfer_syntaxes(doc: str, ae: object) -> None:
    documented = {UID_IN_TICKS.findall(cells[1])[0] for cells in _block(doc, "scp-storage-ts")}
    storage = [cx for cx in ae.supported_contexts if _is_storage(cx)]
    # One list for all storage classes, as the document says.
    assert all(set(cx.transfer_syntax) == documented for cx in storage)
    assert "1.2.840.10008.1.2.4.90" in documented and "1.2.840.10008.1.2.5" in documented


def test_every_context_is_documented(doc: str, ae: object) -> None:
    listed = {UID_IN_TICKS.findall(c[1])[0] for name in ("scp-services", "scp-storage") for c in _block(doc, name)}
    assert {cx.abstract_syntax for cx in ae.supported_contexts} == listed


def test_association_policy_values(doc: str, ae: object) -> None:
    assert f"`{ae.implementation_class_uid}`" in doc
    assert f"`{ae.implementation_version_name}`" in doc
    assert f"{MAX_PDU_SIZE:,} bytes".replace(",", " ") in doc
    assert f"`node.max_associations` (default {NodeConfig().max_associations})" in doc


def test_derived_transfer_syntaxes(doc: str) -> None:
    m = re.search(r"Table 4\.2-4.*?\n\n(.*?)\n\n", doc, re.S)
    assert m
    rows = [line for line in m.group(1).splitlines() if line.startswith("|")][2:]
    documented = {re.search(r"`(\w+)`", r).group(1): UID_IN_TICKS.findall(r)[-1] for r in rows}  # type: ignore[union-attr]
    assert documented == {k: str(v) for k, v in TRANSFER_SYNTAXES.items()}
