"""``SMTPPool``'s connection options: ``path``, ``pipelining``/``chunking``, ``on_connect``.

Real peers only: the project's ``Sink`` (over a Unix socket for SMTP and
LMTP, with STARTTLS and AUTH; its own counters say how many messages it took
and how many DATA commands it answered with 354, i.e. BDAT was not used) and
``tests.support.scripted.ScriptedServer``, which records how the client
grouped its writes: with ``pipelining=False`` each command must arrive alone,
the next one only after its reply was sent.
"""

from __future__ import annotations

import logging
import threading

import pytest

from tests.support.scripted import ClientClosed, ScriptedServer
from tests.support.target import IS_STDLIB, fastsmtplib_only
from tests.support.sink_checks import wait_idle

pytestmark = fastsmtplib_only

if not IS_STDLIB:
    import fastsmtplib
    from fastsmtplib import Retry, SMTPPool
    from fastsmtplib.pool import ConnectInfo
    from fastsmtplib.sink import Sink

FROM = "from@example.org"
HOST = "client.example.org"
USERS = {"alice": "wonder land"}


def msg(i) -> bytes:
    return b"Subject: m%d\r\nMessage-ID: <%d@pool-options.test>\r\n\r\nbody %d\r\n.dot line\r\n" % (i, i, i)


def items(n, rcpts=1):
    return ((FROM, ["r%d.%d@example.org" % (i, k) for k in range(rcpts)], msg(i)) for i in range(n))


class Recorder:
    """An ``on_connect`` callback that keeps every ``ConnectInfo`` (thread-safe)."""

    def __init__(self, snapshot=None) -> None:
        self.infos: list = []
        self.snapshots: list = []
        self.threads: set = set()
        self.lock = threading.Lock()
        self.snapshot = snapshot

    def __call__(self, info) -> None:
        with self.lock:
            self.infos.append(info)
            self.threads.add(threading.current_thread().name)
            if self.snapshot is not None:
                self.snapshots.append(self.snapshot())


# -- path: SMTP and LMTP over a Unix socket ----------------------------------------------------


def test_smtp_over_a_unix_socket_sink_counts_every_message(tmp_path):
    path = tmp_path / "smtp.sock"  # an os.PathLike
    with Sink(path=path) as sink:
        with SMTPPool(path=path, size=3, local_hostname=HOST, timeout=10) as pool:
            assert pool.path == str(path) and pool.host is None and pool.port is None
            results = list(pool.send_many(items(300, rcpts=2)))
        assert len(results) == 300
        assert all(r.status == "delivered" for r in results), [r for r in results if not r.ok][:3]
        assert sorted(r.index for r in results) == list(range(300))
        counts = wait_idle(sink)
    # The sink's own count: every message once, nothing more.
    assert counts["messages"] == 300 and counts["recipients"] == 600
    assert 1 <= counts["connections"] <= 3
    assert counts["connections"] == pool.stats["connects"]
    # The sink speaks SMTP only: an LHLO would have been refused (502) and failed every connection.
    assert counts["replies"].get(502, 0) == 0


def test_sendmail_over_a_unix_socket_returns_the_refused_dict(tmp_path):
    path = str(tmp_path / "s.sock")
    with Sink(path=path, max_recipients=1) as sink:
        with SMTPPool(path=path, size=1, local_hostname=HOST, timeout=10, retry=Retry(attempts=1)) as pool:
            refused = pool.sendmail(FROM, ["a@example.org", "b@example.org"], msg(1))
        assert list(refused) == ["b@example.org"] and refused["b@example.org"][0] == 452
        assert wait_idle(sink)["messages"] == 1


