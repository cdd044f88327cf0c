"""The smtplib-compatible API against a real (aiosmtpd) server.

Every test asserts what the server really received. Tests without a marker
must pass against both fastsmtplib and the stdlib
(``FASTSMTPLIB_TEST_TARGET=smtplib``); ``fastsmtplib_only`` marks the
deliberate differences listed in DESIGN.md §4, ``stdlib_only`` the stdlib
behaviour they replace.
"""

from __future__ import annotations

import email
import email.policy
import ssl
from email.message import EmailMessage

import pytest

from tests.support.aiosmtpd_server import AUTH_PASSWORD, AUTH_USER, SERVER_HOSTNAME
from tests.support.target import fastsmtplib_only, smtplib, stdlib_only

SENDER = "sender@example.org"
RCPT = "rcpt@example.org"
MSG = (
    b"From: sender@example.org\r\n"
    b"To: rcpt@example.org\r\n"
    b"Subject: integration\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line starting with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"last line\r\n"
)


def connect(srv, **kwargs):
    return smtplib.SMTP(srv.host, srv.port, timeout=10, **kwargs)


def parse(content: bytes) -> EmailMessage:
    return email.message_from_bytes(content, policy=email.policy.default)


def only_crlf(content: bytes) -> bool:
    """No bare CR or LF anywhere."""
    rest = content.replace(b"\r\n", b"")
    return b"\r" not in rest and b"\n" not in rest


# -- connecting, EHLO and the simple commands ---------------------------------
def test_connect_later_and_greeting(aiosmtpd_server):
    c = smtplib.SMTP(timeout=10)
    try:
        code, banner = c.connect(aiosmtpd_server.host, aiosmtpd_server.port)
        assert code == 220
        assert banner.startswith(SERVER_HOSTNAME.encode())
        assert c.sock is not None and c.sock.gettimeout() == 10
    finally:
        c.close()
    assert c.sock is None


def test_ehlo_and_features(aiosmtpd_server):
    with connect(aiosmtpd_server, local_hostname="client.example") as c:
        assert c.ehlo_resp is None and c.does_esmtp is False
        code, resp = c.ehlo()
        assert code == 250
        assert resp.split(b"\n")[0] == SERVER_HOSTNAME.encode()
        assert c.ehlo_resp == resp
        assert c.does_esmtp is True
        assert c.esmtp_features == {"size": "33554432", "8bitmime": "", "help": ""}
        assert c.has_extn("SIZE") and c.has_extn("8bitmime")
        assert not c.has_extn("starttls") and not c.has_extn("auth")
        c.sendmail(SENDER, [RCPT], MSG)
    assert aiosmtpd_server.messages[0].helo == "client.example"


def test_helo(aiosmtpd_server):
    with connect(aiosmtpd_server) as c:
        code, resp = c.helo("client.example")
        assert (code, resp) == (250, SERVER_HOSTNAME.encode())
        assert c.helo_resp == resp
        assert c.does_esmtp is False
        # After HELO, sendmail does not EHLO again and sends no ESMTP options.
        c.sendmail(SENDER, [RCPT], MSG)
    [m] = aiosmtpd_server.messages
    assert m.helo == "client.example" and m.mail_options == []


def test_simple_commands(aiosmtpd_server):
    with connect(aiosmtpd_server) as c:
        c.ehlo()
        assert c.noop() == (250, b"OK")
        assert c.rset() == (250, b"OK")
        assert c.docmd("NOOP") == (250, b"OK")
        code, text = c.vrfy("someone@example.org")
        assert code == 252 and text.startswith(b"Cannot VRFY")
        assert c.verify("someone@example.org")[0] == 252
        assert c.expn("list")[0] == 502
        assert c.help().startswith(b"Supported commands:")
        assert c.help("NOOP") == b"Syntax: NOOP [ignored]"
        assert c.quit() == (221, b"Bye")
        assert c.sock is None and c.file is None
    assert aiosmtpd_server.messages == []


def test_with_statement_quits_and_closes(aiosmtpd_server):
    with connect(aiosmtpd_server) as c:
        assert c.noop()[0] == 250
    assert c.sock is None
    with pytest.raises(smtplib.SMTPServerDisconnected):
        c.noop()


