"""The test servers themselves, checked with the *stdlib* smtplib.

These pin down what each fixture offers (capabilities, what it records), so a
failure here is a broken fixture, not a fastsmtplib bug.
"""

from __future__ import annotations

import smtplib as std_smtplib
import ssl
import time

import pytest

from tests.support.postfix import queue_id
from tests.support.scripted import ClientClosed, ScriptedServer, ScriptError

MSG = b"From: a@example.org\r\nSubject: fixture\r\n\r\n.leading dot\r\nbody\r\n"


# -- aiosmtpd ----------------------------------------------------------------
def test_aiosmtpd_records_envelope_and_content(aiosmtpd_server):
    with std_smtplib.SMTP(aiosmtpd_server.host, aiosmtpd_server.port) as c:
        c.sendmail("a@example.org", ["b@example.org", "c@example.org"], MSG)
    [m] = aiosmtpd_server.messages
    assert (m.mail_from, m.rcpt_tos, m.content) == (
        "a@example.org", ["b@example.org", "c@example.org"], MSG)
    assert m.tls is False and m.auth_login is None and m.smtp_utf8 is False


def test_aiosmtpd_refusals(aiosmtpd_factory):
    srv = aiosmtpd_factory(refuse_recipients={"no@example.org": (550, "5.1.1 nope")},
                           refuse_senders={"bad@example.org": 553})
    with std_smtplib.SMTP(srv.host, srv.port) as c:
        assert c.sendmail("a@example.org", ["no@example.org", "b@example.org"], MSG) == {
            "no@example.org": (550, b"5.1.1 nope")}
        with pytest.raises(std_smtplib.SMTPSenderRefused):
            c.sendmail("bad@example.org", ["b@example.org"], MSG)
    assert [m.rcpt_tos for m in srv.messages] == [["b@example.org"]]
    assert [r[:2] for r in srv.handler.refused] == [
        ("RCPT", "no@example.org"), ("MAIL", "bad@example.org")]


def test_aiosmtpd_capabilities(aiosmtpd_factory, client_tls_context):
    plain = aiosmtpd_factory()
    tls = aiosmtpd_factory(tls="starttls")
    auth = aiosmtpd_factory(auth={"u": "p"})
    utf8 = aiosmtpd_factory(smtputf8=True)
    seen = {}
    for name, srv in [("plain", plain), ("tls", tls), ("auth", auth), ("utf8", utf8)]:
        with std_smtplib.SMTP(srv.host, srv.port) as c:
            c.ehlo()
            seen[name] = set(c.esmtp_features)
            if name == "auth":
                assert c.esmtp_features["auth"].split() == ["CRAM-MD5", "LOGIN", "PLAIN"]
    assert seen["plain"] == {"size", "8bitmime", "help"}
    assert seen["tls"] == seen["plain"] | {"starttls"}
    assert seen["auth"] == seen["plain"] | {"auth"}
    assert seen["utf8"] == seen["plain"] | {"smtputf8"}


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_aiosmtpd_auth_mechanisms(aiosmtpd_factory, mech):
    srv = aiosmtpd_factory(auth={"u": "p"}, auth_mechanisms=[mech])
    with std_smtplib.SMTP(srv.host, srv.port) as c:
        with pytest.raises(std_smtplib.SMTPAuthenticationError):
            c.login("u", "wrong")
        assert c.login("u", "p")[0] == 235
    assert srv.handler.logins == [(mech, "u", False), (mech, "u", True)]


def test_aiosmtpd_implicit_tls_and_unix_lmtp(aiosmtpd_factory, client_tls_context):
    ssl_srv = aiosmtpd_factory(tls="implicit")
    with std_smtplib.SMTP_SSL(ssl_srv.host, ssl_srv.port, context=client_tls_context) as c:
        c.sendmail("a@example.org", ["b@example.org"], MSG)
    assert ssl_srv.messages[0].tls is True

    lmtp = aiosmtpd_factory(lmtp=True, unix_socket=True, lmtp_data_replies={"c@x.org": 452})
    c = std_smtplib.LMTP(lmtp.path)
    c.sendmail("a@example.org", ["b@x.org", "c@x.org"], MSG)
    # One reply per recipient after DATA (the stdlib reads only the first).
    assert c.getreply()[0] == 452
    c.close()
    assert lmtp.messages[0].reply.splitlines()[1].startswith("452")


# -- smtp-sink ---------------------------------------------------------------
def test_smtp_sink_session_fixture(smtp_sink):
    with std_smtplib.SMTP(smtp_sink.host, smtp_sink.port) as c:
        c.ehlo()
        assert c.has_extn("pipelining") and c.has_extn("8bitmime")
        assert not c.has_extn("chunking")
        assert c.sendmail("a@example.org", ["b@example.org"], MSG) == {}


