"""The smtplib-compatible API against real C servers: Postfix smtpd and smtp-sink.

Postfix advertises what aiosmtpd lacks (PIPELINING, CHUNKING, DSN, SMTPUTF8)
and stores what it received, so these tests check that a client using those
extensions still delivers exactly the message and envelope it was given.
smtp-sink is a fast discard server that can dump each transaction.
Runs against both fastsmtplib and the stdlib (``FASTSMTPLIB_TEST_TARGET``).
"""

from __future__ import annotations

import pytest

from tests.support.postfix import queue_id
from tests.support.target import smtplib

SENDER = "sender@example.org"
RCPT = "rcpt@example.org"
MSG = (
    b"From: sender@example.org\r\n"
    b"To: rcpt@example.org\r\n"
    b"Subject: real server\r\n"
    b"\r\n"
    b"line one\r\n"
    b".leading dot\r\n"
    b".\r\n"
    b"..\r\n"
    b"end\r\n"
)


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


# -- Postfix ---------------------------------------------------------------------
def test_postfix_sendmail(postfix):
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as c:
        c.ehlo()
        assert c.has_extn("pipelining") and c.has_extn("chunking")
        assert c.sendmail(SENDER, [RCPT, "second@example.org"], MSG) == {}
    [m] = postfix.messages()
    assert m.sender == SENDER
    assert m.recipients == [RCPT, "second@example.org"]
    assert m.body_without_received == lf(MSG)


def test_postfix_refusals(postfix):
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as c:
        refused = c.sendmail(
            SENDER, ["reject@example.org", RCPT, "defer@example.org", "bounce@example.org"], MSG)
        assert {k: v[0] for k, v in refused.items()} == {
            "reject@example.org": 550, "defer@example.org": 450, "bounce@example.org": 550}
        assert b"unknown user" in refused["bounce@example.org"][1]
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            c.sendmail("reject@example.org", [RCPT], MSG)
        assert info.value.smtp_code == 550
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            c.sendmail(SENDER, ["reject@example.org"], MSG)
        assert c.sendmail(SENDER, ["last@example.org"], MSG) == {}
    assert [m.recipients for m in postfix.messages()] == [[RCPT], ["last@example.org"]]


def test_postfix_dsn_options(postfix):
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as c:
        reply = c.sendmail(SENDER, [RCPT], MSG, mail_options=["RET=HDRS", "ENVID=env-42"],
                           rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;orig@example.org"])
        assert reply == {}
    [m] = postfix.messages()
    assert m.attribute("envelope_id") == "env-42"
    assert m.attribute("ret_flags") == "2"  # HDRS
    assert m.attribute("notify_flags") == "6"  # SUCCESS | FAILURE
    assert m.attribute("dsn_orig_rcpt") == "rfc822;orig@example.org"


def test_postfix_send_message_smtputf8(postfix):
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "J\u00f6rg <j\u00f6rg@ex\u00e4mple.org>"
    msg["To"] = "\u00fc\u00f1\u00ee@example.org"
    msg["Subject"] = "gr\u00fc\u00dfe"
    msg.set_content("K\u00e4se.\n")
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as c:
        c.send_message(msg)
    [m] = postfix.messages()
    assert m.sender == "j\u00f6rg@ex\u00e4mple.org"
    assert m.recipients == ["\u00fc\u00f1\u00ee@example.org"]
    assert m.protocol.startswith("UTF8SMTP")
    assert "Subject: gr\u00fc\u00dfe".encode() in m.content


def test_postfix_starttls_then_send(postfix, client_tls_context):
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as c:
        c.starttls(context=client_tls_context)
        c.ehlo()
        assert not c.has_extn("starttls")
        c.sendmail(SENDER, [RCPT], MSG)
    [m] = postfix.messages()
    assert m.protocol == "ESMTPS"
    assert m.body_without_received == lf(MSG)


def test_postfix_large_message_with_many_dot_lines(postfix):
    lines = [b".%06d dotted" % i if i % 3 == 0 else b"line %06d" % i for i in range(40000)]
    body = b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    with smtplib.SMTP(postfix.host, postfix.port, timeout=30) as c:
        c.sendmail(SENDER, [RCPT], body)
    [m] = postfix.messages()
    assert m.body_without_received == lf(body)


def test_postfix_many_messages_one_connection(postfix):
    ids = []
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as c:
        for i in range(20):
            c.sendmail(SENDER, [f"r{i}@example.org"], MSG)
            ids.append(i)
    got = sorted(m.recipients[0] for m in postfix.messages())
    assert got == sorted(f"r{i}@example.org" for i in ids)


def test_postfix_low_level_data_reply_has_queue_id(postfix):
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as c:
        c.ehlo()
        c.mail(SENDER)
        c.rcpt(RCPT)
        code, reply = c.data(MSG)
    assert code == 250
    assert postfix.message(queue_id(reply)).recipients == [RCPT]


# -- smtp-sink -------------------------------------------------------------------
def test_sink_many_messages(smtp_sink):
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as c:
        for i in range(200):
            assert c.sendmail(SENDER, [RCPT, f"r{i}@example.org"], MSG) == {}


def test_sink_dumped_transactions(smtp_sink_factory):
    sink = smtp_sink_factory(dump=True)
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as c:
        for i in range(3):
            c.sendmail(SENDER, [f"r{i}@example.org"], MSG)
    dumps = sink.dumps(expect=3)
    assert sorted(d.rcpt_args[0] for d in dumps) == [f"<r{i}@example.org>" for i in range(3)]
    assert all(d.mail_args.startswith(f"<{SENDER}>") for d in dumps)
    assert all(d.data == lf(MSG) for d in dumps)


def test_sink_refuses_rcpt_softly(smtp_sink_factory):
    sink = smtp_sink_factory("-r", "RCPT")
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            c.sendmail(SENDER, [RCPT, "b@example.org"], MSG)
        assert {v[0] for v in info.value.recipients.values()} == {450}
        assert c.noop()[0] == 250


def test_sink_without_pipelining(smtp_sink_factory):
    sink = smtp_sink_factory(pipelining=False, dump=True)
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as c:
        c.ehlo()
        assert not c.has_extn("pipelining")
        assert c.sendmail(SENDER, [RCPT, "b@example.org"], MSG) == {}
    [d] = sink.dumps(expect=1)
    assert d.rcpt_args == [f"<{RCPT}>", "<b@example.org>"]


def test_sink_lmtp_unix_socket(smtp_sink_factory):
    sink = smtp_sink_factory(lmtp=True, unix_socket=True, dump=True)
    c = smtplib.LMTP(sink.path)
    try:
        assert c.sendmail(SENDER, [RCPT, "b@example.org"], MSG) == {}
    finally:
        c.close()  # not quit(): the stdlib leaves the second DATA reply unread
    [d] = sink.dumps(expect=1)
    assert d.rcpt_args == [f"<{RCPT}>", "<b@example.org>"]
    assert d.data == lf(MSG)