def test_timeout_is_applied(aiosmtpd_server):
    with connect(aiosmtpd_server) as c:
        assert c.sock.gettimeout() == 10


# -- sendmail ------------------------------------------------------------------
def test_sendmail_bytes(aiosmtpd_server):
    with connect(aiosmtpd_server) as c:
        assert c.sendmail(SENDER, [RCPT, "other@example.org"], MSG) == {}
    [m] = aiosmtpd_server.messages
    assert m.mail_from == SENDER
    assert m.rcpt_tos == [RCPT, "other@example.org"]
    assert m.content == MSG  # dot-stuffed by the client, unstuffed by the server
    assert f"SIZE={len(MSG)}" in m.mail_options


def test_sendmail_str_fixes_line_ends(aiosmtpd_server):
    # Documented: a str is ASCII-encoded and lone CR and LF become CRLF.
    text = "Subject: str\n\nline1\rline2\nline3\r\n.dot"
    with connect(aiosmtpd_server) as c:
        c.sendmail(SENDER, RCPT, text)  # a single address may be a str
    [m] = aiosmtpd_server.messages
    assert m.rcpt_tos == [RCPT]
    assert m.content == b"Subject: str\r\n\r\nline1\r\nline2\r\nline3\r\n.dot\r\n"


def test_sendmail_str_must_be_ascii(aiosmtpd_server):
    with connect(aiosmtpd_server) as c:
        with pytest.raises(UnicodeEncodeError):
            c.sendmail(SENDER, [RCPT], "Subject: caf\u00e9\r\n\r\nbody\r\n")
        # The session is still usable afterwards.
        assert c.sendmail(SENDER, [RCPT], MSG) == {}
    assert [m.content for m in aiosmtpd_server.messages] == [MSG]


def test_sendmail_adds_final_crlf(aiosmtpd_server):
    with connect(aiosmtpd_server) as c:
        c.sendmail(SENDER, [RCPT], b"Subject: x\r\n\r\nno newline at end")
    assert aiosmtpd_server.messages[0].content == b"Subject: x\r\n\r\nno newline at end\r\n"


def test_sendmail_options(aiosmtpd_server):
    with connect(aiosmtpd_server) as c:
        c.sendmail(SENDER, [RCPT], MSG, mail_options=["BODY=8BITMIME"])
    [m] = aiosmtpd_server.messages
    assert "BODY=8BITMIME" in m.mail_options
    assert f"SIZE={len(MSG)}" in m.mail_options


def test_sendmail_some_recipients_refused(aiosmtpd_factory):
    srv = aiosmtpd_factory(refuse_recipients={"bad@example.org": "550 5.1.1 no such user",
                                              "full@example.org": "452 4.2.2 mailbox full"})
    with connect(srv) as c:
        refused = c.sendmail(
            SENDER, ["bad@example.org", RCPT, "full@example.org", "ok2@example.org"], MSG
        )
    assert refused == {
        "bad@example.org": (550, b"5.1.1 no such user"),
        "full@example.org": (452, b"4.2.2 mailbox full"),
    }
    [m] = srv.messages
    assert m.rcpt_tos == [RCPT, "ok2@example.org"] and m.content == MSG


def test_sendmail_all_recipients_refused(aiosmtpd_factory):
    srv = aiosmtpd_factory(refuse_recipients={"a@example.org": 550, "b@example.org": 551})
    with connect(srv) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            c.sendmail(SENDER, ["a@example.org", "b@example.org"], MSG)
        assert {k: v[0] for k, v in info.value.recipients.items()} == {
            "a@example.org": 550, "b@example.org": 551}
        # The transaction was reset: the next one goes through.
        assert c.sendmail(SENDER, [RCPT], MSG) == {}
    assert [m.rcpt_tos for m in srv.messages] == [[RCPT]]


def test_sendmail_sender_refused(aiosmtpd_factory):
    srv = aiosmtpd_factory(refuse_senders={"spammer@example.org": "553 5.7.1 go away"})
    with connect(srv) as c:
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            c.sendmail("spammer@example.org", [RCPT], MSG)
        assert (info.value.smtp_code, info.value.smtp_error) == (553, b"5.7.1 go away")
        assert info.value.sender == "spammer@example.org"
        assert c.sendmail(SENDER, [RCPT], MSG) == {}
    assert [m.mail_from for m in srv.messages] == [SENDER]


