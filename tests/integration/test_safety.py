"""Safety promises, checked on the wire with the scripted server.

* CR or LF in anything that goes into a command line is refused with
  ``ValueError`` before a single byte of that call is sent (RFC 5321 §2.3.8:
  a bare CR or LF would let a caller inject commands);
* the transcript reaches the ``fastsmtplib`` logger and ``set_debuglevel``
  output, but AUTH secrets never do;
* a malformed AUTH challenge is an ``SMTPAuthenticationError`` and the
  exchange is cancelled with ``*`` (RFC 4954 §4), leaving the session usable;
* deprecated ``keyfile``/``certfile`` warn, and conflict with ``context``;
* plaintext injected after STARTTLS's 220 is never parsed (RFC 3207 §4.2);
* replies are bounded in size.
"""

from __future__ import annotations

import base64
import email.message
import logging
import re
import time

import pytest

from tests.support.scripted import ScriptedServer
from tests.support.target import fastsmtplib_only, smtplib

pytestmark = fastsmtplib_only

MSG = b"Subject: safety\r\n\r\nbody\r\n"
HOSTNAME = "client.example.org"
USER = "alice@example.org"
PASSWORD = "S3cret-pa55word!"


def client(srv, **kw):
    kw.setdefault("timeout", 5)
    kw.setdefault("local_hostname", HOSTNAME)
    return smtplib.SMTP(srv.host, srv.port, **kw)


def quit_ok(c):
    c.expect_line(b"QUIT")
    c.send(b"221 bye\r\n")


def noop_then_quit(extensions=("PIPELINING", "8BITMIME", "SMTPUTF8", "DSN"), ehlo=True):
    """Greeting (and EHLO); then the very next command must be NOOP."""

    def script(c):
        c.greet()
        if ehlo:
            c.ehlo(extensions)
        c.expect_line(b"NOOP")
        c.send(b"250 still in step\r\n")
        quit_ok(c)

    return script


def commands(srv) -> list[bytes]:
    return [line.split(b" ")[0].upper() for line in srv.received.split(b"\r\n") if line]


# -- CR / LF in command arguments ----------------------------------------------------
def _message_with(**headers):
    m = email.message.EmailMessage()
    for name, value in headers.items():
        m[name.replace("_", "-")] = value
    m.set_content("body\n")
    return m


INJECTIONS = {
    "mail-options": lambda s: s.mail("a@example.org", ["BODY=8BITMIME\r\nRSET"]),
    "mail-option-lf": lambda s: s.mail("a@example.org", ["SMTPUTF8", "X=1\nRSET"]),
    "mail-null-sender": lambda s: s.mail("<>\r\nRSET"),
    "rcpt-options": lambda s: s.rcpt("b@example.org", ["NOTIFY=NEVER\r\nRSET"]),
    "rcpt-cr": lambda s: s.rcpt("\r"),
    "helo-name": lambda s: s.helo("evil.example\r\nRSET"),
    "ehlo-name": lambda s: s.ehlo("evil.example\nRSET"),
    "docmd-cmd": lambda s: s.docmd("NOOP\r\nRSET"),
    "docmd-args": lambda s: s.docmd("HELP", "x\r\nRSET"),
    "docmd-args-cr": lambda s: s.docmd("HELP", "x\rRSET"),
    "putcmd-args": lambda s: s.putcmd("HELP", "x\nRSET"),
    "sendmail-2nd-rcpt": lambda s: s.sendmail("a@example.org", ["b@example.org", "<\r\n>"], MSG),
    "sendmail-from": lambda s: s.sendmail("<>\r\nRSET", ["b@example.org"], MSG),
    "sendmail-mail-options": lambda s: s.sendmail(
        "a@example.org", ["b@example.org"], MSG, mail_options=["BODY=8BITMIME\r\nRSET"]),
    "sendmail-rcpt-options": lambda s: s.sendmail(
        "a@example.org", ["b@example.org", "c@example.org"], MSG, rcpt_options=["NOTIFY=NEVER\nRSET"]),
    "send_message-mail-options": lambda s: s.send_message(
        _message_with(From="a@example.org", To="b@example.org"), mail_options=["X=1\r\nRSET"]),
    "send_message-to": lambda s: s.send_message(
        _message_with(From="a@example.org", To="b@example.org"), to_addrs=["b@example.org", "<\r\n>"]),
    "send_message-from": lambda s: s.send_message(
        _message_with(From="a@example.org", To="b@example.org"), from_addr="<>\r\nRSET"),
}


