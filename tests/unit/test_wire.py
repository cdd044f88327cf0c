"""Byte kernels: reply parsing and DATA/BDAT encoding, on both twins.

Every test taking ``wire`` runs against ``_wire_py`` and ``_wire_c`` (see
conftest.py).  Hypothesis crosses the twins on arbitrary input, and checks them
against the stdlib where the stdlib's behaviour is the intended one.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import os
import re
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsmtplib._wire as selector
from fastsmtplib import _wire_py
from fastsmtplib._wire import env_flag

HYPO = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

EHLO = (
    b"250-mail.example.com Hello client [192.0.2.1]\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-ETRN\r\n"
    b"250-STARTTLS\r\n"
    b"250-AUTH PLAIN LOGIN\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-8BITMIME\r\n"
    b"250-DSN\r\n"
    b"250 SMTPUTF8\r\n"
)
EHLO_REPLY = (
    250,
    b"mail.example.com Hello client [192.0.2.1]\nPIPELINING\nSIZE 10240000\nETRN\n"
    b"STARTTLS\nAUTH PLAIN LOGIN\nENHANCEDSTATUSCODES\n8BITMIME\nDSN\nSMTPUTF8",
)

# A stream mixing every shape of reply, and what it parses to.
STREAM = (
    b"220 mx.example.com ESMTP\r\n"
    + EHLO
    + b"250 2.1.0 Ok\r\n"
    + b"250\r\n"  # bare code, CRLF
    + b"354\n"  # bare code, LF only
    + b"250-one\n250 two\n"  # LF-only multi-line
    + b"hello there\r\n"  # malformed: ends its reply with -1
    + b"250-a\r\n251 b\r\n"  # codes differ
    + b"  \t\r\n"  # blank line: malformed
    + b"421 4.4.2 Bye  \t \r\n"
)
STREAM_REPLIES = [
    (220, b"mx.example.com ESMTP"),
    EHLO_REPLY,
    (250, b"2.1.0 Ok"),
    (250, b""),
    (354, b""),
    (250, b"one\ntwo"),
    (-1, b"o there"),
    (-1, b"a\nb"),
    (-1, b""),
    (421, b"4.4.2 Bye"),
]


def feed_all(parser, chunks) -> list:
    out = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


# ---------------------------------------------------------------------------
# Reply parser: shapes


def test_single_line(wire):
    p = wire.ReplyParser()
    assert p.feed(b"250 2.0.0 Ok\r\n") == [(250, b"2.0.0 Ok")]
    assert p.feed(b"550 5.1.1 <x@example.com>: Recipient address rejected\r\n") == [
        (550, b"5.1.1 <x@example.com>: Recipient address rejected")
    ]
    assert (p.pending, p.in_reply) == (0, False)


def test_result_types(wire):
    [(code, text)] = wire.ReplyParser().feed(b"354 End data\r\n")
    assert type(code) is int and type(text) is bytes


def test_multi_line(wire):
    p = wire.ReplyParser()
    assert p.feed(EHLO) == [EHLO_REPLY]
    assert (p.pending, p.in_reply) == (0, False)


def test_stream_in_one_chunk(wire):
    assert wire.ReplyParser().feed(STREAM) == STREAM_REPLIES


def test_split_at_every_position(wire):
    for i in range(len(STREAM) + 1):
        p = wire.ReplyParser()
        assert feed_all(p, [STREAM[:i], STREAM[i:]]) == STREAM_REPLIES, i
        assert (p.pending, p.in_reply) == (0, False)


def test_split_at_every_pair_of_positions(wire):
    data = b"250-a\r\n250-bb\n250 c\r\n354\r\n"
    want = [(250, b"a\nbb\nc"), (354, b"")]
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            assert feed_all(wire.ReplyParser(), [data[:i], data[i:j], data[j:]]) == want


def test_byte_at_a_time(wire):
    p = wire.ReplyParser()
    out = []
    for i in range(len(STREAM)):
        out += p.feed(STREAM[i : i + 1])
    assert out == STREAM_REPLIES


def test_many_replies_in_one_chunk(wire):
    replies = [(200 + i % 400, b"reply %d" % i) for i in range(2000)]
    data = b"".join(b"%d %s\r\n" % r for r in replies)
    assert wire.ReplyParser().feed(data) == replies


def test_repeated_and_colliding_one_line_replies(wire):
    # Many distinct lines of the same length, twice over: whatever a twin
    # remembers between replies must never return another line's reply.
    lines = [b"250 2.0.0 Ok: queued as %08X" % (i * 2654435761 % 2**32) for i in range(300)]
    lines += [b"250 %d" % i for i in range(300)]
    p = wire.ReplyParser()
    for _ in range(2):
        for line in lines:
            assert p.feed(line + b"\r\n") == [(250, line[4:])]


def test_repeated_line_inside_multi_line_reply(wire):
    p = wire.ReplyParser()
    assert p.feed(b"250 Ok\r\n") == [(250, b"Ok")]
    assert p.feed(b"250-first\r\n") == []
    # The same bytes as the earlier one-line reply, but now a reply's last line.
    assert p.feed(b"250 Ok\r\n") == [(250, b"first\nOk")]
    assert p.feed(b"251-x\r\n250 Ok\r\n") == [(-1, b"x\nOk")]
    assert p.feed(b"250 Ok\r\n") == [(250, b"Ok")]


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"250\r\n", (250, b"")),
        (b"250\n", (250, b"")),
        (b"250 \r\n", (250, b"")),
        (b"250 Ok\n", (250, b"Ok")),
        (b"250  \t spaced \t \r\n", (250, b"spaced")),
        (b"250 a\rb\r\n", (250, b"a\rb")),  # a CR inside a line is text
        (b"250 \x0bvt\x0c\r\n", (250, b"\x0bvt\x0c")),  # only SP, TAB, CR, LF are stripped
        (b"000 zero\r\n", (0, b"zero")),
        (b"999 top\r\n", (999, b"top")),
        (b"250 \xff\xfe binary \x00\r\n", (250, b"\xff\xfe binary \x00")),
    ],
)
def test_line_shapes(wire, line, reply):
    assert wire.ReplyParser().feed(line) == [reply]


@pytest.mark.parametrize(
    "line, text",
    [
        (b"\r\n", b""),
        (b"\n", b""),
        (b"25\r\n", b""),
        (b"2\n", b""),
        (b"hello\r\n", b"o"),  # text is line[4:] stripped, as in the stdlib
        (b"2a0 Ok\r\n", b"Ok"),
        (b"-250 Ok\r\n", b"Ok"),
        (b" 250 Ok\r\n", b"Ok"),
        (b"250Ok\r\n", b"k"),  # no separator: malformed (the stdlib says 250)
        (b"250\r\r\n", b""),
        (b"250\rx\r\n", b"x"),
        (b"250_ Ok\r\n", b"Ok"),
        (b"\xb2\xb5\xb0 Ok\r\n", b"Ok"),
    ],
)
def test_malformed_line_ends_reply_with_minus_one(wire, line, text):
    p = wire.ReplyParser()
    assert p.feed(line + b"250 next\r\n") == [(-1, text), (250, b"next")]
    assert (p.pending, p.in_reply) == (0, False)


def test_malformed_line_inside_multi_line_reply(wire):
    # The stdlib stops reading at the broken line and keeps the texts so far.
    p = wire.ReplyParser()
    assert p.feed(b"250-a\r\n250-b\r\nxyz junk\r\n250 c\r\n") == [(-1, b"a\nb\njunk"), (250, b"c")]


def test_malformed_agrees_with_stdlib(wire):
    # Lines whose first three bytes int() rejects (the stdlib's test); lines
    # like b"12\r" or b" 25" it accepts are malformed here on purpose.
    data = b"250-a\r\nxyzw\r\nhello\r\n\r\nx\r\n250 ok\r\n"
    assert wire.ReplyParser().feed(data) == stdlib_replies(data)


@pytest.mark.parametrize(
    "data",
    [
        b"250-a\r\n251 b\r\n",
        b"250-a\r\n251-b\r\n250 c\r\n",
        b"250-a\r\n250-b\r\n550 c\r\n",
    ],
)
def test_mismatched_codes_give_minus_one(wire, data):
    texts = [line[4:] for line in data.split(b"\r\n")[:-1]]
    assert wire.ReplyParser().feed(data + b"221 bye\r\n") == [(-1, b"\n".join(texts)), (221, b"bye")]


def test_lf_only_line_ends(wire):
    p = wire.ReplyParser()
    assert p.feed(b"220 hi\n250-a\n250-b\n250 c\n") == [(220, b"hi"), (250, b"a\nb\nc")]


def test_empty_continuation_lines(wire):
    assert wire.ReplyParser().feed(b"250-\r\n250-\n250\r\n") == [(250, b"\n\n")]


def test_partial_reply_pending_and_in_reply(wire):
    p = wire.ReplyParser()
    assert (p.pending, p.in_reply) == (0, False)
    assert p.feed(b"") == []
    assert (p.pending, p.in_reply) == (0, False)
    assert p.feed(b"25") == []
    assert (p.pending, p.in_reply) == (2, True)
    assert p.feed(b"0-first\r\n") == []
    assert (p.pending, p.in_reply) == (11, True)
    assert p.feed(b"") == []
    assert (p.pending, p.in_reply) == (11, True)
    assert p.feed(b"250 last\r\n250 ne") == [(250, b"first\nlast")]
    assert (p.pending, p.in_reply) == (6, True)
    assert p.feed(b"xt\r\n") == [(250, b"next")]
    assert (p.pending, p.in_reply) == (0, False)


def test_reset(wire):
    p = wire.ReplyParser()
    assert p.feed(b"250-a\r\n250 b") == []
    assert p.in_reply and p.pending == 12
    p.reset()
    assert (p.pending, p.in_reply) == (0, False)
    assert p.feed(b"220 fresh\r\n") == [(220, b"fresh")]
    p.feed(b"220 partial")
    p.reset()
    assert p.feed(b"250 x\r\n") == [(250, b"x")]


@pytest.mark.parametrize(
    "make",
    [
        bytearray,
        memoryview,
        lambda b: memoryview(bytearray(b"junk" + b + b"junk"))[4:-4],  # recv_into style
        lambda b: memoryview(bytes(x for c in b for x in (c, 0)))[::2],  # non-contiguous
    ],
    ids=["bytearray", "memoryview", "slice", "strided"],
)
def test_feed_bytes_like(wire, make):
    for i in range(len(STREAM) + 1):
        p = wire.ReplyParser()
        assert feed_all(p, [make(STREAM[:i]), make(STREAM[i:])]) == STREAM_REPLIES


def test_feed_rejects_str(wire):
    with pytest.raises(TypeError):
        wire.ReplyParser().feed("250 Ok\r\n")


# ---------------------------------------------------------------------------
# Reply parser: limits


def test_limit_error_class(wire):
    assert wire.ReplyLimitError is _wire_py.ReplyLimitError
    assert issubclass(wire.ReplyLimitError, ValueError)
    assert (wire.MAXLINE, wire.MAX_REPLY_LINES, wire.MAX_REPLY_BYTES) == (8192, 1000, 1 << 20)
    assert wire.MAXLINE == smtplib._MAXLINE


def test_default_limits(wire):
    p = wire.ReplyParser()
    assert (p.max_line, p.max_lines, p.max_bytes) == (8192, 1000, 1 << 20)


@pytest.mark.parametrize(
    "kwargs", [{"max_line": 3}, {"max_lines": 0}, {"max_bytes": 3}, {"max_line": -1}]
)
def test_limits_too_small(wire, kwargs):
    with pytest.raises(ValueError):
        wire.ReplyParser(**kwargs)


def long_line(total: int, eol: bytes = b"\r\n") -> bytes:
    """A well-formed line of exactly ``total`` bytes, line end included."""
    return b"250 " + b"x" * (total - 4 - len(eol)) + eol


def assert_limit(exc_info, kind, limit):
    assert (exc_info.value.kind, exc_info.value.limit) == (kind, limit)


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_line_of_exactly_maxline_is_accepted(wire, eol):
    line = long_line(8192, eol)
    assert wire.ReplyParser().feed(line) == [(250, line[4:].rstrip())]
    p = wire.ReplyParser()
    assert feed_all(p, [line[i : i + 1000] for i in range(0, len(line), 1000)]) == [
        (250, line[4:].rstrip())
    ]
    # Without its LF yet, the same 8191/8192 bytes are still fine.
    p = wire.ReplyParser()
    assert p.feed(line[:-1]) == [] and p.pending == 8191
    p = wire.ReplyParser()
    assert p.feed(b"250 " + b"x" * 8188) == [] and p.pending == 8192


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_line_of_maxline_plus_one_raises(wire, eol):
    line = long_line(8193, eol)
    with pytest.raises(wire.ReplyLimitError) as exc_info:
        wire.ReplyParser().feed(line)
    assert_limit(exc_info, "line", 8192)
    # After a complete reply in the same chunk.
    with pytest.raises(wire.ReplyLimitError):
        wire.ReplyParser().feed(b"250 Ok\r\n" + line)


def test_stdlib_agrees_on_maxline():
    smtp = smtplib.SMTP()
    smtp.file = io.BytesIO(long_line(8192))
    assert smtp.getreply()[0] == 250
    smtp.file = io.BytesIO(long_line(8193))
    with pytest.raises(smtplib.SMTPResponseException):
        smtp.getreply()


def test_long_line_without_lf_raises_before_completion(wire):
    p = wire.ReplyParser()
    assert p.feed(b"250 " + b"x" * 8188) == []  # 8192 bytes, no LF: may still end here
    with pytest.raises(wire.ReplyLimitError) as exc_info:
        p.feed(b"x")  # 8193 bytes and still no LF: too long whatever follows
    assert_limit(exc_info, "line", 8192)

    with pytest.raises(wire.ReplyLimitError) as exc_info:
        wire.ReplyParser().feed(b"x" * 8193)
    assert_limit(exc_info, "line", 8192)


def test_long_line_in_pieces(wire):
    p = wire.ReplyParser()
    piece = b"y" * 1000
    for _ in range(8):
        assert p.feed(piece) == []
    assert p.pending == 8000
    assert p.feed(b"z" * 192) == []
    with pytest.raises(wire.ReplyLimitError) as exc_info:
        p.feed(piece)
    assert_limit(exc_info, "line", 8192)


def test_long_line_after_completed_line_in_pieces(wire):
    p = wire.ReplyParser()
    assert p.feed(b"250-first\r\n" + b"250 " + b"x" * 5000) == []
    with pytest.raises(wire.ReplyLimitError) as exc_info:
        p.feed(b"x" * 4000)
    assert_limit(exc_info, "line", 8192)


def test_custom_max_line_boundary(wire):
    assert wire.ReplyParser(max_line=10).feed(b"250 1234\r\n") == [(250, b"1234")]
    with pytest.raises(wire.ReplyLimitError) as exc_info:
        wire.ReplyParser(max_line=10).feed(b"250 12345\r\n")
    assert_limit(exc_info, "line", 10)
    p = wire.ReplyParser(max_line=10)
    assert p.feed(b"250 12345\r") == []
    with pytest.raises(wire.ReplyLimitError):
        p.feed(b"\n")


def test_lines_cap(wire):
    p = wire.ReplyParser(max_lines=3)
    assert p.feed(b"250-a\r\n250-b\r\n250 c\r\n") == [(250, b"a\nb\nc")]
    assert p.feed(b"250-a\r\n250-b\r\n") == []
    with pytest.raises(wire.ReplyLimitError) as exc_info:
        p.feed(b"250-c\r\n")
    assert_limit(exc_info, "lines", 3)


def test_lines_cap_default(wire):
    ok = b"250-x\r\n" * 999 + b"250 end\r\n"
    [(code, text)] = wire.ReplyParser().feed(ok)
    assert code == 250 and text.count(b"\n") == 999
    with pytest.raises(wire.ReplyLimitError) as exc_info:
        wire.ReplyParser().feed(b"250-x\r\n" * 1000)
    assert_limit(exc_info, "lines", 1000)


def test_lines_cap_one_allows_one_line_replies(wire):
    p = wire.ReplyParser(max_lines=1)
    assert p.feed(b"250 a\r\n251 b\r\n") == [(250, b"a"), (251, b"b")]
    with pytest.raises(wire.ReplyLimitError):
        p.feed(b"250-a\r\n")


def test_bytes_cap_boundary(wire):
    reply = b"250-aa\r\n250-bb\r\n250 c\r\n"  # 8 + 8 + 7 = 23 bytes
    assert wire.ReplyParser(max_bytes=23).feed(reply) == [(250, b"aa\nbb\nc")]
    with pytest.raises(wire.ReplyLimitError) as exc_info:
        wire.ReplyParser(max_bytes=22).feed(reply)
    assert_limit(exc_info, "bytes", 22)
    # The cap is per reply: many replies in a row are fine.
    assert len(wire.ReplyParser(max_bytes=23).feed(reply * 50)) == 50


def test_bytes_cap_counts_incomplete_line(wire):
    p = wire.ReplyParser(max_bytes=20)
    assert p.feed(b"250-aaaaaa\r\n") == []  # 12 bytes
    assert p.feed(b"250 bbbb") == []  # 20 bytes so far
    with pytest.raises(wire.ReplyLimitError) as exc_info:
        p.feed(b"b")  # 21, before any LF
    assert_limit(exc_info, "bytes", 20)


def test_bytes_cap_counts_incomplete_first_line(wire):
    p = wire.ReplyParser(max_line=100, max_bytes=10)
    assert p.feed(b"250 abcdef") == []  # 10 bytes
    with pytest.raises(wire.ReplyLimitError) as exc_info:
        p.feed(b"g")
    assert_limit(exc_info, "bytes", 10)


def test_bytes_cap_default(wire):
    line = long_line(8000)
    big = line.replace(b"250 ", b"250-") * 131
    assert len(big) == 1_048_000
    p = wire.ReplyParser()
    assert p.feed(big) == []
    with pytest.raises(wire.ReplyLimitError) as exc_info:
        p.feed(b"250 " + b"x" * 1000)
    assert_limit(exc_info, "bytes", 1 << 20)


# ---------------------------------------------------------------------------
# DATA / BDAT encoders

ENCODE_CASES = [
    # input, dot_stuff(input) without the final ".\r\n", crlf_normalize(input)
    (b"", b"\r\n", b"\r\n"),
    (b"a", b"a\r\n", b"a\r\n"),
    (b"a\r\n", b"a\r\n", b"a\r\n"),
    (b"a\n", b"a\r\n", b"a\r\n"),
    (b"a\r", b"a\r\n", b"a\r\n"),
    (b"\r\n", b"\r\n", b"\r\n"),
    (b"\n\n", b"\r\n\r\n", b"\r\n\r\n"),
    (b"\r\r", b"\r\n\r\n", b"\r\n\r\n"),
    (b"\n\r", b"\r\n\r\n", b"\r\n\r\n"),
    (b"\r\r\n", b"\r\n\r\n", b"\r\n\r\n"),  # bare CR, then CRLF
    (b".", b"..\r\n", b".\r\n"),
    (b"..", b"...\r\n", b"..\r\n"),
    (b".a\r\n", b"..a\r\n", b".a\r\n"),
    (b"a\r\n.b", b"a\r\n..b\r\n", b"a\r\n.b\r\n"),
    (b"a\n.b", b"a\r\n..b\r\n", b"a\r\n.b\r\n"),
    (b"a\r.b", b"a\r\n..b\r\n", b"a\r\n.b\r\n"),
    (b"a\r\r\n.b", b"a\r\n\r\n..b\r\n", b"a\r\n\r\n.b\r\n"),
    (b"a.b\r\n a.\r\n", b"a.b\r\n a.\r\n", b"a.b\r\n a.\r\n"),
    (b"a\r\n.", b"a\r\n..\r\n", b"a\r\n.\r\n"),
    # SMTP smuggling shapes: no end-of-data may survive in any spelling.
    (b"x\r\n.\r\nMAIL", b"x\r\n..\r\nMAIL\r\n", b"x\r\n.\r\nMAIL\r\n"),
    (b"x\n.\nMAIL", b"x\r\n..\r\nMAIL\r\n", b"x\r\n.\r\nMAIL\r\n"),
    (b"x\r\n.\nMAIL", b"x\r\n..\r\nMAIL\r\n", b"x\r\n.\r\nMAIL\r\n"),
    (b"x\n.\r\nMAIL", b"x\r\n..\r\nMAIL\r\n", b"x\r\n.\r\nMAIL\r\n"),
    (b"x\r.\rMAIL", b"x\r\n..\r\nMAIL\r\n", b"x\r\n.\r\nMAIL\r\n"),
    (b"\x00.\n\xff\r\n.\x80", b"\x00.\r\n\xff\r\n..\x80\r\n", b"\x00.\r\n\xff\r\n.\x80\r\n"),
]


@pytest.mark.parametrize("data, stuffed, normalized", ENCODE_CASES)
def test_encode_cases(wire, data, stuffed, normalized):
    assert wire.dot_stuff(data) == stuffed + b".\r\n"
    assert wire.crlf_normalize(data) == normalized


def reference_encode(data: bytes, stuff: bool) -> bytes:
    """An obviously-correct byte loop, independent of both twins."""
    out = bytearray()
    i, n = 0, len(data)
    at_start = True
    while i < n:
        c = data[i]
        if stuff and at_start and c == 0x2E:
            out += b"."
        if c == 0x0D:
            out += b"\r\n"
            i += 2 if data[i + 1 : i + 2] == b"\n" else 1
            at_start = True
            continue
        if c == 0x0A:
            out += b"\r\n"
            at_start = True
        else:
            out.append(c)
            at_start = False
        i += 1
    if not out.endswith(b"\r\n"):
        out += b"\r\n"
    if stuff:
        out += b".\r\n"
    return bytes(out)


@pytest.mark.parametrize("special", [b"\r", b"\n", b"\r\n", b"\r\r\n", b"\n.", b"\r\n.", b"\r."])
def test_line_ends_at_every_offset(wire, special):
    # Line ends before, on and after every 8- and 16-byte boundary, in long data.
    for offset in range(70):
        for tail in (b"", b"z", b"zzzzzzzzzzzzzzzzzzzzzz"):
            data = b"x" * offset + special + b"y" * (offset % 19) + special + tail
            assert wire.dot_stuff(data) == reference_encode(data, True), (offset, tail)
            assert wire.crlf_normalize(data) == reference_encode(data, False), (offset, tail)


def newsletter(size: int, eol: bytes) -> bytes:
    parts = []
    n = 0
    i = 0
    while n < size:
        line = b'<tr><td class="c%d"><a href="https://example.com/p/%d">Item %d</a></td></tr>' % (
            i % 7,
            i,
            i,
        )
        if i % 13 == 0:
            line = b"." + line
        parts.append(line[: 20 + i * 37 % 60])
        n += len(parts[-1]) + len(eol)
        i += 1
    return eol.join(parts)[:size]


def regex_encode(data: bytes, stuff: bool) -> bytes:
    """The stdlib's regexes on bytes: independent of both twins, and fast."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if stuff:
        data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n" if stuff else data


