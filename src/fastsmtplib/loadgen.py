"""A load generator for any SMTP or LMTP server, driven by ``SMTPPool``.

``fastsmtplib bench`` on the command line; from Python::

    report = run_load("mx.test", 25, connections=8, messages=10000, size=1024)
    report.msgs_per_s, report.latency_ms["p99"], report.errors_by_code
    report.to_dict()                       # what ``bench --json`` prints

    with EmbeddedSink() as sink:           # the project's Sink in a subprocess
        run_load(sink.host, sink.port, messages=1000)
    sink.counts["messages"]                # the sink's own count, read after it stopped

How a run goes:

* One connection is opened first (connect, greeting, EHLO/LHLO, STARTTLS,
  AUTH) and closed again: it proves the server is reachable before any load
  starts (an unreachable server raises :class:`ServerUnreachable` at once,
  instead of every message failing its connect one by one), and tells what
  the server advertises.
* Then an ``SMTPPool`` of ``connections`` connections sends the messages with
  ``send_many`` and no retries (``Retry(attempts=1)``): a load generator
  reports each refusal or deferral, it does not hide it.  Connections are
  never recycled during the run (no per-connection message cap, age or idle
  limit), so what is measured is message throughput, not reconnects.
* Each message is made once from a template: one fixed-width counter goes in
  its Subject and Message-ID (one ``bytes`` join per message, a fraction of
  a microsecond next to the tens the send costs) and every message has the
  same length, so bytes counted are exact.
* Latency per message is ``SendResult.done_at - sent_at``: from the write
  that carried the message's first byte (its MAIL) to its final reply, as
  ``SMTPPool`` stamps them.  A message never written (its connection failed
  first) has no latency; ``latency_samples`` says how many messages had one.
* Connection setup time is what ``SMTPPool`` reports to its ``on_connect``
  callback for each connection that opened (connect through EHLO/STARTTLS/
  AUTH); the first, lone connection (``SMTPPool.open_connection``) is one of
  them (``setup_ms["count"]`` is ``connections + 1`` in a run where no
  connection failed).  Unix sockets (``path=``) and the PIPELINING/CHUNKING
  switches are ``SMTPPool`` options too: this module uses only the pool's
  public interface.

Memory: one float (8 bytes) per message is kept for the percentiles.
"""

from __future__ import annotations

import math
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional

from .lmtp import LMTP_PORT
from .pool import SMTPPool
from .retry import Retry

__all__ = [
    "run_load",
    "LoadReport",
    "ServerUnreachable",
    "EmbeddedSink",
    "make_message",
    "percentiles",
    "DEFAULT_MESSAGES",
    "DEFAULT_SIZE",
]

DEFAULT_MESSAGES = 10000
DEFAULT_SIZE = 1024
DEFAULT_CONNECTIONS = 8
FROM_ADDR = "loadgen@fastsmtplib.invalid"
RCPT_DOMAIN = "example.org"
_COUNTER_WIDTH = 10  # digits of the per-message counter: every message has the same length


class ServerUnreachable(Exception):
    """The server could not be reached, or its first connection failed (nothing was sent)."""


@dataclass
class LoadReport:
    """What one run measured.  ``to_dict()`` is ``bench --json``'s object."""

    server: str
    protocol: str  # "SMTP" or "LMTP"
    transport: str  # "tcp", "unix", "starttls", "ssl"
    connections: int
    messages: int  # messages sent (each has exactly one result)
    delivered: int  # accepted by the server (for at least one recipient)
    errors: int  # not accepted: refused, deferred, uncertain, not attempted, failed
    partial: int  # delivered, but some recipients refused
    recipients_per_message: int
    message_bytes: int  # the size of each message
    elapsed_s: float
    msgs_per_s: float
    mb_per_s: float  # delivered message bytes, in 10**6 bytes per second
    latency_ms: dict  # p50, p90, p99, max (and mean): first byte written -> final reply
    latency_samples: int  # messages that were written (the others have no latency)
    setup_ms: dict  # connection setup: count, p50, max
    errors_by_code: dict  # reply code (or kind of failure) -> messages
    refused_recipients_by_code: dict  # partial messages: refused recipients per code
    status_counts: dict  # SendResult status -> messages
    extensions: list  # what the server advertised (EHLO keywords)
    pipelining: bool  # used (advertised and not turned off)
    chunking: bool
    rate_limit: Optional[float] = None
    duration_limit_s: Optional[float] = None
    aborted: Optional[str] = None  # why the run stopped early, if it did
    server_counts: Optional[dict] = None  # the embedded sink's own counters, when known
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return d