@pytest.mark.parametrize("name", sorted(INJECTIONS))
def test_crlf_in_arguments_is_refused_before_sending(name):
    with ScriptedServer(noop_then_quit(), timeout=3) as srv:
        with client(srv) as s:
            s.ehlo()
            with pytest.raises(ValueError):
                INJECTIONS[name](s)
            assert s.noop() == (250, b"still in step")
    assert commands(srv) == [b"EHLO", b"NOOP", b"QUIT"], srv.received
    assert b"RSET" not in srv.received


# Addresses are checked for CR/LF before email.utils.parseaddr could rewrite them.
ADDRESS_INJECTIONS = {
    "mail-address": lambda s: s.mail("a@example.org\r\nRSET"),
    "mail-address-cr-inside": lambda s: s.mail("a\r@example.org"),
    "rcpt-address": lambda s: s.rcpt("b@example.org\nRSET"),
    "rcpt-injected-rcpt": lambda s: s.rcpt("\r\nRCPT TO:<evil@example.org>"),
    "vrfy": lambda s: s.verify("b@example.org\r\nRSET"),
    "expn": lambda s: s.expn("list@example.org\r\nRSET"),
    "sendmail-from": lambda s: s.sendmail("a@example.org\r\nRSET", ["b@example.org"], MSG),
    "sendmail-2nd-rcpt": lambda s: s.sendmail(
        "a@example.org", ["b@example.org", "\r\nRCPT TO:<evil@example.org>"], MSG),
    "send_message-from": lambda s: s.send_message(
        _message_with(From="a@example.org", To="b@example.org"), from_addr="a@example.org\r\nRSET"),
    "send_message-to": lambda s: s.send_message(
        _message_with(From="a@example.org", To="b@example.org"),
        to_addrs=["b@example.org", "c@example.org\nRSET"]),
}


@pytest.mark.parametrize("name", sorted(ADDRESS_INJECTIONS))
def test_crlf_in_addresses_is_refused_before_sending(name):
    with ScriptedServer(noop_then_quit(), timeout=2, check=False) as srv:
        with client(srv, timeout=2) as s:
            s.ehlo()
            with pytest.raises(ValueError):
                ADDRESS_INJECTIONS[name](s)
            assert s.noop() == (250, b"still in step")
    assert commands(srv) == [b"EHLO", b"NOOP", b"QUIT"], srv.received


@pytest.mark.parametrize("call", ["ehlo", "helo", "ehlo_or_helo_if_needed", "sendmail"])
def test_crlf_in_local_hostname_is_refused(call):
    with ScriptedServer(noop_then_quit(ehlo=False), timeout=3) as srv:
        with client(srv, local_hostname="evil.example\r\nRSET") as s:
            with pytest.raises(ValueError):
                if call == "sendmail":
                    s.sendmail("a@example.org", ["b@example.org"], MSG)
                else:
                    getattr(s, call)()
            assert s.noop() == (250, b"still in step")
    assert commands(srv) == [b"NOOP", b"QUIT"], srv.received


# -- transcript: logger and debug output, secrets redacted ---------------------------------
def _auth_script(mechanism: bytes):
    def script(c):
        c.handshake(["AUTH " + mechanism.decode(), "PIPELINING"])
        line = c.expect_line(b"AUTH " + mechanism)
        if mechanism == b"PLAIN":
            assert line.split()[2] == base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
        else:
            assert line.split()[2] == base64.b64encode(USER.encode())
            c.send(b"334 " + base64.b64encode(b"Password:") + b"\r\n")
            assert c.readline().strip() == base64.b64encode(PASSWORD.encode())
        c.send(b"235 2.7.0 Authentication successful\r\n")
        c.expect_line(b"NOOP")
        c.send(b"250 ok\r\n")
        quit_ok(c)

    return script


def _secrets() -> list[str]:
    return [
        PASSWORD,
        base64.b64encode(PASSWORD.encode()).decode(),
        base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
        base64.b64encode(f"{USER}\0{PASSWORD}".encode()).decode(),
    ]