# Sizes around the compiled twin's allocation strategies (small: bytes object
# shrunk in place; mid: scratch buffer; huge: shrunk in place again).
LARGE_SIZES = [60 * 1024, 64511, 64512, 65536, 1 << 20, 4 * 1024 * 1024 - 3, 4 * 1024 * 1024, 5 << 20]


@pytest.mark.parametrize("eol", [b"\r\n", b"\n", b"\r"])
@pytest.mark.parametrize("size", LARGE_SIZES)
def test_large_inputs(wire, eol, size):
    data = newsletter(size, eol)
    assert len(data) == size
    assert wire.dot_stuff(data) == regex_encode(data, True)
    assert wire.crlf_normalize(data) == regex_encode(data, False)


@pytest.mark.parametrize("size", [0, 2, 16, 1000] + LARGE_SIZES)
def test_worst_case_output_size(wire, size):
    # b"\n." doubles, and the final CRLF and terminator make it exactly 2n + 5,
    # the bound the compiled twin allocates; growing sizes reuse its buffers.
    k = size // 2
    data = b"\n." * k
    stuffed = wire.dot_stuff(data)
    assert len(stuffed) == 2 * len(data) + 5
    assert stuffed == b"\r\n.." * k + b"\r\n.\r\n"
    assert wire.crlf_normalize(data) == b"\r\n." * k + b"\r\n"


