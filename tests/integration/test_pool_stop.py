"""``SMTPPool.send_many`` stopped early: nothing lost silently, nothing sent after.

The promise (``SendManyRun``): once the caller stops (``close()``, ``break``,
leaving ``with``), no more input is pulled; messages pulled but not yet handed
to a connection are never sent (``not_attempted``, ``SendCancelled``); those
handed over finish their attempt and are not retried; ``close()`` waits for
them; every result the caller did not take is in ``run.unreported`` and a
summary is logged.  Checked against ``PoolServer``'s own ledger of bodies.
"""

from __future__ import annotations

import collections
import gc
import logging
import time

import pytest

from tests.support.pool_server import PoolServer
from tests.support.target import IS_STDLIB, fastsmtplib_only

pytestmark = fastsmtplib_only

if not IS_STDLIB:
    from fastsmtplib import Retry, SMTPPool
    from fastsmtplib.pool import SendCancelled, SendManyRun

FROM = "from@example.org"
TO = ["to@example.org"]


def msg(i) -> bytes:
    return b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i)


class Source:
    """A generator of messages that counts how many were pulled."""

    def __init__(self, n):
        self.n = n
        self.pulled = 0

    def __iter__(self):
        for i in range(self.n):
            self.pulled += 1
            yield (FROM, TO, msg(i))


def slow(ev):
    if ev.command == ".":
        time.sleep(0.01)  # keep messages in flight on the connections
    return None


def pool_for(srv, **kw):
    kw.setdefault("local_hostname", "client.example.org")
    kw.setdefault("timeout", 10)
    return SMTPPool(srv.host, srv.port, **kw)


def check_accounting(srv, taken, run, source):
    """Every pulled message has exactly one result; the server took exactly the delivered ones."""
    every = taken + run.unreported
    assert sorted(r.index for r in every) == list(range(source.pulled))
    delivered = {"m%d" % r.index for r in every if r.status == "delivered"}
    cancelled = [r for r in every if r.status == "not_attempted"]
    assert {str(r.status) for r in every} <= {"delivered", "not_attempted"}
    assert all(isinstance(r.exception, SendCancelled) and r.attempts == 0 for r in cancelled)
    assert srv.accepted == collections.Counter(delivered)  # none lost, none doubled
    # A cancelled message never reached the server.
    assert not any(srv.bodies["m%d" % r.index] for r in cancelled)
    return len(delivered), len(cancelled)


def test_close_cancels_what_was_not_handed_over_and_waits_for_the_rest(caplog):
    source = Source(5000)
    with PoolServer(slow) as srv, pool_for(srv, size=2, max_in_flight=200) as pool:
        run = pool.send_many(source)
        assert isinstance(run, SendManyRun)
        taken = [next(run) for _ in range(10)]
        with caplog.at_level(logging.INFO, logger="fastsmtplib.pool"):
            run.close()
        # close() returned: every message handed over has its outcome, so
        # the server's ledger is final already.
        bodies = sum(srv.bodies.values())
        pulled = source.pulled
        time.sleep(0.3)
        assert sum(srv.bodies.values()) == bodies
        assert source.pulled == pulled <= 10 + 200 + 128  # no input pulled after the stop
        delivered, cancelled = check_accounting(srv, taken, run, source)
        assert cancelled > 0 and delivered >= 10
        assert any("send_many stopped early" in r.getMessage() for r in caplog.records)
        run.close()  # idempotent
        with pytest.raises(StopIteration):
            next(run)
        # The pool is still usable.
        assert [r.status for r in pool.send_many([(FROM, TO, msg(9999))])] == ["delivered"]
    assert srv.accepted["m9999"] == 1


def test_break_out_of_a_with_block():
    source = Source(3000)
    with PoolServer(slow) as srv, pool_for(srv, size=3, max_in_flight=100) as pool:
        taken = []
        with pool.send_many(source) as run:
            for r in run:
                taken.append(r)
                if len(taken) == 25:
                    break
        bodies = sum(srv.bodies.values())
        time.sleep(0.2)
        assert sum(srv.bodies.values()) == bodies
        check_accounting(srv, taken, run, source)


def test_break_with_the_run_dropped_closes_it_at_once(caplog):
    source = Source(3000)
    with PoolServer(slow) as srv, pool_for(srv, size=2, max_in_flight=100) as pool:
        n = 0
        with caplog.at_level(logging.INFO, logger="fastsmtplib.pool"):
            for r in pool.send_many(source):
                n += 1
                if n == 5:
                    break
            gc.collect()
        bodies = sum(srv.bodies.values())
        time.sleep(0.2)
        assert sum(srv.bodies.values()) == bodies  # nothing went out after the loop ended
        assert source.pulled < 3000
        assert srv.accepted and max(srv.accepted.values()) == 1
        msgs = [r.getMessage() for r in caplog.records if "send_many stopped early" in r.getMessage()]
        assert len(msgs) == 1 and "not taken by the caller" in msgs[0]


def test_a_message_waiting_for_its_retry_ends_with_its_last_outcome():
    def policy(ev):
        if ev.command == "." and ev.subject == "m0":
            return "451 4.3.0 try later"
        return None

    retry = Retry(attempts=5, backoff=30.0, jitter=None)  # a retry would come long after the test
    with PoolServer(policy) as srv, pool_for(srv, size=1, retry=retry) as pool:
        run = pool.send_many((FROM, TO, msg(i)) for i in range(20))
        taken = []
        for r in run:
            taken.append(r)
            if len(taken) == 19:  # every message but m0, which waits 30 s for its retry
                break
        t0 = time.monotonic()
        run.close()
        assert time.monotonic() - t0 < 10  # close() did not wait for the backoff
    assert sorted(r.index for r in taken) == list(range(1, 20))
    [m0] = run.unreported
    assert m0.index == 0 and m0.status == "deferred" and m0.attempts == 1
    assert m0.reply == (451, b"4.3.0 try later")
    assert srv.bodies["m0"] == 1 and srv.accepted["m0"] == 0  # not sent again


def test_run_iterated_to_the_end_has_nothing_unreported():
    with PoolServer() as srv, pool_for(srv, size=2) as pool:
        run = pool.send_many((FROM, TO, msg(i)) for i in range(50))
        results = list(run)
        run.close()
    assert len(results) == 50 and run.unreported == []
    assert srv.accepted == collections.Counter({"m%d" % i: 1 for i in range(50)})
