"""The ceiling of the pool's exchange: prebuilt bytes, 8 connections, one thread.

A reference, not a client.  ``SMTPPool`` over DATA (smtp-sink has no CHUNKING)
keeps one message per round trip on each connection: the first write carries
a message's envelope and ``DATA``; once its 354 comes, the next write carries
its body and the next message's envelope and ``DATA`` (RFC 2920 §3.1: the body
waits for the 354).  This script does exactly that over ``--size`` connections
from one ``selectors`` loop, with the pool's own bytes (built once by the same
encoder the pool uses), and does nothing per reply but count lines and look
for the 354 that ends each round trip.  What it reaches is what the protocol,
the kernel and smtp-sink allow this machine; the pool cannot beat it.

    python bench/raw_pool.py                     # 40,000 x 1 KB, 8 connections
    python bench/raw_pool.py --messages 100000 --size 8 --runs 3
    python bench/raw_pool.py --pool              # the pool in the same run, for the ratio
    python bench/raw_pool.py --pool --engine     # and the engine under a minimal one-thread driver
    PYTHONPATH=/old/tree/src python bench/raw_pool.py --pool   # another version of the pool, same script

``--engine`` adds the engine (``_engine.py``) driven by the fewest lines that
can drive it (one thread, no results kept, no policies): the difference from
the raw row is the engine's own cost per message, the difference from the pool
row is the pool's (its I/O thread, hand-offs, results, policies).

smtp-sink runs pinned to CPU 1 and this process to CPU 0.  ``CPU us/msg`` is
this process's user+sys CPU per message; ``sink us/msg`` is smtp-sink's (from
/proc), when readable.  Every reply is checked to be 2yz/3yz.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sink import PinnedSink, sink_available  # noqa: E402

import fastsmtplib  # noqa: E402

FROM = "news@example.com"
TO = ["reader@example.org"]


def message_1k() -> bytes:
    head = b"From: News <news@example.com>\r\nTo: reader@example.org\r\nSubject: issue 0\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * ((1024 - len(head)) // len(line) + 1)
    return (head + body)[:1022] + b"\r\n"


def pool_bytes(host: str, port: int, msg: bytes) -> tuple[bytes, bytes]:
    """(envelope + DATA, body) exactly as the pool's engine writes them."""
    conn = fastsmtplib.SMTP(host, port, "raw.example", timeout=30)
    try:
        conn.ehlo_or_helo_if_needed()
        engine = getattr(conn, "engine", None) or conn._engine  # older trees, for before/after runs
        prep = engine(1).encoder.encode(FROM, TO, msg, (), ())
    finally:
        conn.quit()
    return prep.envelope + b"data\r\n", prep.payload


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _sink_pid(sink: PinnedSink) -> Optional[int]:
    # taskset execs smtp-sink, so the Popen pid is smtp-sink's.
    return sink.proc.pid if sink.proc is not None else None