def test_regex_reference_agrees_with_byte_loop():
    data = newsletter(70_000, b"\n") + b"\r\r\n.\r." + newsletter(5000, b"\r")
    assert regex_encode(data, True) == reference_encode(data, True)
    assert regex_encode(data, False) == reference_encode(data, False)


def test_results_do_not_share_memory(wire):
    # Results of consecutive calls of every size stay intact.
    inputs = [newsletter(size, eol) for size in LARGE_SIZES[:5] for eol in (b"\n", b"\r\n")]
    results = [wire.dot_stuff(data) for data in inputs]
    results += [wire.crlf_normalize(data) for data in inputs]
    assert results == [regex_encode(d, True) for d in inputs] + [regex_encode(d, False) for d in inputs]


def test_large_binary_input(wire):
    data = os.urandom(300_000)
    assert wire.dot_stuff(data) == reference_encode(data, True)
    assert wire.crlf_normalize(data) == reference_encode(data, False)


@pytest.mark.parametrize(
    "make",
    [
        bytearray,
        memoryview,
        lambda b: memoryview(bytearray(b"junk" + b + b"junk"))[4:-4],
        lambda b: memoryview(bytes(x for c in b for x in (c, 0)))[::2],
    ],
    ids=["bytearray", "memoryview", "slice", "strided"],
)
def test_encode_bytes_like(wire, make):
    for data, stuffed, normalized in ENCODE_CASES:
        arg = make(data)
        result = wire.dot_stuff(arg)
        assert type(result) is bytes and result == stuffed + b".\r\n"
        result = wire.crlf_normalize(arg)
        assert type(result) is bytes and result == normalized
    buf = bytearray(b"a\n.b")
    wire.dot_stuff(buf)
    assert buf == b"a\n.b"  # input untouched


