"""The sink's hot-loop kernel ``sink_scan``: both twins, and the sink with and without it.

Three ways to run the same input through ``Sink._process`` must give the same
replies after every read, the same counters, the same session state and the
same unread input: the Python methods alone (``_fast = False``), with the pure
twin of the kernel, and with the compiled one.  Hypothesis builds pipelined
input from SMTP fragments (served and unserved commands, odd syntax, DATA
content with dots and split terminators, BDAT chunks) cut into random reads,
with random limits.  The kernel is also compared twin against twin on raw
random bytes and random session states, and checked on hand-made examples.
"""

from __future__ import annotations

import base64
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastsmtplib import _wire
from fastsmtplib.sink import Sink, _Session

HYPO = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300)

OK = b"250 2.0.0 Ok\r\n"
MAIL_OK = b"250 2.1.0 Ok\r\n"
RCPT_OK = b"250 2.1.5 Ok\r\n"
GO = b"354 End data with <CR><LF>.<CR><LF>\r\n"


def queued(n: int) -> bytes:
    return b"250 2.0.0 Ok: queued as %08X\r\n" % n


def state(**kw) -> list:
    """A kernel state list (see ``_wire_py.sink_scan``) for a greeted session."""
    names = ["state", "bol", "remaining", "last", "mail", "nrcpt", "binary", "body", "too_big",
             "greeted", "bdat_ok", "qid", "n250", "n354", "messages", "recipients", "bytes"]
    values = dict.fromkeys(names, 0)
    values.update(bol=1, greeted=1)
    values.update(kw)
    return [values[n] for n in names]


def scan(wire, buf, pos=0, st_=None, size=10_000_000, max_rcpt=1000, max_line=1000, lmtp=False,
         room=1 << 20):
    st_ = state() if st_ is None else st_
    pos, out, mail, stop = wire.sink_scan(buf, pos, st_, size, max_rcpt, max_line, lmtp, room)
    return pos, out, mail, stop, st_


# ---------------------------------------------------------------------------
# Hand-made examples, both twins.


def test_pipelined_transactions_in_one_call(wire):
    one = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
    buf = bytearray(one * 3 + b"NOOP\r\n")
    pos, out, mail, stop, s = scan(wire, buf)
    assert (pos, stop, mail) == (len(buf), 0, None)
    assert out == b"".join(MAIL_OK + RCPT_OK + GO + queued(i) for i in (1, 2, 3)) + OK
    assert s == state(qid=3, n250=10, n354=3, messages=3, recipients=3, bytes=3 * 18)


def test_dot_unstuffing_counted_and_terminator_split(wire):
    head = b"MAIL FROM:<> BODY=8BITMIME SIZE=40\r\nrcpt to:<x@y> NOTIFY=NEVER\r\ndata\r\n"
    pos, out, mail, stop, s = scan(wire, bytearray(head + b"..a\r\n.b\r\n\r\n."))
    assert out == MAIL_OK + RCPT_OK + GO
    assert mail == b"MAIL FROM:<> BODY=8BITMIME SIZE=40"
    # Consumed up to the last line end: the "." may start ".\r\n" (RFC 5321 §4.5.2).
    assert stop == 0 and pos == len(head) + 11
    assert s[0:2] == [1, 1] and s[7] == 9  # ".a\r\nb\r\n\r\n": two stuffed dots not counted
    rest = bytearray(b".\r\nQUIT\r\n")
    pos, out, mail, stop, s = scan(wire, rest, 0, s)
    assert (out, pos, stop) == (queued(1), 3, 1)  # stops before QUIT: not served
    assert s[14:17] == [1, 1, 9] and s[4] == 0


def test_whole_content_in_one_read(wire):
    content = b".a\r\n\r\n..\r\nb.\r\n.c\r\n"  # as received: three stuffed dots
    buf = bytearray(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + content + b".\r\n")
    pos, out, mail, stop, s = scan(wire, buf)
    assert (pos, stop, out) == (len(buf), 0, MAIL_OK + RCPT_OK + GO + queued(1))
    assert s[16] == len(content) - 3