def test_lmtp_over_a_unix_socket_relative_path_every_recipient_reported(tmp_path, monkeypatch):
    # A relative path: the old spelling (host starting with "/") could not say this.
    monkeypatch.chdir(tmp_path)
    with Sink(path="lmtp.sock", lmtp=True) as sink:
        with SMTPPool(path="lmtp.sock", lmtp=True, size=2, local_hostname=HOST, timeout=10) as pool:
            results = list(pool.send_many(items(40, rcpts=3)))
        assert all(r.status == "delivered" for r in results)
        for r in results:
            assert [rc for _rcpt, (rc, _m) in r.data_replies] == [250, 250, 250]
        counts = wait_idle(sink)
    assert counts["messages"] == 40 and counts["recipients"] == 120


def test_lmtp_host_starting_with_slash_still_works(tmp_path):
    path = str(tmp_path / "legacy.sock")
    with Sink(path=path, lmtp=True) as sink:
        with SMTPPool(path, lmtp=True, size=1, local_hostname=HOST, timeout=10) as pool:
            assert pool.host == path and pool.path is None
            results = list(pool.send_many(items(5)))
        assert [r.status for r in results] == ["delivered"] * 5
        assert wait_idle(sink)["messages"] == 5


def test_unix_socket_with_nothing_listening_is_not_attempted(tmp_path):
    rec = Recorder()
    with SMTPPool(path=tmp_path / "nobody.sock", size=1, timeout=5, retry=Retry(attempts=1),
                  on_connect=rec) as pool:
        results = list(pool.send_many(items(3)))
    assert [r.status for r in results] == ["not_attempted"] * 3
    assert isinstance(results[0].exception, (FileNotFoundError, ConnectionRefusedError))
    assert rec.infos and all(isinstance(i.error, OSError) and i.features == {} for i in rec.infos)


@pytest.mark.parametrize("kw,text", [
    (dict(host="mx.example.org"), "not both"),
    (dict(port=25), "not both"),
    (dict(ssl=True), "TLS over a Unix socket"),
    (dict(starttls=True), "TLS over a Unix socket"),
    (dict(source_address=("127.0.0.1", 0)), "source_address"),
])
def test_path_refuses_what_does_not_apply_to_a_unix_socket(kw, text):
    with pytest.raises(ValueError, match=text):
        SMTPPool(path="/tmp/never-used.sock", **kw)


def test_empty_path_and_bad_callback_are_refused():
    with pytest.raises(ValueError, match="path must not be empty"):
        SMTPPool(path="")
    with pytest.raises(TypeError, match="on_connect must be callable"):
        SMTPPool("localhost", 25, on_connect="print")


# -- pipelining / chunking ---------------------------------------------------------------------


def _one_command_at_a_time_script(n: int, seen: list):
    """Advertise PIPELINING and CHUNKING; for each command record what else
    arrived before its reply was sent (nothing, if the client waited)."""

    def script(c):
        c.handshake(extensions=("PIPELINING", "CHUNKING", "8BITMIME"))
        unread = bytearray()  # received, not yet taken as a command (pipelined input)

        def command(prefix: bytes) -> bytes:
            while b"\n" not in unread:
                unread.extend(c.readline())
            i = unread.index(b"\n") + 1
            line = bytes(unread[:i])
            del unread[:i]
            if not line.upper().startswith(prefix):
                raise AssertionError("expected %r, got %r" % (prefix, line))
            # Whatever else came before this command's reply was sent without waiting for it.
            unread.extend(c.pending(0.1))
            seen.append((line, bytes(unread)))
            return line

        for _ in range(n):
            command(b"MAIL FROM:")
            c.send(b"250 2.1.0 Ok\r\n")
            command(b"RCPT TO:")
            c.send(b"250 2.1.5 Ok\r\n")
            command(b"DATA")  # chunking=False: DATA, never BDAT, although CHUNKING is advertised
            c.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            while True:
                try:
                    command(b"")
                except ClientClosed:
                    raise AssertionError("the client closed inside the data")
                if seen.pop()[0] == b".\r\n":  # the body's lines are not commands
                    seen.append((b".", bytes(unread)))
                    break
            c.send(b"250 2.0.0 Ok: queued\r\n")
        try:
            command(b"QUIT")
            c.send(b"221 2.0.0 Bye\r\n")
        except ClientClosed:
            pass
        c.close()

    return script


