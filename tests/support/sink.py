"""Postfix's ``smtp-sink`` as a subprocess on a free loopback port.

``smtp-sink`` is a fast C server that accepts and discards mail. It
advertises PIPELINING and 8BITMIME (no CHUNKING)::

    with SmtpSink() as sink:                 # sink.host, sink.port
        ...
    SmtpSink(lmtp=True)                      # -L: speak LMTP
    SmtpSink(pipelining=False)               # -p: do not advertise PIPELINING
    SmtpSink("-r", "rcpt", "-w", "1")        # any other smtp-sink options
    SmtpSink(unix_socket=True)               # listen on a Unix socket (sink.path)
    SmtpSink(dump=True)                      # keep a copy of each transaction
    sink.dumps()                             # -> [SinkDump(helo, mail_args, rcpt_args, data)]

Options (``man 1 smtp-sink``; note ``-p``, lower case, turns PIPELINING off,
while ``-P`` fakes a Cisco PIX greeting and turns ESMTP off): ``-f CMDS``
rejects the named commands (e.g. ``MAIL,RCPT,DATA,.``) with 5xx, ``-r CMDS``
with 4xx (both imply ``-p``), ``-q CMDS`` hangs up without a reply, ``-Q
CMDS`` replies 421 and hangs up, ``-b``/``-B`` set those replies, ``-w N``
delays the DATA reply, ``-a`` hides AUTH, ``-e`` turns ESMTP off, ``-c``
prints counters.

Dumps (``-d``) are written by smtp-sink itself: a few ``X-...`` lines with
the envelope, its own ``Received:`` header, then the message (dot-unstuffed,
LF line ends); :meth:`SmtpSink.dumps` parses them. The sink runs as
``nobody`` (it refuses to run as root without ``-u``), so its dump
directory is world-writable inside a private temp dir.

:func:`tests.support.ports.require_binary` decides skip vs. fail when the
binary is missing (fail when ``CI`` is set).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .ports import free_port, require_binary, wait_for_port

__all__ = ["SMTP_SINK", "SmtpSink", "SinkDump"]

SMTP_SINK = os.environ.get("FASTSMTPLIB_SMTP_SINK", "/usr/sbin/smtp-sink")


@dataclass
class SinkDump:
    """One transaction as dumped by ``smtp-sink -d``."""

    helo: Optional[str]
    mail_args: str  # e.g. "<a@example.org> SIZE=123"
    rcpt_args: list  # e.g. ["<b@example.org>"]
    data: bytes  # the message after smtp-sink's Received header: dot-unstuffed, LF line ends


class SmtpSink:
    """Start ``smtp-sink`` on 127.0.0.1:<free port>, or a Unix socket.

    Args:
        *options: extra smtp-sink options, passed as given.
        lmtp: ``-L``.
        pipelining: False adds ``-p``.
        dump: keep one file per transaction (``-d``); read them with :meth:`dumps`.
        unix_socket: True for a socket in a fresh temp dir, or a path.
        backlog: the listen backlog argument.
    """

    def __init__(
        self,
        *options: str,
        lmtp: bool = False,
        pipelining: bool = True,
        dump: bool = False,
        unix_socket: Union[bool, str, os.PathLike] = False,
        backlog: int = 256,
        binary: str = SMTP_SINK,
    ) -> None:
        self.binary = binary
        self.options = list(options)
        if lmtp:
            self.options.append("-L")
        if not pipelining:
            self.options.append("-p")
        self.lmtp = lmtp
        self.backlog = backlog
        self.host: Optional[str] = None
        self.port: Optional[int] = None
        self.path: Optional[str] = None
        self._want_unix = unix_socket
        self._dump = dump
        self._tmpdir: Optional[str] = None
        self.dump_dir: Optional[Path] = None
        self.proc: Optional[subprocess.Popen] = None
        self._logfile = None
        self.start_seconds: Optional[float] = None

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> "SmtpSink":
        require_binary(self.binary, "smtp-sink")
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> "SmtpSink":
        t0 = time.monotonic()
        self._tmpdir = tempfile.mkdtemp(prefix="fsl-sink-")
        os.chmod(self._tmpdir, 0o755)
        opts = list(self.options)
        if self._dump:
            self.dump_dir = Path(self._tmpdir, "dump")
            self.dump_dir.mkdir()
            os.chmod(self.dump_dir, 0o777)  # smtp-sink writes as nobody
            opts += ["-d", f"{self.dump_dir}/%Y%m%d%H%M%S."]
        if self._want_unix:
            self.path = (
                os.path.join(self._tmpdir, "sink.sock")
                if self._want_unix is True else os.fspath(self._want_unix)
            )
            self._spawn(opts, f"unix:{self.path}")  # a bare path is taken as host:port
            deadline = time.monotonic() + 10
            while not os.path.exists(self.path):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"smtp-sink did not listen on {self.path}: {self._log()}")
                time.sleep(0.005)
        else:
            self.host = "127.0.0.1"
            # The free port may be taken between probing and smtp-sink's bind.
            for attempt in range(5):
                self.port = free_port(self.host)
                self._spawn(opts, f"{self.host}:{self.port}")
                try:
                    wait_for_port(self.host, self.port, alive=lambda: self.proc.poll() is None)
                    break
                except RuntimeError:
                    if attempt == 4:
                        raise RuntimeError(f"smtp-sink failed to start: {self._log()}")
        self.start_seconds = time.monotonic() - t0
        return self

    def _spawn(self, opts: list, where: str) -> None:
        if self._logfile is not None:
            self._logfile.close()
        self._logfile = open(os.path.join(self._tmpdir, "sink.log"), "wb")
        argv = [self.binary, "-u", "nobody", *opts, where, str(self.backlog)]
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._logfile, stderr=subprocess.STDOUT
        )

    def _log(self) -> str:
        try:
            return Path(self._tmpdir, "sink.log").read_text(errors="replace").strip()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        if self._logfile is not None:
            self._logfile.close()
            self._logfile = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> "SmtpSink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- conveniences -------------------------------------------------------
    @property
    def address(self):
        """``(host, port)`` for TCP, the socket path for a Unix socket."""
        return self.path if self.path is not None else (self.host, self.port)

    @property
    def log(self) -> str:
        """What smtp-sink printed (errors, ``-c`` counts)."""
        return self._log()

    def dumps(self, expect: Optional[int] = None, timeout: float = 5.0) -> list:
        """Parse the dumped transactions, oldest first.

        smtp-sink writes a dump after it replied to the final dot, so a
        client may see the reply a moment before the file is complete; with
        ``expect`` this waits until that many dumps are there.
        """
        if self.dump_dir is None:
            raise RuntimeError("start the sink with dump=True")
        deadline = time.monotonic() + timeout
        while True:
            files = sorted(
                (p for p in self.dump_dir.rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_mtime_ns,
            )
            if expect is None or len(files) >= expect or time.monotonic() > deadline:
                return [_parse_dump(p.read_bytes()) for p in files]
            time.sleep(0.01)

    def __repr__(self) -> str:
        return f"<SmtpSink {self.path or f'{self.host}:{self.port}'} {' '.join(self.options)}>"


def _parse_dump(raw: bytes) -> SinkDump:
    helo, mail, rcpts = None, "", []
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and lines[i].startswith(b"X-"):
        name, _, value = lines[i].decode("utf-8", "replace").partition(": ")
        if name == "X-Helo-Args":
            helo = value
        elif name == "X-Mail-Args":
            mail = value
        elif name == "X-Rcpt-Args":
            rcpts.append(value)
        i += 1
    # Skip smtp-sink's own Received: header (first line plus continuations).
    if i < len(lines) and lines[i].startswith(b"Received:"):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    data = b"\n".join(lines[i:])
    if data.endswith(b"\n"):  # smtp-sink ends each dump with an empty line
        data = data[:-1]
    return SinkDump(helo=helo, mail_args=mail, rcpt_args=rcpts, data=data)