def test_sendmail_data_refused(aiosmtpd_factory):
    srv = aiosmtpd_factory(data_reply="554 5.6.0 content rejected")
    with connect(srv) as c:
        with pytest.raises(smtplib.SMTPDataError) as info:
            c.sendmail(SENDER, [RCPT], MSG)
        assert (info.value.smtp_code, info.value.smtp_error) == (554, b"5.6.0 content rejected")
        assert c.noop() == (250, b"OK")  # the session is still in step
    assert srv.messages[0].content == MSG  # it was received, then refused


def test_sendmail_too_large_for_size(aiosmtpd_factory):
    srv = aiosmtpd_factory(data_size_limit=100)
    with connect(srv) as c:
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            c.sendmail(SENDER, [RCPT], MSG + b"x" * 200 + b"\r\n")
        assert info.value.smtp_code == 552
    assert srv.messages == []


def test_several_messages_one_connection(aiosmtpd_server):
    with connect(aiosmtpd_server) as c:
        for i in range(5):
            c.sendmail(SENDER, [f"r{i}@example.org"], MSG.replace(b"integration", b"n%d" % i))
    assert [m.rcpt_tos for m in aiosmtpd_server.messages] == [
        [f"r{i}@example.org"] for i in range(5)]
    assert [parse(m.content)["Subject"] for m in aiosmtpd_server.messages] == [
        f"n{i}" for i in range(5)]


def test_low_level_mail_rcpt_data(aiosmtpd_server):
    with connect(aiosmtpd_server) as c:
        c.ehlo()
        assert c.mail(SENDER)[0] == 250
        assert c.rcpt(RCPT)[0] == 250
        assert c.data(MSG)[0] == 250
    [m] = aiosmtpd_server.messages
    assert (m.mail_from, m.rcpt_tos, m.content) == (SENDER, [RCPT], MSG)


# -- deliberate fastsmtplib differences in DATA encoding ------------------------
SMUGGLE = b"Subject: s\r\n\r\na\r.\rb\n.\nc\r\n.\nd\r\n"


@fastsmtplib_only
def test_bytes_bare_line_ends_are_normalised_and_stuffed(aiosmtpd_server):
    # DESIGN §4: bytes get bare CR/LF normalised and dots stuffed after any
    # line end (SMTP smuggling, 2023), so the server sees every line.
    with connect(aiosmtpd_server) as c:
        c.sendmail(SENDER, [RCPT], SMUGGLE)
    [m] = aiosmtpd_server.messages
    assert m.content == b"Subject: s\r\n\r\na\r\n.\r\nb\r\n.\r\nc\r\n.\r\nd\r\n"
    assert only_crlf(m.content)


@stdlib_only
def test_stdlib_sends_bytes_line_ends_unchanged(aiosmtpd_server):
    with connect(aiosmtpd_server) as c:
        c.sendmail(SENDER, [RCPT], SMUGGLE)
    assert not only_crlf(aiosmtpd_server.messages[0].content)


# -- send_message ----------------------------------------------------------------
def make_message(**headers) -> EmailMessage:
    msg = EmailMessage()
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hello.\n.dotted line\nBye.\n")
    return msg


def test_send_message_envelope_from_headers_and_bcc_dropped(aiosmtpd_server):
    msg = make_message(
        From="Sender <sender@example.org>",
        To="A <a@example.org>, b@example.org",
        Cc="c@example.org",
        Bcc="Hidden <hidden@example.org>",
        Subject="send_message",
    )
    with connect(aiosmtpd_server) as c:
        assert c.send_message(msg) == {}
    [m] = aiosmtpd_server.messages
    assert m.mail_from == "sender@example.org"
    assert sorted(m.rcpt_tos) == sorted(
        ["a@example.org", "b@example.org", "c@example.org", "hidden@example.org"])
    got = parse(m.content)
    assert got["Bcc"] is None and b"hidden@" not in m.content
    assert got["To"] == "A <a@example.org>, b@example.org"
    assert got["Cc"] == "c@example.org"
    assert got.get_content().replace("\r\n", "\n") == "Hello.\n.dotted line\nBye.\n"
    assert only_crlf(m.content)
    assert msg["Bcc"] is not None  # the caller's message is not modified


