"""The `srnode` command line as a user runs it (real subprocesses)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

SRNODE = [sys.executable, "-m", "srnode"]


def test_registering_commands_imports_no_torch() -> None:
    # `srnode serve`, `config check`, `--help` must start fast: torch loads only for commands that use it.
    code = (
        "import sys, srnode.cli as c; c.build_parser(); "
        "heavy = sorted(m for m in ('torch', 'celery', 'fastapi', 'highdicom') if m in sys.modules); "
        "print(','.join(heavy)); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"imported at registration: {result.stdout.strip()}"


def test_models_add_registers_the_shipped_checkpoint(tmp_path: Path, repo_root: Path) -> None:
    card = repo_root / "models" / "ct-realesrgan-anime6b" / "model_card.json"
    config = tmp_path / "node.yaml"
    original = "# our PACS routing node (edited by hand)\nnode: {ae_title: SRNODE}  # called by the scanners\n"
    config.write_text(original)
    added = subprocess.run([*SRNODE, "models", "add", "--card", str(card), "--config", str(config),
                            "--name", "ct-demo"], capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    entry = yaml.safe_load(config.read_text())["models"]["ct-demo"]
    assert entry["arch"] == "realesrgan" and len(entry["sha256"]) == 64
    # The admin's comments survive, and the file as it was is kept beside it.
    assert "# our PACS routing node (edited by hand)" in config.read_text()
    assert "# called by the scanners" in config.read_text()
    assert (tmp_path / "node.yaml.bak").read_text() == original
    listed = subprocess.run([*SRNODE, "models", "list", "--config", str(config)], capture_output=True, text=True)
    row = next(line for line in listed.stdout.splitlines() if line.startswith("ct-demo"))
    assert " ok " in f" {row} ", row  # weights found at the registered path


def test_models_add_refuses_a_card_whose_weights_changed(tmp_path: Path, repo_root: Path) -> None:
    src = repo_root / "models" / "ct-realesrgan-anime6b"
    card = yaml.safe_load((src / "model_card.json").read_text())
    weights = tmp_path / card["weights"]
    data = bytearray((src / card["weights"]).read_bytes())
    data[-1] ^= 0x01  # one flipped bit
    weights.write_bytes(bytes(data))
    (tmp_path / "model_card.json").write_text((src / "model_card.json").read_text())
    config = tmp_path / "node.yaml"
    config.write_text("{}\n")
    added = subprocess.run([*SRNODE, "models", "add", "--card", str(tmp_path / "model_card.json"),
                            "--config", str(config)], capture_output=True, text=True)
    assert added.returncode == 1
    assert "sha256" in added.stderr
    assert "models" not in (yaml.safe_load(config.read_text()) or {})


def test_models_add_refuses_a_built_in_name(tmp_path: Path, repo_root: Path) -> None:
    card = repo_root / "models" / "ct-realesrgan-anime6b" / "model_card.json"
    config = tmp_path / "node.yaml"
    config.write_text("{}\n")
    added = subprocess.run([*SRNODE, "models", "add", "--card", str(card), "--config", str(config),
                            "--name", "bicubic"], capture_output=True, text=True)
    assert added.returncode == 1
    assert "'bicubic' is the name of a built-in model" in added.stderr
    assert yaml.safe_load(config.read_text()) == {}
