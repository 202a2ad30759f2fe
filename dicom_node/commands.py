"""`srnode serve`, `srnode config check` and `srnode config overrides`."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING

from config.loader import deployment_warnings, load_config

if TYPE_CHECKING:
    from dicom_node.server import NodeServer

log = logging.getLogger("srnode")


def cmd_config_check(args: argparse.Namespace) -> int:
    """Print OK, or the offending keys and why; exit code 1 on error. Settings that validate but
    may not work together (a broker without a worker, SQLite with remote workers...) are printed
    as `warning: key: why` lines before OK."""
    cfg = load_config(args.file)  # a ConfigError is reported by the CLI (config.command_runner.run_command)
    for key, why in deployment_warnings(cfg):
        print(f"warning: {key}: {why}")
    print("OK")
    return 0


def cmd_config_overrides(args: argparse.Namespace) -> int:
    """List the admin overrides in force over the file (one line each), or with --clear remove
    them (all, or one section) so that the file's values are in force; works on the index database
    with the node stopped or running (a running node sees the change within a second)."""
    import getpass

    from sqlalchemy import inspect

    from dicom_node.index.db import make_engine, session_factory
    from dicom_node.index.live_config import clear_overrides, read_overrides

    cfg = load_config(args.config)
    engine = make_engine(cfg.node.database_url)
    try:
        if not inspect(engine).has_table("config_override"):  # never migrated: nothing was overridden
            print("no overrides: the file is in force")
            return 0
        sessions = session_factory(engine)
        if args.clear is None:
            overrides = read_overrides(sessions, cfg)
            for override in overrides:
                print(override.describe())
            if not overrides:
                print("no overrides: the file is in force")
            return 0
        keys = None if args.clear == _ALL else [args.clear]
        cleared = clear_overrides(sessions, cfg, keys, f"cli:{getpass.getuser()}")
        for override in cleared:
            print(f"{override.key}: override by {override.actor or '?'} removed; the file's value is in force")
        if not cleared:
            print("no overrides to clear: the file is in force")
        return 0
    finally:
        engine.dispose()


_ALL = "\0all"  # --clear without a key


def quiet_libraries(level: str) -> None:
    """Node log level for srnode; pynetdicom/alembic only say something at WARNING or above."""
    logging.getLogger().setLevel(level)
    for name in ("pynetdicom", "alembic"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the node in the foreground until SIGTERM/SIGINT (in-flight associations may finish)."""
    cfg = load_config(args.config)
    quiet_libraries(cfg.node.log_level)
    stop_requested = threading.Event()
    node: NodeServer | None = None  # set once the wiring (torch, Celery) is imported

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("%s received: no new associations, waiting up to %.0f s for %d open one(s)",
                 signal.Signals(signum).name, cfg.node.shutdown_grace_s, node.active_associations() if node else 0)
        stop_requested.set()
        if node is not None:
            # Close the listener now (from a thread: shutdown() waits for the accept loop).
            threading.Thread(target=node.stop_accepting, name="srnode-stop-accepting", daemon=True).start()

    # Before the wiring is imported and the node started: the listener accepts associations while
    # the services are still loading (torch, Celery), and a SIGTERM in that window must still drain
    # them, not kill the process.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    from dicom_node.wiring import build_node  # every handler and service

    node = build_node(cfg)
    try:
        node.start()
    except OSError as exc:
        print(f"cannot listen on {cfg.node.host}:{cfg.node.port} (node.host/node.port): {exc.strerror or exc}",
              file=sys.stderr)
        node.stop(0)
        return 1
    while not stop_requested.wait(0.5):
        pass
    node.stop()
    log.info("stopped")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `serve`, `config check` and `config overrides`."""
    serve = subparsers.add_parser("serve", help="run the DICOM node in the foreground")
    serve.add_argument("--config", required=True, help="YAML configuration file")
    serve.set_defaults(func=cmd_serve)
    config = subparsers.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)
    overrides = config_sub.add_parser("overrides",
                                      help="list (or --clear) the console/API changes in force over the file")
    overrides.add_argument("--config", required=True, help="YAML configuration file (its database holds the overrides)")
    overrides.add_argument("--clear", nargs="?", const=_ALL, metavar="KEY",
                           help="remove the override of KEY (peers, models, routing, output, series), or all")
    overrides.set_defaults(func=cmd_config_overrides)


def main(argv: list[str] | None = None) -> int:
    """Run only these subcommands (`python -m dicom_node.commands serve --config FILE`)."""
    parser = argparse.ArgumentParser(prog="srnode")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from config.command_runner import run_parsed

    return run_parsed(parser, args)


if __name__ == "__main__":
    sys.exit(main())
