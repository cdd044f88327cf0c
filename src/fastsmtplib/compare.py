"""``fastsmtplib bench --compare``: one workload through several SMTP clients, side by side.

The cases, in order (each sends the same ``messages`` messages of ``size``
bytes to ``rcpts`` recipients, made by ``loadgen.make_message``):

==============================  ===============================================
``stdlib loop``                 ``smtplib.SMTP.sendmail`` in a loop, one connection
``stdlib N threads``            N threads, each its own ``smtplib.SMTP`` (N = connections)
``aiosmtplib``                  ``aiosmtplib.SMTP.sendmail`` awaited in a loop, one connection
``aiosmtplib N tasks``          N asyncio tasks, each its own connection
``fastsmtplib sendmail``        ``fastsmtplib.SMTP.sendmail`` in a loop, one connection
``fastsmtplib send_many``       ``SMTP.send_many``, one connection (pipelined / BDAT)
``fastsmtplib SMTPPool``        ``SMTPPool(size=N).send_many``
==============================  ===============================================

The aiosmtplib rows appear only when it is installed.  Each case's clock
runs from opening its connections to closing them (connection setup is
part of every row, as it is part of any real send).

Measured per case: msgs/s (messages over wall time), the ratio to ``stdlib
loop``, and the client's CPU per message: ``getrusage(RUSAGE_SELF)`` user +
system time around the case, for every thread of this process.  The server
runs in another process, so its CPU is not counted; with two or more CPUs it
is pinned to the last CPU and this process to the others (``taskset`` /
``sched_setaffinity``), so they do not compete for a core.

Servers: by default the project's own ``Sink`` (``EmbeddedSink``: a
subprocess); ``server="smtp-sink"`` runs Postfix's ``smtp-sink`` instead
(PIPELINING, no CHUNKING, so fastsmtplib uses DATA there); or any running
server given by host and port.  Every case checks that each message was
accepted; with the embedded sink, the sink's own message count is compared
with the total the clients were told was delivered.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from .loadgen import FROM_ADDR, RCPT_DOMAIN, EmbeddedSink, _cpus, make_message, pin_away_from, restore_affinity

__all__ = ["run_compare", "CompareReport", "CaseResult", "format_table", "plot", "SMTP_SINK"]

SMTP_SINK = os.environ.get("FASTSMTPLIB_SMTP_SINK") or shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
DEFAULT_MESSAGES = 10000
BASELINE = "stdlib loop"


@dataclass
class CaseResult:
    name: str
    messages: int
    delivered: int
    elapsed_s: float
    msgs_per_s: float
    ratio: float  # msgs_per_s / the stdlib loop's
    cpu_us_per_msg: float
    error: Optional[str] = None  # why the case did not complete, if it did not


@dataclass
class CompareReport:
    server: str
    server_kind: str  # "fastsmtplib sink (subprocess)", "smtp-sink", "external"
    messages: int
    message_bytes: int
    rcpts: int
    connections: int
    pinned: Optional[str]  # e.g. "server CPU 1, client CPUs 0"; None when not pinned
    cases: list
    server_counts: Optional[dict] = None
    delivered_total: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _split(n: int, k: int) -> list:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


# -- the cases: each sends n messages and returns how many were accepted --------------------


def _sendmail_loop(module: Any) -> Callable:
    """A ``sendmail()`` loop on one connection of ``module``'s SMTP (stdlib or ours)."""
    def run(host: str, port: int, n: int, make: Callable, to: list, k: int, timeout: float = 30.0) -> int:
        ok = 0
        with module.SMTP(host, port, "compare.fastsmtplib.invalid", timeout=timeout) as c:
            for i in range(n):
                if not c.sendmail(FROM_ADDR, to, make(i)):
                    ok += 1
        return ok

    return run


_stdlib_loop = _sendmail_loop(smtplib)


def _threads(factory: Callable) -> Callable:
    def case(host: str, port: int, n: int, make: Callable, to: list, k: int, timeout: float = 30.0) -> int:
        counts = [0] * k
        errors: list = []

        def work(slot: int, start: int, count: int) -> None:
            try:
                with factory(host, port, "compare.fastsmtplib.invalid", timeout=timeout) as c:
                    for i in range(start, start + count):
                        if not c.sendmail(FROM_ADDR, to, make(i)):
                            counts[slot] += 1
            except Exception as exc:  # reported after the join
                errors.append(exc)

        threads = []
        start = 0
        for slot, count in enumerate(_split(n, k)):
            threads.append(threading.Thread(target=work, args=(slot, start, count)))
            start += count
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return sum(counts)

    return case


def _aiosmtplib(tasks: Optional[int]) -> Callable:
    def case(host: str, port: int, n: int, make: Callable, to: list, k: int, timeout: float = 30.0) -> int:
        import aiosmtplib

        async def one(start: int, count: int) -> int:
            ok = 0
            c = aiosmtplib.SMTP(hostname=host, port=port, local_hostname="compare.fastsmtplib.invalid",
                                timeout=timeout, start_tls=False)
            await c.connect()
            try:
                for i in range(start, start + count):
                    refused, _ = await c.sendmail(FROM_ADDR, to, make(i))
                    ok += not refused
            finally:
                await c.quit()
            return ok

        async def run() -> int:
            parts = _split(n, tasks or 1)
            starts = [sum(parts[:j]) for j in range(len(parts))]
            done = await asyncio.gather(*(one(s, c) for s, c in zip(starts, parts)))
            return sum(done)

        return asyncio.run(run())

    return case


