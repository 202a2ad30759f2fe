"""Crash-test harness: `srnode serve` in its own process group, a DCMTK storescp that keeps every
reception, a slow TCP link, and read-only checks of the node's SQLite index.

Nothing here imitates srnode: the node, its embedded worker, the sender (storescu) and the
destination (storescp) are the real programs; the test only kills, waits and counts.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from sqlalchemy import func, select

from dicom_node.derive.uids import derived_sop_uid
from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.models import Instance, Job, JobState, Outbox, OutboxState, Series, SeriesState
from dicom_node.storage import resolve_in
from sr_engine.registry import builtin_digest
from tests.conftest import REPO_ROOT, free_port

SERVE = [sys.executable, "-m", "srnode", "serve", "--config"]  # the `srnode` console script
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.05) -> T:
    """The first truthy value of `predicate`; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def expected_derived(sources: list[Path], scale: int) -> set[str]:
    """SOP Instance UIDs the bicubic job derives from `sources` (deterministic, see derive/uids.py)."""
    sha = builtin_digest("bicubic")
    return {derived_sop_uid(sop_uid(f), "bicubic", sha, scale) for f in sources}


def acknowledged(storescu_output: str) -> list[Path]:
    """Files storescu -v got a Success response for (it logs the file, then the response)."""
    acked: list[Path] = []
    current: Path | None = None
    for line in storescu_output.splitlines():
        if m := re.search(r"Sending file: (.+)$", line):
            current = Path(m.group(1).strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked


class Destination:
    """A DCMTK storescp writing each reception to its own file (+uf): duplicates stay countable.

    Has `aet` and `dicom_port` like tests.orthanc.Orthanc, so tests.pipeline.conftest.node_config
    takes it as the peer PACS.
    """

    aet = "PACS"

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._parsed: dict[str, str] = {}  # file name -> SOP Instance UID, once fully readable

    def start(self, sleep_after_s: int = 0) -> None:
        """Listen on the same port every time (a destination that comes back)."""
        cmd = ["storescp", "--aetitle", self.aet, "--output-directory", str(self.out_dir), "+uf",
               "--sleep-after", str(sleep_after_s), str(self.dicom_port)]
        with open(self.out_dir.parent / "storescp.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._listening, 20, "storescp to listen")

    def _listening(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "storescp exited"
        try:
            socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Gone at once, as a crashed or switched-off PACS."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def received(self) -> Counter[str]:
        """SOP Instance UID -> how many times storescp received it."""
        for f in self.out_dir.iterdir():
            if f.name not in self._parsed:
                try:
                    self._parsed[f.name] = sop_uid(f)
                except Exception:  # noqa: BLE001 - still being written; counted on the next look
                    continue
        return Counter(self._parsed.values())


class SlowLink:
    """A TCP relay that passes the sender's bytes at `bytes_per_s`, so a kill lands mid-association."""

    def __init__(self, target_port: int, bytes_per_s: float) -> None:
        self.target_port = target_port
        self.bytes_per_s = bytes_per_s
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                return
            threading.Thread(target=self._pump, args=(client, upstream, self.bytes_per_s), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, bytes_per_s: float) -> None:
        try:
            while chunk := src.recv(16384):
                dst.sendall(chunk)
                if bytes_per_s:
                    time.sleep(len(chunk) / bytes_per_s)
        except OSError:
            pass
        finally:  # one side gone (the node killed): the other side sees the connection close
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.server.close()


class Node:
    """`srnode serve --config FILE` in its own session, so kill -9 reaches the embedded worker too."""

    def __init__(self, config_file: Path, cfg: dict[str, Any], log_file: Path) -> None:
        self.config_file = config_file
        self.cfg = cfg
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.crashes = 0
        # The embedded worker is started with this file (dicom_node/pipeline/embedded_worker.py).
        storage = Path(cfg["node"]["storage_dir"]).resolve()
        self.worker_config = str(storage.parent / "srnode-embedded-worker.json")

    @property
    def port(self) -> int:
        return int(self.cfg["node"]["port"])

    def start(self, timeout_s: float = 120) -> None:
        """Start and wait for its "listening on" line (C-ECHO would be refused on a full disk)."""
        started = self.log_text().count(" listening on ")
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen([*SERVE, str(self.config_file)], cwd=REPO_ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self._alive() and self.log_text().count(" listening on ") > started, timeout_s,
                   "srnode serve to listen", every_s=0.2)

    def _alive(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"srnode serve exited {self.proc.returncode}:\n{self.log_tail()}"
        return True

    def kill9(self) -> None:
        """kill -9 of the whole process group: the node and its embedded worker at once."""
        assert self.proc is not None
        self._killpg(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.crashes += 1

    def kill9_node_only(self) -> None:
        """kill -9 of the node process alone; its children must notice by themselves."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.crashes += 1

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL for whatever of the group is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._killpg(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self._killpg(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def _killpg(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)  # pgid == the node's pid (start_new_session)
        except ProcessLookupError:
            pass

    def worker_pids(self) -> list[int]:
        """Live `workers.cli` processes started with this node's embedded-worker config."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"workers.cli" in argv and self.worker_config.encode() in argv:
                pids.append(int(entry.name))
        return pids

    def log_text(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class Index:
    """Read-only views of the node's SQLite index, taken while the node runs or after it died."""

    def __init__(self, database_url: str, storage_dir: Path) -> None:
        self.engine = make_engine(database_url)
        self.factory = session_factory(self.engine)
        self.storage_dir = storage_dir

    def close(self) -> None:
        self.engine.dispose()

    def instance_count(self) -> int:
        with self.factory() as s:
            return int(s.scalar(select(func.count()).select_from(Instance).where(Instance.sop_instance_uid != "")) or 0)

    def sop_uids(self) -> set[str]:
        with self.factory() as s:
            return set(s.scalars(select(Instance.sop_instance_uid)))

    def series_states(self) -> list[SeriesState]:
        with self.factory() as s:
            return list(s.scalars(select(Series.state).where(Series.derived_from_job.is_(None))))

    def jobs(self) -> list[Job]:
        with self.factory() as s:
            return list(s.scalars(select(Job)))

    def outbox_states(self) -> Counter[str]:
        with self.factory() as s:
            return Counter(state.value for state in s.scalars(select(Outbox.state)))

    def in_doubt_uids(self) -> set[str]:
        """SOP Instance UIDs handed to an association whose answer the node never recorded."""
        with self.factory() as s:
            return set(s.scalars(select(Instance.sop_instance_uid).join(Outbox, Outbox.instance_pk == Instance.id)
                                 .where(Outbox.state == OutboxState.pending, Outbox.sent_at.is_not(None))))

    def max_pending_attempts(self) -> int:
        """Most failed attempts of an undelivered outbox row (how far its backoff has grown)."""
        with self.factory() as s:
            return int(s.scalar(select(func.max(Outbox.attempts)).where(Outbox.state == OutboxState.pending)) or 0)

    def settled(self) -> bool:
        """Every job done and every outbox row delivered (the node has nothing left to do)."""
        jobs, outbox = self.jobs(), self.outbox_states()
        return (bool(jobs) and all(j.state == JobState.done for j in jobs)
                and set(outbox) == {OutboxState.delivered.value})

    def problems(self) -> list[str]:
        """Inconsistencies: an instance row without its file, an unfinished job, an undelivered row."""
        found: list[str] = []
        with self.factory() as s:
            for uid, rel in s.execute(select(Instance.sop_instance_uid, Instance.file_path)):
                if not resolve_in(self.storage_dir, rel).is_file():
                    found.append(f"instance {uid}: file {rel} missing")
            for job in s.scalars(select(Job)):
                if job.state != JobState.done:
                    found.append(f"job #{job.id} {job.state.value} ({job.progress_done}/{job.progress_total}) "
                                 f"{job.error[:200]}")
            for row in s.scalars(select(Outbox).where(Outbox.state != OutboxState.delivered)):
                found.append(f"outbox #{row.id} to {row.destination} {row.state.value} after {row.attempts}: "
                             f"{row.last_error[:200]}")
        return found

    def leftover_part_files(self) -> int:
        """Temporary files of an interrupted receive (.tmp-*.part) still in storage."""
        return sum(1 for _ in self.storage_dir.rglob(".tmp-*.part"))


class Run:
    """One fault run: a source series, the destination, the node and its index, and the counts."""

    def __init__(self, tmp: Path, files: list[Path], dest: Destination, node: Node, scale: int) -> None:
        self.tmp = tmp
        self.files = files
        self.dest = dest
        self.node = node
        self.scale = scale
        self.index = Index(node.cfg["node"]["database_url"], Path(node.cfg["node"]["storage_dir"]))
        self.sent = 0  # C-STOREs attempted by the source (re-sends included)
        self.acked: set[Path] = set()
        self.extra: dict[str, Any] = {}  # scenario-specific figures (times, counts at the kill)

    def send(self, files: list[Path], port: int | None = None) -> list[Path]:
        """storescu the files to the node (or a relay in front of it); returns those acknowledged."""
        from tests.dicom_node.conftest import storescu  # the project's DCMTK sender

        result = storescu(port or self.node.port, files, flags=("-v",))
        self.sent += len(files)
        acked = acknowledged(result.stdout + result.stderr)
        self.acked |= set(acked)
        self.extra.setdefault("storescu_output_tails", []).append((result.stdout + result.stderr)[-300:])
        return acked

    def job_progress(self) -> tuple[int, int] | None:
        jobs = self.index.jobs()
        return (jobs[0].progress_done, jobs[0].progress_total) if jobs else None

    def finish(self, timeout_s: float, settle_s: float) -> dict[str, Any]:
        """Wait until the derived series arrived and the node is idle, then count everything."""
        expected = expected_derived(self.files, self.scale)
        start = time.monotonic()
        try:
            wait_until(lambda: expected <= set(self.dest.received()), timeout_s, "the derived series", every_s=0.2)
            self.extra["all_delivered_at"] = time.monotonic()
            wait_until(self.index.settled, max(5.0, timeout_s - (time.monotonic() - start)), "an idle node", 0.2)
        except AssertionError as exc:
            self.extra["timeout"] = str(exc)
        time.sleep(settle_s)  # a duplicate would arrive within this
        received = self.dest.received()
        stored = self.index.sop_uids()
        acked_uids = {sop_uid(f) for f in self.acked}
        return {
            "sent": self.sent,
            "acknowledged": len(acked_uids),
            "stored": len(acked_uids & stored),
            "lost": sorted(acked_uids - stored),
            "expected_derived": len(expected),
            "delivered": len(set(received) & expected),
            "missing": sorted(expected - set(received)),
            "unexpected": sorted(set(received) - expected),
            "duplicates": {uid: n for uid, n in received.items() if n > 1},
            "crashes": self.node.crashes,
            "index_problems": self.index.problems(),
            "leftover_part_files": self.index.leftover_part_files(),
            **{k: v for k, v in self.extra.items() if k not in ("storescu_output_tails", "all_delivered_at")},
        }

    def assert_exactly_once(self, figures: dict[str, Any], in_doubt: Collection[str] = ()) -> None:
        """Nothing acknowledged lost, every derived instance delivered once, a consistent index.

        `in_doubt`: instances whose C-STORE was on the wire when the node died. A peer without
        C-FIND (storescp) cannot be asked whether it kept them, so they alone may come twice.
        """
        context = f"figures: {figures}\nnode log tail:\n{self.node.log_tail()}"
        assert figures["acknowledged"] == len(self.files), f"not every source instance was acknowledged; {context}"
        assert not figures["lost"], f"acknowledged instances lost; {context}"
        assert not figures["missing"], f"derived instances never delivered; {context}"
        assert set(figures["duplicates"]) <= set(in_doubt), f"derived instances delivered more than once; {context}"
        assert all(n == 2 for n in figures["duplicates"].values()), f"an in-doubt instance came 3 times; {context}"
        assert not figures["unexpected"], f"unexpected instances delivered; {context}"
        assert not figures["index_problems"], f"inconsistent index; {context}"
        assert not figures["leftover_part_files"], f"temp files of an interrupted write survived the restart; {context}"

    def close(self) -> None:
        self.node.stop()
        self.dest.stop()
        self.index.close()


def record(fault_figures: dict[str, dict[str, Any]], tmp_path: Path, scenario: str, figures: dict[str, Any]) -> None:
    """Keep one scenario's figures (session JSON, the test's tmp dir) and print them."""
    fault_figures[scenario] = figures
    text = json.dumps({scenario: figures}, indent=2, sort_keys=True)
    (tmp_path / "figures.json").write_text(text, encoding="utf-8")
    print(text)
