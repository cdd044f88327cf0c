"""``SMTPPool`` at volume over every transport, and under smtp-sink's own faults.

* TLS: ``SMTP_SSL`` and STARTTLS with a given context (a trustme CA from
  ``tests/support/certs.py``), over a thousand messages each, reconnecting
  (and so negotiating TLS again) along the way; aiosmtpd's record of what it
  received is the count.  With no context the pool verifies certificates.
* LMTP over TCP: aiosmtpd (a recipient refused after the data) and Postfix's
  smtp-sink ``-L`` (its dumps are the count).
* smtp-sink's fault options, read from its manual: ``-r``/``-f`` refuse
  commands with the ``-b``/``-B`` replies (4xx/5xx), which drives 451 and
  550 through the pool; the result states, attempts and replies are checked.
* A slow server and the rate limit over a window, with tolerant bounds only
  (lower bounds on time, or counts per window with slack).
"""

from __future__ import annotations

import collections
import ssl
import time

import pytest

from tests.support.pool_server import PoolServer
from tests.support.target import IS_STDLIB, fastsmtplib_only

pytestmark = fastsmtplib_only

if not IS_STDLIB:
    import fastsmtplib
    from fastsmtplib import Retry, SMTPPool

FROM = "from@example.org"
TO = ["to@example.org"]
HOST = "client.example.org"
FAST = dict(backoff=0.01, backoff_max=0.05, jitter=None) if not IS_STDLIB else {}


def msg(i) -> bytes:
    return b"Subject: m%d\r\nMessage-ID: <%d@pool.test>\r\n\r\nbody %d\r\n.a dot line\r\n" % (i, i, i)


def items(n, to=TO):
    return ((FROM, to, msg(i)) for i in range(n))


def subject_of(content: bytes) -> str:
    for line in content.split(b"\r\n"):
        if line.startswith(b"Subject: "):
            return line[9:].decode()
    raise AssertionError(content[:200])


def exactly_once(n) -> collections.Counter:
    return collections.Counter({"m%d" % i: 1 for i in range(n)})


# -- TLS -------------------------------------------------------------------------------------
def test_smtp_ssl_a_thousand_messages_server_count(aiosmtpd_factory, client_tls_context):
    srv = aiosmtpd_factory(tls="implicit")
    n = 1200
    with SMTPPool(srv.host, srv.port, ssl=True, context=client_tls_context, size=4, local_hostname=HOST,
                  timeout=10, max_messages_per_connection=400) as pool:
        results = list(pool.send_many(items(n)))
        connects = pool.stats["connects"]
    assert collections.Counter(str(r.status) for r in results) == {"delivered": n}
    assert sorted(r.index for r in results) == list(range(n))
    assert connects >= n // 400  # replaced after 400 messages: a new TLS handshake each time
    got = srv.wait_for_messages(n)
    assert len(got) == n and all(m.tls for m in got)
    assert collections.Counter(subject_of(m.content) for m in got) == exactly_once(n)


def test_starttls_a_thousand_messages_server_count(aiosmtpd_factory, client_tls_context):
    srv = aiosmtpd_factory(tls="starttls", require_starttls=True)
    n = 1200
    with SMTPPool(srv.host, srv.port, starttls=True, context=client_tls_context, size=4, local_hostname=HOST,
                  timeout=10, max_messages_per_connection=300) as pool:
        results = list(pool.send_many(items(n)))
        connects = pool.stats["connects"]
    assert collections.Counter(str(r.status) for r in results) == {"delivered": n}
    assert connects >= n // 300
    got = srv.wait_for_messages(n)
    assert len(got) == n and all(m.tls and m.helo == HOST for m in got)
    assert collections.Counter(subject_of(m.content) for m in got) == exactly_once(n)


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
def test_tls_verified_by_default_nothing_sent_to_an_untrusted_server(aiosmtpd_factory, mode):
    srv = aiosmtpd_factory(tls="implicit" if mode == "ssl" else "starttls")
    with SMTPPool(srv.host, srv.port, size=2, local_hostname=HOST, timeout=5,
                  retry=Retry(attempts=2, **FAST), **{mode: True}) as pool:  # no context: a verifying one
        results = list(pool.send_many(items(5)))
        with pytest.raises(ssl.SSLCertVerificationError):
            pool.sendmail(FROM, TO, msg(99))
    assert [str(r.status) for r in results] == ["not_attempted"] * 5
    assert all(isinstance(r.exception, ssl.SSLCertVerificationError) and r.attempts == 0 for r in results)
    assert srv.messages == []