def test_send_message_sender_header_wins(aiosmtpd_server):
    msg = make_message(From="author@example.org", Sender="agent@example.org", To=RCPT)
    with connect(aiosmtpd_server) as c:
        c.send_message(msg)
    assert aiosmtpd_server.messages[0].mail_from == "agent@example.org"


def test_send_message_explicit_envelope(aiosmtpd_server):
    msg = make_message(From="author@example.org", To="a@example.org", Bcc="b@example.org")
    with connect(aiosmtpd_server) as c:
        c.send_message(msg, from_addr="bounce@example.org", to_addrs=["x@example.org"])
    [m] = aiosmtpd_server.messages
    assert (m.mail_from, m.rcpt_tos) == ("bounce@example.org", ["x@example.org"])
    assert parse(m.content)["Bcc"] is None


def test_send_message_resent_headers(aiosmtpd_server):
    msg = make_message(From="author@example.org", To="orig@example.org",
                       Bcc="origbcc@example.org", Subject="resent")
    msg["Resent-Date"] = "Thu, 1 Jan 2015 00:00:00 +0000"
    msg["Resent-From"] = "resender@example.org"
    msg["Resent-To"] = "new1@example.org, new2@example.org"
    msg["Resent-Bcc"] = "newbcc@example.org"
    with connect(aiosmtpd_server) as c:
        c.send_message(msg)
    [m] = aiosmtpd_server.messages
    assert m.mail_from == "resender@example.org"
    assert sorted(m.rcpt_tos) == ["new1@example.org", "new2@example.org", "newbcc@example.org"]
    got = parse(m.content)
    assert got["Resent-Bcc"] is None and got["Bcc"] is None
    assert got["Resent-To"] == "new1@example.org, new2@example.org"
    assert got["To"] == "orig@example.org"


def test_send_message_two_resent_blocks_is_an_error(aiosmtpd_server):
    msg = make_message(From="a@example.org", To=RCPT)
    msg["Resent-Date"] = "Thu, 1 Jan 2015 00:00:00 +0000"
    msg["Resent-Date"] = "Fri, 2 Jan 2015 00:00:00 +0000"
    with connect(aiosmtpd_server) as c:
        with pytest.raises(ValueError):
            c.send_message(msg)
    assert aiosmtpd_server.messages == []


def test_send_message_compat32_message(aiosmtpd_server):
    msg = email.message_from_bytes(MSG)  # compat32 policy, as old code builds them
    with connect(aiosmtpd_server) as c:
        c.send_message(msg)
    [m] = aiosmtpd_server.messages
    assert (m.mail_from, m.rcpt_tos) == (SENDER, [RCPT])
    assert m.content == MSG


# -- SMTPUTF8 --------------------------------------------------------------------
def test_send_message_smtputf8(smtputf8_server):
    msg = make_message(From="J\u00f6rg <j\u00f6rg@ex\u00e4mple.org>",
                       To="\u00fc\u00f1\u00ee@example.org, plain@example.org",
                       Subject="gr\u00fc\u00dfe")
    with connect(smtputf8_server) as c:
        c.send_message(msg)
    [m] = smtputf8_server.messages
    assert m.smtp_utf8 is True
    assert "SMTPUTF8" in m.mail_options and "BODY=8BITMIME" in m.mail_options
    assert m.mail_from == "j\u00f6rg@ex\u00e4mple.org"
    assert m.rcpt_tos == ["\u00fc\u00f1\u00ee@example.org", "plain@example.org"]
    assert "j\u00f6rg@ex\u00e4mple.org".encode() in m.content  # raw UTF-8 headers
    assert parse(m.content)["Subject"] == "gr\u00fc\u00dfe"


def test_send_message_non_ascii_address_needs_smtputf8(aiosmtpd_server):
    msg = make_message(From="j\u00f6rg@example.org", To=RCPT)
    with connect(aiosmtpd_server) as c:
        with pytest.raises(smtplib.SMTPNotSupportedError):
            c.send_message(msg)
    assert aiosmtpd_server.messages == []


