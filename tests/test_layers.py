"""The direction of imports holds: `lint-imports` keeps every contract of setup.cfg [importlinter]
(docs/architecture.md, "Layers"), and a lazy upward import in a copy of the tree breaks one."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("srnode", "config", "dicom_node", "sr_engine", "workers", "training")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the packages and setup.cfg under `root` (no cache: the tree may be a copy)."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          check=False)


def test_import_contracts_are_kept() -> None:
    done = lint_imports(REPO_ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_lazy_import_of_the_node_from_the_engine_breaks_the_layers(tmp_path: Path) -> None:
    # Imports inside functions count: the engine importing the node server, lazily, is refused.
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, tmp_path / package,
                        ignore=lambda folder, names: [n for n in names if n == "__pycache__"
                                                      or ("." in n and not n.endswith(".py"))])
    shutil.copy(REPO_ROOT / "setup.cfg", tmp_path / "setup.cfg")
    registry = tmp_path / "sr_engine" / "registry.py"
    registry.write_text(registry.read_text(encoding="utf-8")
                        + "\n\ndef _upward() -> None:\n    import dicom_node.server  # noqa: F401\n",
                        encoding="utf-8")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    assert "sr_engine.registry -> dicom_node.server" in done.stdout