def make_message(size: int = DEFAULT_SIZE, run_id: str = "") -> Callable[[int], bytes]:
    """A function ``i -> bytes`` giving message ``i``: ``size`` bytes (at least
    the headers), a unique Subject and Message-ID, CRLF line ends, plain
    7-bit text in lines of at most 78 characters."""
    run_id = run_id or "%x.%x" % (os.getpid(), int(time.time()))
    head1 = ("From: Load Generator <%s>\r\nTo: <rcpt1@%s>\r\nSubject: load test " % (FROM_ADDR, RCPT_DOMAIN)).encode()
    head2 = b"\r\nMessage-ID: <"
    head3 = (".%s@loadgen.fastsmtplib.invalid>\r\n\r\n" % run_id).encode()
    fixed = len(head1) + len(head2) + len(head3) + 2 * _COUNTER_WIDTH
    line = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n"
    room = size - fixed
    body = b""
    if room > 2:
        body = (line * (room // len(line) + 1))[: room - 2]
        if body.endswith(b"\r"):  # the cut split a line end: no bare CR
            body = body[:-1] + b" "
        body += b"\r\n"
    fmt = b"%0" + str(_COUNTER_WIDTH).encode() + b"d"

    def message(i: int) -> bytes:
        n = fmt % i
        return b"".join((head1, n, head2, n, head3, body))

    return message


def percentiles(values: Any) -> dict:
    """``{"p50", "p90", "p99", "max", "mean"}`` of ``values`` (nearest rank; all 0.0 if empty)."""
    v = sorted(values)
    if not v:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}

    def rank(p: float) -> float:
        return v[max(0, math.ceil(p / 100.0 * len(v)) - 1)]

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": v[-1], "mean": sum(v) / len(v)}


def _error_key(r: Any) -> str:
    """The reply code a failed message got, or the kind of failure when no reply came."""
    reply = r.reply
    if reply is not None and reply[0] >= 400:
        return str(reply[0])
    code = getattr(r.exception, "smtp_code", None)
    if isinstance(code, int) and code >= 400:
        return str(code)
    for rc, _msg in (r.recipients or {}).values():
        if rc >= 400:
            return str(rc)
    exc = r.exception
    return "%s (%s)" % (r.status, type(exc).__name__ if exc is not None else "no reply")


def _describe(host: str, port: int, unix: Optional[str]) -> str:
    if unix is not None:
        return "unix:%s" % unix
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def run_load(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    unix: Optional[str] = None,
    lmtp: bool = False,
    connections: int = DEFAULT_CONNECTIONS,
    messages: Optional[int] = None,
    duration: Optional[float] = None,
    size: int = DEFAULT_SIZE,
    rcpts: int = 1,
    pipelining: bool = True,
    chunking: bool = True,
    ssl: bool = False,
    starttls: bool = False,
    context: Any = None,
    login: Optional[tuple] = None,
    rate: Optional[float] = None,
    timeout: float = 30.0,
    window: int = 32,
    local_hostname: str = "loadgen.fastsmtplib.invalid",
    progress: Optional[Callable[[int, int, int, float], None]] = None,
    progress_interval: float = 0.25,
) -> LoadReport:
    """Send a load to one server through ``SMTPPool``; return what was measured.

    Args:
        host, port: the server (port 0: 25, 465 with ``ssl``, 2003 with ``lmtp``).
        unix: a Unix socket path instead of host/port.
        lmtp: speak LMTP.
        connections: the pool's size.
        messages: how many messages to send (default: ``DEFAULT_MESSAGES``
            unless ``duration`` is given).  With both, whichever ends first.
        duration: stop handing out new messages after this many seconds.
        size: bytes per message (at least the headers, about 200 bytes).
        rcpts: recipients per message (``rcpt1@example.org``, ...).
        pipelining, chunking: False turns the extension off even when advertised.
        ssl, starttls, context: implicit TLS or STARTTLS, with this
            ``ssl.SSLContext`` (default: a verifying one).
        login: ``(user, password)`` for AUTH on every connection.
        rate: at most this many messages per second, pool-wide.
        timeout: seconds for connecting and for each reply.
        progress: called about every ``progress_interval`` seconds with
            ``(done, delivered, errors, elapsed_s)``.

    Raises:
        ServerUnreachable: the first connection failed; nothing was sent.
        ValueError: a bad argument.
    """
    if connections < 1:
        raise ValueError("connections must be at least 1")
    if messages is not None and messages < 1:
        raise ValueError("messages must be at least 1")
    if duration is not None and not duration > 0:
        raise ValueError("duration must be positive")
    if rcpts < 1:
        raise ValueError("rcpts must be at least 1")
    if size < 1:
        raise ValueError("size must be at least 1")
    if ssl and starttls:
        raise ValueError("ssl and starttls are mutually exclusive")
    if unix is not None and (ssl or starttls):
        raise ValueError("TLS over a Unix socket is not supported")
    if messages is None and duration is None:
        messages = DEFAULT_MESSAGES
    if not port:
        port = LMTP_PORT if lmtp else 465 if ssl else 25
    if ssl or starttls:
        if context is None:
            import ssl as _ssl

            context = _ssl.create_default_context()
    interrupted = False

    setup_times: list = []  # seconds per connection that opened (list.append is atomic)

    def on_connect(info: Any) -> None:
        if info.error is None:
            setup_times.append(info.seconds)

    where: dict = {"path": unix} if unix is not None else {"host": host, "port": port}
    pool = SMTPPool(
        **where, size=connections, lmtp=lmtp, ssl=ssl, starttls=starttls, context=context,
        login=login, timeout=timeout, local_hostname=local_hostname,
        pipelining=pipelining, chunking=chunking, on_connect=on_connect,
        max_messages_per_connection=None, max_connection_age=None, idle_timeout=None,
        noop_after=None, rate=rate, retry=Retry(attempts=1), window=window,
    )
    try:
        # The first connection, on its own: is the server there, what does it offer?
        try:
            conn = pool.open_connection()
        except Exception as exc:  # refused, timed out, TLS, AUTH, a 4xx/5xx greeting
            raise ServerUnreachable("%s: %s" % (_describe(host, port, unix), _reason(exc))) from None
        extensions = sorted(k.upper() for k in (conn.esmtp_features or {}))
        try:
            conn.quit()
        except Exception:
            conn.close()
        used_pipelining = pipelining and "PIPELINING" in extensions
        used_chunking = chunking and "CHUNKING" in extensions

        make = make_message(size)
        msg_len = len(make(0))
        to_addrs = ["rcpt%d@%s" % (i + 1, RCPT_DOMAIN) for i in range(rcpts)]
        stop = threading.Event()
        deadline = None

        def source() -> Iterator[tuple]:
            mono = time.monotonic
            i = 0
            while messages is None or i < messages:
                if stop.is_set() or (deadline is not None and mono() >= deadline):
                    return
                yield (FROM_ADDR, to_addrs, make(i))
                i += 1

        latencies = array("d")
        delivered = errors = partial = done = 0
        by_code: dict = {}
        refused_rcpts: dict = {}
        statuses: dict = {}
        aborted = None
        fails_at_delivery = 0
        give_up = max(5, 2 * connections)  # connection attempts failing in a row before giving up
        stats = pool.stats

        t0 = time.monotonic()
        if duration is not None:
            deadline = t0 + duration
        next_progress = t0 + progress_interval
        mono = time.monotonic
        try:
            for r in pool.send_many(source()):
                done += 1
                st = r.status
                statuses[st] = statuses.get(st, 0) + 1
                sent_at, done_at = r.sent_at, r.done_at
                if sent_at is not None and done_at is not None:
                    latencies.append(done_at - sent_at)
                if st == "delivered" or st == "partial":
                    delivered += 1
                    if st == "partial":
                        partial += 1
                        for rc, _m in r.recipients.values():
                            if rc >= 400:
                                refused_rcpts[str(rc)] = refused_rcpts.get(str(rc), 0) + 1
                        for _rcpt, (rc, _m) in r.data_replies:
                            if rc >= 400:
                                refused_rcpts[str(rc)] = refused_rcpts.get(str(rc), 0) + 1
                    fails_at_delivery = stats["connect_failures"]
                else:
                    errors += 1
                    key = _error_key(r)
                    by_code[key] = by_code.get(key, 0) + 1
                    if st == "not_attempted" and not stop.is_set():
                        if stats["connect_failures"] - fails_at_delivery >= give_up:
                            aborted = "%d connection attempts in a row failed: %s" % (
                                stats["connect_failures"] - fails_at_delivery, _reason(r.exception))
                            stop.set()
                if progress is not None:
                    now = mono()
                    if now >= next_progress:
                        next_progress = now + progress_interval
                        progress(done, delivered, errors, now - t0)
        except KeyboardInterrupt:
            # Ctrl-C: report what finished; messages still in flight are not waited for.
            interrupted = True
            aborted = "interrupted"
            stop.set()
        elapsed = max(mono() - t0, 1e-9)
    finally:
        pool.close(wait=not interrupted)
    if progress is not None:
        progress(done, delivered, errors, elapsed)

    # The statuses' keys: plain strings for JSON.
    statuses = {str(getattr(k, "value", k)): v for k, v in statuses.items()}
    lat = percentiles(latencies)
    setup = percentiles(setup_times)
    transport = "unix" if unix is not None else "ssl" if ssl else "starttls" if starttls else "tcp"
    return LoadReport(
        server=_describe(host, port, unix),
        protocol="LMTP" if lmtp else "SMTP",
        transport=transport,
        connections=connections,
        messages=done,
        delivered=delivered,
        errors=errors,
        partial=partial,
        recipients_per_message=rcpts,
        message_bytes=msg_len,
        elapsed_s=round(elapsed, 6),
        msgs_per_s=round(done / elapsed, 1),
        mb_per_s=round(delivered * msg_len / elapsed / 1e6, 3),
        latency_ms={k: round(v * 1000.0, 3) for k, v in lat.items()},
        latency_samples=len(latencies),
        setup_ms={"count": len(setup_times), "p50": round(setup["p50"] * 1000.0, 3),
                  "max": round(setup["max"] * 1000.0, 3)},
        errors_by_code=dict(sorted(by_code.items())),
        refused_recipients_by_code=dict(sorted(refused_rcpts.items())),
        status_counts=statuses,
        extensions=extensions,
        pipelining=used_pipelining,
        chunking=used_chunking,
        rate_limit=rate,
        duration_limit_s=duration,
        aborted=aborted,
    )


def _reason(exc: Any) -> str:
    if exc is None:
        return "unknown error"
    code = getattr(exc, "smtp_code", None)
    if isinstance(code, int):
        text = getattr(exc, "smtp_error", b"")
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return "%s: %d %s" % (type(exc).__name__, code, text)
    return "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__


# -- the embedded server ---------------------------------------------------------------------


def _cpus() -> list:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def pin_away_from(cpu: Optional[int]) -> Any:
    """Move this thread (and the threads it starts later) off ``cpu``; returns what to restore."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    before = os.sched_getaffinity(0)
    others = set(before) - {cpu}
    if not others:
        return None
    os.sched_setaffinity(0, others)
    return before


def restore_affinity(saved: Any) -> None:
    if saved is not None:
        try:
            os.sched_setaffinity(0, saved)
        except OSError:
            pass


class EmbeddedSink:
    """The project's ``Sink`` in a subprocess (``python -m fastsmtplib sink --port 0``).

    A subprocess, not a thread: a sink in this process would share the GIL
    and the CPU accounting with the client it is measuring.  With two or more
    CPUs the subprocess is pinned to the last one (``taskset``, else
    ``os.sched_setaffinity``), and ``pin_client()`` moves this process to
    the others, so client and server never compete for a core.

    ``counts`` holds the sink's own counters once it has stopped (it prints
    them on SIGTERM): ``messages``, ``recipients``, ``bytes``, ``connections``...
    """

    def __init__(self, *, lmtp: bool = False, pin: bool = True, start_timeout: float = 15.0) -> None:
        self.lmtp = lmtp
        self.pin = pin
        self.start_timeout = start_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.cpu: Optional[int] = None
        self.counts: Optional[dict] = None
        self.proc: Optional[subprocess.Popen] = None
        self._saved_affinity: Any = None

    def start(self) -> "EmbeddedSink":
        argv = [sys.executable, "-m", "fastsmtplib", "sink", "--host", self.host, "--port", "0"]
        if self.lmtp:
            argv.append("--lmtp")
        cpus = _cpus()
        taskset = shutil.which("taskset")
        if self.pin and len(cpus) >= 2:
            self.cpu = cpus[-1]
            if taskset:
                argv = [taskset, "-c", str(self.cpu)] + argv
        # Its own session: a Ctrl-C at the terminal stops the client, which then
        # stops the sink and reads its counters (not both at once).
        # The child imports this same fastsmtplib, wherever it was imported from.
        env = dict(os.environ)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True, env=env)
        if self.cpu is not None and not taskset and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(self.proc.pid, {self.cpu})
            except OSError:
                pass
        line = self._readline(self.start_timeout)
        # "fastsmtplib sink: SMTP on 127.0.0.1:PORT"
        where = line.rsplit(" ", 1)[-1] if line else ""
        try:
            self.port = int(where.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            err = b""
            self.stop()
            if self.proc is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read() or b""
            raise RuntimeError("the embedded sink did not start: %r %s" % (
                line, err.decode("utf-8", "replace").strip()))
        return self

    def _readline(self, timeout: float) -> str:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        end = time.monotonic() + timeout
        buf = b""
        fd = proc.stdout.fileno()
        while not buf.endswith(b"\n"):
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                break
            chunk = os.read(fd, 1)
            if not chunk:
                break
            buf += chunk
        return buf.decode("utf-8", "replace").strip()

    def pin_client(self) -> None:
        """Keep this process off the sink's CPU (until ``stop``)."""
        self._saved_affinity = pin_away_from(self.cpu)

    def stop(self) -> Optional[dict]:
        """Stop the sink and read its counters (also kept in ``counts``)."""
        proc = self.proc
        restore_affinity(self._saved_affinity)
        self._saved_affinity = None
        if proc is None or proc.returncode is not None:
            return self.counts
        proc.send_signal(signal.SIGTERM)
        try:
            out, _err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _err = proc.communicate()
        counts: dict = {}
        for line in out.decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif parts and parts[0] == "replies":
                counts["replies"] = {k: int(v) for k, v in (p.split(":", 1) for p in parts[1:])}
        self.counts = counts or None
        return self.counts

    def __enter__(self) -> "EmbeddedSink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
