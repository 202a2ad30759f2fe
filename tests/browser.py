"""Headless Chromium (Debian's, driven by Playwright) and the folder browser tests save screenshots to."""
from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium browser (no sandbox: tests may run as root)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])


def screenshot_dir(repo_root: Path, area: str) -> Path:
    """test-artifacts/<area>/, created if missing."""
    out = repo_root / "test-artifacts" / area
    out.mkdir(parents=True, exist_ok=True)
    return out