def test_bdat_chunks_and_lmtp_replies(wire):
    buf = bytearray(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nBDAT 3\r\nabcbdat 2 last\r\nde")
    pos, out, mail, stop, s = scan(wire, buf, lmtp=True)
    assert pos == len(buf) and stop == 0
    assert out == MAIL_OK + RCPT_OK * 2 + b"250 2.0.0 Ok: 3 octets\r\n" + queued(1) * 2
    assert s[12:17] == [6, 0, 1, 2, 5]
    # A chunk split across reads: the state carries the octets still owed.
    buf = bytearray(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 10 LAST\r\n12345")
    pos, out, mail, stop, s = scan(wire, buf)
    assert s[0] == 2 and s[2] == 5 and s[3] == 1 and stop == 0
    pos, out, mail, stop, s = scan(wire, bytearray(b"67890NOOP\r\n"), 0, s)
    assert out == queued(1) + OK and s[16] == 10


@pytest.mark.parametrize("line", [
    b"EHLO x", b"QUIT", b"VRFY a", b"HELP", b"", b"MAIL FROM:a@b", b"MAIL FROM:<a@b> SIZE=x",
    b"MAIL FROM:<a@b> SIZE=2000", b"MAIL FROM:<a@b> BODY=9BIT", b"MAIL FROM:<a@b", b"MAIL\tFROM:<a@b>",
    b"RCPT TO:<>", b"RCPT TO:c@d", b"DATA x", b"RSET x", b"BDAT", b"BDAT x", b"BDAT 1 MORE",
    b"BDAT 1 LAST x", b"BDAT 1234567890123456789",
])
def test_stops_before_what_it_does_not_serve(wire, line):
    # In a transaction with one recipient, size 1000: each of these is the sink's own business.
    s = state(mail=1, nrcpt=1) if not line.startswith(b"MAIL") else state()
    buf = bytearray(b"NOOP\r\n" + line + b"\r\nNOOP\r\n")
    pos, out, mail, stop, s = scan(wire, buf, 0, s, size=1000)
    assert (pos, out, stop) == (6, OK, 1)


def test_sequence_and_limits_stop(wire):
    buf = bytearray(b"RCPT TO:<a@b>\r\n")
    assert scan(wire, buf)[3] == 1 and scan(wire, buf)[0] == 0  # no transaction
    assert scan(wire, bytearray(b"MAIL FROM:<a@b>\r\n"), st_=state(greeted=0))[0] == 0
    assert scan(wire, bytearray(b"MAIL FROM:<a@b>\r\n"), st_=state(mail=1))[0] == 0  # nested
    assert scan(wire, buf, st_=state(mail=1, nrcpt=2), max_rcpt=2)[0] == 0
    assert scan(wire, bytearray(b"DATA\r\n"), st_=state(mail=1, nrcpt=1, binary=1))[0] == 0
    # A line without CRLF: incomplete (0) below max_line, too long (1) at it.
    assert scan(wire, bytearray(b"NOOP"), max_line=10)[3] == 0
    assert scan(wire, bytearray(b"NOOP 12345\r\n"), max_line=10)[3] == 1
    assert scan(wire, bytearray(b"NOOP 1234\r\n"), max_line=11)[1] == OK


def test_room_and_size_stop(wire):
    pos, out, mail, stop, s = scan(wire, bytearray(b"NOOP\r\n" * 10), room=30)
    assert (pos, out, stop) == (18, OK * 3, 2)
    s = state(state=1, mail=1, nrcpt=1, body=5)
    pos, out, mail, stop, s = scan(wire, bytearray(b"123456\r\n.\r\n"), 0, s, size=12)
    assert (pos, out, stop) == (0, b"", 1) and s[7] == 5  # would cross size: not consumed
    s = state(state=1, mail=1, nrcpt=1, body=5, too_big=1)
    assert scan(wire, bytearray(b"\r\n.\r\n"), 0, s)[0:4:3] == (0, 1)


def test_bad_arguments(wire):
    with pytest.raises(ValueError):
        wire.sink_scan(bytearray(b"NOOP\r\n"), 0, [0] * 16, 10, 10, 100, False, 100)
    with pytest.raises(ValueError):
        wire.sink_scan(bytearray(b"NOOP\r\n"), -1, state(), 10, 10, 100, False, 100)
    assert scan(wire, b"NOOP\r\nNOOP\r\n", 6)[:4] == (12, OK, None, 0)  # bytes work too


# ---------------------------------------------------------------------------
# Twin against twin on anything.

STATES = st.builds(
    lambda fl, rem, nr, body, qid: state(
        state=fl[0], bol=fl[1], remaining=rem, last=fl[2], mail=fl[3], nrcpt=nr, binary=fl[4],
        body=body, too_big=fl[5], greeted=fl[6], bdat_ok=fl[7], qid=qid),
    # Mostly DATA content (the state with the most to get wrong), seldom over size.
    st.tuples(st.sampled_from([0, 1, 1, 2]), *[st.integers(0, 1)] * 4, st.sampled_from([0, 0, 0, 1]),
              st.integers(0, 1), st.integers(0, 1)),
    st.integers(0, 50), st.integers(0, 4), st.integers(0, 60), st.integers(0, 2**40),
)
RAW = st.lists(st.sampled_from([
    b"MAIL FROM:<a@b>", b"mail from: <> size=3 body=binarymime ret=hdrs", b"RCPT TO:<c@d>", b"RCPT TO:< >",
    b"DATA", b"BDAT 3", b"BDAT 0 LAST", b"bdat 4 last", b"RSET", b"NOOP", b"\r\n", b"\r", b"\n", b".",
    b"\r\n.\r\n", b"..", b"\t", b" ", b"\x0b", b"x", b"QUIT", b"\r\n..", b"\r\n.x", b".\r\n",
]) | st.binary(max_size=8), max_size=30).map(b"".join)


CONTENT = st.lists(st.sampled_from([
    b"line\r\n", b".dot\r\n", b"..\r\n", b"\r\n", b".\r\n", b"x", b"\r", b".", b"NOOP\r\n", b"BDAT 2\r\n",
]), max_size=20).map(b"".join)


@settings(HYPO, max_examples=1000)
@given(RAW | CONTENT, STATES, st.integers(0, 5), st.integers(0, 200), st.integers(1, 6), st.integers(4, 40),
       st.booleans(), st.integers(1, 300))
def test_twins_agree_on_anything(wire_c, wire_py, data, s, pos, size, max_rcpt, max_line, lmtp, room):
    results = []
    for wire in (wire_py, wire_c):
        st_ = list(s)
        results.append((wire.sink_scan(bytearray(data), pos, st_, size, max_rcpt, max_line, lmtp, room),
                        st_))
    assert results[0] == results[1]


WS = st.sampled_from([b"", b" ", b" ", b"  ", b"\t", b"\x0b", b"\x0c", b"\r", b"\n"])
PARAM = st.tuples(
    WS.filter(bool), st.sampled_from([b"SIZE", b"size", b"BODY", b"Body", b"RET", b"SIZ", b"BODYX", b""]),
    st.sampled_from([b"=", b"", b"=="]),
    st.sampled_from([b"12", b"0", b"007", b"", b"1x", b"1234567890123456789", b"99999999999999999",
                     b"7BIT", b"8bitmime", b"BINARYMIME", b"binarymime", b"9BIT", b"HDRS"]),
).map(b"".join)
MAIL_LINE = st.tuples(
    st.sampled_from([b"MAIL", b"mail", b"MaIl", b"MAILX"]), st.sampled_from([b" ", b"\t", b""]),
    st.sampled_from([b"FROM:", b"from:", b"FROM", b"FROM:<"]), WS,
    st.sampled_from([b"<", b"", b"<<"]), st.sampled_from([b"a@b", b"", b"\xc3\xa9@b", b"a b"]),
    st.sampled_from([b">", b"", b">>"]), st.lists(PARAM, max_size=3).map(b"".join), WS,
).map(b"".join)
RCPT_LINE = st.tuples(
    st.sampled_from([b"RCPT", b"rcpt", b"RCPTX"]), st.sampled_from([b" ", b"\t", b""]),
    st.sampled_from([b"TO:", b"to:", b"TO"]), WS, st.sampled_from([b"<", b""]),
    st.sampled_from([b"c@d", b"", b">"]), st.sampled_from([b">", b""]),
    st.sampled_from([b"", b" NOTIFY=NEVER", b">"]), WS,
).map(b"".join)
BDAT_LINE = st.tuples(
    st.sampled_from([b"BDAT", b"bdat"]), WS, st.sampled_from([b"3", b"0", b"", b"x", b"1234567890123456789"]),
    WS, st.sampled_from([b"LAST", b"last", b"", b"LASTX", b"LAST LAST"]), WS,
).map(b"".join)
OTHER_LINE = st.sampled_from([b"DATA", b"DATA ", b"data", b"NOOP", b"NOOP x", b"RSET", b"RSET ", b"NOOPX", b""])
LINES = st.lists(MAIL_LINE | RCPT_LINE | BDAT_LINE | OTHER_LINE, min_size=1, max_size=6).map(
    lambda ls: b"\r\n".join(ls) + b"\r\nabc")


@settings(HYPO, max_examples=1000)
@given(LINES, st.integers(0, 1), st.integers(0, 2), st.sampled_from([0, 6, 7, 8, 11, 12, 13]) | st.integers(0, 2000),
       st.booleans())
def test_twins_agree_on_command_lines(wire_c, wire_py, data, mail, nrcpt, size, lmtp):
    results = []
    for wire in (wire_py, wire_c):
        st_ = state(mail=mail, nrcpt=nrcpt)
        results.append((wire.sink_scan(bytearray(data), 0, st_, size, 2, 200, lmtp, 1000), st_))
    assert results[0] == results[1]


# ---------------------------------------------------------------------------
# The sink with the kernel (either twin) against the sink without it.

COMMANDS = st.sampled_from([
    b"MAIL FROM:<a@b.example>", b"mail from:<>", b"MAIL FROM: <a@b> SIZE=100 BODY=8BITMIME",
    b"MAIL FROM:<a@b> SIZE=99999999", b"MAIL FROM:a@b", b"MAIL FROM:<a@b> BODY=BINARYMIME",
    b"MAIL FROM:<a@b> SIZE=x", b"MAIL  FROM:<a>", b"RCPT TO:<c@d>", b"rcpt to:<c@d> NOTIFY=NEVER",
    b"RCPT TO:<>", b"RCPT TO:c@d", b"RCPT TO:<x", b"RSET", b"RSET x", b"NOOP", b"NOOP x", b"VRFY a",
    b"", b"XYZZ", b"EHLO again", b"HELO h", b"DATA x", b"BDAT", b"BDAT 0 LAST", b"BDAT x",
])
BODY = st.lists(st.sampled_from([
    b"line\r\n", b".dot\r\n", b"..\r\n", b"\r\n", b".\r", b"x", b"\n.", b"\r\n.\r", b".", b"\r\n..\r\n",
]), max_size=12).map(b"".join)


@st.composite
def sessions(draw):
    """EHLO, then transactions (DATA or BDAT, well-formed or not) with stray commands between."""
    parts = [b"EHLO client.example\r\n"]
    for _ in range(draw(st.integers(1, 8))):
        cmds = [draw(COMMANDS) for _ in range(draw(st.integers(0, 2)))]
        cmds += [draw(st.sampled_from([b"MAIL FROM:<s@x>", b"MAIL FROM:<s@x> BODY=BINARYMIME"]))]
        cmds += [b"RCPT TO:<r%d@x>" % i for i in range(draw(st.integers(0, 3)))]
        body = draw(BODY)
        if draw(st.booleans()):
            parts.append(b"\r\n".join(cmds + [b"DATA"]) + b"\r\n" + body + b"\r\n.\r\n")
        else:
            chunks = draw(st.lists(BODY, min_size=1, max_size=3))
            for i, c in enumerate(chunks):
                last = b" LAST" if i == len(chunks) - 1 else b""
                cmds.append(b"BDAT %d%s" % (len(c), last))
                parts.append(b"\r\n".join(cmds) + b"\r\n" + c)
                cmds = []
    if draw(st.booleans()):
        parts.append(b"QUIT\r\n")
    data = b"".join(parts)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=10))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)]) if data[a:b]]