def test_smtp_sink_dump_and_options(smtp_sink_factory):
    sink = smtp_sink_factory(dump=True, pipelining=False)
    with std_smtplib.SMTP(sink.host, sink.port) as c:
        c.ehlo()
        assert not c.has_extn("pipelining")
        c.sendmail("a@example.org", ["b@example.org", "c@example.org"], MSG)
    [d] = sink.dumps(expect=1)
    assert d.mail_args.startswith("<a@example.org>")
    assert d.rcpt_args == ["<b@example.org>", "<c@example.org>"]
    assert d.data == MSG.replace(b"\r\n", b"\n")

    failing = smtp_sink_factory("-f", "RCPT")
    with std_smtplib.SMTP(failing.host, failing.port) as c:
        with pytest.raises(std_smtplib.SMTPRecipientsRefused):
            c.sendmail("a@example.org", ["b@example.org"], MSG)


def test_smtp_sink_lmtp_unix(smtp_sink_factory):
    sink = smtp_sink_factory(lmtp=True, unix_socket=True)
    c = std_smtplib.LMTP(sink.path)
    assert c.sendmail("a@example.org", ["b@example.org"], MSG) == {}
    c.quit()


# -- Postfix -----------------------------------------------------------------
def test_postfix_capabilities_and_held_message(postfix, client_tls_context):
    assert postfix.start_seconds < 5
    with std_smtplib.SMTP(postfix.host, postfix.port) as c:
        c.ehlo()
        for ext in ("pipelining", "size", "8bitmime", "smtputf8", "dsn", "chunking", "starttls"):
            assert c.has_extn(ext), ext
        c.starttls(context=client_tls_context)
        c.ehlo()
        c.mail("a@example.org")
        c.rcpt("b@example.org")
        assert c.rcpt("reject@example.org")[0] == 550
        assert c.rcpt("defer@example.org")[0] == 450
        c.putcmd(f"BDAT {len(MSG)} LAST")
        c.send(MSG)
        code, reply = c.getreply()
    assert code == 250
    m = postfix.message(queue_id(reply))
    assert (m.sender, m.recipients) == ("a@example.org", ["b@example.org"])
    assert m.body_without_received == MSG.replace(b"\r\n", b"\n")
    assert [x.queue_id for x in postfix.pop_messages()] == [m.queue_id]
    assert postfix.queue_ids() == []


# -- scripted ----------------------------------------------------------------
def test_scripted_records_chunks_and_errors():
    def script(c):
        c.handshake()
        c.expect_line(b"MAIL FROM:")
        assert c.pending() == b""  # stdlib does not pipeline
        c.send(b"250 ok\r\n")
        c.expect_line(b"RCPT")
        c.send(b"550 no\r\n")
        c.expect_line(b"RSET")
        c.send(b"250 ok\r\n")
        c.expect_line(b"QUIT")
        c.send(b"221 bye\r\n")

    with ScriptedServer(script) as srv:
        with std_smtplib.SMTP(srv.host, srv.port) as c:
            with pytest.raises(std_smtplib.SMTPRecipientsRefused):
                c.sendmail("a@example.org", ["b@example.org"], MSG)
    assert [lines[0].split(b" ")[0].lower() for lines in srv.chunk_lines()] == [
        b"ehlo", b"mail", b"rcpt", b"rset", b"quit"]

    with pytest.raises(ClientClosed):
        with ScriptedServer(lambda c: (c.greet(), c.expect_line(b"HELO")), timeout=2) as srv:
            s = std_smtplib.SMTP(srv.host, srv.port)
            s.close()


def test_scripted_starttls_injection_and_drip(client_tls_context):
    def script(c):
        c.handshake(["STARTTLS"])
        c.expect_line(b"STARTTLS")
        c.starttls(inject=b"250 injected\r\n")
        c.ehlo(["AUTH PLAIN"])
        c.expect_line(b"NOOP")
        c.drip(b"250 slow\r\n", 0.01, size=3)
        c.expect_line(b"QUIT")
        c.send(b"221 bye\r\n")

    t0 = time.monotonic()
    with ScriptedServer(script) as srv:
        with std_smtplib.SMTP(srv.host, srv.port) as c:
            c.starttls(context=client_tls_context)
            c.ehlo()
            assert c.has_extn("auth")
            assert c.noop() == (250, b"slow")
    assert srv.conn.pre_tls_bytes == b"" and srv.conn.tls
    assert time.monotonic() - t0 < 3


def test_scripted_error_surfaces_in_test_thread():
    def script(c):
        c.greet()
        c.expect_line(b"HELO")

    with pytest.raises(ScriptError, match="HELO"):
        with ScriptedServer(script) as srv:
            with pytest.raises(std_smtplib.SMTPServerDisconnected):
                with std_smtplib.SMTP(srv.host, srv.port) as c:
                    c.ehlo()


def test_tls_material_verifies_names(tls_material):
    ctx = tls_material.client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