# -- LMTP over TCP ---------------------------------------------------------------------------
def test_lmtp_over_tcp_a_thousand_messages_per_recipient_replies(aiosmtpd_factory):
    srv = aiosmtpd_factory(lmtp=True, lmtp_data_replies={"full@example.org": "452 4.2.2 mailbox full"})
    n = 1000
    rcpts = ["a@example.org", "full@example.org"]
    with SMTPPool(srv.host, srv.port, lmtp=True, local_hostname=HOST, timeout=10, size=4) as pool:
        assert pool.port == srv.port and not srv.host.startswith("/")
        results = list(pool.send_many(items(n, rcpts)))
    assert collections.Counter(str(r.status) for r in results) == {"partial": n}
    for r in results:
        assert r.data_replies[0][0] == "a@example.org" and r.data_replies[0][1][0] == 250
        assert r.data_replies[1] == ("full@example.org", (452, b"4.2.2 mailbox full"))
        assert r.refused == {"full@example.org": (452, b"4.2.2 mailbox full")}
    got = srv.wait_for_messages(n)
    assert collections.Counter(subject_of(m.content) for m in got) == exactly_once(n)


def test_lmtp_over_tcp_smtp_sink_dumps(smtp_sink_factory):
    sink = smtp_sink_factory(lmtp=True, dump=True)
    n = 1000
    with SMTPPool(sink.host, sink.port, lmtp=True, local_hostname=HOST, timeout=10, size=4) as pool:
        results = list(pool.send_many(items(n, ["a@example.org", "b@example.org"])))
    assert collections.Counter(str(r.status) for r in results) == {"delivered": n}
    assert all([rc for rc, _ in r.data_replies] == ["a@example.org", "b@example.org"] for r in results)
    dumps = sink.dumps(expect=n)
    assert collections.Counter(subject_of(d.data.replace(b"\n", b"\r\n").replace(b"\r\r", b"\r"))
                               for d in dumps) == exactly_once(n)


# -- smtp-sink's own faults --------------------------------------------------------------------
def test_sink_451_at_end_of_data_deferred_after_retries_with_that_reply(smtp_sink_factory):
    # -r . : refuse the end of data with the soft-bounce reply (-b); -r implies -p (lock-step).
    sink = smtp_sink_factory("-b", "451 4.3.0 try again later", "-r", ".")
    with SMTPPool(sink.host, sink.port, size=3, local_hostname=HOST, timeout=10,
                  retry=Retry(attempts=3, **FAST)) as pool:
        results = list(pool.send_many(items(60)))
        stats = dict(pool.stats)
    assert sorted(r.index for r in results) == list(range(60))
    for r in results:
        assert r.status == "deferred" and r.attempts == 3
        assert r.reply == (451, b"4.3.0 try again later")
        assert isinstance(r.exception, fastsmtplib.SMTPDataError) and r.exception.smtp_code == 451
    assert stats["handed"] == 180 and stats["retries"] == 120


def test_sink_550_at_end_of_data_refused_never_retried(smtp_sink_factory):
    sink = smtp_sink_factory("-B", "550 5.7.1 message content rejected", "-f", ".")
    with SMTPPool(sink.host, sink.port, size=3, local_hostname=HOST, timeout=10,
                  retry=Retry(attempts=5, **FAST)) as pool:
        results = list(pool.send_many(items(60)))
        with pytest.raises(fastsmtplib.SMTPDataError) as info:
            pool.sendmail(FROM, TO, msg(1000))
        stats = dict(pool.stats)
    assert info.value.smtp_code == 550
    for r in results:
        assert r.status == "refused" and r.attempts == 1
        assert r.reply == (550, b"5.7.1 message content rejected")
    assert stats["handed"] == 61 and not stats.get("retries")


