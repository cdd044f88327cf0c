"""Many connections: stdlib in 8 threads vs send_many in 8 threads vs SMTPPool(size=8).

smtp-sink runs pinned to CPU 1, the client (every thread of this process) on
CPU 0, and ``smtp-source -s 8`` (Postfix's C load generator, 8 sessions) on
CPU 0 as a yardstick.  1 KB messages, one recipient each.

    python bench/bench_pool.py --quick            # the table, no pytest
    python bench/bench_pool.py --messages 40000   # more messages per row
    python bench/bench_pool.py --rss 1000000      # peak RSS streaming N messages from a generator
    python -m pytest bench/bench_pool.py          # pytest-benchmark rows

``msgs/s`` is messages over wall time; ``CPU us/msg`` is this process's
user+sys CPU (``getrusage``) per message.  Every row checks every message was
accepted.  Nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import smtplib
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bdat_sink import PinnedBdatSink  # noqa: E402
from sink import PinnedSink, sink_available  # noqa: E402
from variants import pure_fastsmtplib  # noqa: E402

import fastsmtplib  # noqa: E402

# fastsmtplib again on its pure-Python twins, for rows beside the compiled ones.
PURE = pure_fastsmtplib()

FROM = "news@example.com"
TO = ["reader@example.org"]
THREADS = 8
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


def message_1k(i: int = 0) -> bytes:
    head = b"From: News <news@example.com>\r\nTo: reader@example.org\r\nSubject: issue %d\r\n\r\n" % i
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * ((1024 - len(head)) // len(line) + 1)
    return (head + body)[:1022] + b"\r\n"


MSG = message_1k()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(n: int, run: Callable[[], None]) -> tuple[float, float]:
    """(msgs/s, CPU us/msg) of ``run`` sending ``n`` messages."""
    c0, t0 = _cpu(), time.perf_counter()
    run()
    t1, c1 = time.perf_counter(), _cpu()
    return n / (t1 - t0), (c1 - c0) * 1e6 / n


def _in_threads(n: int, make: Callable[[], object], send: Callable[[object, int], None]) -> Callable[[], None]:
    clients = [make() for _ in range(THREADS)]
    per = n // THREADS

    def run() -> None:
        threads = [threading.Thread(target=send, args=(c, per)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in clients:
            c.quit()

    return run


def stdlib_threads(host: str, port: int, n: int) -> Callable[[], None]:
    def send(c, k):
        for _ in range(k):
            assert c.sendmail(FROM, TO, MSG) == {}

    return _in_threads(n, lambda: smtplib.SMTP(host, port, "client.example", timeout=30), send)


def send_many_threads(host: str, port: int, n: int, mod: Any = fastsmtplib) -> Callable[[], None]:
    def send(c, k):
        ok = sum(1 for r in c.send_many((FROM, TO, MSG) for _ in range(k)) if r.status == "delivered")
        assert ok == k, (ok, k)

    return _in_threads(n, lambda: mod.SMTP(host, port, "client.example", timeout=30), send)


def pool_send_many(host: str, port: int, n: int, mod: Any = fastsmtplib) -> Callable[[], None]:
    pool = mod.SMTPPool(host, port, size=THREADS, local_hostname="client.example", timeout=30,
                                max_messages_per_connection=None)
    # Open every connection before the clock starts, as the threaded rows do.
    list(pool.send_many((FROM, TO, MSG) for _ in range(THREADS * 4)))

    def run() -> None:
        ok = sum(1 for r in pool.send_many((FROM, TO, MSG) for _ in range(n)) if r.status == "delivered")
        pool.close()
        assert ok == n, (ok, n)

    return run


def smtp_source(host: str, port: int, n: int) -> Optional[float]:
    """msgs/s of ``smtp-source -s 8`` (its own CPU is not this process's)."""
    if not os.access(SMTP_SOURCE, os.X_OK):
        return None
    argv = ["taskset", "-c", "0", SMTP_SOURCE, "-s", str(THREADS), "-m", str(n), "-l", "1024",
            "-f", FROM, "-t", TO[0], f"{host}:{port}"]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return n / (time.perf_counter() - t0)


ROWS = {
    "stdlib smtplib, 8 threads": stdlib_threads,
    "pure fastsmtplib send_many, 8 threads": functools.partial(send_many_threads, mod=PURE),
    "fastsmtplib send_many, 8 threads": send_many_threads,
    "pure fastsmtplib SMTPPool(size=8).send_many": functools.partial(pool_send_many, mod=PURE),
    "fastsmtplib SMTPPool(size=8).send_many": pool_send_many,
}


def run_table(n: int) -> list[tuple[str, float, Optional[float]]]:
    rows = []
    os.sched_setaffinity(0, {0})  # threads created from here on inherit CPU 0
    with PinnedSink(cpu=1) as sink:
        for name, make in ROWS.items():
            rate, cpu = _timed(n, make(sink.host, sink.port, n))
            rows.append((name, rate, cpu))
        rate = smtp_source(sink.host, sink.port, n)
        if rate is not None:
            rows.append(("smtp-source -s 8 (C)", rate, None))
    with PinnedBdatSink(cpu=1) as bsink:
        rate, cpu = _timed(n, pool_send_many(bsink.host, bsink.port, n))
        rows.append(("SMTPPool(size=8) over BDAT (bench/bdat_sink.py)", rate, cpu))
    return rows


def peak_rss(n: int) -> tuple[float, float]:
    """Peak RSS (MB) before and after streaming ``n`` messages from a generator."""
    os.sched_setaffinity(0, {0})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with PinnedSink(cpu=1) as sink:
        pool = fastsmtplib.SMTPPool(sink.host, sink.port, size=THREADS, local_hostname="client.example",
                                    timeout=30, max_messages_per_connection=None)
        ok = 0
        for r in pool.send_many((FROM, TO, message_1k(i)) for i in range(n)):
            ok += r.status == "delivered"
        pool.close()
    assert ok == n, (ok, n)
    return before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4,000 messages a row")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--rss", type=int, metavar="N", help="only measure peak RSS streaming N messages")
    args = ap.parse_args(argv)
    why = sink_available()
    if why:
        print("skipped:", why)
        return 0
    if args.rss:
        before, after = peak_rss(args.rss)
        print(f"peak RSS: {before:.1f} MB before, {after:.1f} MB after streaming {args.rss} messages")
        return 0
    n = 4000 if args.quick else args.messages
    print(f"{n} messages of {len(MSG)} bytes a row; sink on CPU 1, client on CPU 0")
    print(f"{'client':50} {'msgs/s':>10} {'CPU us/msg':>11}")
    for name, rate, cpu in run_table(n):
        print(f"{name:50} {rate:10,.0f} {'' if cpu is None else f'{cpu:11.1f}'}")
    return 0


# -- pytest-benchmark ------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

if pytest is not None and "pytest" in sys.modules and __name__ != "__main__":
    _N = 4000

    @pytest.fixture(scope="module")
    def sink():
        why = sink_available()
        if why:
            pytest.skip(why)
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {0})
        with PinnedSink(cpu=1) as s:
            yield s
        os.sched_setaffinity(0, before)

    @pytest.mark.parametrize("row", list(ROWS))
    def test_pool_rows(benchmark, sink, row):
        make = ROWS[row]
        cpu = []

        def setup():
            return (make(sink.host, sink.port, _N),), {}

        def target(run):
            c0 = _cpu()
            run()
            cpu.append(_cpu() - c0)

        benchmark.group = "pool: 8 connections, 1 KB, smtp-sink (stdlib / pure / compiled)"
        benchmark.pedantic(target, setup=setup, rounds=3, iterations=1)
        if benchmark.stats is not None:  # None with --benchmark-disable
            benchmark.extra_info["msgs_per_s"] = _N / benchmark.stats.stats.median
        benchmark.extra_info["cpu_us_per_msg"] = sum(cpu) / len(cpu) * 1e6 / _N


if __name__ == "__main__":
    sys.exit(main())
