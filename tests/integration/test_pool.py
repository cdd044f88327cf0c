"""``SMTPPool``: many connections, one I/O thread, retries that never duplicate.

Real peers only: Postfix's ``smtp-sink`` (its options inject 4xx, hang-ups and
delays; its dumps are its own record of what it took), aiosmtpd (TLS, AUTH,
LMTP, refusals), and ``tests.support.pool_server.PoolServer``, a threaded
server that answers by policy and keeps its own ledger of accepted bodies,
for faults smtp-sink cannot make (451 once, then 250; 421 on an idle
connection; a close after N messages).

What is checked: one result per message, each in exactly one state; the
server's own count shows none lost and none delivered twice; deferred and
not_attempted messages are retried, uncertain ones are not (unless asked);
``sendmail``/``send_message`` return and raise what ``SMTP``'s do; the rate
limit holds across connections (a tolerant lower bound on the time, the only
timing check); ``send_many`` reads its input only a bounded way ahead.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import wait as wait_futures
from email.message import EmailMessage

import pytest

from tests.support.pool_server import HANGUP, REPLY_THEN_HANGUP, PoolServer
from tests.support.target import IS_STDLIB, fastsmtplib_only

pytestmark = fastsmtplib_only

if not IS_STDLIB:
    import fastsmtplib
    from fastsmtplib import Retry, SMTPPool
    from fastsmtplib.pool import PoolClosed

FROM = "from@example.org"
TO = ["to@example.org"]
HOST = "client.example.org"
FAST = dict(backoff=0.01, backoff_max=0.05, jitter=None) if not IS_STDLIB else {}


def msg(i) -> bytes:
    return b"Subject: m%s\r\nMessage-ID: <%s@pool.test>\r\n\r\nbody %s\r\n.dot line\r\n" % ((str(i).encode(),) * 3)


def items(n, start=0):
    return ((FROM, TO, msg(i)) for i in range(start, start + n))


def pool_for(srv, **kw):
    kw.setdefault("local_hostname", HOST)
    kw.setdefault("timeout", 5)
    kw.setdefault("retry", Retry(attempts=3, **FAST))
    return SMTPPool(srv.host, srv.port, **kw)


def subjects(dumps):
    out = collections.Counter()
    for d in dumps:
        for line in d.data.split(b"\n"):
            if line.startswith(b"Subject: "):
                out[line[9:].decode()] += 1
                break
    return out


def wait_until(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# -- smtp-sink ---------------------------------------------------------------------------------
def test_many_messages_several_connections_sink_dumps_none_lost_or_doubled(smtp_sink_factory):
    sink = smtp_sink_factory(dump=True)
    n = 600
    with pool_for(sink, size=4, max_messages_per_connection=50) as pool:
        results = list(pool.send_many(items(n)))
        stats = dict(pool.stats)
    assert sorted(r.index for r in results) == list(range(n))
    assert {str(r.status) for r in results} == {"delivered"}
    assert all(r.attempts == 1 and r.reply[0] == 250 for r in results)
    got = subjects(sink.dumps(expect=n))
    assert got == collections.Counter({"m%d" % i: 1 for i in range(n)})
    # 50 messages a connection: at least 12 connections over the run, at most 4 at once.
    assert stats["connects"] >= n // 50
    assert stats["handed"] == n


def test_latency_timestamps_set_at_the_write_and_at_the_outcome(smtp_sink_factory):
    sink = smtp_sink_factory()
    n = 300
    t0 = time.monotonic()
    # One connection over DATA: message i+1's MAIL goes out in the write that
    # carries message i's body, after i's 354 and before i's final reply.
    with pool_for(sink, size=1) as pool:
        results = sorted(pool.send_many(items(n)), key=lambda r: r.index)
    t1 = time.monotonic()
    assert {str(r.status) for r in results} == {"delivered"}
    for r in results:
        assert r.sent_at is not None and r.done_at is not None
        assert t0 <= r.sent_at <= r.done_at <= t1
    for a, b in zip(results, results[1:]):
        assert a.sent_at < b.sent_at <= a.done_at <= b.done_at
    # Several connections: each message still stamped, in order.
    with pool_for(sink, size=4) as pool:
        results = list(pool.send_many(items(n)))
    assert all(r.sent_at is not None and r.sent_at <= r.done_at for r in results)
    # Not part of equality: the same outcome compares equal whatever its times.
    a, b = results[0], results[0].__class__(results[0].index)
    for name in ("from_addr", "to_addrs", "status", "recipients", "reply", "exception", "attempts", "data_replies"):
        setattr(b, name, getattr(a, name))
    assert a == b and b.sent_at is None


def test_latency_of_a_retried_message_spans_its_attempts():
    def policy(ev):
        if ev.command == "." and ev.attempt == 1:
            return "451 4.3.0 try again"
        return None

    retry = Retry(attempts=3, backoff=0.05, backoff_max=0.05, jitter=None)
    with PoolServer(policy) as srv, pool_for(srv, size=2, retry=retry) as pool:
        results = list(pool.send_many(items(6)))
        fut = pool.submit(FROM, TO, msg(99))
        one = fut.result(timeout=10)
    assert {str(r.status) for r in results} == {"delivered"}
    for r in results + [one]:
        assert r.attempts == 2
        # sent_at is the first attempt's write, done_at the second's outcome:
        # the backoff between them is inside (a lower bound, never flaky).
        assert r.done_at - r.sent_at >= 0.05


def test_sink_4xx_every_time_deferred_after_retries_with_the_last_reply(smtp_sink_factory):
    sink = smtp_sink_factory("-r", "RCPT")
    with pool_for(sink, size=2, retry=Retry(attempts=3, **FAST)) as pool:
        results = list(pool.send_many(items(5)))
    assert len(results) == 5
    for r in results:
        assert r.status == "deferred"
        assert r.attempts == 3
        assert 400 <= r.recipients["to@example.org"][0] <= 499
        assert isinstance(r.exception, fastsmtplib.SMTPRecipientsRefused)


def test_sink_hangs_up_after_the_body_uncertain_and_not_resent(smtp_sink_factory):
    sink = smtp_sink_factory("-q", ".")
    with pool_for(sink, size=1) as pool:
        r = pool.submit(FROM, TO, msg(1)).result(10)
        assert r.status == "uncertain"
        assert r.attempts == 1
        assert isinstance(r.exception, fastsmtplib.SMTPServerDisconnected)
        with pytest.raises(fastsmtplib.SMTPServerDisconnected):
            pool.sendmail(FROM, TO, msg(2))
        assert pool.stats["handed"] == 2  # one hand-over each, no resend


def test_sink_hangs_up_after_the_body_retried_only_when_asked(smtp_sink_factory):
    sink = smtp_sink_factory("-q", ".")
    with pool_for(sink, size=1) as pool:
        r = pool.submit(FROM, TO, msg(1), retry=Retry(attempts=3, retry_uncertain=True, **FAST)).result(10)
    assert r.status == "uncertain"
    assert r.attempts == 3


def test_sink_421_after_data_reconnects_and_gives_up_deferred(smtp_sink_factory):
    sink = smtp_sink_factory("-Q", ".")
    with pool_for(sink, size=2, retry=Retry(attempts=2, **FAST)) as pool:
        r = pool.submit(FROM, TO, msg(0)).result(10)
        assert r.status == "deferred" and r.attempts == 2
        assert r.reply[0] == 421
        assert isinstance(r.exception, fastsmtplib.SMTPDataError)
        assert pool.stats["connects"] == 2  # the 421 closed the first connection
        # Pipelined: a message whose envelope followed a body answered 421 was
        # not attempted; it is retried as well, and never reported delivered.
        results = list(pool.send_many(items(6)))
    assert len(results) == 6
    for r in results:
        assert (r.status == "deferred" and r.reply[0] == 421) or r.status == "not_attempted"


def test_slow_server_uses_every_connection(smtp_sink_factory):
    sink = smtp_sink_factory("-w", "1", dump=True)
    with pool_for(sink, size=4) as pool:
        results = list(pool.send_many(items(8)))
        assert pool.stats["connects"] == 4
    assert [str(r.status) for r in results] == ["delivered"] * 8
    assert subjects(sink.dumps(expect=8)) == collections.Counter({"m%d" % i: 1 for i in range(8)})


def test_rate_limit_holds_across_connections_and_reconnects(smtp_sink_factory):
    sink = smtp_sink_factory()
    with pool_for(sink, size=4, rate=20, max_messages_per_connection=5) as pool:
        started = time.monotonic()
        results = list(pool.send_many(items(40)))
        elapsed = time.monotonic() - started
        connects = pool.stats["connects"]
    assert [str(r.status) for r in results] == ["delivered"] * 40
    assert connects >= 8
    # 40 messages at 20/s with a burst of 2: at least (40 - 2) / 20 = 1.9 s.
    assert elapsed >= 1.5


def test_back_pressure_reads_input_only_a_bounded_way_ahead(smtp_sink_factory):
    sink = smtp_sink_factory()
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(3000):
            pulled += 1
            yield FROM, TO, msg(i)

    limit = 40
    seen = 0
    ahead = 0
    with pool_for(sink, size=4, max_in_flight=limit) as pool:
        for r in pool.send_many(source()):
            seen += 1
            ahead = max(ahead, pulled - seen)
            assert r.status == "delivered"
    assert seen == 3000
    assert ahead <= limit + 1
    assert ahead >= limit // 2  # it did keep a pipeline's worth in flight


def test_close_wait_true_drains_everything_submitted(smtp_sink_factory):
    sink = smtp_sink_factory(dump=True)
    pool = pool_for(sink, size=3)
    futures = [pool.submit(FROM, TO, msg(i)) for i in range(200)]
    pool.close(wait=True)
    assert all(f.done() and f.result().status == "delivered" for f in futures)
    assert len(sink.dumps(expect=200)) == 200
    with pytest.raises(PoolClosed):
        pool.submit(FROM, TO, msg(0))
    assert pool.connections == 0


def test_close_wait_false_cancels_what_was_not_handed_over(smtp_sink_factory):
    sink = smtp_sink_factory("-w", "1", dump=True)
    pool = pool_for(sink, size=1)
    futures = [pool.submit(FROM, TO, msg(i)) for i in range(6)]
    assert wait_until(lambda: pool.stats["handed"] >= 1)
    pool.close(wait=False)
    done, not_done = wait_futures(futures, timeout=10)
    assert not not_done
    delivered = [f for f in futures if not f.cancelled() and f.result().status == "delivered"]
    cancelled = [f for f in futures if f.cancelled()]
    assert len(delivered) + len(cancelled) == 6
    assert 1 <= len(delivered) <= 2 and cancelled
    assert len(sink.dumps(expect=len(delivered))) == len(delivered)


def test_send_many_after_close_wait_false_reports_not_attempted(smtp_sink_factory):
    sink = smtp_sink_factory("-w", "1")
    pool = pool_for(sink, size=1)
    it = pool.send_many(items(5))
    first = next(it)  # everything is submitted by now (5 < max_in_flight)
    pool.close(wait=False)
    rest = list(it)
    statuses = collections.Counter(str(r.status) for r in [first, *rest])
    assert sum(statuses.values()) == 5
    assert statuses["delivered"] >= 1
    assert statuses["delivered"] + statuses["not_attempted"] == 5
    assert sorted(r.index for r in [first, *rest]) == list(range(5))


# -- sendmail / send_message as SMTP's ---------------------------------------------------------
def test_sendmail_from_threads_returns_and_raises_as_smtp(aiosmtpd_factory):
    srv = aiosmtpd_factory(refuse_recipients={"bad@example.org": 550, "later@example.org": 451})
    cases = [
        (["to@example.org"], None),
        (["to@example.org", "bad@example.org"], None),
        (["bad@example.org"], fastsmtplib.SMTPRecipientsRefused),
    ]
    with fastsmtplib.SMTP(srv.host, srv.port, local_hostname=HOST, timeout=5) as ref:
        expected = []
        for rcpts, exc_type in cases:
            try:
                expected.append(ref.sendmail(FROM, rcpts, msg("ref")))
            except Exception as exc:  # noqa: BLE001 - compared below
                expected.append((type(exc), exc.args))
    got = {}
    with pool_for(srv, size=3, retry=Retry(attempts=1)) as pool:
        def worker(t):
            out = []
            for rcpts, _ in cases:
                try:
                    out.append(pool.sendmail(FROM, rcpts, msg("t%d" % t)))
                except Exception as exc:  # noqa: BLE001
                    out.append((type(exc), exc.args))
            got[t] = out

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert len(got) == 6
    for t in range(6):
        assert got[t] == expected
    assert expected[0] == {} and expected[1] == {"bad@example.org": (550, expected[1]["bad@example.org"][1])}


def test_send_message_as_smtp(aiosmtpd_factory):
    srv = aiosmtpd_factory()
    m = EmailMessage()
    m["From"] = "Alice <alice@example.org>"
    m["To"] = "bob@example.org"
    m["Bcc"] = "carol@example.org"
    m["Subject"] = "hello"
    m.set_content("hi\n")
    with pool_for(srv, size=2) as pool:
        assert pool.send_message(m) == {}
        results = list(pool.send_many([m, (None, ["dave@example.org"], m)]))
    assert {str(r.status) for r in results} == {"delivered"}
    assert len(srv.messages) == 3
    first = srv.messages[0]
    assert first.mail_from == "alice@example.org"
    assert sorted(first.rcpt_tos) == ["bob@example.org", "carol@example.org"]
    assert b"Bcc" not in first.content and b"carol" not in first.content
    assert sorted(x.rcpt_tos[0] for x in srv.messages[1:]) == ["bob@example.org", "dave@example.org"]


def test_client_errors_fail_without_sending(aiosmtpd_factory):
    srv = aiosmtpd_factory()
    with pool_for(srv, size=1) as pool:
        with pytest.raises(ValueError):
            pool.sendmail(FROM, [], msg(1))
        with pytest.raises(ValueError):
            pool.sendmail(FROM, ["a@example.org\r\nRSET"], msg(1))
        results = list(pool.send_many([(FROM, [], msg(1)), (FROM, TO, msg(2))]))
        assert sorted(str(r.status) for r in results) == ["delivered", "failed"]
    assert len(srv.messages) == 1


def test_tls_starttls_auth_and_lmtp_connections(aiosmtpd_factory, client_tls_context):
    from tests.support.aiosmtpd_server import AUTH_PASSWORD, AUTH_USER

    ssl_srv = aiosmtpd_factory(tls="implicit")
    with pool_for(ssl_srv, ssl=True, context=client_tls_context, size=2) as pool:
        assert {str(r.status) for r in pool.send_many(items(10))} == {"delivered"}
    assert len(ssl_srv.messages) == 10

    st_srv = aiosmtpd_factory(tls="starttls", require_starttls=True)
    with pool_for(st_srv, starttls=True, context=client_tls_context, size=2) as pool:
        assert pool.sendmail(FROM, TO, msg(1)) == {}
    assert len(st_srv.messages) == 1

    auth_srv = aiosmtpd_factory(auth={AUTH_USER: AUTH_PASSWORD})
    with pool_for(auth_srv, login=(AUTH_USER, AUTH_PASSWORD), size=1) as pool:
        assert pool.sendmail(FROM, TO, msg(1)) == {}
    assert len(auth_srv.messages) == 1

    lmtp_srv = aiosmtpd_factory(lmtp=True, unix_socket=True)
    pool = SMTPPool(lmtp_srv.path, lmtp=True, local_hostname=HOST, timeout=5, size=2)
    with pool:
        results = list(pool.send_many((FROM, ["a@example.org", "b@example.org"], msg(i)) for i in range(5)))
    assert {str(r.status) for r in results} == {"delivered"}
    assert all(len(r.data_replies) == 2 for r in results)
    assert len(lmtp_srv.messages) == 5


def test_connection_refused_is_not_attempted_after_retries():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with SMTPPool("127.0.0.1", port, size=2, timeout=2, retry=Retry(attempts=2, **FAST)) as pool:
        r = pool.submit(FROM, TO, msg(1)).result(10)
        assert r.status == "not_attempted" and r.attempts == 0
        assert isinstance(r.exception, OSError)
        with pytest.raises(OSError):
            pool.sendmail(FROM, TO, msg(2))


# -- scripted faults (PoolServer) -------------------------------------------------------------
def test_451_then_250_is_retried_and_delivered_once():
    def policy(ev):
        if ev.command == "." and ev.attempt == 1:
            return "451 4.3.0 try again"
        return None

    with PoolServer(policy) as srv, pool_for(srv, size=2) as pool:
        results = list(pool.send_many(items(10)))
    assert {str(r.status) for r in results} == {"delivered"}
    assert all(r.attempts == 2 for r in results)
    assert srv.accepted == collections.Counter({"m%d" % i: 1 for i in range(10)})
    assert srv.bodies == collections.Counter({"m%d" % i: 2 for i in range(10)})


def test_idle_connection_that_said_421_is_replaced_transparently():
    with PoolServer(idle_421=0.2) as srv, pool_for(srv, size=1, noop_after=None) as pool:
        assert pool.sendmail(FROM, TO, msg(1)) == {}
        # The server says 421 and closes after 0.2 s idle; the pool notices
        # the reply nobody asked for and drops the connection.
        assert wait_until(lambda: pool.stats["unasked"] == 1)
        r = pool.submit(FROM, TO, msg(2)).result(10)
        assert r.status == "delivered" and r.attempts == 1
    assert srv.connections == 2
    assert srv.accepted == collections.Counter({"m1": 1, "m2": 1})


def test_421_to_the_first_command_after_idle_is_retried_on_a_new_connection():
    said = []

    def policy(ev):
        if ev.connection == 0 and ev.command == "MAIL" and ev.messages == 1 and not said:
            said.append(1)
            return "421 4.4.2 idle too long"
        return None

    with PoolServer(policy) as srv, pool_for(srv, size=1) as pool:
        assert pool.sendmail(FROM, TO, msg(1)) == {}
        r = pool.submit(FROM, TO, msg(2)).result(10)
    assert r.status == "delivered" and r.attempts == 2
    assert srv.connections == 2
    assert srv.accepted == collections.Counter({"m1": 1, "m2": 1})


def test_idle_connection_gets_noop_before_reuse():
    with PoolServer() as srv, pool_for(srv, size=1, noop_after=0.05) as pool:
        assert pool.sendmail(FROM, TO, msg(1)) == {}
        time.sleep(0.1)
        assert pool.sendmail(FROM, TO, msg(2)) == {}
        assert pool.stats["noops"] == 1
    assert srv.connections == 1
    assert [line for _, line in srv.commands].count("noop") == 1


def test_server_that_closes_after_n_messages():
    def policy(ev):
        if ev.command == "." and ev.messages == 4:  # the 5th body: reply, then hang up
            return REPLY_THEN_HANGUP
        return None

    with PoolServer(policy) as srv, pool_for(srv, size=2) as pool:
        results = list(pool.send_many(items(23)))
    assert {str(r.status) for r in results} == {"delivered"}
    assert srv.accepted == collections.Counter({"m%d" % i: 1 for i in range(23)})
    assert srv.connections >= 5


def test_thousands_through_faults_server_ledger_proves_none_lost_or_doubled():
    import zlib

    def roll(*key) -> int:
        return zlib.crc32(repr(key).encode()) % 100

    def policy(ev):
        if ev.command == "MAIL" and roll("mail", ev.connection, ev.messages) < 2:
            return "421 4.3.2 going away"
        if ev.command == ".":
            r = roll("dot", ev.subject, ev.attempt)
            if r < 8:
                return "451 4.3.0 try again"
            if r < 10:
                return "554 5.6.0 rejected"
            if r < 12:
                return REPLY_THEN_HANGUP
            if r < 13:
                return HANGUP  # after the body, before the reply: uncertain
        return None

    n = 2000
    with PoolServer(policy) as srv, pool_for(srv, size=4, retry=Retry(attempts=4, **FAST)) as pool:
        results = list(pool.send_many(items(n)))
    assert sorted(r.index for r in results) == list(range(n))
    by_status = collections.Counter(str(r.status) for r in results)
    assert set(by_status) <= {"delivered", "deferred", "refused", "uncertain", "not_attempted"}
    assert by_status["delivered"] > n * 0.8
    assert by_status["uncertain"] > 0 and by_status["refused"] > 0
    for r in results:
        subject = "m%d" % r.index
        # The server's ledger: delivered once when reported delivered, never otherwise.
        assert srv.accepted[subject] == (1 if r.status == "delivered" else 0), r
        if r.status == "uncertain":
            # Its last body was the one hung up on: never sent again after it.
            assert 12 <= roll("dot", subject, srv.bodies[subject]) < 13, r
    assert sum(srv.accepted.values()) == by_status["delivered"]
    assert not srv.errors


def test_reply_timeout_after_the_body_is_uncertain_and_not_resent():
    def policy(ev):
        if ev.command == ".":
            time.sleep(1.0)  # longer than the pool's timeout: the reply comes too late
        return None

    with PoolServer(policy) as srv, pool_for(srv, size=1, timeout=0.3) as pool:
        r = pool.submit(FROM, TO, msg(1)).result(10)
        assert r.status == "uncertain" and r.attempts == 1
        assert isinstance(r.exception, fastsmtplib.SMTPReplyTimeout)
        assert pool.stats["reply_timeouts"] == 1
    assert srv.bodies["m1"] == 1


def test_lmtp_over_tcp_reports_every_recipient(aiosmtpd_factory):
    # RFC 2033 §4.2 over TCP: one reply per accepted recipient after the data,
    # each in the result; a recipient refused after the data makes it partial.
    srv = aiosmtpd_factory(lmtp=True, lmtp_data_replies={"full@example.org": "452 4.2.2 mailbox full"})
    with SMTPPool(srv.host, srv.port, lmtp=True, local_hostname=HOST, timeout=5, size=2) as pool:
        results = sorted(pool.send_many((FROM, ["a@example.org", "full@example.org"], msg(i)) for i in range(4)),
                         key=lambda r: r.index)
    assert [str(r.status) for r in results] == ["partial"] * 4
    for r in results:
        assert [rcpt for rcpt, _ in r.data_replies] == ["a@example.org", "full@example.org"]
        assert r.recipients["full@example.org"] == (452, b"4.2.2 mailbox full")
        assert r.recipients["a@example.org"][0] == 250
    assert len(srv.messages) == 4


@pytest.mark.parametrize("burst", [1, 3])
def test_rate_limited_fill_writes_what_it_took(burst):
    # A fill that the rate limit stops part way has already handed messages to
    # its connection's engine; they must be written even if no more work comes
    # for that connection.  They once sat unwritten when the last messages went
    # to another connection, and send_many never ended (seen in `bench --rate`).
    from fastsmtplib.sink import Sink

    with Sink(port=0) as s:
        for run in range(4):
            with fastsmtplib.SMTPPool("127.0.0.1", s.port, size=3, rate=400, burst=burst,
                                      timeout=10, local_hostname="client.example") as pool:
                got = []
                t = threading.Thread(
                    target=lambda: got.extend(pool.send_many(items(40))),
                    daemon=True)
                t.start()
                t.join(30)  # a hang detector, not a timing assert: 40 messages at 400/s take 0.1 s
                assert not t.is_alive(), "send_many stalled with %d of 40 results (run %d)" % (len(got), run)
            assert sorted(r.index for r in got) == list(range(40))
            assert all(r.status == "delivered" for r in got), [r for r in got if not r.ok][:3]
        assert s.counts["messages"] == 160
