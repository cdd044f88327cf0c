"""send_many's fast envelope encoder writes exactly what the general path writes.

``batch._FastEnvelopes.encode`` skips ``_prepare``'s generality for plain
addresses and str/bytes messages; for every input it accepts, its payload and
MAIL/RCPT bytes must equal the general path's, and it must decline (None)
whatever the general path would treat differently.  No server is needed: both
only format bytes from the connection's advertised features.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsmtplib import batch
from tests.support.target import fastsmtplib_only, smtplib

pytestmark = fastsmtplib_only

FEATURES = {
    "data": {"pipelining": "", "8bitmime": ""},
    "data+size": {"pipelining": "", "size": "10240000"},
    "small size": {"pipelining": "", "size": "300"},
    "bdat": {"pipelining": "", "chunking": "", "size": "0"},
    "bdat+binarymime": {"pipelining": "", "chunking": "", "binarymime": ""},
}


def conn_with(features, esmtp=True):
    c = smtplib.SMTP()  # not connected: only features are read
    c.ehlo_resp = b"test"
    c.does_esmtp = esmtp
    c.esmtp_features = dict(features)
    return c


def both_paths(conn, item, mail_options=(), rcpt_options=()):
    fast = batch._FastEnvelopes(conn, mail_options, rcpt_options)
    got = fast.encode(*item) if fast.usable else None
    result = batch.SendResult(0)
    try:
        want = batch._prepare(conn, item, mail_options, rcpt_options, result)
    except Exception as exc:  # noqa: BLE001 - the general path's refusal
        want = exc
    return got, want, result


address = st.sampled_from(["a@example.org", "first.last@sub.example.com", "x+tag@h-1.example",
                           "<b@example.org>", "Name <n@example.org>", "user@[192.0.2.1]",
                           "jörg@example.org", "a..b@example.org", "", "local"])
body = st.sampled_from([b"Subject: x\r\n\r\nhi\r\n", b"no final crlf", b".lead dot\n.\r\nx",
                        "str body\r\n.dot\r\n", "caf\u00e9\r\n", b"8bit \xff\r\n", b"x" * 400])


@settings(max_examples=400, deadline=None)
@given(features=st.sampled_from(sorted(FEATURES)), sender=address,
       rcpts=st.lists(address, min_size=0, max_size=3), msg=body,
       options=st.sampled_from([(), ("BODY=8BITMIME",), ("SMTPUTF8",), ("RET=HDRS",)]),
       ropts=st.sampled_from([(), ("NOTIFY=NEVER",), ("BAD\r\nRSET",)]))
def test_fast_path_equals_general_path(features, sender, rcpts, msg, options, ropts):
    conn = conn_with(FEATURES[features])
    got, want, result = both_paths(conn, (sender, rcpts, msg), options, ropts)
    if got is None:
        return  # declined: the general path decides, whatever it does
    assert not isinstance(want, Exception), f"fast path accepted what the general path refuses: {want!r}"
    payload, wire, to_list = got
    assert (payload, wire) == want
    assert to_list == result.to_addrs


@pytest.mark.parametrize("features", sorted(set(FEATURES) - {"bdat+binarymime"}))
def test_fast_path_taken_for_plain_input(features):
    conn = conn_with(FEATURES[features])
    text = "Subject: s\r\n\r\n.body\r\n" + ("y" * 400 if features == "small size" else "")
    item = ("news@example.org", ["a@example.org", "b@example.org"], text)
    got, want, _ = both_paths(conn, item, (), ("NOTIFY=NEVER",))
    if features == "small size":
        assert got is None and isinstance(want, smtplib.SMTPMessageTooLarge)
        return
    assert got is not None and (got[0], got[1]) == want


def test_fast_path_declines_binarymime_servers_and_run_wide_refusals():
    plain = ("a@example.org", "b@example.org", b"x\r\n")
    assert not batch._FastEnvelopes(conn_with(FEATURES["bdat+binarymime"]), (), ()).usable
    assert not batch._FastEnvelopes(conn_with(FEATURES["data"]), ("SMTPUTF8",), ()).usable
    assert not batch._FastEnvelopes(conn_with(FEATURES["data"]), (), ("X=\r\nRSET",)).usable
    fast = batch._FastEnvelopes(conn_with(FEATURES["data"]), (), ())
    assert fast.encode(*plain) is not None
    assert fast.encode("a@example.org", "b@example.org\r\nRSET", b"x") is None