@pytest.mark.parametrize("mechanism", [b"PLAIN", b"LOGIN"])
def test_login_secrets_stay_out_of_logs_and_debug_output(mechanism, caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="fastsmtplib")
    with ScriptedServer(_auth_script(mechanism), timeout=3) as srv:
        with client(srv) as s:
            s.set_debuglevel(1)
            assert s.login(USER, PASSWORD)[0] == 235
            s.noop()
    err = capsys.readouterr().err
    logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("fastsmtplib"))
    for text, where in ((logs, "log"), (err, "stderr")):
        assert "AUTH " + mechanism.decode() in text, where
        for secret in _secrets():
            assert secret not in text, f"{where} contains a secret: {secret!r}"
        assert "noop" in text.lower(), where  # the rest of the transcript is there


def test_logger_gets_the_transcript_without_debuglevel(caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="fastsmtplib")
    with ScriptedServer(noop_then_quit(), timeout=3) as srv:
        with client(srv) as s:
            s.ehlo()
            s.noop()
    logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("fastsmtplib"))
    assert "ehlo client.example.org" in logs.lower()
    assert "still in step" in logs
    assert "221" in logs
    assert capsys.readouterr().err == ""  # debuglevel 0: nothing printed


def test_debuglevel_2_prints_timestamps(capsys):
    with ScriptedServer(noop_then_quit(), timeout=3) as srv:
        with client(srv) as s:
            s.set_debuglevel(2)
            s.ehlo()
            s.noop()
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert lines
    stamped = [line for line in lines if re.match(r"\d{2}:\d{2}:\d{2}(\.\d+)? ", line)]
    assert stamped and any("noop" in line.lower() for line in stamped), lines


def test_debuglevel_1_prints_no_timestamps(capsys):
    with ScriptedServer(noop_then_quit(), timeout=3) as srv:
        with client(srv) as s:
            s.set_debuglevel(1)
            s.ehlo()
            s.noop()
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert any("noop" in line.lower() for line in lines)
    assert not any(re.match(r"\d{2}:\d{2}:\d{2}", line) for line in lines), lines


