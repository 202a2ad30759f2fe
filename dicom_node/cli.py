"""`srnode` command line (subcommands are registered by the modules that own them)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("srnode: not yet wired")


if __name__ == "__main__":
    sys.exit(main())