def drive(chunks, kernel, **limits):
    """Feed reads to a session as ``_on_readable``/``_flush`` do; replies per read."""
    sink = Sink(**limits)
    if kernel is None:
        sink._fast = False
    else:
        sink._kernel = kernel.sink_scan
        sink._scan_min = 0  # the kernel on every buffer, even the smallest
    s = _Session(None)  # no socket: _process never does I/O
    replies = []
    for chunk in chunks:
        if s.closing:
            break
        s.inbuf += chunk
        got = []
        while True:  # the client reads everything: the output cap lifts at each flush
            sink._process(s)
            got.append(b"".join(s.out))
            s.out.clear()
            s.outlen = 0
            if not s.stalled:
                break
        replies.append(b"".join(got))
    session = (s.state, bool(s.bol), s.remaining, s.last, s.mail is not None, s.nrcpt, bool(s.binary),
               s.body_len if not s.too_big else -1, bool(s.too_big), s.greeted, s.closing, bytes(s.inbuf))
    return replies, sink.counts, session


LIMITS = st.sampled_from([
    {}, {"size": 40}, {"max_output": 60}, {"max_recipients": 2}, {"max_line": 24},
    {"lmtp": True}, {"size": 25, "max_output": 100},
])


@HYPO
@given(sessions(), LIMITS)
def test_sink_same_with_and_without_kernel(wire_c, wire_py, chunks, limits):
    if limits.get("lmtp"):
        chunks = [c.replace(b"EHLO ", b"LHLO ", 1) for c in chunks]
    plain = drive(chunks, None, **limits)
    assert drive(chunks, wire_py, **limits) == plain
    assert drive(chunks, wire_c, **limits) == plain


