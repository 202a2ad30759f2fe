"""`srnode storage status|purge`: usage against the quota, and recycling on demand (or its dry run)."""
from __future__ import annotations

import argparse
import json

from dicom_node.retention import MIB


def _open(config: str):  # type: ignore[no-untyped-def]
    from config.loader import load_config
    from dicom_node.index.db import make_engine, session_factory

    cfg = load_config(config)
    return cfg, session_factory(make_engine(cfg.node.database_url))


def cmd_status(args: argparse.Namespace) -> int:
    """Print used (by kind), quota, eligible, protected, recycled; `refusing:` when the node refuses."""
    from dicom_node.retention.usage import storage_status

    cfg, factory = _open(args.config)
    with factory() as session:
        st = storage_status(session, cfg.retention)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    quota = "none" if st["quota_bytes"] is None else f"{st['quota_bytes'] / MIB:.1f} MiB"
    print(f"used      {st['used_bytes'] / MIB:10.1f} MiB   quota {quota}")
    for kind, n in st["by_kind"].items():
        print(f"  {kind:<8}{n / MIB:10.1f} MiB")
    print(f"eligible  {st['eligible']['bytes'] / MIB:10.1f} MiB   {st['eligible']['series']} series")
    print(f"protected {st['protected']['bytes'] / MIB:10.1f} MiB   {st['protected']['series']} series")
    print(f"recycled  {st['recycled_bytes'] / MIB:10.1f} MiB   since the index was created")
    if st["refusing"]:
        print(f"refusing: {st['refusing']}")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    """Recycle now what the retention rules ask for; --dry-run prints what would go and why."""
    from dicom_node.retention.recycler import finish_interrupted, plan_now, run_pass

    cfg, factory = _open(args.config)
    if args.dry_run:
        for p in plan_now(factory, cfg.retention):
            c = p.candidate
            print(f"{c.series_uid}  {c.kind:<8} {c.modality:<4} {c.instances:>5} instances {c.bytes / MIB:9.1f} MiB"
                  f"  {p.why}")
        return 0
    storage = cfg.node.storage_dir
    freed = finish_interrupted(factory, storage, cfg.retention.keep_job_history)
    freed += run_pass(factory, storage, cfg.retention, actor="cli")
    print(f"recycled {freed / MIB:.1f} MiB")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `storage status` and `storage purge`."""
    storage = subparsers.add_parser("storage", help="storage usage, quota and recycling (retention)")
    sub = storage.add_subparsers(dest="storage_command", metavar="ACTION")
    status = sub.add_parser("status", help="used (by kind), quota, eligible and protected series")
    status.add_argument("--config", required=True, help="YAML configuration file")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=cmd_status)
    purge = sub.add_parser("purge", help="recycle now what the retention rules ask for")
    purge.add_argument("--config", required=True, help="YAML configuration file")
    purge.add_argument("--dry-run", action="store_true", help="print what would go and why; change nothing")
    purge.set_defaults(func=cmd_purge)
