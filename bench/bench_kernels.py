"""Byte kernels: stdlib vs pure-Python twin vs compiled twin, side by side.

Run: ``python -m pytest bench/ -p no:cacheprovider`` (``bench/conftest.py``
collects ``bench_*.py``).  Each group holds one measured thing for every
implementation; ``extra_info`` carries the throughput at the median round
(MB/s of input, replies/s, or calls/s).  Nothing here asserts a timing.
"""

from __future__ import annotations

import email.policy
import importlib
import io
import random
import smtplib
from collections import deque
from email.message import EmailMessage
from itertools import repeat, starmap

import pytest

from fastsmtplib import _wire_py

# ---------------------------------------------------------------------------
# Inputs (deterministic)

_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this from "
    "have or by one had not but what all were when we there can an your which their said "
    "if do will each about how up out them then she many some so these would other into"
).split()


def _prose(rng: random.Random, size: int) -> str:
    """Plain text with lines of varying length, some starting with a dot."""
    lines, n = [], 0
    while n < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 14)))
        if rng.random() < 0.03:
            line = "." + line
        lines.append(line)
        n += len(line) + 1
    return "\n".join(lines)


def _mail(body_parts: list[tuple[str, str]], attachment: bytes | None = None) -> bytes:
    """A MIME message as smtplib would be handed it: first part text/plain."""
    msg = EmailMessage(policy=email.policy.SMTP)  # CRLF line ends, as sent
    msg["From"] = "News <news@example.com>"
    msg["To"] = "reader@example.org"
    msg["Subject"] = "This week's picks"
    msg.set_content(body_parts[0][1], cte="quoted-printable")
    for subtype, body in body_parts[1:]:
        msg.add_alternative(body, subtype=subtype, cte="quoted-printable")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="a.pdf")
    return msg.as_bytes()


def _newsletter_html(rng: random.Random, items: int) -> str:
    rows = []
    for i in range(items):
        rows.append(
            f'<tr><td style="padding:8px;font-family:Arial,sans-serif;color:#333">'
            f'<a href="https://example.com/p/{i}?utm_source=news&utm_medium=email">'
            f"{_prose(rng, 60).replace(chr(10), ' ')}</a></td></tr>"
        )
    return "<html><body><table>\n" + "\n".join(rows) + "\n</table></body></html>\n"


def _payloads() -> dict[str, bytes]:
    rng = random.Random(5321)
    out = {
        "1KB-text": _mail([("plain", _prose(rng, 900))]),
        "20KB-html": _mail([("plain", _prose(rng, 3000)), ("html", _newsletter_html(rng, 120))]),
        "64KB-mixed": _mail([("plain", _prose(rng, 30000)), ("html", _newsletter_html(rng, 200))]),
        "1MB-attachment": _mail(
            [("plain", _prose(rng, 2000))], attachment=rng.randbytes(780_000)
        ),
    }
    sizes = {"1KB-text": 1024, "20KB-html": 20 * 1024, "64KB-mixed": 65536, "1MB-attachment": 1 << 20}
    for name, data in out.items():
        assert len(data) >= sizes[name], (name, len(data))
        data = data[: sizes[name]]
        # Don't end on half a CRLF: smtplib's bytes path would then send "\r\r\n".
        out[name] = data[:-1] + b"x" if data.endswith(b"\r") else data
    return out


PAYLOADS = _payloads()

SINGLE = b"250 2.0.0 Ok\r\n"
DISTINCT = [b"250 2.0.0 Ok: queued as %010X\r\n" % (i * 2654435761 % 2**40) for i in range(1000)]
EHLO = (
    b"250-mail.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n"
    b"250-ETRN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
    b"250-DSN\r\n250 SMTPUTF8\r\n"
)
N_REPLIES = 1000  # replies per round in the one-line groups
N_EHLO = 100  # EHLO replies per round


def _compiled():
    try:
        return importlib.import_module("fastsmtplib._wire_c")
    except ImportError:
        pytest.skip("compiled kernels not built")


def _measure(benchmark, group: str, fn, *, units: int, unit: str, scale: float = 1.0):
    """Time ``fn`` in ``group``; record units/s (times ``scale``) at the median."""
    benchmark.group = group
    result = benchmark(fn)
    if benchmark.stats:  # None with --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info[unit] = round(units / median * scale, 2)
    return result


# ---------------------------------------------------------------------------
# DATA encoding: line ends to CRLF, dot-stuffing, terminator.


def _stdlib_str(text: str) -> bytes:
    """smtplib's path for a str message: sendmail's _fix_eols, then data()."""
    q = smtplib._quote_periods(smtplib._fix_eols(text).encode("ascii"))
    if q[-2:] != b"\r\n":
        q = q + b"\r\n"
    return q + b".\r\n"