def test_kernel_steps_aside_when_storing(tmp_path):
    assert Sink(port=0)._fast is True
    assert Sink(port=0, store=tmp_path)._fast is False


# ---------------------------------------------------------------------------
# Over a socket: a blind-pipelined load, counted by the sink.


def test_blind_pipelined_load_over_socket():
    body = b".leading dot\r\n\r\n" + b".stuffed line\r\n" + b"x" * 60 + b"\r\n"
    one = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n" + _wire.dot_stuff(body)
    one += b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT %d LAST\r\n" % len(body) + body
    n = 300
    with Sink(port=0) as sink:
        with socket.create_connection((sink.host, sink.port), timeout=10) as c:
            c.sendall(b"EHLO load.example\r\n" + one * n + b"QUIT\r\n")
            data = b""
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
        counts = sink.counts
    lines = data.split(b"\r\n")[:-1]
    assert lines[-1] == b"221 2.0.0 Bye"
    replies = [line for line in lines if line[3:4] == b" "][2:-1]  # after the greeting and EHLO
    assert len(replies) == 7 * n
    assert all(r[:1] in (b"2", b"3") for r in replies)
    assert [r for r in replies if b"queued as" in r][-1] == b"250 2.0.0 Ok: queued as %08X" % (2 * n)
    assert counts["messages"] == 2 * n and counts["recipients"] == 2 * n
    assert counts["bytes"] == 2 * n * len(body)  # the stuffed dot not counted
    assert counts["replies"][250] == 6 * n + 1 and counts["replies"][354] == n
    assert _wire.sink_scan is sink._kernel


