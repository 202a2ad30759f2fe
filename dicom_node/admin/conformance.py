"""The presentation contexts the node negotiates, as the tables of docs/conformance.md.

The AE is built exactly as `NodeServer.start` builds it (dicom_node.scp_wiring → `build_ae`), so the
tables say what the code accepts, not what someone remembers. Regenerate after a change:

    python -m dicom_node.admin.conformance docs/conformance.md
"""
from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pydicom.uid import UID

ROLE_NOTE = "SCP; SCU role accepted (C-GET)"


@dataclass(frozen=True)
class Negotiated:
    sop_class: str
    transfer_syntaxes: tuple[str, ...]
    scu_role: bool | None
    scp_role: bool | None


def negotiated_scp_contexts() -> list[Negotiated]:
    """Every SCP presentation context of the node's AE (default configuration)."""
    from config.loader import parse_config
    from dicom_node.ae import build_ae
    from dicom_node.scp_wiring import scp_contexts

    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config({"node": {"storage_dir": f"{tmp}/storage", "database_url": f"sqlite:///{tmp}/index.db"}},
                           environ={})
        ae = build_ae(cfg, scp_contexts())
    return [Negotiated(cast(str, cx.abstract_syntax), tuple(cx.transfer_syntax), cx.scu_role, cx.scp_role)
            for cx in ae.supported_contexts]


def _name(uid: str) -> str:
    return UID(uid).name


def _is_storage(n: Negotiated) -> bool:
    return bool(n.scu_role and n.scp_role)


def render_blocks(contexts: list[Negotiated]) -> dict[str, str]:
    """Markdown tables keyed by the marker name they replace in docs/conformance.md."""
    services = [n for n in contexts if not _is_storage(n)]
    storage = [n for n in contexts if _is_storage(n)]
    storage_ts = sorted({ts for n in storage for ts in n.transfer_syntaxes},
                        key=lambda u: [int(p) for p in u.split(".")])
    if any(set(n.transfer_syntaxes) != set(storage_ts) for n in storage):
        raise ValueError("storage SOP classes no longer share one transfer syntax list; split the table")
    rows = ["| SOP Class | SOP Class UID | Role | Transfer Syntaxes |", "|---|---|---|---|"]
    for n in services:
        ts = ", ".join(f"{_name(t)} `{t}`" for t in n.transfer_syntaxes)
        rows.append(f"| {_name(n.sop_class)} | `{n.sop_class}` | SCP | {ts} |")
    store_rows = ["| SOP Class | SOP Class UID | Role |", "|---|---|---|"]
    store_rows += [f"| {_name(n.sop_class)} | `{n.sop_class}` | {ROLE_NOTE} |"
                   for n in sorted(storage, key=lambda n: [int(p) for p in n.sop_class.split(".")])]
    ts_rows = ["| Transfer Syntax | UID |", "|---|---|"] + [f"| {_name(t)} | `{t}` |" for t in storage_ts]
    return {"scp-services": "\n".join(rows), "scp-storage": "\n".join(store_rows),
            "scp-storage-ts": "\n".join(ts_rows)}


def update_document(path: Path) -> None:
    """Replace each `<!-- BEGIN name -->...<!-- END name -->` block with the generated table."""
    text = path.read_text(encoding="utf-8")
    for name, table in render_blocks(negotiated_scp_contexts()).items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"{path}: no block {name}")
        def fill(m: re.Match[str], table: str = table) -> str:
            return m.group(1) + table + "\n" + m.group(2)

        text = pattern.sub(fill, text)
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    update_document(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/conformance.md"))