def test_sendmail_smtputf8_option(smtputf8_server):
    with connect(smtputf8_server) as c:
        c.sendmail("\u00e5@example.org", ["\u00f8@example.org"], MSG, mail_options=["SMTPUTF8"])
    [m] = smtputf8_server.messages
    assert (m.mail_from, m.rcpt_tos, m.smtp_utf8) == ("\u00e5@example.org", ["\u00f8@example.org"], True)


# -- STARTTLS ----------------------------------------------------------------------
def test_starttls_with_context(starttls_server, client_tls_context):
    with connect(starttls_server) as c:
        c.ehlo()
        assert c.has_extn("starttls")
        code, _ = c.starttls(context=client_tls_context)
        assert code == 220
        # RFC 3207 §4.2: everything learnt before TLS is forgotten.
        assert c.ehlo_resp is None and c.helo_resp is None
        assert c.esmtp_features == {} and c.does_esmtp is False
        assert isinstance(c.sock, ssl.SSLSocket)
        c.ehlo()
        assert not c.has_extn("starttls")
        c.sendmail(SENDER, [RCPT], MSG)
    [m] = starttls_server.messages
    assert m.tls is True and m.content == MSG


def test_starttls_ehlo_is_implicit(starttls_server, client_tls_context):
    with connect(starttls_server) as c:
        assert c.starttls(context=client_tls_context)[0] == 220  # EHLOs first by itself
        c.sendmail(SENDER, [RCPT], MSG)  # and again after TLS
    assert starttls_server.messages[0].tls


def test_starttls_required(starttls_required_server, client_tls_context):
    with connect(starttls_required_server) as c:
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            c.sendmail(SENDER, [RCPT], MSG)
        assert info.value.smtp_code == 530
        c.starttls(context=client_tls_context)
        c.sendmail(SENDER, [RCPT], MSG)
    assert [m.tls for m in starttls_required_server.messages] == [True]


def test_starttls_not_offered(aiosmtpd_server, client_tls_context):
    with connect(aiosmtpd_server) as c:
        with pytest.raises(smtplib.SMTPNotSupportedError):
            c.starttls(context=client_tls_context)
        assert c.noop()[0] == 250  # still usable in the clear


def test_starttls_context_checks_hostname(aiosmtpd_factory, tls_material):
    # A certificate from the trusted CA, but for another name.
    srv = aiosmtpd_factory(tls="starttls", server_context=tls_material.server_context("mail.example.org"))
    with connect(srv) as c:
        with pytest.raises(ssl.SSLCertVerificationError):
            c.starttls(context=tls_material.client_context())
    assert srv.messages == []


@fastsmtplib_only
def test_starttls_default_context_verifies_certificate(starttls_server):
    # DESIGN §4: TLS contexts fastsmtplib creates verify the certificate;
    # the test CA is not in the system store, so this must fail.
    c = connect(starttls_server)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            c.starttls()
    finally:
        c.close()
    assert starttls_server.messages == []


@stdlib_only
def test_stdlib_starttls_default_context_does_not_verify(starttls_server):
    with connect(starttls_server) as c:
        assert c.starttls()[0] == 220


# -- SMTP_SSL ------------------------------------------------------------------------
def test_smtp_ssl_with_context(ssl_server, client_tls_context):
    with smtplib.SMTP_SSL(ssl_server.host, ssl_server.port, context=client_tls_context,
                          timeout=10) as c:
        assert isinstance(c.sock, ssl.SSLSocket)
        assert c.ehlo()[0] == 250
        assert not c.has_extn("starttls")
        c.sendmail(SENDER, [RCPT], MSG)
    [m] = ssl_server.messages
    assert m.tls is True and m.content == MSG


def test_smtp_ssl_default_port():
    assert smtplib.SMTP_SSL.default_port == smtplib.SMTP_SSL_PORT == 465
    assert smtplib.SMTP.default_port == smtplib.SMTP_PORT == 25


@fastsmtplib_only
def test_smtp_ssl_default_context_verifies_certificate(ssl_server):
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(ssl_server.host, ssl_server.port, timeout=10)
    assert ssl_server.messages == []