def test_encode_rejects_str(wire):
    with pytest.raises(TypeError):
        wire.dot_stuff("a\r\n")
    with pytest.raises(TypeError):
        wire.crlf_normalize("a\r\n")


# ---------------------------------------------------------------------------
# Hypothesis: the twins agree on anything; both agree with the stdlib where
# the stdlib's behaviour is the intended one.

reply_bytes = st.lists(
    st.one_of(
        st.sampled_from([b"250", b"2", b"5", b"0", b"-", b" ", b"\t", b"\r", b"\n", b"\r\n", b"x"]),
        st.binary(max_size=6),
    ),
    max_size=60,
).map(b"".join)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


def run_parser(module, kwargs, chunks) -> list:
    """Every feed's result, pending and in_reply, then the error if one is raised."""
    parser = module.ReplyParser(**kwargs)
    trace = []
    for chunk in chunks:
        try:
            trace.append(parser.feed(chunk))
        except _wire_py.ReplyLimitError as exc:
            trace.append(("error", exc.kind, exc.limit, str(exc)))
            break
        trace.append((parser.pending, parser.in_reply))
    return trace


@settings(HYPO, max_examples=500)
@given(
    data=reply_bytes,
    cuts=st.lists(st.integers(0, 80), max_size=6),
    max_line=st.integers(4, 16),
    max_lines=st.integers(1, 4),
    max_bytes=st.integers(4, 40),
    as_view=st.booleans(),
)
def test_parser_twins_agree(wire_py, wire_c, data, cuts, max_line, max_lines, max_bytes, as_view):
    kwargs = dict(max_line=max_line, max_lines=max_lines, max_bytes=max_bytes)
    chunks = chunked(data, cuts)
    if as_view:
        chunks = [memoryview(bytearray(c)) for c in chunks]
    assert run_parser(wire_c, kwargs, chunks) == run_parser(wire_py, kwargs, chunks)


