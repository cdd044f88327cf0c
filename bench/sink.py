"""Postfix's ``smtp-sink`` pinned to CPU 0, and pinning for the client.

The machine has two cores and waking a process on the other core is costly,
so both the sink and the benchmarking process run on CPU 0 for repeatable
ratios (see /work/shared/notes/real-servers.md)::

    with PinnedSink() as sink, pinned_to_cpu(0):
        smtp = smtplib.SMTP(sink.host, sink.port)

``PinnedSink(pipelining=False)`` adds ``-p`` (lower case: do not advertise
PIPELINING).  The sink runs as ``taskset -c CPU smtp-sink -u nobody
127.0.0.1:PORT 256``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

__all__ = ["SMTP_SINK", "PinnedSink", "pinned_to_cpu", "sink_available"]

SMTP_SINK = os.environ.get("FASTSMTPLIB_SMTP_SINK", "/usr/sbin/smtp-sink")
TASKSET = shutil.which("taskset") or "/usr/bin/taskset"


def sink_available() -> Optional[str]:
    """None when smtp-sink (and taskset) can run here, else why not."""
    if not os.access(SMTP_SINK, os.X_OK):
        return f"{SMTP_SINK} not found (Debian package 'postfix')"
    if not os.access(TASKSET, os.X_OK):
        return "taskset not found (Debian package 'util-linux')"
    return None


def stop_process(proc: Optional[subprocess.Popen]) -> None:
    """SIGTERM a server still running, SIGKILL it if it has not gone in 5 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            pass
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


class PinnedSink:
    """``smtp-sink`` on 127.0.0.1:<free port>, pinned to one CPU."""

    def __init__(self, *options: str, pipelining: bool = True, cpu: int = 0, backlog: int = 256) -> None:
        self.options = list(options) + ([] if pipelining else ["-p"])
        self.cpu = cpu
        self.backlog = backlog
        self.host = "127.0.0.1"
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self.argv: list[str] = []
        self._tmpdir: Optional[str] = None
        self._log = None

    def start(self) -> "PinnedSink":
        why = sink_available()
        if why:
            raise RuntimeError(why)
        self._tmpdir = tempfile.mkdtemp(prefix="fsl-bench-sink-")
        try:
            for _ in range(5):  # the free port may be taken before smtp-sink binds it
                self.port = _free_port(self.host)
                self._spawn()
                if _wait_for_port(self.host, self.port, self.proc):
                    return self
                self._kill()
            raise RuntimeError(f"smtp-sink did not start: {self.log}")
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> None:
        if self._log is not None:
            self._log.close()
        self._log = open(os.path.join(self._tmpdir, "sink.log"), "wb")
        self.argv = [
            TASKSET, "-c", str(self.cpu), SMTP_SINK, "-u", "nobody",
            *self.options, f"{self.host}:{self.port}", str(self.backlog),
        ]
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    def _kill(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def stop(self) -> None:
        self._kill()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    @property
    def log(self) -> str:
        """What smtp-sink printed (errors; ``-c`` counters)."""
        if self._tmpdir is None:
            return ""
        try:
            return Path(self._tmpdir, "sink.log").read_text(errors="replace").strip()
        except OSError:
            return ""

    def __enter__(self) -> "PinnedSink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PinnedSink cpu={self.cpu} {self.host}:{self.port} {' '.join(self.options)}>"


@contextlib.contextmanager
def pinned_to_cpu(cpu: int = 0) -> Iterator[None]:
    """Pin the calling thread to ``cpu``; restore its previous affinity on exit."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
