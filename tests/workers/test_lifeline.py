"""The embedded worker exits as soon as the node that started it is gone (kill -9 included)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT

CHILD = """
import signal, sys, time
from workers.cli import exit_when_parent_closes
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # like a Celery worker busy with a job: SIGTERM would wait
exit_when_parent_closes(int(sys.argv[1]))
print("ready", flush=True)
time.sleep(60)
"""


def _wait_exit(proc: subprocess.Popen[str], timeout_s: float) -> float | None:
    t0 = time.monotonic()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - t0


def test_worker_exits_when_its_parent_pipe_closes() -> None:
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(read_end)], pass_fds=(read_end,), cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    os.close(read_end)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert _wait_exit(proc, 1.0) is None  # ignored, as a busy worker's warm shutdown would be
        os.close(write_end)  # what the kernel does when the node dies
        write_end = -1
        took = _wait_exit(proc, 5.0)
        assert took is not None and took < 2.0, took
        assert proc.returncode == 3
    finally:
        if write_end >= 0:
            os.close(write_end)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_node_killed_with_sigkill_takes_its_embedded_worker_along(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A stand-in node: the real EmbeddedWorker spawning the real `workers.cli` child; then kill -9
    # of that process alone (not its group), as a crash or an OOM kill would.
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        f"node: {{storage_dir: {tmp_path / 'storage'}, database_url: 'sqlite:///{tmp_path / 'i.db'}'}}\n"
        "routing: [{match: {modality: CT}, model: bicubic}]\n", encoding="utf-8")
    node = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from config.loader import load_config\n"
        "from dicom_node.pipeline.embedded_worker import EmbeddedWorker\n"
        "w = EmbeddedWorker(load_config(sys.argv[1])); w.start()\n"
        "print(w.proc.pid, flush=True); time.sleep(120)\n"), str(cfg)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None
        worker_pid = int(node.stdout.readline())
        time.sleep(3)  # the worker is importing / starting: the moment a supervisor restart would race
        assert _alive(worker_pid)
        node.kill()
        node.wait()
        deadline = time.monotonic() + 3.0
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker_pid), "embedded worker outlived its node"
    finally:
        if node.poll() is None:
            node.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