# -- AUTH ----------------------------------------------------------------------------
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_login_each_mechanism(aiosmtpd_factory, mech):
    srv = aiosmtpd_factory(auth={AUTH_USER: AUTH_PASSWORD}, auth_mechanisms=[mech])
    with connect(srv) as c:
        code, _ = c.login(AUTH_USER, AUTH_PASSWORD)
        assert code == 235
        c.sendmail(SENDER, [RCPT], MSG)
    assert srv.handler.logins == [(mech, AUTH_USER, True)]
    assert srv.messages[0].auth_login == AUTH_USER.encode()


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_login_without_initial_response(aiosmtpd_factory, mech):
    srv = aiosmtpd_factory(auth={AUTH_USER: AUTH_PASSWORD}, auth_mechanisms=[mech])
    with connect(srv) as c:
        assert c.login(AUTH_USER, AUTH_PASSWORD, initial_response_ok=False)[0] == 235
    assert srv.handler.logins == [(mech, AUTH_USER, True)]


def test_login_prefers_cram_md5(auth_server):
    # Documented: the mechanisms are tried in the order CRAM-MD5, PLAIN, LOGIN.
    with connect(auth_server) as c:
        c.login(AUTH_USER, AUTH_PASSWORD)
    assert auth_server.handler.logins == [("CRAM-MD5", AUTH_USER, True)]


@stdlib_only
def test_login_wrong_password_tries_each_then_fails(auth_server):
    with connect(auth_server) as c:
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            c.login(AUTH_USER, "wrong")
        assert info.value.smtp_code == 535
        assert c.noop()[0] == 250  # still in step after the failed exchanges
    assert [m for m, _, ok in auth_server.handler.logins] == ["CRAM-MD5", "PLAIN", "LOGIN"]
    assert not any(ok for _, _, ok in auth_server.handler.logins)


@fastsmtplib_only
def test_login_stops_after_535(auth_server):
    # 535 means the credentials are wrong: retrying them with every other
    # mechanism only multiplies failed logins (and account lockouts).
    with connect(auth_server) as c:
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            c.login(AUTH_USER, "wrong")
        assert info.value.smtp_code == 535
        assert c.noop()[0] == 250
    assert [(m, ok) for m, _, ok in auth_server.handler.logins] == [("CRAM-MD5", False)]


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_login_wrong_password_single_mechanism(aiosmtpd_factory, mech):
    srv = aiosmtpd_factory(auth={AUTH_USER: AUTH_PASSWORD}, auth_mechanisms=[mech])
    with connect(srv) as c:
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            c.login("mallory", AUTH_PASSWORD)
        assert info.value.smtp_code == 535
        # A later good login on the same connection works.
        assert c.login(AUTH_USER, AUTH_PASSWORD)[0] == 235


def test_login_not_supported(aiosmtpd_server):
    with connect(aiosmtpd_server) as c:
        with pytest.raises(smtplib.SMTPNotSupportedError):
            c.login(AUTH_USER, AUTH_PASSWORD)


@pytest.mark.parametrize(
    "mech, method, initial_ok",
    [("PLAIN", "auth_plain", True), ("PLAIN", "auth_plain", False),
     ("LOGIN", "auth_login", True), ("LOGIN", "auth_login", False),
     ("CRAM-MD5", "auth_cram_md5", True)],
)
def test_auth_with_builtin_authobjects(auth_server, mech, method, initial_ok):
    with connect(auth_server) as c:
        c.ehlo()
        c.user, c.password = AUTH_USER, AUTH_PASSWORD
        code, _ = c.auth(mech, getattr(c, method), initial_response_ok=initial_ok)
        assert code == 235
    assert auth_server.handler.logins == [(mech, AUTH_USER, True)]


def test_auth_custom_authobject_gets_challenges(auth_server):
    calls = []

    def plain(challenge=None):
        calls.append(challenge)
        if challenge is None:
            return None  # no initial response: wait for the server's challenge
        return f"\0{AUTH_USER}\0{AUTH_PASSWORD}"

    with connect(auth_server) as c:
        c.ehlo()
        assert c.auth("PLAIN", plain)[0] == 235
    assert calls == [None, b""]
    assert auth_server.handler.logins == [("PLAIN", AUTH_USER, True)]


