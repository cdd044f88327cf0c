"""How the blocking shell drives the engine: whatever fails, one result per message;
bounded read-ahead; RFC 5321 timeouts in bulk; and the syscalls it spends.

The engine's own rules are tested bytes-in, bytes-out in tests/unit/test_engine*.py;
here a real socket is in the loop (scripted servers for faults, smtp-sink for
steady state).
"""

from __future__ import annotations

import socket
import struct

import pytest

from tests.support.scripted import ScriptedServer
from tests.support.target import fastsmtplib_only, smtplib

pytestmark = fastsmtplib_only

FROM = "from@example.org"
CRLF = b"\r\n"


def msg(tag: str) -> bytes:
    return b"Subject: " + tag.encode() + b"\r\n\r\nbody of " + tag.encode() + b"\r\n"


def client(srv, **kw):
    kw.setdefault("timeout", 3)
    kw.setdefault("local_hostname", "client.example.org")
    return smtplib.SMTP(srv.host, srv.port, **kw)


def answer_envelope(c) -> None:
    """Read MAIL, RCPT and DATA of one message and accept them."""
    c.expect_line(b"mail FROM:")
    c.expect_line(b"rcpt TO:")
    c.expect_line(b"data")
    c.send(b"250 ok\r\n250 ok\r\n354 go\r\n")


def test_over_long_reply_mid_run_ends_in_a_result_for_every_message():
    # Regression: an over-long reply escaped send_many() after 1 result of 4.
    def script(c):
        c.handshake(["PIPELINING"])
        answer_envelope(c)
        c.read_data()
        c.expect_line(b"mail FROM:")  # m1's envelope came with m0's body
        c.expect_line(b"rcpt TO:")
        c.expect_line(b"data")
        c.send(b"250 queued\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        c.read_data()
        c.send(b"250-" + b"x" * 9000 + b"\r\n")  # one line over the 8192-byte limit
        c.read_until_eof()

    items = [(FROM, f"r{i}@example.org", msg(f"m{i}")) for i in range(4)]
    with ScriptedServer(script, timeout=3) as srv:
        s = client(srv)
        results = list(s.send_many(items))  # must not raise
        assert s.sock is None
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [str(r.status) for r in results] == ["delivered", "uncertain", "not_attempted", "not_attempted"]
    assert isinstance(results[1].exception, smtplib.SMTPReplyTooLong)


def test_client_refused_messages_count_against_the_window():
    # Regression: 100,000 messages the client itself refuses were all pulled
    # from the input before the first result came out.
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield (FROM, "bad\r\naddress@example.org", msg(f"m{i}"))

    def script(c):
        c.handshake(["PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"])
        c.read_until_eof()

    with ScriptedServer(script, timeout=5) as srv:
        s = client(srv)
        it = s.send_many(source(), window=8)
        first = next(it)
        assert str(first.status) == "failed" and isinstance(first.exception, ValueError)
        assert pulled <= 8
        for _ in range(99):
            next(it)
        assert pulled <= 100 + 8
        it.close()
        s.close()


def test_failed_results_keep_no_traceback():
    # A result's exception must not keep the frames (and the encoded payload
    # in them) alive.
    def script(c):
        c.handshake(["PIPELINING"])
        c.read_until_eof()

    with ScriptedServer(script, timeout=3) as srv:
        s = client(srv)
        [r] = list(s.send_many([(FROM, "x@example.org\r\nRSET", b"x" * 100_000)]))
        s.close()
    assert str(r.status) == "failed"
    assert r.exception.__traceback__ is None


def test_status_is_a_str_enum_equal_to_the_old_strings():
    from fastsmtplib.batch import Status

    assert Status.DELIVERED == "delivered" and str(Status.NOT_ATTEMPTED) == "not_attempted"
    assert f"{Status.UNCERTAIN}" == "uncertain"
    assert {s.value for s in Status} == {"delivered", "partial", "refused", "deferred", "failed",
                                        "uncertain", "not_attempted"}


def _rcvtimeo(sock) -> float:
    sec, usec = struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("@ll")))
    return sec + usec / 1e6


def test_bulk_without_a_timeout_uses_rfc5321_timeouts(smtp_sink):
    # RFC 5321 §4.5.3.2: with no caller timeout, send_many() must not wait
    # forever: each reply gets the RFC's timeout for its command (here the
    # end of data's 10 minutes or DATA's 2), set on the socket while the run
    # lasts and taken away after it.
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=None) as s:
        s.ehlo()
        assert _rcvtimeo(s.sock) == 0
        seen = []
        for r in s.send_many((FROM, f"r{i}@example.org", msg(f"m{i}")) for i in range(5)):
            assert r.ok
            seen.append(_rcvtimeo(s.sock))
        assert set(seen) <= {120.0, 600.0} and 600.0 in seen
        assert _rcvtimeo(s.sock) == 0  # the caller asked for no timeout
        assert s.sendmail(FROM, "x@example.org", msg("after")) == {}


class _Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


@pytest.mark.parametrize("timeout", [30, None])
def test_syscalls_per_message(smtp_sink, monkeypatch, timeout):
    # Steady state on a plain socket: a sendmail() is two writes and two
    # reads, a send_many() message one of each, and neither polls (CPython
    # polls before every recv/send on a socket with a timeout; we read the fd).
    import fastsmtplib.smtp as shell

    n = 50
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=timeout) as s:
        s.sendmail(FROM, "warm@example.org", msg("warm"))
        writes, reads = _Counting(shell._os_write), _Counting(shell._readv)
        monkeypatch.setattr(shell, "_os_write", writes)
        monkeypatch.setattr(shell, "_readv", reads)
        polls = _Counting(s._poller.poll)  # select.poll objects take no new attributes
        s._poller = type("CountingPoller", (), {"poll": staticmethod(polls)})()
        for i in range(n):
            assert s.sendmail(FROM, f"r{i}@example.org", msg(f"m{i}")) == {}
        assert (writes.calls, reads.calls, polls.calls) == (2 * n, 2 * n, 0)
        writes.calls = reads.calls = 0
        results = list(s.send_many((FROM, f"r{i}@example.org", msg(f"m{i}")) for i in range(n)))
        assert all(r.ok for r in results)
        # The first envelope and the last body go alone: n + 1 writes and reads.
        assert writes.calls <= n + 1 and reads.calls <= n + 1 and polls.calls == 0
