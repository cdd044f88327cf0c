"""The sink's injected faults and idle timeout, seen by real clients.

Each fault is configured, provoked with stdlib smtplib, fastsmtplib or
aiosmtplib, and what the client saw is compared with the sink's own
``fault_*`` counters.  Shares are checked with tolerant bounds (binomial,
far outside 5 sigma), and exactly against the counters; a fixed ``seed``
must give the same faults on every run.  Delays are checked for order and
with lower bounds only (a loaded machine can only make them longer).
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import time

import pytest

import fastsmtplib
from fastsmtplib.sink import Sink
from fastsmtplib.sink_faults import Faults
from tests.support.sink_checks import read_replies, wait_idle

FROM = "sender@example.org"
BODY = b"Subject: fault\r\n\r\n.dot line\r\nbody\r\n"


def rcpt_codes(seed: int, n: int = 300) -> tuple:
    """One connection, ``n`` RCPTs in one transaction; the codes in order, and the counters."""
    with Sink(port=0, rcpt_refuse=0.2, rcpt_defer=0.1, seed=seed, max_recipients=n) as s:
        with smtplib.SMTP(s.host, s.port, timeout=10) as c:
            c.ehlo()
            c.mail(FROM)
            codes = [c.rcpt("r%d@example.org" % i)[0] for i in range(n)]
            c.rset()
        return codes, wait_idle(s)


def test_rcpt_refuse_and_defer_shares_match_counters_and_seed():
    codes, counts = rcpt_codes(seed=1)
    assert set(codes) <= {250, 550, 451}
    assert codes.count(550) == counts["fault_rcpt_refused"]
    assert codes.count(451) == counts["fault_rcpt_deferred"]
    assert 25 <= codes.count(550) <= 95  # 300 x 0.2 = 60
    assert 7 <= codes.count(451) <= 55  # 300 x 0.1 = 30
    assert rcpt_codes(seed=1)[0] == codes  # reproducible
    assert rcpt_codes(seed=2)[0] != codes


def test_rcpt_faults_with_fastsmtplib_send_many_and_aiosmtplib():
    msgs = [(FROM, ["a%d@example.org" % i, "b%d@example.org" % i], BODY) for i in range(100)]
    with Sink(port=0, rcpt_refuse=0.3, rcpt_defer=0.2, seed=5) as s:
        with fastsmtplib.SMTP(s.host, s.port, timeout=10) as c:
            results = list(c.send_many(msgs))
        codes = [code for r in results for code, _ in r.recipients.values()]
        counts = wait_idle(s)
        assert codes.count(550) == counts["fault_rcpt_refused"] > 0
        assert codes.count(451) == counts["fault_rcpt_deferred"] > 0
        delivered = [r for r in results if r.ok]
        assert len(delivered) == counts["messages"]  # a message goes if one recipient was accepted
        assert sum(1 for r in results for code, _ in r.recipients.values() if code == 250) == counts["recipients"]
    aiosmtplib = pytest.importorskip("aiosmtplib")
    with Sink(port=0, rcpt_refuse=1.0) as s:

        async def run():
            async with aiosmtplib.SMTP(hostname=s.host, port=s.port, timeout=10) as client:
                with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as info:
                    await client.sendmail(FROM, ["a@example.org", "b@example.org"], BODY)
                assert [e.code for e in info.value.recipients] == [550, 550]

        asyncio.run(run())
        assert wait_idle(s)["fault_rcpt_refused"] == 2


@pytest.mark.parametrize("code", [554, 451])
def test_data_reject_share_and_code(tmp_path, code):
    with Sink(port=0, data_reject=0.25, data_reject_code=code, seed=3, store=tmp_path) as s:
        outcomes = []
        with smtplib.SMTP(s.host, s.port, timeout=10) as c:
            for i in range(200):
                try:
                    c.sendmail(FROM, ["a@example.org"], BODY + b"%d\r\n" % i)
                    outcomes.append(250)
                except smtplib.SMTPDataError as exc:
                    outcomes.append(exc.smtp_code)
        counts = wait_idle(s)
        assert outcomes.count(code) == counts["fault_data_rejected"]
        assert 20 <= outcomes.count(code) <= 85  # 200 x 0.25 = 50
        assert outcomes.count(250) == counts["messages"] == len(s.stored())
        # The stored messages are exactly the accepted ones, content intact.
        accepted = [BODY + b"%d\r\n" % i for i, o in enumerate(outcomes) if o == 250]
        assert [m.content for m in s.stored()] == accepted


def test_data_reject_lmtp_every_recipient_and_bdat():
    with Sink(port=0, lmtp=True, data_reject=1.0, data_reject_code=451) as s:
        with fastsmtplib.LMTP(s.host, s.port, timeout=10) as c:
            [r] = c.send_many([(FROM, ["a@example.org", "b@example.org"], BODY)])
        assert r.status == "deferred"
        assert [(rcpt, reply[0]) for rcpt, reply in r.data_replies] == [("a@example.org", 451), ("b@example.org", 451)]
        assert wait_idle(s)["fault_data_rejected"] == 1
    with Sink(port=0, data_reject=1.0) as s:
        with fastsmtplib.SMTP(s.host, s.port, timeout=10) as c:
            assert c.has_extn("chunking") or c.ehlo()[0] == 250
            results = list(c.send_many([(FROM, ["a@example.org"], BODY)] * 3))
        assert [r.reply[0] for r in results] == [554] * 3
        counts = wait_idle(s)
        assert counts["fault_data_rejected"] == 3
        assert counts["replies"].get(354, 0) == 0  # it went over BDAT


def test_delay_holds_each_reply_in_order_without_blocking_the_loop():
    delay = 0.3
    with Sink(port=0, delay=delay) as s:
        t0 = time.monotonic()
        a = socket.create_connection((s.host, s.port), timeout=10)
        assert read_replies(a, 1)[0].startswith(b"220 ")
        assert time.monotonic() - t0 >= delay * 0.9
        t1 = time.monotonic()
        a.sendall(b"EHLO a\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@y>\r\nRSET\r\nNOOP\r\nVRFY q\r\n")
        lines = read_replies(a, 6)
        assert time.monotonic() - t1 >= delay * 0.9
        assert [l[:3] for l in lines] == [b"250", b"250", b"250", b"250", b"250", b"252"]
        # A trickle of commands while replies are held: one timer per connection, not per read.
        for _ in range(50):
            a.sendall(b"NOOP\r\n")
            time.sleep(0.002)
        assert len(s._timers) <= 1
        assert len(read_replies(a, 50)) == 50
        # While a reply is held the loop goes on: a second client is accepted
        # and a third one served before the first one's NOOP reply is released.
        s2 = Sink(port=0, delay=5.0)
        with s2:
            held = socket.create_connection((s2.host, s2.port), timeout=10)
            held.setblocking(False)
            other = socket.create_connection((s2.host, s2.port), timeout=10)
            deadline = time.monotonic() + 4
            while s2.counts["connections"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert s2.counts["connections"] == 2
            with pytest.raises(BlockingIOError):
                held.recv(100)  # its greeting is still held
            held.close()
            other.close()
        a.close()
        counts = wait_idle(s)
        assert counts["fault_delayed"] == 57  # greeting + 6 + 50


def test_delay_with_pool_many_connections():
    msgs = [(FROM, ["p%d@example.org" % i], BODY) for i in range(60)]
    with Sink(port=0, delay=0.05) as s:
        with fastsmtplib.SMTPPool(s.host, s.port, size=6, timeout=10) as pool:
            results = list(pool.send_many(msgs))
        assert all(r.ok for r in results)
        counts = wait_idle(s)
        assert counts["messages"] == 60
        assert counts["fault_delayed"] == sum(counts["replies"].values())


def test_drop_after_n_messages():
    with Sink(port=0, drop_after=3) as s:
        with smtplib.SMTP(s.host, s.port, timeout=10) as c:
            for i in range(3):
                assert c.sendmail(FROM, ["a@example.org"], BODY) == {}
            with pytest.raises(smtplib.SMTPServerDisconnected):
                c.sendmail(FROM, ["a@example.org"], BODY)
        counts = wait_idle(s)
        assert counts["fault_dropped_after"] == 1
        assert counts["messages"] == 3
    # The pool reconnects: every message is delivered once, over several connections.
    msgs = [(FROM, ["p%d@example.org" % i], BODY) for i in range(20)]
    with Sink(port=0, drop_after=4) as s:
        with fastsmtplib.SMTPPool(s.host, s.port, size=1, timeout=10,
                                  max_messages_per_connection=4) as pool:
            results = list(pool.send_many(msgs))
        assert all(r.ok for r in results), [r for r in results if not r.ok][:2]
        counts = wait_idle(s)
        assert counts["messages"] == 20
        assert counts["fault_dropped_after"] == counts["connections"] == 5


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_drop_in_data(chunking):
    with Sink(port=0, drop_in_data=1.0) as s:
        c = fastsmtplib.SMTP(s.host, s.port, timeout=10)
        c.chunking = chunking
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.sendmail(FROM, ["a@example.org"], BODY * 100)
        c.close()
        counts = wait_idle(s)
        assert counts["fault_dropped_in_data"] == 1
        assert counts["messages"] == 0
        assert counts["replies"].get(354, 0) == (0 if chunking else 1)


def test_drop_in_data_share_stdlib():
    outcomes = []
    with Sink(port=0, drop_in_data=0.3, seed=11) as s:
        for i in range(40):
            try:
                with smtplib.SMTP(s.host, s.port, timeout=10) as c:
                    c.sendmail(FROM, ["a@example.org"], BODY)
                outcomes.append("ok")
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                outcomes.append("dropped")
        counts = wait_idle(s)
        assert outcomes.count("dropped") == counts["fault_dropped_in_data"]
        assert outcomes.count("ok") == counts["messages"]
        assert 3 <= outcomes.count("dropped") <= 25  # 40 x 0.3 = 12


def test_421_on_nth_command():
    with Sink(port=0, reply_421_at=3) as s:
        with socket.create_connection((s.host, s.port), timeout=10) as sock:
            read_replies(sock, 1)
            sock.sendall(b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
            lines = read_replies(sock, 4)
            assert [l[:3] for l in lines] == [b"250", b"250", b"421"]  # then the line ends
            assert lines[-1].startswith(b"421 4.3.2")
        with smtplib.SMTP(s.host, s.port, timeout=10) as c:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                c.sendmail(FROM, ["a@example.org"], BODY)
            assert info.value.recipients["a@example.org"][0] == 421
        counts = wait_idle(s)
        assert counts["fault_421"] == 2
        assert counts["messages"] == 0


def test_faults_validation():
    for bad in (dict(rcpt_refuse=1.5), dict(rcpt_defer=-0.1), dict(rcpt_refuse=0.6, rcpt_defer=0.6),
                dict(data_reject=float("nan")), dict(data_reject_code=250), dict(delay=-1),
                dict(delay=float("inf")), dict(drop_after=-1), dict(reply_421_at=1.5), dict(seed="x")):
        with pytest.raises(ValueError):
            Faults(**bad)
        with pytest.raises(ValueError):
            Sink(port=0, **bad)
    with pytest.raises(ValueError, match="idle_timeout"):
        Sink(port=0, idle_timeout=0)
    assert not Faults().active
    assert Faults(delay=0.1).active and not Faults(delay=0.1).needs_dice


# -- idle timeout and survival -------------------------------------------------------


@pytest.mark.parametrize("where", ["command", "half-line", "data", "bdat"])
def test_idle_timeout_421_then_close(where):
    script = {
        "command": b"EHLO x\r\n",
        "half-line": b"EHLO x\r\nMAIL FROM:<a",
        "data": b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n",
        "bdat": b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 100 LAST\r\nxx",
    }[where]
    with Sink(port=0, idle_timeout=0.3) as s:
        with socket.create_connection((s.host, s.port), timeout=10) as sock:
            sock.sendall(script)
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            assert data.endswith(b"421 4.4.2 Error: timeout exceeded\r\n")
        counts = wait_idle(s)
        assert counts["idle_timeouts"] == 1
        assert counts["messages"] == 0
        # A client that talks is not timed out.
        with smtplib.SMTP(s.host, s.port, timeout=10) as c:
            for _ in range(4):
                time.sleep(0.1)
                assert c.noop()[0] == 250
        assert wait_idle(s)["idle_timeouts"] == 1


def test_idle_client_that_never_reads_is_closed():
    with Sink(port=0, idle_timeout=0.3, max_output=4096) as s:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((s.host, s.port))
        assert sock.recv(100).startswith(b"220 ")  # accepted
        sock.setblocking(False)
        try:
            for _ in range(2000):
                sock.send(b"EHLO flood\r\n" * 500)
        except BlockingIOError:
            pass
        counts = wait_idle(s)  # closed although its replies could never be delivered
        assert counts["idle_timeouts"] == 1
        sock.close()


def test_random_faults_and_truncation_never_leak_connections(tmp_path):
    """All faults at once, clients that vanish at random points, then a clean send."""
    import random

    rng = random.Random(3)
    with Sink(port=0, rcpt_refuse=0.1, rcpt_defer=0.1, data_reject=0.1, drop_in_data=0.1,
              drop_after=5, reply_421_at=40, seed=9, idle_timeout=2) as s:
        for i in range(40):
            sock = socket.create_connection((s.host, s.port), timeout=10)
            script = b"EHLO x\r\n" + b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n" * 2 + b"body\r\n.\r\n" * 2
            try:
                sock.sendall(script[: rng.randrange(len(script))])
            except OSError:
                pass
            if rng.random() < 0.5:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            sock.close()
        wait_idle(s)
        ok = 0
        for _ in range(10):
            try:
                with smtplib.SMTP(s.host, s.port, timeout=10) as c:
                    c.sendmail(FROM, ["a@example.org"], BODY)
                ok += 1
            except smtplib.SMTPException:
                pass
        assert ok >= 1
        counts = wait_idle(s)
        assert counts["messages"] >= ok


def test_delay_longer_than_idle_timeout_is_not_idleness():
    with Sink(port=0, delay=0.6, idle_timeout=0.2) as s:
        with smtplib.SMTP(s.host, s.port, timeout=10) as c:
            assert c.noop()[0] == 250
        counts = wait_idle(s)
        assert counts["idle_timeouts"] == 0
        assert counts["replies"][221] == 1