@pytest.mark.parametrize("pipelining,class_off,waits", [
    (False, False, True),  # the pool's switch
    (True, False, False),  # the default: pipelined (so the check below can fail)
    (True, True, True),  # SMTP.pipelining = False still holds with the pool's default
])
def test_pipelining_off_sends_one_command_per_write(pipelining, class_off, waits, monkeypatch):
    if class_off:
        monkeypatch.setattr(fastsmtplib.SMTP, "pipelining", False)
    seen: list = []
    n = 3
    with ScriptedServer(_one_command_at_a_time_script(n, seen), timeout=10) as srv:
        with SMTPPool(srv.host, srv.port, size=1, local_hostname=HOST, timeout=10,
                      pipelining=pipelining, chunking=False, retry=Retry(attempts=1)) as pool:
            results = list(pool.send_many(items(n)))
    assert [r.status for r in results] == ["delivered"] * n
    assert len(seen) == 4 * n + 1 and seen[-1][0].upper() == b"QUIT\r\n"  # close() QUITs
    assert b"BDAT" not in srv.received.upper()
    early = [(line, extra) for line, extra in seen if extra]
    if waits:
        assert early == [], "sent before the reply it had to wait for: %r" % early
    else:
        # Pipelined: RCPT and DATA ride with MAIL (RFC 2920), the next MAIL with the body.
        assert early and early[0][1].upper().startswith(b"RCPT TO:")


@pytest.mark.parametrize("chunking", [False, True])
def test_chunking_switch_against_the_sink_counts_354s(chunking):
    n = 120
    with Sink(port=0) as sink:  # advertises PIPELINING and CHUNKING
        with SMTPPool(sink.host, sink.port, size=2, local_hostname=HOST, timeout=10,
                      chunking=chunking) as pool:
            conn = pool.open_connection()
            assert "chunking" in conn.esmtp_features and conn.chunking is chunking
            conn.quit()
            results = list(pool.send_many(items(n)))
        assert all(r.status == "delivered" for r in results)
        counts = wait_idle(sink)
    assert counts["messages"] == n
    # DATA is answered 354 once per message; BDAT never is (RFC 3030 §2).
    assert counts["replies"].get(354, 0) == (0 if chunking else n)


def test_pipelining_and_chunking_off_over_a_unix_socket(tmp_path):
    path = str(tmp_path / "p.sock")
    with Sink(path=path) as sink:
        with SMTPPool(path=path, size=2, local_hostname=HOST, timeout=10, pipelining=False,
                      chunking=False) as pool:
            results = list(pool.send_many(items(60)))
        assert all(r.status == "delivered" for r in results)
        counts = wait_idle(sink)
    assert counts["messages"] == 60 and counts["replies"].get(354, 0) == 60


# -- on_connect: connection setup times --------------------------------------------------------


def test_on_connect_reports_every_connection_with_its_setup_time():
    rec = Recorder()
    with Sink(port=0) as sink:
        with SMTPPool(sink.host, sink.port, size=3, local_hostname=HOST, timeout=10,
                      max_messages_per_connection=40, on_connect=rec) as pool:
            results = list(pool.send_many(items(300)))
        assert all(r.status == "delivered" for r in results)
        counts = wait_idle(sink)
    assert counts["messages"] == 300
    # 300 messages, at most 40 per connection: at least 8 connections, each reported once.
    assert len(rec.infos) == pool.stats["connects"] == counts["connections"] >= 8
    for info in rec.infos:
        assert isinstance(info, ConnectInfo)
        assert info.error is None and info.seconds > 0
        assert "pipelining" in info.features and "chunking" in info.features
    assert all(name == "fastsmtplib-pool-connect" for name in rec.threads)