# ---------------------------------------------------------------------------
# The kernel steps aside for the sink's other features.


def test_kernel_off_for_faults_and_required_auth():
    assert Sink(port=0, rcpt_refuse=0.5)._fast is False
    assert Sink(port=0, delay=0.01)._fast is False
    assert Sink(port=0, reply_421_at=3)._fast is False
    assert Sink(port=0, auth={"u": "p"}, auth_plaintext=True, auth_required=True)._fast is False
    assert Sink(port=0, auth={"u": "p"}, auth_plaintext=True)._fast is True


def counting(kernel, calls):
    def scan(*args):
        calls.append(1)
        return kernel(*args)
    return scan


def test_auth_answer_that_looks_like_a_command_is_not_served_by_the_kernel():
    # "RSET" and "NOOP" are valid base64: inside AUTH LOGIN they are the user
    # name and the password (RFC 4954 §4), never commands, even pipelined
    # behind commands the kernel serves.
    # The user name must be the one whose base64 is "RSET"; the password
    # sent ("NOOP" decoded) is not the right one, so the answer is 535.
    creds = {base64.b64decode(b"RSET").decode("ascii"): "secret"}
    with Sink(port=0, auth=creds, auth_plaintext=True) as sink:
        calls: list = []
        sink._kernel = counting(sink._kernel, calls)
        sink._scan_min = 0
        with socket.create_connection((sink.host, sink.port), timeout=10) as c:
            f = c.makefile("rb")
            f.readline()
            c.sendall(b"EHLO x\r\nNOOP\r\nAUTH LOGIN\r\nRSET\r\nNOOP\r\nNOOP\r\nQUIT\r\n")
            lines = [line.rstrip(b"\r\n") for line in f]
        counts = sink.counts
    codes = [line[:3] for line in lines if line[3:4] == b" "]
    assert codes == [b"250", b"250", b"334", b"334", b"535", b"250", b"221"]
    assert counts["auth_failed"] == 1
    assert calls  # the kernel did serve the NOOPs around the exchange


def test_no_kernel_on_tls_connections():
    pytest.importorskip("cryptography")
    with Sink(port=0, tls=True) as sink:
        calls: list = []
        sink._kernel = counting(sink._kernel, calls)
        sink._scan_min = 0
        with socket.create_connection((sink.host, sink.port), timeout=10) as raw:
            with sink.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as c:
                f = c.makefile("rb")
                f.readline()
                c.sendall(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n..x\r\n.\r\nQUIT\r\n")
                lines = [line for line in f]
        counts = sink.counts
    assert lines[-1].startswith(b"221 ") and counts["messages"] == 1 and counts["bytes"] == 4
    assert calls == []
