"""sendmail's transaction on the wire: PIPELINING, CHUNKING, SIZE, LMTP.

Checked against the scripted server: the exact bytes sent and how they were
grouped into writes.  With PIPELINING advertised (RFC 2920 §3.1) MAIL, every
RCPT and DATA go out in one write; every reply owed for them is consumed
whatever happens, so the session stays in step; the body is never sent for an
envelope that failed.  ``test_wire_scripted.py`` already covers the basic
grouping, all-recipients-refused with a 354 to DATA, lock-step without the
extension, a lock-step 421 to RCPT and a lock-step disconnect after the dot.
"""

from __future__ import annotations

import time

import pytest

from tests.support.scripted import ScriptedServer
from tests.support.target import fastsmtplib_only, smtplib

pytestmark = fastsmtplib_only

FROM = "a@example.org"
RCPTS = ["b@example.org", "c@example.org", "d@example.org"]
MSG = b"Subject: wire\r\n\r\nbody line\r\n.dot line\r\n"
STUFFED = b"Subject: wire\r\n\r\nbody line\r\n..dot line\r\n.\r\n"


def group_bytes(rcpts=RCPTS, data=True, mail_args=b"") -> bytes:
    out = b"mail FROM:<%s>%s\r\n" % (FROM.encode(), mail_args)
    out += b"".join(b"rcpt TO:<%s>\r\n" % r.encode() for r in rcpts)
    return out + (b"data\r\n" if data else b"")


def client(srv, **kw):
    kw.setdefault("timeout", 3)
    kw.setdefault("local_hostname", "client.example.org")
    return smtplib.SMTP(srv.host, srv.port, **kw)


def quit_ok(c):
    c.expect_line(b"QUIT")
    c.send(b"221 bye\r\n")


def read_group(c, n_lines: int) -> bytes:
    """The pipelined group: ``n_lines`` lines, which must all be in one write."""
    first_chunk = len(c.chunks)
    out = b"".join(c.readline() for _ in range(n_lines))
    assert len(c.chunks) == first_chunk + 1, f"group split over writes: {c.chunks[first_chunk:]!r}"
    assert c.pending(0.02) == b"", "client sent more before the group's replies"
    return out


def noop_ok(c, text=b"250 still in step\r\n"):
    c.expect_line(b"NOOP")
    c.send(text)