def test_on_connect_time_spans_starttls_and_auth():
    with Sink(port=0, starttls=True, auth=USERS, auth_required=True) as sink:
        rec = Recorder(snapshot=lambda: sink.counts)
        with SMTPPool(sink.host, sink.port, size=3, starttls=True, context=sink.client_context(),
                      login=("alice", USERS["alice"]), local_hostname=HOST, timeout=10,
                      on_connect=rec) as pool:
            results = list(pool.send_many(items(90)))
        assert all(r.status == "delivered" for r in results)
        counts = wait_idle(sink)
    assert counts["messages"] == 90 and len(rec.infos) == counts["auth_ok"] >= 1
    for k, (info, snap) in enumerate(zip(rec.infos, rec.snapshots), 1):
        assert info.error is None and info.seconds > 0
        # Called after its own connection's TLS handshake and AUTH were done.
        assert snap["tls_handshakes"] >= k and snap["auth_ok"] >= k
        # The features are those of the EHLO after STARTTLS (RFC 3207 §4.2): AUTH offered.
        assert "auth" in info.features and "starttls" not in info.features


def test_on_connect_failure_and_a_raising_callback(caplog):
    # Refused connections are reported with their error.
    failed = Recorder()
    with SMTPPool("127.0.0.1", _closed_port(), size=1, timeout=5, retry=Retry(attempts=1),
                  on_connect=failed) as pool:
        results = list(pool.send_many(items(2)))
    assert [r.status for r in results] == ["not_attempted"] * 2
    assert failed.infos and all(isinstance(i.error, ConnectionRefusedError) and i.seconds >= 0
                                for i in failed.infos)

    # A callback that raises is logged and does not fail the connection.
    calls = []

    def broken(info):
        calls.append(info)
        raise RuntimeError("monitoring is down")

    with caplog.at_level(logging.ERROR, logger="fastsmtplib.pool"):
        with Sink(port=0) as sink:
            with SMTPPool(sink.host, sink.port, size=1, local_hostname=HOST, timeout=10,
                          on_connect=broken) as pool:
                results = list(pool.send_many(items(10)))
            assert wait_idle(sink)["messages"] == 10
    assert [r.status for r in results] == ["delivered"] * 10
    assert len(calls) == 1 and calls[0].error is None
    assert "on_connect callback raised" in caplog.text and "monitoring is down" in caplog.text


def test_open_connection_is_set_up_like_the_pools_and_not_used_by_it(tmp_path):
    rec = Recorder()
    path = str(tmp_path / "o.sock")
    with Sink(path=path) as sink:
        with SMTPPool(path=path, size=1, local_hostname=HOST, timeout=10, pipelining=False,
                      chunking=False, on_connect=rec) as pool:
            conn = pool.open_connection()
            try:
                assert conn.pipelining is False and conn.chunking is False
                assert "pipelining" in conn.esmtp_features
                assert conn.sendmail(FROM, ["x@example.org"], msg(0)) == {}
            finally:
                conn.quit()
            assert pool.stats["connects"] == 0  # the pool never opened or took it
            assert rec.threads == {threading.current_thread().name}
        counts = wait_idle(sink)
    assert counts["messages"] == 1 and counts["replies"].get(354, 0) == 1
    assert len(rec.infos) == 1 and rec.infos[0].error is None and rec.infos[0].seconds > 0


def _closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_bench_setup_times_come_from_on_connect(tmp_path):
    from fastsmtplib.loadgen import run_load

    path = str(tmp_path / "bench.sock")
    with Sink(path=path) as sink:
        r = run_load(unix=path, connections=2, messages=50, size=300, pipelining=False, chunking=False)
        counts = wait_idle(sink)
    assert r.delivered == 50 and counts["messages"] == 50 and counts["replies"].get(354, 0) == 50
    assert not r.pipelining and not r.chunking and r.transport == "unix"
    # The probe connection plus the pool's: one setup time per connection the sink accepted.
    assert r.setup_ms["count"] == counts["connections"] >= 2
    assert 0 < r.setup_ms["p50"] <= r.setup_ms["max"]
