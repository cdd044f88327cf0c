"""Exact wire behaviour and faults, against the scripted server.

What a real server cannot show: how the client grouped its writes
(PIPELINING, RFC 2920), what it does with plaintext injected after STARTTLS
(RFC 3207 §4.2), malformed, oversized and dripping replies, and connections
that die at awkward moments. Tests without a marker hold for the stdlib too.
"""

from __future__ import annotations

import time

import pytest

from tests.support.scripted import ScriptedServer
from tests.support.target import fastsmtplib_only, smtplib

MSG = b"Subject: wire\r\n\r\nbody\r\n.dot\r\n"


def client(srv, **kw):
    kw.setdefault("timeout", 5)
    return smtplib.SMTP(srv.host, srv.port, **kw)


def quit_ok(c):
    c.expect_line(b"QUIT")
    c.send(b"221 bye\r\n")


# -- PIPELINING -------------------------------------------------------------------
@fastsmtplib_only
def test_envelope_is_pipelined_in_one_write():
    def script(c):
        c.handshake(["PIPELINING", "8BITMIME"])
        for prefix in (b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.org>",
                       b"RCPT TO:<c@example.org>", b"DATA"):
            c.expect_line(prefix)
        c.send(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        assert c.read_data() == b"Subject: wire\r\n\r\nbody\r\n..dot\r\n.\r\n"
        c.send(b"250 queued\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            assert s.sendmail("a@example.org", ["b@example.org", "c@example.org"], MSG) == {}
    envelope = [chunk for chunk in srv.chunk_lines() if chunk[0].upper().startswith(b"MAIL")]
    assert len(envelope) == 1, srv.chunk_lines()
    assert [line.split(b":")[0].upper() for line in envelope[0]] == [
        b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"DATA"]


@fastsmtplib_only
def test_pipelined_failures_are_all_read_then_rset():
    # Every reply is read even after a failure; the lone dot ends the transaction.
    def script(c):
        c.handshake(["PIPELINING"])
        c.expect_line(b"MAIL")
        c.expect_line(b"RCPT")
        c.expect_line(b"RCPT")
        c.expect_line(b"DATA")
        c.send(b"250 ok\r\n550 no such user\r\n450 try later\r\n354 go\r\n")
        # Every RCPT was refused: only the terminating dot may follow (§3.1).
        assert c.readline() == b".\r\n"
        c.send(b"554 no valid recipients\r\n")
        # The end of data ended the transaction (RFC 5321 §4.1.1.4): no RSET.
        c.expect_line(b"NOOP")
        c.send(b"250 still here\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                s.sendmail("a@example.org", ["b@example.org", "c@example.org"], MSG)
            assert info.value.recipients == {
                "b@example.org": (550, b"no such user"), "c@example.org": (450, b"try later")}
            assert s.noop() == (250, b"still here")
    assert b"body" not in srv.received


def test_no_pipelining_without_the_extension():
    early = []

    def script(c):
        c.handshake(["8BITMIME"])
        for prefix, reply in ((b"MAIL", b"250 ok\r\n"), (b"RCPT", b"250 ok\r\n"),
                              (b"RCPT", b"250 ok\r\n"), (b"DATA", b"354 go\r\n")):
            c.expect_line(prefix)
            early.append(c.pending(0.05))  # anything sent before our reply?
            c.send(reply)
        c.read_data()
        c.send(b"250 queued\r\n")
        quit_ok(c)

    with ScriptedServer(script) as srv:
        with client(srv) as s:
            s.sendmail("a@example.org", ["b@example.org", "c@example.org"], MSG)
    assert early == [b""] * 4


# -- STARTTLS ------------------------------------------------------------------------
def test_nothing_pipelined_after_starttls_and_injection_discarded(client_tls_context):
    early = []

    def script(c):
        c.handshake(["PIPELINING", "STARTTLS"])
        c.expect_line(b"STARTTLS")
        early.append(c.pending(0.05))
        # A man in the middle appends a plaintext reply to the 220 (RFC 3207 §4.2).
        c.starttls(inject=b"250-injected.example\r\n250 AUTH PLAIN\r\n")
        c.ehlo(["PIPELINING", "SIZE 1000"])
        c.expect_line(b"NOOP")
        c.send(b"250 after tls\r\n")
        quit_ok(c)

    with ScriptedServer(script) as srv:
        with client(srv) as s:
            s.ehlo()
            assert s.starttls(context=client_tls_context)[0] == 220
            code, resp = s.ehlo()
            assert (code, resp) == (250, b"scripted.test\nPIPELINING\nSIZE 1000")
            assert not s.has_extn("auth")
            assert s.noop() == (250, b"after tls")
    assert early == [b""]
    assert srv.conn.pre_tls_bytes == b""


# -- malformed and oversized replies ---------------------------------------------------
def test_reply_line_too_long():
    def script(c):
        c.handshake()
        c.expect_line(b"NOOP")
        c.send(b"250 " + b"x" * 9000 + b"\r\n")
        c.read_until_eof()

    with ScriptedServer(script) as srv:
        s = client(srv)
        s.ehlo()
        with pytest.raises(smtplib.SMTPResponseException) as info:
            s.noop()
        assert (info.value.smtp_code, info.value.smtp_error) == (500, "Line too long.")
        s.close()


def test_non_numeric_reply_code_is_minus_one():
    def script(c):
        c.handshake()
        c.expect_line(b"NOOP")
        c.send(b"2x0 what\r\n")
        quit_ok(c)

    with ScriptedServer(script) as srv:
        with client(srv) as s:
            s.ehlo()
            assert s.noop()[0] == -1


@fastsmtplib_only
def test_multiline_reply_with_changing_code_is_malformed():
    # RFC 5321 §4.2: every line of a multi-line reply carries the same code.
    def script(c):
        c.handshake()
        c.expect_line(b"NOOP")
        c.send(b"250-first\r\n251 second\r\n")
        quit_ok(c)

    with ScriptedServer(script) as srv:
        with client(srv) as s:
            s.ehlo()
            assert s.noop()[0] == -1


@fastsmtplib_only
def test_endless_multiline_reply_is_bounded():
    def script(c):
        c.handshake()
        c.expect_line(b"NOOP")
        try:
            c.send(b"250-x\r\n" * 2_000_000)  # 14 MB, never finished
        except OSError:
            pass  # the client gave up and closed: that is the point

    with ScriptedServer(script, timeout=10) as srv:
        s = client(srv, timeout=10)
        s.ehlo()
        t0 = time.monotonic()
        with pytest.raises(smtplib.SMTPException):
            s.noop()
        assert time.monotonic() - t0 < 5
        s.close()


@fastsmtplib_only
def test_dripping_reply_hits_a_deadline():
    # One byte every 0.2 s never trips a per-recv timeout of 1 s; a
    # whole-reply deadline must.
    def script(c):
        c.handshake()
        c.expect_line(b"NOOP")
        try:
            c.drip(b"250 " + b"z" * 40 + b"\r\n", 0.2)
        except OSError:
            pass

    with ScriptedServer(script, timeout=15) as srv:
        s = client(srv, timeout=1)
        s.ehlo()
        t0 = time.monotonic()
        with pytest.raises((TimeoutError, smtplib.SMTPException)):
            s.noop()
        assert time.monotonic() - t0 < 4
        s.close()


# -- connections that die ---------------------------------------------------------------
def test_bad_greeting_is_connect_error():
    def script(c):
        c.send(b"554 go away\r\n")
        c.read_until_eof()

    with ScriptedServer(script) as srv:
        with pytest.raises(smtplib.SMTPConnectError) as info:
            client(srv)
        assert info.value.smtp_code == 554


def test_server_closes_mid_reply():
    def script(c):
        c.handshake()
        c.expect_line(b"NOOP")
        c.send(b"250-partial\r\n")

    with ScriptedServer(script) as srv:
        s = client(srv)
        s.ehlo()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.noop()
        s.close()


def test_connection_lost_after_final_dot():
    def script(c):
        c.handshake()
        c.expect_line(b"MAIL")
        c.send(b"250 ok\r\n")
        c.expect_line(b"RCPT")
        c.send(b"250 ok\r\n")
        c.expect_line(b"DATA")
        c.send(b"354 go\r\n")
        c.read_data()
        c.reset()  # no reply to the final dot

    with ScriptedServer(script) as srv:
        s = client(srv)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.sendmail("a@example.org", ["b@example.org"], MSG)
        s.close()


def test_421_on_rcpt_closes():
    def script(c):
        c.handshake()
        c.expect_line(b"MAIL")
        c.send(b"250 ok\r\n")
        c.expect_line(b"RCPT")
        c.send(b"421 shutting down\r\n")
        c.read_until_eof()

    with ScriptedServer(script) as srv:
        s = client(srv)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            s.sendmail("a@example.org", ["b@example.org", "c@example.org"], MSG)
        assert info.value.recipients == {"b@example.org": (421, b"shutting down")}
        assert s.sock is None