def _open(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as SMTP (and so the pool) does
    buf = b""
    while not buf.endswith(b"\r\n"):
        buf += sock.recv(4096)
    assert buf.startswith(b"220"), buf
    sock.sendall(b"ehlo raw.example\r\n")
    buf = b""
    while not (buf.endswith(b"\r\n") and (b"\r\n" + buf).rfind(b"\r\n250 ") >= 0):
        buf += sock.recv(4096)
    sock.setblocking(False)
    return sock


class _Conn:
    __slots__ = ("sock", "left", "lines", "owed", "tail")

    def __init__(self, sock: socket.socket, n: int) -> None:
        self.sock = sock
        self.left = n  # messages whose envelope is not yet written
        self.lines = 0
        self.owed = 0  # reply lines still owed
        self.tail = b""


def raw_run(host: str, port: int, n: int, size: int, first: bytes, body: bytes) -> int:
    """Send ``n`` messages over ``size`` connections; return reply lines read."""
    steady = body + first  # one round trip: this body, the next envelope
    sel = selectors.DefaultSelector()
    conns = []
    per, extra = divmod(n, size)
    for i in range(size):
        k = per + (1 if i < extra else 0)
        c = _Conn(_open(host, port), k)
        conns.append(c)
    for c in conns:
        if c.left:
            c.left -= 1
            c.owed = 3  # MAIL, RCPT, DATA
            c.sock.send(first)
            sel.register(c.sock, selectors.EVENT_READ, c)
    active = sum(1 for c in conns if c.owed)
    total = 0
    select = sel.select
    while active:
        for key, _ in select():
            c = key.data
            data = c.sock.recv(65536)
            if not data:
                raise ConnectionError("sink closed a connection")
            if c.tail:
                data = c.tail + data
            got = data.count(b"\n")
            if not data.endswith(b"\n"):
                c.tail = data[data.rfind(b"\n") + 1:]
            else:
                c.tail = b""
            if got == 0:
                continue
            total += got
            c.owed -= got
            if c.owed:
                continue
            # Every reply owed came; the last one is DATA's 354 or the final 250.
            last = data[data.rfind(b"\n", 0, len(data) - 1) + 1:]
            if last[:1] not in (b"2", b"3") or data.count(b"\n4") or data.count(b"\n5") or data[:1] in (b"4", b"5"):
                raise AssertionError(f"sink refused: {data!r}")
            if last[:3] == b"354":
                if c.left:
                    c.left -= 1
                    c.owed = 4  # the body's 250, then MAIL, RCPT, DATA
                    c.sock.send(steady)
                else:
                    c.owed = 1
                    c.sock.send(body)
            else:
                sel.unregister(c.sock)
                active -= 1
    for c in conns:
        c.sock.setblocking(True)
        c.sock.sendall(b"quit\r\n")
        c.sock.close()
    sel.close()
    return total


def engine_run(host: str, port: int, n: int, size: int, msg: bytes) -> None:
    """The engine over ``size`` connections, driven by one minimal selectors loop."""
    sel = selectors.DefaultSelector()
    conns = []
    left, done = n, 0
    view = memoryview(bytearray(65536))
    for _ in range(size):
        c = fastsmtplib.SMTP(host, port, "engine.example", timeout=30)
        c.ehlo_or_helo_if_needed()
        eng = (getattr(c, "engine", None) or c._engine)(32)
        c.sock.setblocking(False)
        conns.append(c)
        sel.register(c.sock, selectors.EVENT_READ, (c.sock, eng))
        if left:
            eng.submit(0, FROM, TO, msg)
            left -= 1
            c.sock.send(eng.bytes_to_send())
    while done < n:
        for key, _ in sel.select():
            sock, eng = key.data
            got = sock.recv_into(view)
            if not got:
                raise ConnectionError("sink closed a connection")
            for r in eng.receive(view[:got]):
                if r.status != "delivered":
                    raise AssertionError(r)
                done += 1
            if left and eng.room() > 0:
                eng.submit(0, FROM, TO, msg)
                left -= 1
            data = eng.bytes_to_send()
            if data:
                sock.send(data)
    sel.close()
    for c in conns:
        c.sock.setblocking(True)
        c.quit()


def pool_run(host: str, port: int, n: int, size: int, msg: bytes) -> None:
    pool = fastsmtplib.SMTPPool(host, port, size=size, local_hostname="client.example", timeout=30,
                                max_messages_per_connection=None)
    list(pool.send_many((FROM, TO, msg) for _ in range(size * 4)))  # open every connection first
    ok = sum(1 for r in pool.send_many((FROM, TO, msg) for _ in range(n)) if r.status == "delivered")
    pool.close()
    assert ok == n, (ok, n)


def measure(sink: PinnedSink, n: int, run) -> tuple[float, float, Optional[float]]:
    pid = _sink_pid(sink)
    s0 = _proc_cpu(pid) if pid else None
    c0, t0 = _cpu(), time.perf_counter()
    run()
    t1, c1 = time.perf_counter(), _cpu()
    s1 = _proc_cpu(pid) if pid else None
    sink_us = (s1 - s0) * 1e6 / n if s0 is not None and s1 is not None else None
    return n / (t1 - t0), (c1 - c0) * 1e6 / n, sink_us


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=40000)
    ap.add_argument("--size", type=int, default=8, help="connections (default 8)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--pool", action="store_true", help="also time SMTPPool(size) in the same run")
    ap.add_argument("--engine", action="store_true", help="also time the engine under a minimal driver")
    args = ap.parse_args(argv)
    why = sink_available()
    if why:
        print("skipped:", why)
        return 0
    os.sched_setaffinity(0, {0})
    msg = message_1k()
    with PinnedSink(cpu=1) as sink:
        first, body = pool_bytes(sink.host, sink.port, msg)
        n = args.messages
        print(f"{n} messages of {len(msg)} bytes, {args.size} connections; sink on CPU 1, client on CPU 0")
        print(f"{'client':28} {'msgs/s':>10} {'CPU us/msg':>11} {'sink us/msg':>12}")

        def row(name: str, result: tuple) -> None:
            rate, cpu, sink_us = result
            print(f"{name:28} {rate:10,.0f} {cpu:11.1f} {'' if sink_us is None else f'{sink_us:12.1f}'}")

        for _ in range(args.runs):
            lines = []
            row("raw (prebuilt bytes)",
                measure(sink, n, lambda: lines.append(raw_run(sink.host, sink.port, n, args.size, first, body))))
            assert lines[0] == 4 * n, (lines[0], 4 * n)
            if args.engine:
                row("engine, minimal driver", measure(sink, n, lambda: engine_run(sink.host, sink.port, n, args.size, msg)))
            if args.pool:
                row(f"SMTPPool(size={args.size})", measure(sink, n, lambda: pool_run(sink.host, sink.port, n, args.size, msg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