def test_sink_550_to_rcpt_refused_with_every_recipient(smtp_sink_factory):
    sink = smtp_sink_factory("-B", "550 5.1.1 no such user", "-f", "RCPT")
    with SMTPPool(sink.host, sink.port, size=2, local_hostname=HOST, timeout=10,
                  retry=Retry(attempts=5, **FAST)) as pool:
        results = list(pool.send_many(items(30, ["a@example.org", "b@example.org"])))
        with pytest.raises(fastsmtplib.SMTPRecipientsRefused) as info:
            pool.sendmail(FROM, ["c@example.org"], msg(1000))
    assert info.value.recipients == {"c@example.org": (550, b"5.1.1 no such user")}
    for r in results:
        assert r.status == "refused" and r.attempts == 1
        assert r.recipients == {"a@example.org": (550, b"5.1.1 no such user"),
                                "b@example.org": (550, b"5.1.1 no such user")}


def test_sink_450_to_mail_deferred_then_given_up(smtp_sink_factory):
    sink = smtp_sink_factory("-r", "MAIL")  # the default soft-bounce reply: 450 4.3.0
    with SMTPPool(sink.host, sink.port, size=2, local_hostname=HOST, timeout=10,
                  retry=Retry(attempts=2, **FAST)) as pool:
        results = list(pool.send_many(items(20)))
    for r in results:
        assert r.status == "deferred" and r.attempts == 2
        # The last reply is the MAIL refusal, carried by the exception
        # (``reply`` is the reply to the data, which never went).
        assert isinstance(r.exception, fastsmtplib.SMTPSenderRefused)
        assert (r.exception.smtp_code, r.exception.smtp_error) == (450, b"4.3.0 Error: command failed")


# -- a slow server; the rate limit over a window ---------------------------------------------
def test_slow_server_work_spread_over_every_connection():
    delay = 0.1

    def slow(ev):
        if ev.command == ".":
            time.sleep(delay)
        return None

    n, size = 40, 4
    with PoolServer(slow) as srv, SMTPPool(srv.host, srv.port, size=size, local_hostname=HOST, timeout=10) as pool:
        t0 = time.monotonic()
        results = list(pool.send_many(items(n)))
        elapsed = time.monotonic() - t0
    assert [str(r.status) for r in results] == ["delivered"] * n
    assert srv.accepted == exactly_once(n)
    # The server's own record: every connection carried messages.
    per_conn = collections.Counter(conn for conn, line in srv.commands if line.lower().startswith("mail"))
    assert len(per_conn) == size and min(per_conn.values()) >= 2, per_conn
    # Each connection takes one message per delay: a lower bound only.
    assert elapsed >= n * delay / size * 0.9
    # Latency includes the server's delay.
    assert all(r.done_at - r.sent_at >= delay * 0.9 for r in results)


def test_rate_limit_over_every_window_across_connections(smtp_sink_factory):
    sink = smtp_sink_factory()
    rate, burst, size, n = 50.0, 5, 4, 150
    with SMTPPool(sink.host, sink.port, size=size, rate=rate, burst=burst, local_hostname=HOST, timeout=10,
                  max_messages_per_connection=20) as pool:
        results = list(pool.send_many(items(n)))
        connects = pool.stats["connects"]
    assert [str(r.status) for r in results] == ["delivered"] * n
    assert connects >= n // 20  # the bucket holds across reconnects
    sent = sorted(r.sent_at for r in results)
    # The token bucket: at most burst + rate * w messages handed over in any
    # window of w seconds.  A message is written when its connection is ready
    # (DATA waits for the 354 before it), never before its token: slack of
    # one message per connection.
    for w in (0.2, 0.5, 1.0):
        j = 0
        for i, t in enumerate(sent):
            while sent[j] < t - w:
                j += 1
            assert i - j + 1 <= burst + rate * w + size, (w, i - j + 1)
    # And the whole run took at least (n - burst) / rate seconds.
    assert sent[-1] - sent[0] >= (n - burst - size) / rate