# -- PIPELINING: results ----------------------------------------------------------------------
def test_pipelined_success_exact_bytes():
    def script(c):
        c.handshake(["PIPELINING", "8BITMIME"])
        assert read_group(c, 5) == group_bytes()
        c.send(b"250 sender ok\r\n250 b ok\r\n251 c forwarded\r\n250 d ok\r\n354 go\r\n")
        assert c.read_data() == STUFFED
        c.send(b"250 queued\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            assert s.sendmail(FROM, RCPTS, MSG) == {}


@pytest.mark.parametrize("data_reply", [b"503 5.5.1 no valid sender\r\n", b"354 go anyway\r\n"])
def test_pipelined_sender_refused(data_reply):
    def script(c):
        c.handshake(["PIPELINING"])
        assert read_group(c, 4) == group_bytes(RCPTS[:2])
        c.send(b"550 5.1.0 sender rejected\r\n503 need MAIL\r\n503 need MAIL\r\n" + data_reply)
        if data_reply.startswith(b"354"):
            assert c.readline() == b".\r\n"  # an empty message ends it; never the body
            c.send(b"554 no transaction\r\n")
        else:
            # The end of data closes a transaction (RFC 5321 §4.1.1.4); without
            # it the server may still be in one.
            c.expect_line(b"RSET")
            c.send(b"250 reset\r\n")
        noop_ok(c)
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                s.sendmail(FROM, RCPTS[:2], MSG)
            assert (info.value.smtp_code, info.value.sender) == (550, FROM)
            assert s.noop() == (250, b"still in step")
    assert b"body line" not in srv.received


def test_pipelined_some_recipients_refused():
    def script(c):
        c.handshake(["PIPELINING"])
        assert read_group(c, 5) == group_bytes()
        c.send(b"250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n452 4.2.2 over quota\r\n354 go\r\n")
        assert c.read_data() == STUFFED
        c.send(b"250 queued\r\n")
        noop_ok(c)
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            refused = s.sendmail(FROM, RCPTS, MSG)
            assert refused == {"b@example.org": (550, b"5.1.1 no such user"),
                               "d@example.org": (452, b"4.2.2 over quota")}
            assert s.noop() == (250, b"still in step")


def test_pipelined_all_refused_data_503():
    def script(c):
        c.handshake(["PIPELINING"])
        assert read_group(c, 4) == group_bytes(RCPTS[:2])
        c.send(b"250 ok\r\n550 no\r\n551 not here\r\n503 5.5.1 no valid recipients\r\n")
        c.expect_line(b"RSET")
        c.send(b"250 reset\r\n")
        noop_ok(c)
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                s.sendmail(FROM, RCPTS[:2], MSG)
            assert info.value.recipients == {"b@example.org": (550, b"no"),
                                             "c@example.org": (551, b"not here")}
            assert s.noop() == (250, b"still in step")
    assert b"body line" not in srv.received
    assert b"\r\n.\r\n" not in srv.received


def test_pipelined_data_refused():
    def script(c):
        c.handshake(["PIPELINING"])
        assert read_group(c, 3) == group_bytes(RCPTS[:1])
        c.send(b"250 ok\r\n250 ok\r\n554 5.3.0 no data today\r\n")
        c.expect_line(b"RSET")
        c.send(b"250 reset\r\n")
        noop_ok(c)
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            with pytest.raises(smtplib.SMTPDataError) as info:
                s.sendmail(FROM, RCPTS[:1], MSG)
            assert info.value.smtp_code == 554
            assert s.noop() == (250, b"still in step")
    assert b"body line" not in srv.received


# -- PIPELINING: 421 and disconnects ----------------------------------------------------------------
_421 = b"421 4.3.2 shutting down\r\n"


@pytest.mark.parametrize("where", ["mail", "rcpt", "data", "final"])
def test_pipelined_421_closes(where):
    replies = {
        "mail": _421,
        "rcpt": b"250 ok\r\n250 ok\r\n" + _421,
        "data": b"250 ok\r\n250 ok\r\n250 ok\r\n" + _421,
        "final": b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
    }[where]

    def script(c):
        c.handshake(["PIPELINING"])
        assert read_group(c, 4) == group_bytes(RCPTS[:2])
        c.send(replies)
        if where == "final":
            c.read_data()
            c.send(_421)
        rest = c.read_until_eof()
        assert b"RSET" not in rest.upper()

    expected = {"mail": smtplib.SMTPSenderRefused, "rcpt": smtplib.SMTPRecipientsRefused,
                "data": smtplib.SMTPDataError, "final": smtplib.SMTPDataError}[where]
    with ScriptedServer(script, timeout=3) as srv:
        s = client(srv)
        with pytest.raises(expected) as info:
            s.sendmail(FROM, RCPTS[:2], MSG)
        assert s.sock is None
        if where == "rcpt":
            assert info.value.recipients == {"c@example.org": (421, b"4.3.2 shutting down")}
        else:
            assert info.value.smtp_code == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.noop()
        s.close()


def test_pipelined_disconnect_after_final_dot():
    def script(c):
        c.handshake(["PIPELINING"])
        read_group(c, 3)
        c.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        c.read_data()
        c.reset()

    with ScriptedServer(script, timeout=3) as srv:
        s = client(srv)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.sendmail(FROM, RCPTS[:1], MSG)
        assert s.sock is None
        s.close()


# -- PIPELINING: replies out of step ---------------------------------------------------------------
def _one_extra_reply(delay: float, tls: bool = False):
    """A server that sends one reply too many after the first message's final reply.

    When the extra reply comes later, the server answers the next envelope as
    a real one would; the client must see the shift (DATA's reply lands on a
    RCPT, RFC 2920 §3.1) and stop before any body goes out.
    """
    def script(c):
        if tls:
            c.handshake(["STARTTLS", "PIPELINING"])
            c.expect_line(b"STARTTLS")
            c.starttls()
            c.ehlo(["PIPELINING"])
        else:
            c.handshake(["PIPELINING"])
        read_group(c, 3)
        c.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        c.read_data()
        if delay:
            c.send(b"250 queued\r\n")
            c.sleep(delay)
            c.send(b"250 extra\r\n")
            if not c.pending(wait=delay + 0.5):
                return  # the client gave up before a second envelope (also fine)
            c.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        else:
            c.send(b"250 queued\r\n250 extra\r\n")
        # Whatever comes now must not be a body.
        rest = c.read_until_eof()
        assert b"body line" not in rest, rest

    return script


def test_extra_reply_stops_the_transaction():
    # The extra reply arrives with the final one: the pairing of that final
    # reply can no longer be trusted, so the message is not reported delivered.
    with ScriptedServer(_one_extra_reply(0), timeout=3) as srv:
        s = client(srv)
        with pytest.raises(smtplib.SMTPPipelineError):
            s.sendmail(FROM, RCPTS[:1], MSG)
        assert s.sock is None
        s.close()
    assert srv.received.lower().count(b"mail from:") == 1, srv.received


# The late reply is read with the next transaction's replies: DATA's 354 then
# lands on the RCPT, which cannot return it, and the body is never sent.
@pytest.mark.parametrize("timeout", [1, None])
def test_late_extra_reply_stops_the_next_transaction(timeout):
    with ScriptedServer(_one_extra_reply(0.1), timeout=3) as srv:
        s = client(srv, timeout=timeout)
        assert s.sendmail(FROM, RCPTS[:1], MSG) == {}
        time.sleep(0.3)  # the extra reply is in the socket, unread
        with pytest.raises(smtplib.SMTPPipelineError):
            s.sendmail(FROM, RCPTS[:1], MSG)
        assert s.sock is None
        s.close()
    assert srv.received.count(b"body line") == 1, srv.received


def test_late_extra_reply_over_tls_stops_the_next_transaction(client_tls_context):
    # Over TLS the same, through the TLS socket's own reads (and a TLS 1.3
    # session ticket must not be taken for a reply: the first sendmail after
    # STARTTLS goes through).
    with ScriptedServer(_one_extra_reply(0.1, tls=True), timeout=3) as srv:
        s = client(srv, timeout=1)
        s.starttls(context=client_tls_context)
        assert s.sendmail(FROM, RCPTS[:1], MSG) == {}
        time.sleep(0.3)
        with pytest.raises(smtplib.SMTPPipelineError):
            s.sendmail(FROM, RCPTS[:1], MSG)
        assert s.sock is None
        s.close()
    assert srv.received.count(b"body line") == 1


def test_one_reply_too_few_times_out():
    def script(c):
        c.handshake(["PIPELINING"])
        read_group(c, 3)
        c.send(b"250 ok\r\n250 ok\r\n")  # no reply to DATA
        c.read_until_eof()

    with ScriptedServer(script, timeout=4) as srv:
        s = client(srv, timeout=1)
        t0 = time.monotonic()
        with pytest.raises(smtplib.SMTPServerDisconnected) as info:
            s.sendmail(FROM, RCPTS[:1], MSG)
        assert time.monotonic() - t0 < 1.8
        assert isinstance(info.value, smtplib.SMTPReplyTimeout)
        assert s.sock is None
        s.close()
    assert b"body line" not in srv.received


# -- lock-step ------------------------------------------------------------------------------------
def _lockstep_script(extensions):
    def script(c):
        c.handshake(extensions)
        for line, reply in ((b"mail FROM:<a@example.org>\r\n", b"250 ok\r\n"),
                            (b"rcpt TO:<b@example.org>\r\n", b"250 ok\r\n"),
                            (b"rcpt TO:<c@example.org>\r\n", b"250 ok\r\n"),
                            (b"data\r\n", b"354 go\r\n")):
            assert c.readline() == line
            assert c.pending(0.03) == b"", f"client did not wait for the reply to {line!r}"
            c.send(reply)
        assert c.read_data() == STUFFED
        c.send(b"250 queued\r\n")
        quit_ok(c)

    return script


def test_pipelining_switched_off_per_instance():
    with ScriptedServer(_lockstep_script(["PIPELINING", "8BITMIME"]), timeout=3) as srv:
        with client(srv) as s:
            s.pipelining = False
            assert s.sendmail(FROM, RCPTS[:2], MSG) == {}
    assert smtplib.SMTP.pipelining is True


# -- CHUNKING / BDAT ------------------------------------------------------------------------------
@pytest.mark.parametrize("msg,expected", [
    (b"Subject: c\r\n\r\n.leading dot\nbare lf\r\n.\r\nlast", b"Subject: c\r\n\r\n.leading dot\r\nbare lf\r\n.\r\nlast\r\n"),
    ("Subject: s\n\n.dot\n", b"Subject: s\r\n\r\n.dot\r\n"),
])
def test_chunking_sends_one_bdat_last(msg, expected):
    # Envelope, BDAT and body in one write: nothing waits (RFC 3030 §2).
    def script(c):
        c.handshake(["PIPELINING", "CHUNKING", "8BITMIME"])
        first_chunk = len(c.chunks)
        assert b"".join(c.readline() for _ in range(2)) == group_bytes(RCPTS[:1], data=False)
        header = c.readline()
        assert header == b"BDAT %d LAST\r\n" % len(expected)
        assert c.read_exactly(len(expected)) == expected
        assert len(c.chunks) == first_chunk + 1, "envelope and body split over writes"
        assert c.pending(0.03) == b""  # exactly n bytes, no terminating dot
        c.send(b"250 ok\r\n250 ok\r\n250 2.0.0 queued\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            assert s.sendmail(FROM, RCPTS[:1], msg) == {}
    assert b"data\r\n" not in srv.received.lower()


def test_chunking_switched_off_uses_data():
    def script(c):
        c.handshake(["PIPELINING", "CHUNKING"])
        assert read_group(c, 3) == group_bytes(RCPTS[:1])
        c.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        assert c.read_data() == STUFFED
        c.send(b"250 queued\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            s.chunking = False
            assert s.sendmail(FROM, RCPTS[:1], MSG) == {}
    assert b"BDAT" not in srv.received


def test_binarymime_sends_raw_bytes():
    raw = b"Content-Type: application/octet-stream\r\n\r\n\x00\xff\nbare\r.\r\n.x"

    def script(c):
        c.handshake(["PIPELINING", "CHUNKING", "BINARYMIME"])
        group = c.readline() + c.readline()
        assert group.splitlines()[0].upper().endswith(b" BODY=BINARYMIME")
        assert c.readline() == b"BDAT %d LAST\r\n" % len(raw)
        assert c.read_exactly(len(raw)) == raw
        c.send(b"250 ok\r\n250 ok\r\n250 queued\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            assert s.sendmail(FROM, RCPTS[:1], raw, mail_options=["BODY=BINARYMIME"]) == {}


@pytest.mark.parametrize("extensions", [["PIPELINING", "BINARYMIME"], ["PIPELINING", "CHUNKING"], ["PIPELINING"]])
def test_binarymime_without_support_sends_nothing(extensions):
    def script(c):
        c.handshake(extensions)
        noop_ok(c)
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            with pytest.raises(smtplib.SMTPNotSupportedError):
                s.sendmail(FROM, RCPTS[:1], b"x\r\n", mail_options=["BODY=BINARYMIME"])
            assert s.noop() == (250, b"still in step")


def test_chunking_pipelined_binarymime_switched_off_for_bdat():
    # chunking=False: BINARYMIME cannot be honoured, so nothing is sent.
    def script(c):
        c.handshake(["PIPELINING", "CHUNKING", "BINARYMIME"])
        noop_ok(c)
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            s.chunking = False
            with pytest.raises(smtplib.SMTPNotSupportedError):
                s.sendmail(FROM, RCPTS[:1], b"x\r\n", mail_options=["BODY=BINARYMIME"])
            assert s.noop() == (250, b"still in step")


# -- SIZE -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("extensions", [["PIPELINING", "SIZE 100"], ["PIPELINING", "CHUNKING", "SIZE 100"], ["SIZE 100"]])
def test_size_limit_checked_before_sending(extensions):
    def script(c):
        c.handshake(extensions)
        noop_ok(c)
        quit_ok(c)

    big = b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n"
    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            with pytest.raises(smtplib.SMTPMessageTooLarge) as info:
                s.sendmail(FROM, RCPTS[:1], big)
            assert isinstance(info.value, smtplib.SMTPSenderRefused)
            assert info.value.smtp_code == 552 and info.value.limit == 100
            assert s.noop() == (250, b"still in step")


def test_size_declared_matches_message():
    def script(c):
        c.handshake(["PIPELINING", "SIZE 1000"])
        group = read_group(c, 3)
        assert group.splitlines()[0] == b"mail FROM:<a@example.org> size=%d" % len(MSG)
        c.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        c.read_data()
        c.send(b"250 queued\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            assert s.sendmail(FROM, RCPTS[:1], MSG) == {}


# -- LMTP -----------------------------------------------------------------------------------------
def test_lmtp_per_recipient_replies():
    def script(c):
        c.greet(b"220 lmtp.test LMTP ready\r\n")
        c.ehlo(["PIPELINING", "8BITMIME"])  # expects LHLO
        assert read_group(c, 5) == group_bytes()
        c.send(b"250 ok\r\n250 b ok\r\n550 5.1.1 c unknown\r\n250 d ok\r\n354 go\r\n")
        assert c.read_data() == STUFFED
        # one reply per accepted recipient, in RCPT order (RFC 2033 §4.2)
        c.send(b"250 2.0.0 b delivered\r\n452 4.2.2 d over quota\r\n")
        noop_ok(c)
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        s = smtplib.LMTP(srv.host, srv.port, local_hostname="client.example.org", timeout=3)
        try:
            refused = s.sendmail(FROM, RCPTS, MSG)
            assert refused == {"c@example.org": (550, b"5.1.1 c unknown"),
                               "d@example.org": (452, b"4.2.2 d over quota")}
            assert s.data_replies == [("b@example.org", (250, b"2.0.0 b delivered")),
                                      ("d@example.org", (452, b"4.2.2 d over quota"))]
            assert s.noop() == (250, b"still in step")
            s.quit()
        finally:
            s.close()
    assert srv.received.lower().startswith(b"lhlo client.example.org\r\n")
