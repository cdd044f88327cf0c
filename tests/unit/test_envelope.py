"""The one envelope encoder: its fast path writes exactly what its general path writes.

``_envelope.Encoder`` encodes plain addresses with the ``encode_envelope``
kernel and everything else as the stdlib does (``quoteaddr``, options, SIZE,
SMTPUTF8, BINARYMIME).  For every input the fast path takes, its payload and
MAIL/RCPT bytes must equal the general path's, and it must decline whatever the
general path would treat differently (refuse, or encode otherwise).  No server
is needed: both only format bytes from the server's capabilities.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsmtplib import _envelope
from fastsmtplib._protocol import Capabilities
from tests.support.target import fastsmtplib_only, smtplib

pytestmark = fastsmtplib_only

FEATURES = {
    "data": {"pipelining": "", "8bitmime": ""},
    "data+size": {"pipelining": "", "size": "10240000"},
    "small size": {"pipelining": "", "size": "300"},
    "bdat": {"pipelining": "", "chunking": "", "size": "0"},
    "bdat+binarymime": {"pipelining": "", "chunking": "", "binarymime": ""},
    "helo": {},
}


def encoder(name):
    return _envelope.Encoder(Capabilities.from_features(FEATURES[name], esmtp=name != "helo"))


def both_paths(enc, sender, rcpts, msg, mail_options=(), rcpt_options=()):
    got = enc._fast(sender, list(rcpts), msg, mail_options, rcpt_options)
    try:
        want = enc._general(sender, list(rcpts), msg, mail_options, rcpt_options)
    except Exception as exc:  # noqa: BLE001 - the general path's refusal
        want = exc
    return got, want


address = st.sampled_from(["a@example.org", "first.last@sub.example.com", "x+tag@h-1.example",
                           "<b@example.org>", "Name <n@example.org>", "user@[192.0.2.1]",
                           "jörg@example.org", "a..b@example.org", "", "local", "a@b\r\nRSET"])
body = st.sampled_from([b"Subject: x\r\n\r\nhi\r\n", b"no final crlf", b".lead dot\n.\r\nx",
                        "str body\r\n.dot\r\n", "caf\u00e9\r\n", b"8bit \xff\r\n", b"x" * 400])


@settings(max_examples=400, deadline=None)
@given(features=st.sampled_from(sorted(FEATURES)), sender=address,
       rcpts=st.lists(address, min_size=0, max_size=3), msg=body,
       options=st.sampled_from([(), ("BODY=8BITMIME",), ("SMTPUTF8",), ("RET=HDRS",)]),
       ropts=st.sampled_from([(), ("NOTIFY=NEVER",), ("BAD\r\nRSET",)]))
def test_fast_path_equals_general_path(features, sender, rcpts, msg, options, ropts):
    got, want = both_paths(encoder(features), sender, rcpts, msg, options, ropts)
    if got is None:
        return  # declined: the general path decides, whatever it does
    assert not isinstance(want, Exception), f"fast path accepted what the general path refuses: {want!r}"
    assert (got.envelope, got.payload, got.bdat, got.utf8, got.to_addrs) == (
        want.envelope, want.payload, want.bdat, want.utf8, want.to_addrs)


@pytest.mark.parametrize("features", sorted(set(FEATURES) - {"bdat+binarymime"}))
def test_fast_path_taken_for_plain_input(features):
    enc = encoder(features)
    text = "Subject: s\r\n\r\n.body\r\n" + ("y" * 400 if features == "small size" else "")
    got, want = both_paths(enc, "news@example.org", ["a@example.org", "b@example.org"], text, (), ("NOTIFY=NEVER",))
    if features == "small size":
        assert got is None and isinstance(want, smtplib.SMTPMessageTooLarge)
        return
    assert got is not None and got.envelope == want.envelope and got.payload == want.payload


def test_exact_bytes():
    enc = encoder("data+size")
    p = enc.encode("n@example.org", ["a@example.org", "<b@example.org>"], b"Subject: s\n\n.x\n", ("BODY=8BITMIME",))
    assert p.envelope == (b"mail FROM:<n@example.org> size=18 BODY=8BITMIME\r\n"
                          b"rcpt TO:<a@example.org>\r\nrcpt TO:<b@example.org>\r\n")
    assert p.payload == b"Subject: s\r\n\r\n..x\r\n.\r\n"
    assert p.envelope_lines() == [b"mail FROM:<n@example.org> size=18 BODY=8BITMIME\r\n",
                                  b"rcpt TO:<a@example.org>\r\n", b"rcpt TO:<b@example.org>\r\n"]


def test_caller_errors_raise_before_anything_is_encoded():
    with pytest.raises(smtplib.SMTPMessageTooLarge):
        encoder("small size").encode("a@example.org", "b@example.org", b"x" * 400)
    with pytest.raises(ValueError, match="newline"):
        encoder("data").encode("a@example.org", "b@example.org\r\nRSET", b"x")
    with pytest.raises(ValueError, match="newline"):
        encoder("data").encode("a@example.org", "b@example.org", b"x", (), ("X=\r\nRSET",))
    with pytest.raises(smtplib.SMTPNotSupportedError):
        encoder("data").encode("a@example.org", "b@example.org", b"x", ("SMTPUTF8",))
    with pytest.raises(smtplib.SMTPNotSupportedError):
        encoder("data").encode("a@example.org", "b@example.org", b"x", ("BODY=BINARYMIME",))
    with pytest.raises(UnicodeEncodeError):
        encoder("data").encode("a@example.org", "b@example.org", "caf\u00e9")
    with pytest.raises(UnicodeEncodeError):
        encoder("data").encode("jörg@example.org", "b@example.org", "x")


def test_binarymime_body_goes_raw_and_is_declared():
    raw = b"\x00\xff\nbare\r.\r\n.x"
    p = encoder("bdat+binarymime").encode("a@example.org", "b@example.org", raw)
    assert p.bdat and p.payload == raw and p.envelope.split(b"\r\n")[0].endswith(b" BODY=BINARYMIME")