@HYPO
@given(data=reply_bytes, cuts=st.lists(st.integers(0, 80), max_size=6))
def test_parser_twins_agree_default_limits(wire_py, wire_c, data, cuts):
    chunks = chunked(data, cuts)
    assert run_parser(wire_c, {}, chunks) == run_parser(wire_py, {}, chunks)


@HYPO
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"..", b"x" * 17]), max_size=80).map(
            b"".join
        ),
    )
)
def test_encoder_twins_agree(wire_py, wire_c, data):
    assert wire_c.dot_stuff(data) == wire_py.dot_stuff(data) == reference_encode(data, True)
    assert wire_c.crlf_normalize(data) == wire_py.crlf_normalize(data) == reference_encode(data, False)


def stdlib_replies(data: bytes) -> list[tuple[int, bytes]]:
    """Replies as smtplib.SMTP.getreply reads them from ``data``."""
    smtp = smtplib.SMTP()  # no host: no connection
    smtp.file = io.BytesIO(data)
    replies = []
    while smtp.file.tell() < len(data):
        replies.append(smtp.getreply())
    return replies


# Text of a line: anything but LF; includes CR, TAB, VT, FF and high bytes.
line_text = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")) | st.text(
    alphabet=" \t\r\x0b.-aZ09", max_size=12
).map(str.encode)