def _fast_loop(host: str, port: int, n: int, make: Callable, to: list, k: int, timeout: float = 30.0) -> int:
    import fastsmtplib

    return _sendmail_loop(fastsmtplib)(host, port, n, make, to, k, timeout)


def _fast_send_many(host: str, port: int, n: int, make: Callable, to: list, k: int, timeout: float = 30.0) -> int:
    import fastsmtplib

    with fastsmtplib.SMTP(host, port, "compare.fastsmtplib.invalid", timeout=timeout) as c:
        return sum(1 for r in c.send_many((FROM_ADDR, to, make(i)) for i in range(n)) if r.ok)


def _fast_pool(host: str, port: int, n: int, make: Callable, to: list, k: int, timeout: float = 30.0) -> int:
    import fastsmtplib

    with fastsmtplib.SMTPPool(host, port, size=k, local_hostname="compare.fastsmtplib.invalid", timeout=timeout,
                              max_messages_per_connection=None, retry=fastsmtplib.Retry(attempts=1)) as pool:
        return sum(1 for r in pool.send_many((FROM_ADDR, to, make(i)) for i in range(n)) if r.ok)


def cases(connections: int) -> list:
    """``[(name, function)]`` in table order (aiosmtplib only when installed)."""
    out = [
        (BASELINE, _stdlib_loop),
        ("stdlib %d threads" % connections, _threads(smtplib.SMTP)),
    ]
    try:
        import aiosmtplib  # noqa: F401

        out += [("aiosmtplib", _aiosmtplib(None)), ("aiosmtplib %d tasks" % connections, _aiosmtplib(connections))]
    except ImportError:
        pass
    out += [
        ("fastsmtplib sendmail", _fast_loop),
        ("fastsmtplib send_many", _fast_send_many),
        ("fastsmtplib SMTPPool(%d)" % connections, _fast_pool),
    ]
    return out


# -- servers -------------------------------------------------------------------------------


class _SmtpSinkProcess:
    """Postfix's ``smtp-sink`` on 127.0.0.1:<free port>, pinned like ``EmbeddedSink``."""

    def __init__(self, pin: bool = True) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.pin = pin
        self.cpu: Optional[int] = None
        self.counts = None
        self.proc: Optional[subprocess.Popen] = None
        self._saved: Any = None
        self._log: Any = None

    def start(self) -> "_SmtpSinkProcess":
        if not os.access(SMTP_SINK, os.X_OK):
            raise RuntimeError("smtp-sink not found at %s (Debian package 'postfix')" % SMTP_SINK)
        cpus = _cpus()
        taskset = shutil.which("taskset")
        self._log = tempfile.TemporaryFile()
        for _ in range(5):  # a free port can be taken before smtp-sink binds it
            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = s.getsockname()[1]
            argv = [SMTP_SINK] + (["-u", "nobody"] if os.geteuid() == 0 else []) + [
                "%s:%d" % (self.host, self.port), "256"]
            if self.pin and len(cpus) >= 2 and taskset:
                self.cpu = cpus[-1]
                argv = [taskset, "-c", str(self.cpu)] + argv
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                         start_new_session=True)
            end = time.monotonic() + 10
            while time.monotonic() < end and self.proc.poll() is None:
                try:
                    socket.create_connection((self.host, self.port), timeout=1).close()
                    return self
                except OSError:
                    time.sleep(0.02)
            self.stop()
        raise RuntimeError("smtp-sink did not start")

    def pin_client(self) -> None:
        self._saved = pin_away_from(self.cpu)

    def stop(self) -> None:
        restore_affinity(self._saved)
        self._saved = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- the run -------------------------------------------------------------------------------


