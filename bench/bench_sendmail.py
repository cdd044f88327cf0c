"""End-to-end: stdlib smtplib vs fastsmtplib against Postfix's ``smtp-sink``.

Both clients run in the same pytest session against the same ``smtp-sink``;
the sink and this process are pinned to CPU 0 (two cores here, and waking the
other core costs more than what is measured; see bench/README.md).

    python -m pytest bench/bench_sendmail.py                  # full run (~1 min)
    python -m pytest bench/ --benchmark-disable -q            # smoke: each once
    python bench/bench_sendmail.py --quick                    # table, no pytest
    python bench/bench_sendmail.py --quick --raw              # ... with the ceiling

Each round sends a fixed batch of messages on a client that is already
connected and has said EHLO; ``extra_info`` holds ``msgs_per_s`` (batch size
over the median round) and ``cpu_us_per_msg`` (this process's user+sys CPU
from ``getrusage(RUSAGE_SELF)`` over every round, per message).  Every batch
checks that every message was accepted.  Nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import resource
import smtplib
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bdat_sink import PinnedBdatSink  # noqa: E402
from raw_client import RawClient, bdat_window_batch  # noqa: E402
from sink import PinnedSink, pinned_to_cpu, sink_available  # noqa: E402
from variants import pure_fastsmtplib  # noqa: E402

import fastsmtplib  # noqa: E402

FROM = "news@example.com"
RCPT1 = ["reader@example.org"]
RCPT20 = [f"reader{i:02d}@example.org" for i in range(20)]

# ---------------------------------------------------------------------------
# Messages (deterministic).  Passed as str with CRLF line ends, as
# ``msg.as_string(policy=email.policy.SMTP)`` hands them to sendmail().

_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this from "
    "have or by one had not but what all were when we there can an your which their said "
    "if do will each about how up out them then she many some so these would other into "
    "offer week new read more free shipping members exclusive update season sale guide"
).split()


def _sentence(rng: random.Random, lo: int = 4, hi: int = 14) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def _headers(subject: str, ctype: str, extra: str = "") -> list[str]:
    return [
        "From: Example News <news@example.com>",
        "To: reader@example.org",
        f"Subject: {subject}",
        "Date: Mon, 06 May 2024 09:30:00 +0000",
        "Message-ID: <20240506093000.4242@example.com>",
        "MIME-Version: 1.0",
        f"Content-Type: {ctype}",
        "Content-Transfer-Encoding: 7bit",
        *([extra] if extra else []),
        "",
    ]


def _fit(lines: list[str], size: int) -> str:
    """Join with CRLF and cut to ``size`` characters on a line boundary, CRLF-ended."""
    text = "\r\n".join(lines) + "\r\n"
    assert len(text) >= size, (len(text), size)
    cut = text.rfind("\r\n", 0, size - 1) + 2
    text = text[:cut]
    return text + "x" * (size - len(text) - 2) + "\r\n"


def make_text_1k(seed: int = 2821) -> str:
    """A 1 KB plain-text message, a few body lines starting with '.'."""
    rng = random.Random(seed)
    lines = _headers("Your weekly digest", "text/plain; charset=us-ascii")
    for i in range(40):
        s = _sentence(rng)
        lines.append(("." + s) if i % 9 == 4 else s)
    return _fit(lines, 1024)


_CSS = [
    ".wrapper { width: 100%; background-color: #f4f4f4; }",
    ".container { max-width: 600px; margin: 0 auto; background: #ffffff; }",
    ".header img { display: block; border: 0; }",
    ".headline { font-family: Georgia, serif; font-size: 24px; color: #222; }",
    ".item td { padding: 12px 16px; border-bottom: 1px solid #eee; }",
    ".price { font-weight: bold; color: #c0392b; }",
    ".button { background: #2a7ae2; color: #fff !important; padding: 10px 18px; }",
    ".footer { font-size: 11px; color: #999; text-align: center; }",
    ".unsub a { color: #999; text-decoration: underline; }",
    "@media only screen and (max-width: 480px) {",
    ".container { width: 100% !important; }",
    ".item td { display: block; width: 100% !important; }",
    "}",
]


def make_newsletter_20k(seed: int = 5321) -> str:
    """A 20 KB HTML newsletter: CSS rules and wrapped text lines start with '.'."""
    rng = random.Random(seed)
    lines = _headers("Spring sale: 30% off this week only", 'text/html; charset="us-ascii"')
    lines += [
        "<!DOCTYPE html>",
        "<html>",
        "<head>",
        '<meta http-equiv="Content-Type" content="text/html; charset=us-ascii">',
        "<title>Spring sale</title>",
        '<style type="text/css">',
        *_CSS,
        "</style>",
        "</head>",
        "<body>",
        '<table class="wrapper" cellpadding="0" cellspacing="0" border="0"><tr><td>',
        '<table class="container" cellpadding="0" cellspacing="0" border="0">',
        '<tr><td class="header"><img src="https://cdn.example.com/n/logo.png" alt="Example" width="600"></td></tr>',
    ]
    i = 0
    while sum(len(x) + 2 for x in lines) < 21000:
        i += 1
        lines += [
            '<tr class="item">',
            f'<td><img src="https://cdn.example.com/n/p{i}.jpg" width="120" alt="item {i}"></td>',
            "<td>",
            f'<p class="headline">{_sentence(rng, 3, 7).capitalize()}</p>',
            f"<p>{_sentence(rng, 8, 14)}",
            # A wrapped paragraph: continuation lines may start with '.'.
            f".{_sentence(rng, 6, 12)}",
            f"{_sentence(rng, 6, 12)}</p>",
            f'<p class="price">${rng.randint(5, 300)}.{rng.randint(0, 99):02d}</p>',
            f'<a class="button" href="https://example.com/p/{i}?utm_source=newsletter&amp;'
            f'utm_medium=email&amp;utm_campaign=spring">Shop now</a>',
            "</td>",
            "</tr>",
        ]
    lines += [
        '<tr><td class="footer">You receive this because you subscribed at example.com.',
        '<span class="unsub"><a href="https://example.com/unsubscribe?u=4242">Unsubscribe</a></span>',
        "</td></tr>",
        "</table></td></tr></table>",
        "</body>",
        "</html>",
    ]
    return _fit(lines, 20 * 1024)


MSG_1K = make_text_1k()
MSG_20K = make_newsletter_20k()

# ---------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Case:
    key: str
    group: str
    msg: str
    rcpts: list
    batch: int  # messages per round
    rounds: int  # pytest rounds (the --quick table uses fewer)


CASES = {
    "a": Case("a", "e2e a: sendmail 1KB, 1 rcpt", MSG_1K, RCPT1, 200, 30),
    "b": Case("b", "e2e b: sendmail 1KB, 20 rcpts", MSG_1K, RCPT20, 100, 30),
    "c": Case("c", "e2e c: sendmail 20KB HTML, 1 rcpt", MSG_20K, RCPT1, 200, 30),
    # d's stdlib baseline is case a (same messages, same envelope).
    "d": Case("d", "e2e d: send_many 1KB, 1 rcpt", MSG_1K, RCPT1, 200, 30),
    # e runs on bench/bdat_sink.py (smtp-sink has no CHUNKING): stdlib's
    # sendmail loop (DATA) vs send_many over BDAT, on the same sink.
    "e": Case("e", "e2e e: send_many 1KB BDAT sink", MSG_1K, RCPT1, 400, 30),
}

HAS_SEND_MANY = hasattr(fastsmtplib.SMTP, "send_many")
NO_SEND_MANY = "fastsmtplib.SMTP.send_many() is not there yet (src/fastsmtplib/batch.py)"

# "pure" is fastsmtplib on its pure-Python twins (bench/variants.py), in the
# same process and group as the compiled one.
IMPLS = {"stdlib": smtplib, "fastsmtplib": fastsmtplib, "pure": pure_fastsmtplib()}

# ---------------------------------------------------------------------------
# Batches: each returns a function sending ``case.batch`` messages and
# raising if any message or recipient was not accepted.


def sendmail_batch(client, case: Case) -> Callable[[], None]:
    sendmail, msg, rcpts, n = client.sendmail, case.msg, case.rcpts, case.batch

    def run() -> None:
        for _ in range(n):
            refused = sendmail(FROM, rcpts, msg)
            if refused:
                raise AssertionError(f"recipients refused: {refused!r}")

    return run


def send_many_batch(client, case: Case) -> Callable[[], None]:
    send_many, msg, rcpts, n = client.send_many, case.msg, case.rcpts, case.batch

    def run() -> None:
        count = 0
        for result in send_many((FROM, rcpts, msg) for _ in range(n)):
            if result.ok is not True:
                raise AssertionError(f"message not accepted: {result!r}")
            count += 1
        if count != n:
            raise AssertionError(f"send_many gave {count} results for {n} messages")

    return run


@dataclass
class Meter:
    """Wraps a batch: wall time per round and process CPU over all rounds."""

    batch: Callable[[], None]
    size: int
    walls: list = field(default_factory=list)
    cpu: float = 0.0

    def __call__(self) -> None:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        self.batch()
        t1 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        self.walls.append(t1 - t0)
        self.cpu += (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)

    @property
    def msgs_per_s(self) -> float:
        return self.size / statistics.median(self.walls)

    @property
    def cpu_us_per_msg(self) -> float:
        return self.cpu / (self.size * len(self.walls)) * 1e6


def connect(module, sink: PinnedSink, timeout: Optional[float] = 30):
    client = module.SMTP(sink.host, sink.port, timeout=timeout)
    code, _ = client.ehlo()
    assert code == 250, code
    assert client.has_extn("pipelining"), "smtp-sink should advertise PIPELINING"
    return client


def raw_batch(client: RawClient, case: Case) -> Callable[[], None]:
    if case.key == "e":
        def run() -> None:
            bdat_window_batch(client, FROM, case.rcpts, case.msg, case.batch)

        return run
    send = client.send_many_batch if case.key == "d" else client.sendmail_batch

    def run() -> None:
        send(FROM, case.rcpts, case.msg, case.batch)

    return run


def prepare(impl: str, case: Case, sink: PinnedSink, timeout: Optional[float] = 30):
    """Connect, EHLO, send one checked batch (warm-up); return (client, Meter).

    The "raw" row's socket is blocking (no timeout): CPython then makes no
    poll() before each recv/send, so it is the cheapest client possible;
    "raw,t/o 30" is the same with a timeout, as the ceiling was measured before.
    """
    if impl == "raw":
        client = RawClient(sink.host, sink.port, timeout=timeout)
        batch = raw_batch(client, case)
        batch()
        return client, Meter(batch, case.batch)
    client = connect(IMPLS[impl], sink, timeout)
    make = send_many_batch if case.key in "de" and impl != "stdlib" else sendmail_batch
    batch = make(client, case)
    batch()  # every message accepted, before anything is timed
    return client, Meter(batch, case.batch)


def close(client) -> None:
    try:
        client.quit()
    except Exception:
        client.close()


# ---------------------------------------------------------------------------
# pytest

try:
    import pytest
except ImportError:  # script mode does not need it
    pytest = None

if pytest is not None and "pytest" in sys.modules and hasattr(pytest, "fixture"):

    @pytest.fixture(scope="module")
    def sink():
        why = sink_available()
        if why:
            if os.environ.get("CI"):
                pytest.fail(why, pytrace=False)
            pytest.skip(why)
        with PinnedSink(cpu=0) as s:
            yield s

    @pytest.fixture(scope="module", autouse=True)
    def _pin_cpu0():
        with pinned_to_cpu(0):
            yield

    def _bench(benchmark, sink, impl: str, case: Case) -> None:
        client, meter = prepare(impl, case, sink)
        try:
            benchmark.group = case.group
            benchmark.pedantic(meter, rounds=case.rounds, iterations=1)
        finally:
            close(client)
        benchmark.extra_info["msgs_per_s"] = round(meter.msgs_per_s, 1)
        benchmark.extra_info["cpu_us_per_msg"] = round(meter.cpu_us_per_msg, 1)
        benchmark.extra_info["batch"] = case.batch

    def test_a_stdlib(benchmark, sink):
        """stdlib smtplib: 200 x sendmail(), 1 KB, 1 recipient, lock-step MAIL/RCPT/DATA."""
        _bench(benchmark, sink, "stdlib", CASES["a"])

    def test_a_pure(benchmark, sink):
        """fastsmtplib on its pure-Python twins: case a."""
        _bench(benchmark, sink, "pure", CASES["a"])

    def test_a_fastsmtplib(benchmark, sink):
        """fastsmtplib: 200 x sendmail(), 1 KB, 1 recipient, MAIL/RCPT/DATA pipelined."""
        _bench(benchmark, sink, "fastsmtplib", CASES["a"])

    def test_b_stdlib(benchmark, sink):
        """stdlib smtplib: 100 x sendmail(), 1 KB, 20 recipients each."""
        _bench(benchmark, sink, "stdlib", CASES["b"])

    def test_b_pure(benchmark, sink):
        """fastsmtplib on its pure-Python twins: case b."""
        _bench(benchmark, sink, "pure", CASES["b"])

    def test_b_fastsmtplib(benchmark, sink):
        """fastsmtplib: 100 x sendmail(), 1 KB, 20 recipients each, pipelined."""
        _bench(benchmark, sink, "fastsmtplib", CASES["b"])

    def test_c_stdlib(benchmark, sink):
        """stdlib smtplib: 200 x sendmail(), 20 KB HTML newsletter, 1 recipient."""
        _bench(benchmark, sink, "stdlib", CASES["c"])

    def test_c_pure(benchmark, sink):
        """fastsmtplib on its pure-Python twins: case c."""
        _bench(benchmark, sink, "pure", CASES["c"])

    def test_c_fastsmtplib(benchmark, sink):
        """fastsmtplib: 200 x sendmail(), 20 KB HTML newsletter, 1 recipient."""
        _bench(benchmark, sink, "fastsmtplib", CASES["c"])

    @pytest.mark.skipif(not HAS_SEND_MANY, reason=NO_SEND_MANY)
    def test_d_stdlib(benchmark, sink):
        """stdlib smtplib: 200 x sendmail(), 1 KB, 1 recipient (case a again, beside send_many)."""
        _bench(benchmark, sink, "stdlib", dataclasses.replace(CASES["a"], group=CASES["d"].group))

    @pytest.mark.skipif(not HAS_SEND_MANY, reason=NO_SEND_MANY)
    def test_d_pure_send_many(benchmark, sink):
        """fastsmtplib on its pure-Python twins: case d."""
        _bench(benchmark, sink, "pure", CASES["d"])

    @pytest.mark.skipif(not HAS_SEND_MANY, reason=NO_SEND_MANY)
    def test_d_fastsmtplib_send_many(benchmark, sink):
        """fastsmtplib: one send_many() of 200 messages, 1 KB, 1 recipient, one connection."""
        _bench(benchmark, sink, "fastsmtplib", CASES["d"])

    # The ceiling beside each case: fastsmtplib's exchange from prebuilt bytes
    # (bench/raw_client.py), same sink, same run.
    @pytest.mark.parametrize("key", "abcd")
    def test_raw_ceiling(benchmark, sink, key):
        """raw socket, prebuilt bytes: what the exchange allows on this sink and core."""
        _bench(benchmark, sink, "raw", CASES[key])

    def test_e_raw_ceiling(benchmark, bdat_sink):
        """raw socket, BDAT windows of 16 prebuilt transactions."""
        _bench(benchmark, bdat_sink, "raw", CASES["e"])

    @pytest.fixture(scope="module")
    def bdat_sink():
        with PinnedBdatSink(cpu=0) as s:
            yield s

    def test_e_stdlib(benchmark, bdat_sink):
        """stdlib smtplib: 400 x sendmail() (DATA), 1 KB, on the CHUNKING sink."""
        _bench(benchmark, bdat_sink, "stdlib", CASES["e"])

    def test_e_pure_send_many(benchmark, bdat_sink):
        """fastsmtplib on its pure-Python twins: case e."""
        _bench(benchmark, bdat_sink, "pure", CASES["e"])

    def test_e_fastsmtplib_send_many(benchmark, bdat_sink):
        """fastsmtplib: one send_many() of 400 messages over BDAT (window 16), 1 KB."""
        _bench(benchmark, bdat_sink, "fastsmtplib", CASES["e"])


# ---------------------------------------------------------------------------
# Script mode: the same batches, no pytest.


def _measure(impl: str, case: Case, sink, rounds: int, timeout: Optional[float] = 30) -> Meter:
    client, meter = prepare(impl, case, sink, timeout)
    try:
        for _ in range(rounds):
            meter()
    finally:
        close(client)
    return meter


# Clients of the table: (name, implementation, socket timeout).  Bulk senders
# run with a timeout (CPython then polls before every recv/send; fastsmtplib
# does not), so fastsmtplib is measured both ways.
CLIENTS = {
    "stdlib": ("stdlib", 30),
    "pure": ("pure", 30),
    "fastsmtplib": ("fastsmtplib", 30),
    "fast,no t/o": ("fastsmtplib", None),
    "raw": ("raw", None),
    "raw,t/o 30": ("raw", 30),
}


def run_table(rounds: int, raw: bool = False) -> list[tuple]:
    """Rows of (case, client, msgs/s, CPU us/msg, x stdlib, CPU x stdlib, x raw, CPU / raw)."""
    rows = []
    with PinnedSink(cpu=0) as s, pinned_to_cpu(0):
        base: dict[str, Meter] = {}
        for key in "abcde":
            case = CASES[key]
            names = ["pure", "fastsmtplib", "fast,no t/o"]
            if key != "d":
                names.insert(0, "stdlib")
            if raw:
                names += ["raw", "raw,t/o 30"]
            meters = {}
            for name in names:
                impl, timeout = CLIENTS[name]
                if key == "e":  # its own sink: smtp-sink has no CHUNKING
                    with PinnedBdatSink(cpu=0) as bs:
                        meters[name] = _measure(impl, case, bs, rounds, timeout)
                else:
                    meters[name] = _measure(impl, case, s, rounds, timeout)
                if name == "stdlib":
                    base[key] = meters[name]
            ref = base["a" if key == "d" else key]
            ceiling = meters.get("raw")
            for name, meter in meters.items():
                rows.append((
                    case.group, name, meter.msgs_per_s, meter.cpu_us_per_msg,
                    meter.msgs_per_s / ref.msgs_per_s, ref.cpu_us_per_msg / meter.cpu_us_per_msg,
                    meter.msgs_per_s / ceiling.msgs_per_s if ceiling else None,
                    meter.cpu_us_per_msg / ceiling.cpu_us_per_msg if ceiling else None,
                ))
    return rows


def print_table(rows: list[tuple]) -> None:
    print(f"{'case':36} {'client':12} {'msgs/s':>9} {'CPU us/msg':>11} {'x stdlib':>9} {'CPU x':>7}"
          f" {'% raw':>6} {'CPU/raw':>7}")
    for group, impl, rate, cpu, ratio, cpu_ratio, of_raw, cpu_of_raw in rows:
        tail = f" {of_raw * 100:5.0f}% {cpu_of_raw:6.2f}x" if of_raw is not None else ""
        print(f"{group:36} {impl:12} {rate:9.0f} {cpu:11.1f} {ratio:8.2f}x {cpu_ratio:6.2f}x{tail}")
    print("(msgs/s at the median round; CPU = this process's user+sys per message; "
          "'x stdlib' = msgs/s ratio, 'CPU x' = stdlib CPU / this CPU; d vs stdlib case a;\n"
          " e on bench/bdat_sink.py (CHUNKING), stdlib's sendmail loop there uses DATA;\n"
          " 'raw' = bench/raw_client.py, fastsmtplib's exchange from prebuilt bytes on a blocking\n"
          " socket: the ceiling; '% raw' and 'CPU/raw' compare each row with it;\n"
          " 'fastsmtplib' runs with timeout=30 as bulk senders do, 'fast,no t/o' with none)")


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds per case (default 12)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--raw", action="store_true",
                    help="add the raw-socket ceiling (bench/raw_client.py) to each case")
    args = ap.parse_args(argv)
    why = sink_available()
    if why:
        print(why, file=sys.stderr)
        return 2
    rounds = args.rounds or (5 if args.quick else 12)
    print(f"fastsmtplib {getattr(fastsmtplib, '__version__', '?')}, Python {sys.version.split()[0]}, "
          f"smtp-sink and client pinned to CPU 0, {rounds} rounds per case")
    print_table(run_table(rounds, raw=args.raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