def _stdlib_bytes(data: bytes) -> bytes:
    """smtplib's path for a bytes message: data() stuffs dots only."""
    q = smtplib._quote_periods(data)
    if q[-2:] != b"\r\n":
        q = q + b"\r\n"
    return q + b".\r\n"


def _data_bench(benchmark, name: str, fn, arg):
    assert fn(arg) == _stdlib_str(PAYLOADS[name].decode("ascii"))  # same bytes on the wire
    _measure(
        benchmark, f"data {name}", lambda: fn(arg), units=len(PAYLOADS[name]), unit="MB/s", scale=1e-6
    )


@pytest.mark.parametrize("name", PAYLOADS)
def test_data_stdlib_str(benchmark, name):
    """smtplib str message: re.sub _fix_eols, encode, re.sub _quote_periods."""
    _data_bench(benchmark, name, _stdlib_str, PAYLOADS[name].decode("ascii"))


@pytest.mark.parametrize("name", PAYLOADS)
def test_data_stdlib_bytes(benchmark, name):
    """smtplib bytes message: re.sub _quote_periods only (no line-end repair)."""
    _data_bench(benchmark, name, _stdlib_bytes, PAYLOADS[name])


@pytest.mark.parametrize("name", PAYLOADS)
def test_data_pure(benchmark, name):
    """_wire_py.dot_stuff on bytes."""
    _data_bench(benchmark, name, _wire_py.dot_stuff, PAYLOADS[name])


@pytest.mark.parametrize("name", PAYLOADS)
def test_data_compiled(benchmark, name):
    """_wire_c.dot_stuff on bytes."""
    _data_bench(benchmark, name, _compiled().dot_stuff, PAYLOADS[name])


# ---------------------------------------------------------------------------
# Reply parsing.  stdlib: SMTP.getreply reading a BytesIO file (no socket), as
# it reads its socket file; ours: ReplyParser.feed on the bytes a recv returned.


def _stdlib_getreply(data: bytes, n: int):
    smtp = smtplib.SMTP()  # no host: no connection
    smtp.file = f = io.BytesIO(data)
    getreply = smtp.getreply

    def run():
        f.seek(0)
        return deque(starmap(getreply, repeat((), n)), maxlen=1)[0]

    return run


def _feed_each(module, chunks):
    feed = module.ReplyParser().feed

    def run():
        return deque(map(feed, chunks), maxlen=1)[0]

    return run


def _feed_once(module, chunk):
    feed = module.ReplyParser().feed
    return lambda: feed(chunk)


G_SINGLE = "reply: '250 2.0.0 Ok', one reply per call"
G_DISTINCT = "reply: distinct one-line replies, one per call"
G_CHUNK = "reply: 1000 one-line replies in one chunk"
G_EHLO = "reply: 10-line EHLO reply, one per call"


def test_reply_single_stdlib(benchmark):
    """stdlib getreply, the same one-line reply 1000 times."""
    run = _stdlib_getreply(SINGLE * N_REPLIES, N_REPLIES)
    assert run() == (250, b"2.0.0 Ok")
    _measure(benchmark, G_SINGLE, run, units=N_REPLIES, unit="replies/s")


def test_reply_single_pure(benchmark):
    """_wire_py feed, the same one-line reply 1000 times, one per call."""
    run = _feed_each(_wire_py, [SINGLE] * N_REPLIES)
    assert run() == [(250, b"2.0.0 Ok")]
    _measure(benchmark, G_SINGLE, run, units=N_REPLIES, unit="replies/s")


def test_reply_single_compiled(benchmark):
    """_wire_c feed, the same one-line reply 1000 times, one per call."""
    run = _feed_each(_compiled(), [SINGLE] * N_REPLIES)
    assert run() == [(250, b"2.0.0 Ok")]
    _measure(benchmark, G_SINGLE, run, units=N_REPLIES, unit="replies/s")


def test_reply_distinct_stdlib(benchmark):
    """stdlib getreply, 1000 different one-line replies."""
    run = _stdlib_getreply(b"".join(DISTINCT), N_REPLIES)
    assert run() == (250, DISTINCT[-1][4:-2])
    _measure(benchmark, G_DISTINCT, run, units=N_REPLIES, unit="replies/s")


def test_reply_distinct_pure(benchmark):
    """_wire_py feed, 1000 different one-line replies, one per call."""
    run = _feed_each(_wire_py, DISTINCT)
    assert run() == [(250, DISTINCT[-1][4:-2])]
    _measure(benchmark, G_DISTINCT, run, units=N_REPLIES, unit="replies/s")