def run_compare(
    host: Optional[str] = None,
    port: int = 25,
    *,
    server: str = "sink",
    messages: int = DEFAULT_MESSAGES,
    size: int = 1024,
    rcpts: int = 1,
    connections: int = 8,
    pin: bool = True,
    only: Optional[list] = None,
    progress: Optional[Callable[[str], None]] = None,
    timeout: float = 30.0,
) -> CompareReport:
    """Run every case against one server; return the table's rows.

    Args:
        host, port: a running server; None starts ``server``: ``"sink"`` (the
            project's sink in a subprocess) or ``"smtp-sink"`` (Postfix's).
        messages, size, rcpts: the workload, the same for every case.
        connections: threads / tasks / pool size for the many-connection cases.
        pin: pin the started server and this process to different CPUs.
        only: run only the cases with these names.
        progress: called with each case's name before it runs.
        timeout: seconds every client waits to connect and for each reply.

    Raises:
        RuntimeError: the server could not be started.
        OSError: the server could not be reached.
    """
    if messages < 1 or size < 1 or rcpts < 1 or connections < 1:
        raise ValueError("messages, size, rcpts and connections must be at least 1")
    if not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds, got %r" % (timeout,))
    srv: Any = None
    if host is None:
        if server == "sink":
            srv = EmbeddedSink(pin=pin)
            kind = "fastsmtplib sink (subprocess)"
        elif server == "smtp-sink":
            srv = _SmtpSinkProcess(pin=pin)
            kind = "smtp-sink"
        else:
            raise ValueError("server must be 'sink' or 'smtp-sink', not %r" % (server,))
        srv.start()
        host, port = srv.host, srv.port
    else:
        kind = "external"
    pinned = None
    try:
        if srv is not None and pin and srv.cpu is not None:
            srv.pin_client()
            client = sorted(_cpus())
            pinned = "server CPU %d, client CPU %s" % (srv.cpu, ",".join(map(str, client)))
        else:
            # Fail before any case runs when the server is not there.
            socket.create_connection((host, port), timeout=min(10.0, timeout)).close()
        make = make_message(size)
        to = ["rcpt%d@%s" % (i + 1, RCPT_DOMAIN) for i in range(rcpts)]
        rows: list = []
        base = None
        for name, func in cases(connections):
            if only and name not in only:
                continue
            if progress is not None:
                progress(name)
            err = None
            c0, t0 = _cpu(), time.perf_counter()
            try:
                ok = func(host, port, messages, make, to, connections, timeout)
            except Exception as exc:
                ok, err = 0, "%s: %s" % (type(exc).__name__, exc)
            t1, c1 = time.perf_counter(), _cpu()
            elapsed = max(t1 - t0, 1e-9)
            rate = messages / elapsed if err is None else 0.0
            if name == BASELINE and err is None:
                base = rate
            if err is None and ok != messages:
                err = "%d of %d messages not accepted" % (messages - ok, messages)
            rows.append(CaseResult(name, messages, ok, round(elapsed, 6), round(rate, 1), 0.0,
                                   round((c1 - c0) * 1e6 / messages, 2), err))
        for row in rows:
            row.ratio = round(row.msgs_per_s / base, 2) if base else 0.0
    finally:
        counts = srv.stop() if srv is not None else None
    report = CompareReport(
        server="%s:%d" % (host, port), server_kind=kind, messages=messages, message_bytes=len(make(0)),
        rcpts=rcpts, connections=connections, pinned=pinned, cases=rows,
        server_counts=counts if isinstance(counts, dict) else None,
        delivered_total=sum(r.delivered for r in rows),
    )
    return report


def format_table(report: CompareReport) -> str:
    """The side-by-side table, as text."""
    name_w = max([len(c.name) for c in report.cases] + [4])
    lines = ["%-*s  %10s  %8s  %11s  %s" % (name_w, "case", "msgs/s", "x stdlib", "CPU us/msg", "note")]
    for c in report.cases:
        note = c.error or ""
        lines.append("%-*s  %10.0f  %8.2f  %11.1f  %s" % (name_w, c.name, c.msgs_per_s, c.ratio,
                                                          c.cpu_us_per_msg, note))
    return "\n".join(line.rstrip() for line in lines)


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def check_plot() -> None:
    """Raise PlotUnavailable unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PlotUnavailable('--plot needs matplotlib (pip install "fastsmtplib[plot]"): %s' % exc) from None


def plot(report: CompareReport, path: str) -> None:
    """A PNG with two bar charts: msgs/s (labelled with the ratio to stdlib) and CPU us/msg."""
    check_plot()
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = report.cases
    names = [c.name for c in rows][::-1]
    rates = [c.msgs_per_s for c in rows][::-1]
    cpu = [c.cpu_us_per_msg for c in rows][::-1]
    ratios = [c.ratio for c in rows][::-1]
    colours = ["#9aa5b1" if n.startswith(("stdlib", "aiosmtplib")) else "#2f7ed8" for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.55 * len(rows) + 1.8), sharey=True,
                                   gridspec_kw={"width_ratios": [3, 2]})
    bars = ax1.barh(names, rates, color=colours)
    top = max(rates + [1.0])
    for bar, ratio in zip(bars, ratios):
        ax1.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, "%.1fx" % ratio,
                 va="center", fontsize=9)
    ax1.set_xlim(0, top * 1.15)
    ax1.set_xlabel("messages per second (higher is better)")
    bars2 = ax2.barh(names, cpu, color=colours)
    right = max(cpu + [1.0])
    for bar, value in zip(bars2, cpu):
        ax2.text(bar.get_width() + right * 0.01, bar.get_y() + bar.get_height() / 2, "%.0f" % value,
                 va="center", fontsize=9)
    ax2.set_xlim(0, right * 1.15)
    ax2.set_xlabel("client CPU us per message (lower is better)")
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle("%d messages of %d bytes, %d recipient%s, against %s" % (
        report.messages, report.message_bytes, report.rcpts, "" if report.rcpts == 1 else "s",
        report.server_kind), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