# -- malformed AUTH challenge ------------------------------------------------------------------
@pytest.mark.parametrize("challenge", [b"@@not base64@@", b"abc", b"YWJj=ZGVm"])
def test_invalid_base64_challenge_is_an_auth_error_and_cancelled(challenge):
    def script(c):
        c.handshake(["AUTH LOGIN"])
        c.expect_line(b"AUTH LOGIN")
        c.send(b"334 " + challenge + b"\r\n")
        assert c.readline() == b"*\r\n"
        c.send(b"501 5.7.0 Authentication cancelled\r\n")
        c.expect_line(b"NOOP")
        c.send(b"250 usable\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                s.login(USER, PASSWORD)
            assert not isinstance(info.value, ValueError)  # binascii.Error is a ValueError
            assert s.noop() == (250, b"usable")


# -- keyfile / certfile ---------------------------------------------------------------------
@pytest.fixture
def client_cert_files(tls_material, tmp_path):
    _ca, cert, key = tls_material.write_files(tmp_path)
    return str(key), str(cert)


def test_smtp_ssl_keyfile_certfile_warns(client_cert_files):
    keyfile, certfile = client_cert_files
    with pytest.warns(DeprecationWarning) as rec:
        s = smtplib.SMTP_SSL(keyfile=keyfile, certfile=certfile)
    assert any(w.filename == __file__ for w in rec), [w.filename for w in rec]
    assert (s.keyfile, s.certfile) == (keyfile, certfile)
    s.close()


def test_smtp_ssl_certfile_alone_warns(client_cert_files):
    _keyfile, certfile = client_cert_files  # cert.pem does not hold the key
    with pytest.warns(DeprecationWarning):
        try:
            smtplib.SMTP_SSL(certfile=certfile).close()
        except Exception:  # ssl.SSLError: no key in the file; the warning came first
            pass


@pytest.mark.parametrize("arg", ["keyfile", "certfile"])
def test_smtp_ssl_context_conflicts(client_cert_files, client_tls_context, arg):
    keyfile, certfile = client_cert_files
    with pytest.raises(ValueError):
        smtplib.SMTP_SSL(context=client_tls_context, **{arg: keyfile if arg == "keyfile" else certfile})


def _starttls_refused_script(c):
    c.handshake(["STARTTLS", "PIPELINING"])
    c.expect_line(b"STARTTLS")
    c.send(b"454 4.7.0 TLS not available now\r\n")
    c.expect_line(b"NOOP")
    c.send(b"250 still in step\r\n")
    quit_ok(c)


def test_starttls_keyfile_certfile_warns(client_cert_files):
    keyfile, certfile = client_cert_files
    with ScriptedServer(_starttls_refused_script, timeout=3) as srv:
        with client(srv) as s:
            s.ehlo()
            with pytest.warns(DeprecationWarning) as rec:
                with pytest.raises(smtplib.SMTPResponseException) as info:
                    s.starttls(keyfile=keyfile, certfile=certfile)
            assert info.value.smtp_code == 454
            assert any(w.filename == __file__ for w in rec), [w.filename for w in rec]
            assert s.noop() == (250, b"still in step")


@pytest.mark.parametrize("arg", ["keyfile", "certfile"])
def test_starttls_context_conflict_sends_nothing(client_cert_files, client_tls_context, arg):
    keyfile, certfile = client_cert_files
    with ScriptedServer(noop_then_quit(("STARTTLS",)), timeout=3) as srv:
        with client(srv) as s:
            s.ehlo()
            with pytest.raises(ValueError):
                s.starttls(context=client_tls_context, **{arg: keyfile if arg == "keyfile" else certfile})
            assert s.noop() == (250, b"still in step")
    assert commands(srv) == [b"EHLO", b"NOOP", b"QUIT"]


# -- STARTTLS injection ------------------------------------------------------------------------
# test_wire_scripted covers an injected complete EHLO reply followed by an explicit
# ehlo(); here: fragments, capabilities forgotten at once, and the implicit re-EHLO.
@pytest.mark.parametrize("inject", [
    b"250 2.1.0 injected ok\r\n250 2.1.5 injected ok\r\n354 go ahead\r\n",
    b"250-PIPELINING\r\n250-AUTH PLAIN\r\n250 CHUNK",  # a reply cut in the middle
    b"2",
])
def test_starttls_injected_plaintext_is_never_a_reply(inject, client_tls_context):
    def script(c):
        c.handshake(["STARTTLS", "PIPELINING", "CHUNKING"])
        c.expect_line(b"STARTTLS")
        c.starttls(inject=inject)
        c.ehlo(["SIZE 100000"])  # no PIPELINING, no CHUNKING after TLS
        for prefix, reply in ((b"MAIL FROM:<a@example.org>", b"250 mail ok\r\n"),
                              (b"RCPT TO:<b@example.org>", b"250 rcpt ok\r\n"),
                              (b"DATA", b"354 go\r\n")):
            c.expect_line(prefix)
            assert c.pending(0.03) == b""  # lock-step: the injected PIPELINING is unknown
            c.send(reply)
        c.read_data()
        c.send(b"250 queued over tls\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            s.ehlo()
            assert s.starttls(context=client_tls_context)[0] == 220
            # Capabilities are forgotten at once (RFC 3207 §4.2).
            assert s.esmtp_features == {} and not s.does_esmtp
            assert s.ehlo_resp is None and s.helo_resp is None
            # sendmail re-reads them itself with a new EHLO.
            assert s.sendmail("a@example.org", ["b@example.org"], MSG) == {}
            assert s.has_extn("size") and not s.has_extn("pipelining") and not s.has_extn("auth")
    assert srv.conn.pre_tls_bytes == b""


# -- memory bounds -----------------------------------------------------------------------------
def _flood(payload_unit: bytes, total: int, prefix: bytes = b""):
    def script(c):
        c.handshake()
        c.expect_line(b"NOOP")
        sent = 0
        try:
            if prefix:
                c.sock.sendall(prefix)
            chunk = payload_unit * max(1, 65536 // len(payload_unit))
            while sent < total:
                c.sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the client gave up and closed

    return script


@pytest.mark.parametrize("kind", ["continuation-lines", "endless-line"])
def test_huge_replies_are_cut_off(kind):
    if kind == "continuation-lines":
        script = _flood(b"250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n", 10 * 1024 * 1024)
    else:
        script = _flood(b"y" * 4096, 10 * 1024 * 1024, prefix=b"250 ")
    with ScriptedServer(script, timeout=5) as srv:
        s = client(srv)
        s.ehlo()
        t0 = time.monotonic()
        with pytest.raises(smtplib.SMTPResponseException) as info:
            s.noop()
        elapsed = time.monotonic() - t0
        assert isinstance(info.value, smtplib.SMTPReplyTooLong)
        assert info.value.smtp_code == 500
        if kind == "endless-line":
            assert info.value.smtp_error == "Line too long."
        assert s.sock is None  # a connection that sent that is not trusted again
        assert elapsed < 1.5
        s.close()