def test_reply_distinct_compiled(benchmark):
    """_wire_c feed, 1000 different one-line replies, one per call (no memo hits)."""
    run = _feed_each(_compiled(), DISTINCT)
    assert run() == [(250, DISTINCT[-1][4:-2])]
    _measure(benchmark, G_DISTINCT, run, units=N_REPLIES, unit="replies/s")


def test_reply_chunk_stdlib(benchmark):
    """stdlib getreply, 1000 different one-line replies buffered in one file."""
    run = _stdlib_getreply(b"".join(DISTINCT), N_REPLIES)
    assert run() == (250, DISTINCT[-1][4:-2])
    _measure(benchmark, G_CHUNK, run, units=N_REPLIES, unit="replies/s")


def test_reply_chunk_pure(benchmark):
    """_wire_py feed, one chunk holding 1000 different one-line replies."""
    run = _feed_once(_wire_py, b"".join(DISTINCT))
    assert len(run()) == N_REPLIES
    _measure(benchmark, G_CHUNK, run, units=N_REPLIES, unit="replies/s")


def test_reply_chunk_compiled(benchmark):
    """_wire_c feed, one chunk holding 1000 different one-line replies."""
    run = _feed_once(_compiled(), b"".join(DISTINCT))
    assert len(run()) == N_REPLIES
    _measure(benchmark, G_CHUNK, run, units=N_REPLIES, unit="replies/s")


def test_reply_ehlo_stdlib(benchmark):
    """stdlib getreply, a 10-line EHLO reply, 100 times."""
    run = _stdlib_getreply(EHLO * N_EHLO, N_EHLO)
    assert run()[0] == 250
    _measure(benchmark, G_EHLO, run, units=N_EHLO, unit="replies/s")


def test_reply_ehlo_pure(benchmark):
    """_wire_py feed, a 10-line EHLO reply per call, 100 times."""
    run = _feed_each(_wire_py, [EHLO] * N_EHLO)
    assert run()[0][0] == 250
    _measure(benchmark, G_EHLO, run, units=N_EHLO, unit="replies/s")


def test_reply_ehlo_compiled(benchmark):
    """_wire_c feed, a 10-line EHLO reply per call, 100 times."""
    run = _feed_each(_compiled(), [EHLO] * N_EHLO)
    assert run()[0][0] == 250
    _measure(benchmark, G_EHLO, run, units=N_EHLO, unit="replies/s")


# ---------------------------------------------------------------------------
# Envelope: the MAIL line and every RCPT line for plain addresses, one call.
# Reference: what the general path does, quoteaddr on each address and a join.

ENVELOPE_FROM = "<newsletter-bounces+id=4711@lists.example.com>"
ENVELOPE_TO = [f"reader.{i:04d}@mail-{i % 7}.example.org" for i in range(20)]
MAIL_PARAMS = b" size=20480 BODY=8BITMIME"
RCPT_PARAMS = b" NOTIFY=FAILURE"


def _envelope_reference(from_addr, to_addrs):
    from fastsmtplib._protocol import quoteaddr

    return b"".join(
        [("mail FROM:%s" % quoteaddr(from_addr)).encode() + MAIL_PARAMS + b"\r\n"]
        + [("rcpt TO:%s" % quoteaddr(r)).encode() + RCPT_PARAMS + b"\r\n" for r in to_addrs]
    )


def _envelope_bench(benchmark, encode, nrcpt: int):
    to = ENVELOPE_TO[:nrcpt]
    assert encode(ENVELOPE_FROM, to, MAIL_PARAMS, RCPT_PARAMS) == _envelope_reference(ENVELOPE_FROM, to)
    n = 1000  # calls per round

    def run():
        for _ in repeat(None, n):
            encode(ENVELOPE_FROM, to, MAIL_PARAMS, RCPT_PARAMS)

    _measure(benchmark, f"envelope: {nrcpt} recipient(s), 1000 calls", run, units=n, unit="calls/s")


@pytest.mark.parametrize("nrcpt", [1, 20])
def test_envelope_quoteaddr(benchmark, nrcpt):
    """General path: _protocol.quoteaddr per address, format, encode, join."""
    _envelope_bench(
        benchmark, lambda f, to, mp, rp: _envelope_reference(f, to), nrcpt
    )


@pytest.mark.parametrize("nrcpt", [1, 20])
def test_envelope_pure(benchmark, nrcpt):
    """_wire_py.encode_envelope (one regex fullmatch over the NUL-joined addresses)."""
    _envelope_bench(benchmark, _wire_py.encode_envelope, nrcpt)


@pytest.mark.parametrize("nrcpt", [1, 20])
def test_envelope_compiled(benchmark, nrcpt):
    """_wire_c.encode_envelope (byte loop over each str, one allocation)."""
    _envelope_bench(benchmark, _compiled().encode_envelope, nrcpt)