def test_auth_wrong_password(auth_server):
    with connect(auth_server) as c:
        c.ehlo()
        c.user, c.password = AUTH_USER, "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.auth("PLAIN", c.auth_plain)


def test_login_after_starttls(aiosmtpd_factory, client_tls_context):
    srv = aiosmtpd_factory(tls="starttls", auth={AUTH_USER: AUTH_PASSWORD}, auth_require_tls=True)
    with connect(srv) as c:
        c.ehlo()
        assert not c.has_extn("auth")
        c.starttls(context=client_tls_context)
        c.ehlo()
        assert c.has_extn("auth")
        c.login(AUTH_USER, AUTH_PASSWORD)
        c.sendmail(SENDER, [RCPT], MSG)
    [m] = srv.messages
    assert m.tls and m.auth_login == AUTH_USER.encode()


# -- LMTP ------------------------------------------------------------------------------
LMTP_RCPTS = ["one@example.org", "two@example.org", "three@example.org"]


def test_lmtp_tcp(lmtp_server):
    c = smtplib.LMTP(lmtp_server.host, lmtp_server.port)
    try:
        code, resp = c.ehlo()  # LMTP's EHLO is LHLO
        assert code == 250 and resp.startswith(SERVER_HOSTNAME.encode())
        assert c.sendmail(SENDER, LMTP_RCPTS, MSG) == {}
    finally:
        c.close()  # not quit(): the stdlib leaves the extra DATA replies unread
    [m] = lmtp_server.messages
    assert (m.mail_from, m.rcpt_tos, m.content) == (SENDER, LMTP_RCPTS, MSG)


def test_lmtp_unix_socket(lmtp_unix_server):
    c = smtplib.LMTP(lmtp_unix_server.path)
    try:
        assert c.sendmail(SENDER, LMTP_RCPTS, MSG) == {}
    finally:
        c.close()
    [m] = lmtp_unix_server.messages
    assert (m.mail_from, m.rcpt_tos, m.content) == (SENDER, LMTP_RCPTS, MSG)


def test_lmtp_unix_socket_connect_later(lmtp_unix_server):
    c = smtplib.LMTP()
    try:
        assert c.connect(lmtp_unix_server.path)[0] == 220
        c.sendmail(SENDER, [RCPT], MSG)
        assert c.quit()[0] == 221  # one recipient: one DATA reply, still in step
    finally:
        c.close()
    assert lmtp_unix_server.messages[0].rcpt_tos == [RCPT]


def test_lmtp_rcpt_refused(aiosmtpd_factory):
    srv = aiosmtpd_factory(lmtp=True, refuse_recipients={"two@example.org": 550})
    c = smtplib.LMTP(srv.host, srv.port)
    try:
        refused = c.sendmail(SENDER, LMTP_RCPTS, MSG)
        assert set(refused) == {"two@example.org"} and refused["two@example.org"][0] == 550
    finally:
        c.close()
    assert srv.messages[0].rcpt_tos == ["one@example.org", "three@example.org"]


@fastsmtplib_only
def test_lmtp_reads_every_data_reply(lmtp_server):
    # RFC 2033 §4.2: one reply per accepted recipient. The stdlib reads only
    # the first, so its next command gets a stale reply; fastsmtplib stays in step.
    with smtplib.LMTP(lmtp_server.host, lmtp_server.port) as c:
        assert c.sendmail(SENDER, LMTP_RCPTS, MSG) == {}
        assert c.noop() == (250, b"OK")
        assert c.sendmail(SENDER, ["again@example.org"], MSG) == {}
    assert [m.rcpt_tos for m in lmtp_server.messages] == [LMTP_RCPTS, ["again@example.org"]]


@fastsmtplib_only
def test_lmtp_reports_recipient_failing_after_data(aiosmtpd_factory):
    srv = aiosmtpd_factory(lmtp=True, lmtp_data_replies={"two@example.org": "452 4.2.2 mailbox full"})
    with smtplib.LMTP(srv.host, srv.port) as c:
        refused = c.sendmail(SENDER, LMTP_RCPTS, MSG)
        assert refused == {"two@example.org": (452, b"4.2.2 mailbox full")}
        assert c.noop() == (250, b"OK")
