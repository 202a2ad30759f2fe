"""Ctrl-C (SIGINT) and SIGTERM on a real `srnode train` process: the current step finishes,
last.pt is saved, one line says how to resume, the exit status is 128 + the signal number, and
the same command resumes from the saved step."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


def _train_cmd(ct: dict[str, Path], out: Path, cache: Path, *extra: str) -> list[str]:
    # Far more steps than the test waits for, checkpoints far apart: only the signal saves one.
    return [sys.executable, "-m", "srnode", "train", "--preset", "realesrgan",
            "--data", str(ct["cptac"]), "--val-data", str(ct["ge"]), "--out", str(out),
            "--cache-dir", str(cache), "--steps", "100000", "--batch", "1", "--hr-patch", "32",
            "--log-every", "1", "--val-every", "100000", "--ckpt-every", "5000", "--degradations", "off",
            "--set", 'arch_overrides={"num_filters": 8, "num_blocks": 1}', "--val-slices", "1",
            "--val-crop", "64", "--threads", "1", "--no-progress", *extra]


def _logged_steps(out: Path) -> list[int]:
    path = out / "log.csv"
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh) if r["key"] == "train/l1"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_checkpoint_and_resumes(sig: signal.Signals, ct_by_name: dict[str, Path],
                                             tmp_path: Path, repo_root: Path) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cmd(ct_by_name, out, cache), cwd=repo_root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(_logged_steps(out)) < 3:  # inside the training loop, a few steps done
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    state = torch.load(out / "last.pt", weights_only=False)
    step = int(state["step"])
    assert step >= 3 and step == max(_logged_steps(out))  # the step it was on, finished and saved
    last = [ln for ln in stderr.splitlines() if ln.strip()][-1]
    assert f"interrupted by {sig.name}" in last and str(out / "last.pt") in last, last
    assert f"resume from step {step}" in last, last
    assert stdout == ""  # no result JSON: the run did not finish
    assert not (out / "final_ema.pt").exists()

    if sig == signal.SIGINT:  # the same command, time-boxed, continues from that step
        resumed = subprocess.run(_train_cmd(ct_by_name, out, cache, "--stop-after", str(step + 2)),
                                 cwd=repo_root, env=env, capture_output=True, text=True, timeout=240,
                                 check=False)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resumed from {out / 'last.pt'} at step {step}" in resumed.stderr
        assert torch.load(out / "last.pt", weights_only=False)["step"] == step + 2
        steps = _logged_steps(out)
        assert steps == list(range(1, step + 3))  # every step once, none lost or repeated