@st.composite
def well_formed_reply(draw) -> bytes:
    code = b"%03d" % draw(st.integers(0, 999))
    texts = draw(st.lists(line_text, min_size=1, max_size=5))
    lines = []
    for i, text in enumerate(texts):
        last = i == len(texts) - 1
        if last and not text and draw(st.booleans()):
            line = code  # bare code
        else:
            line = code + (b" " if last else b"-") + text
        lines.append(line + draw(st.sampled_from([b"\r\n", b"\n"])))
    return b"".join(lines)


@settings(HYPO, max_examples=300)
@given(
    replies=st.lists(well_formed_reply(), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_parser_matches_stdlib_on_well_formed_replies(wire, replies, cuts):
    data = b"".join(replies)
    want = stdlib_replies(data)
    assert len(want) == len(replies)
    assert feed_all(wire.ReplyParser(), chunked(data, cuts)) == want


def stdlib_data_payload(text: str) -> bytes:
    """What smtplib.SMTP.data sends for a str message."""
    q = smtplib._quote_periods(smtplib._fix_eols(text).encode("ascii"))
    if q[-2:] != b"\r\n":
        q = q + b"\r\n"
    return q + b".\r\n"


mail_text = st.text(
    alphabet=st.one_of(st.sampled_from("\r\n.\r\n. \t"), st.characters(max_codepoint=127)),
    max_size=300,
)


@settings(HYPO, max_examples=300)
@given(text=mail_text)
def test_dot_stuff_matches_stdlib_data(wire, text):
    assert wire.dot_stuff(text.encode("ascii")) == stdlib_data_payload(text)


@settings(HYPO, max_examples=300)
@given(text=mail_text)
def test_dot_stuff_sized_gives_the_rfc1870_size(wire, text):
    raw = text.encode("ascii")
    payload, size = wire.dot_stuff_sized(raw)
    assert payload == wire.dot_stuff(raw)
    # RFC 1870 §4: the size of the message with CRLF line ends, before stuffing.
    assert size == len(wire.crlf_normalize(raw))


@pytest.mark.parametrize("n", [0, 1, 70_000, 300_000])  # heap, scratch and big paths
def test_dot_stuff_sized_on_every_buffer_path(wire, n):
    raw = (b".x\n" * (n // 3 + 1))[:n]
    payload, size = wire.dot_stuff_sized(bytearray(raw))
    assert payload == wire.dot_stuff(raw)
    assert size == len(wire.crlf_normalize(raw))


@HYPO
@given(text=mail_text)
def test_crlf_normalize_matches_stdlib_fix_eols(wire, text):
    want = smtplib._fix_eols(text).encode("ascii")
    if want[-2:] != b"\r\n":
        want += b"\r\n"
    assert wire.crlf_normalize(text.encode("ascii")) == want


# ---------------------------------------------------------------------------
# Selector


def test_extension_loaded():
    """Fails when the compiled kernels should be in use and are not."""
    if env_flag("FASTSMTPLIB_NO_EXTENSIONS"):
        assert not selector.HAS_EXTENSIONS
        for name in _wire_py.__all__:
            assert getattr(selector, name) is getattr(_wire_py, name), name
        return
    if env_flag("FASTSMTPLIB_ALLOW_PURE") and not selector.HAS_EXTENSIONS:
        pytest.skip("compiled kernels not built; FASTSMTPLIB_ALLOW_PURE=1 allows that")
    assert selector.HAS_EXTENSIONS, (
        "fastsmtplib._wire_c did not load: build it (python setup.py build_ext --inplace), "
        "or set FASTSMTPLIB_ALLOW_PURE=1 / FASTSMTPLIB_NO_EXTENSIONS=1"
    )
    compiled = sys.modules["fastsmtplib._wire_c"]
    assert compiled.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    for name in _wire_py.__all__:
        assert getattr(selector, name) is getattr(compiled, name), name
    assert selector.ReplyParser is not _wire_py.ReplyParser
    assert selector.encode_envelope is not _wire_py.encode_envelope
    assert selector.ReplyLimitError is _wire_py.ReplyLimitError


@pytest.mark.parametrize(
    "value, pure",
    [("1", True), ("yes", True), ("TRUE", True), ("on", True), ("0", False), ("", False),
     ("no", False), ("off", False), (" False ", False)],
)
def test_selector_reads_env_value(value, pure):
    if not pure and importlib.util.find_spec("fastsmtplib._wire_c") is None:
        pytest.skip("compiled kernels not built")
    src = str(Path(selector.__file__).resolve().parent.parent)
    env = dict(os.environ, FASTSMTPLIB_NO_EXTENSIONS=value)
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in [env.get("PYTHONPATH")] if p])
    out = subprocess.run(
        [sys.executable, "-c", "import fastsmtplib._wire as w; print(w.HAS_EXTENSIONS, w.ReplyParser.__module__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == (["False", "fastsmtplib._wire_py"] if pure else ["True", "fastsmtplib._wire_c"])
