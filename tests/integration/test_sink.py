"""``fastsmtplib.sink.Sink`` and ``fastsmtplib sink``, driven by real clients.

Clients: the stdlib's smtplib, fastsmtplib.SMTP (sendmail and send_many, over
DATA with ``chunking = False`` and over BDAT), fastsmtplib.LMTP (TCP and a
Unix socket), and raw sockets for what no client library does on purpose:
lock-step and pipelined scripts, a client that floods commands without
reading, over-long lines, random garbage, a DATA terminator split across
writes.  Stored content must be byte-identical to what the client meant
(after dot-unstuffing), lines starting with dots included.  The last test
feeds the session parser directly: random content (dots, bare CR and LF)
cut into random pieces, 300 messages per seed.
"""

from __future__ import annotations

import os
import random
import signal
import smtplib
import socket
import subprocess
import sys
import time

import pytest

import fastsmtplib
from fastsmtplib.sink import Sink, read_stored
from tests.support.sink_checks import read_replies

FROM = "sender@example.org"

DOTTY = (
    b"Subject: dots\r\n\r\n"
    b".starts with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"  # a line holding only a dot, inside the content
    b"middle . line\r\n"
    b"...\r\n"
    b"last line.\r\n"
)


def raw(sink: Sink, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection((sink.host, sink.port), timeout=timeout)
    return sock


def still_serves(sink: Sink) -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as c:
        assert c.sendmail(FROM, ["ok@example.org"], b"Subject: alive\r\n\r\nyes\r\n") == {}


# -- clients -------------------------------------------------------------------


def test_stdlib_smtplib_sendmail_counts_and_stores(tmp_path):
    with Sink(port=0, store=tmp_path) as s:
        with smtplib.SMTP(s.host, s.port, timeout=10) as c:
            code, resp = c.ehlo()
            assert code == 250
            for ext in ("pipelining", "chunking", "binarymime", "8bitmime", "smtputf8", "enhancedstatuscodes", "size"):
                assert c.has_extn(ext), ext
            assert c.esmtp_features["size"] == str(s.size)
            assert c.sendmail(FROM, ["a@example.org", "b@example.org"], DOTTY) == {}
            assert c.noop()[0] == 250
            assert c.verify("x@example.org")[0] == 252
            assert c.rset() == (250, b"2.0.0 Ok")
        counts = s.counts
        assert counts["messages"] == 1
        assert counts["recipients"] == 2
        assert counts["bytes"] == len(DOTTY)
        assert counts["connections"] == 1
        assert counts["replies"][221] == 1
        [m] = s.stored()
        assert m.mail_from == FROM
        assert m.recipients == ["a@example.org", "b@example.org"]
        assert m.content == DOTTY


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_fastsmtplib_sendmail_and_send_many(tmp_path, chunking):
    bodies = [DOTTY] + [b"Subject: %d\r\n\r\n.line %d\r\nbody\r\n" % (i, i) for i in range(30)]
    with Sink(port=0, store=tmp_path) as s:
        with fastsmtplib.SMTP(s.host, s.port, timeout=10) as c:
            c.chunking = chunking
            assert c.sendmail(FROM, ["a@example.org"], bodies[0]) == {}
            results = list(c.send_many((FROM, ["r%d@example.org" % i], b) for i, b in enumerate(bodies[1:])))
        assert all(r.ok for r in results), results
        assert s.counts["messages"] == len(bodies)
        stored = s.stored()
        assert [m.content for m in stored] == bodies
        assert stored[3].recipients == ["r2@example.org"]
        if chunking:
            assert "BDAT" not in repr(stored[0].mail_line)  # (the envelope is the MAIL line)
            assert s.counts["replies"].get(354, 0) == 0
        else:
            assert s.counts["replies"][354] == len(bodies)


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_lmtp_one_reply_per_recipient(tmp_path, unix):
    path = str(tmp_path / "lmtp.sock") if unix else None
    store = tmp_path / "store"
    with Sink(port=0, path=path, lmtp=True, store=store) as s:
        if unix:
            assert s.path == path and s.port is None
            c = fastsmtplib.LMTP(path, timeout=10)
        else:
            c = fastsmtplib.LMTP(s.host, s.port, timeout=10)
        with c:
            assert c.sendmail(FROM, ["a@example.org", "b@example.org", "c@example.org"], DOTTY) == {}
        assert s.counts["messages"] == 1
        assert s.counts["recipients"] == 3
        # three data replies (one per recipient) + LHLO + MAIL + 3 RCPT + QUIT's 221 aside
        assert s.counts["replies"][250] == 3 + 1 + 1 + 3
        [m] = s.stored()
        assert m.content == DOTTY
    if unix:
        assert not os.path.exists(path)  # removed at stop


def test_lmtp_raw_pipelined_data_replies():
    with Sink(port=0, lmtp=True) as s, raw(s) as sock:
        sock.sendall(b"LHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n")
        lines = read_replies(sock, 6)
        assert lines[-1].startswith(b"354 ")
        sock.sendall(b"hi\r\n.\r\nQUIT\r\n")
        lines = read_replies(sock, 3)
        assert [l[:9] for l in lines] == [b"250 2.0.0", b"250 2.0.0", b"221 2.0.0"]


def test_smtp_refuses_lhlo_and_lmtp_refuses_ehlo():
    with Sink(port=0) as s, raw(s) as sock:
        read_replies(sock, 1)
        sock.sendall(b"LHLO x\r\nMAIL FROM:<a@x>\r\n")
        assert [l[:3] for l in read_replies(sock, 2)] == [b"502", b"503"]
    with Sink(port=0, lmtp=True) as s, raw(s) as sock:
        read_replies(sock, 1)
        sock.sendall(b"EHLO x\r\n")
        assert read_replies(sock, 1)[0][:3] == b"500"


# -- SIZE ----------------------------------------------------------------------


def test_size_declared_too_big_refused_at_mail():
    with Sink(port=0, size=1000) as s:
        with smtplib.SMTP(s.host, s.port, timeout=10) as c:
            c.ehlo()
            assert c.mail(FROM, ["SIZE=1001"]) == (552, b"5.3.4 Message size exceeds fixed limit")
            assert c.mail(FROM, ["SIZE=1000"])[0] == 250
            assert c.rset()[0] == 250
            assert c.mail(FROM, ["SIZE=abc"])[0] == 501


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_size_content_too_big_discarded_552_at_end(chunking):
    big = b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n"
    big = big * 200  # ~16 KB
    with Sink(port=0, size=4096) as s:
        with fastsmtplib.SMTP(s.host, s.port, timeout=10) as c:
            c.chunking = chunking
            # Our client sends SIZE= itself when offered; go around it to test the content check.
            c.does_esmtp = True
            c.esmtp_features.pop("size", None)
            c.ehlo()
            c.esmtp_features.pop("size", None)
            with pytest.raises(smtplib.SMTPDataError) as info:
                c.sendmail(FROM, ["a@example.org"], big)
            assert info.value.smtp_code == 552
            c.rset()
            assert c.sendmail(FROM, ["a@example.org"], b"Subject: small\r\n\r\nok\r\n") == {}
        assert s.counts["messages"] == 1
        assert s.counts["replies"][552] == 1


def test_size_content_raw_data_and_bdat():
    with Sink(port=0, size=10) as s, raw(s) as sock:
        read_replies(sock, 1)
        sock.sendall(b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        read_replies(sock, 4)
        sock.sendall(b"0123456789\r\nmore\r\n.\r\n")
        assert read_replies(sock, 1)[0][:3] == b"552"
        sock.sendall(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 6\r\n012345BDAT 6 LAST\r\n6789ab")
        assert [l[:3] for l in read_replies(sock, 4)] == [b"250", b"250", b"250", b"552"]
        sock.sendall(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 10 LAST\r\n0123456789")
        assert [l[:3] for l in read_replies(sock, 3)] == [b"250", b"250", b"250"]
        assert s.counts["messages"] == 1
        assert s.counts["bytes"] == 10


# -- wire behaviour -------------------------------------------------------------


def test_lock_step_and_sequence_errors():
    with Sink(port=0) as s, raw(s) as sock:
        assert read_replies(sock, 1)[0].startswith(b"220 ")
        script = [
            (b"MAIL FROM:<a@x>", b"503 5.5.1"),  # before EHLO
            (b"EHLO client", b"250 "),
            (b"RCPT TO:<b@x>", b"503 5.5.1"),
            (b"DATA", b"503 5.5.1"),
            (b"MAIL FROM:<a@x>", b"250 2.1.0 Ok"),
            (b"MAIL FROM:<a@x>", b"503 5.5.1"),
            (b"DATA", b"503 5.5.1"),
            (b"RCPT TO:", b"501 5.5.4"),
            (b"RCPT TO:<b@x>", b"250 2.1.5 Ok"),
            (b"DATA extra", b"501 5.5.4"),
            (b"BDAT x", b"501 5.5.4"),
            (b"FOO", b"502 5.5.2"),
            (b"", b"500 5.5.2"),
            (b"MAIL", b"503 5.5.1"),
            (b"RSET", b"250 2.0.0 Ok"),
            (b"MAIL TO:<a@x>", b"501 5.5.4"),
            (b"HELO client", b"250 "),
            (b"VRFY", b"501 5.5.4"),
            (b"NOOP", b"250 2.0.0 Ok"),
        ]
        for cmd, want in script:
            sock.sendall(cmd + b"\r\n")
            [got] = read_replies(sock, 1)
            assert got.startswith(want), (cmd, got)
        sock.sendall(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        read_replies(sock, 3)
        sock.sendall(b"body\r\n.\r\n")
        assert read_replies(sock, 1)[0].startswith(b"250 2.0.0 Ok: queued as ")
        sock.sendall(b"QUIT\r\n")
        assert read_replies(sock, 1)[0] == b"221 2.0.0 Bye"
        assert sock.recv(100) == b""


def test_pipelined_groups_answered_in_order():
    msg = b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nBDAT 5 LAST\r\nhello"
    with Sink(port=0) as s, raw(s) as sock:
        read_replies(sock, 1)
        sock.sendall(b"EHLO x\r\n" + msg * 50 + b"QUIT\r\n")
        lines = read_replies(sock, 1 + 50 * 4 + 1)
        codes = [l[:9] for l in lines]
        assert lines[0] == b"250 CHUNKING"
        for i in range(50):
            assert codes[1 + 4 * i: 5 + 4 * i] == [b"250 2.1.0", b"250 2.1.5", b"250 2.1.5", b"250 2.0.0"]
        assert codes[-1] == b"221 2.0.0"
        assert s.counts["messages"] == 50
        assert s.counts["recipients"] == 100


def test_data_terminator_and_stuffing_split_across_writes(tmp_path):
    content = b"a\r\n.b\r\n..\r\nc\r\n"
    wire = b"a\r\n..b\r\n...\r\nc\r\n.\r\n"
    with Sink(port=0, store=tmp_path) as s:
        for cut_a in range(1, len(wire)):
            with raw(s) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                read_replies(sock, 1)
                sock.sendall(b"HELO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
                read_replies(sock, 4)
                for piece in (wire[:cut_a], wire[cut_a:]):
                    sock.sendall(piece)
                    time.sleep(0.002)
                assert read_replies(sock, 1)[0].startswith(b"250 2.0.0")
        # byte at a time, through one connection
        with raw(s) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            read_replies(sock, 1)
            sock.sendall(b"HELO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
            read_replies(sock, 4)
            for i in range(len(wire)):
                sock.sendall(wire[i:i + 1])
                time.sleep(0.001)
            assert read_replies(sock, 1)[0].startswith(b"250 2.0.0")
        stored = s.stored()
        assert len(stored) == len(wire)
        assert all(m.content == content for m in stored)
        # An empty message: the terminator right after 354.
        with raw(s) as sock:
            read_replies(sock, 1)
            sock.sendall(b"HELO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n.\r\n")
            assert read_replies(sock, 5)[-1].startswith(b"250 2.0.0")
        assert s.stored()[-1].content == b""


def test_binarymime_needs_bdat():
    with Sink(port=0) as s, raw(s) as sock:
        read_replies(sock, 1)
        sock.sendall(b"EHLO x\r\nMAIL FROM:<a@x> BODY=BINARYMIME\r\nRCPT TO:<b@x>\r\nDATA\r\n")
        assert read_replies(sock, 4)[-1].startswith(b"503 5.5.1")
        sock.sendall(b"BDAT 3 LAST\r\n\x00\xff\r")
        assert read_replies(sock, 1)[0].startswith(b"250 2.0.0 Ok: queued")


def test_bdat_without_transaction_consumes_chunk():
    with Sink(port=0) as s, raw(s) as sock:
        read_replies(sock, 1)
        sock.sendall(b"EHLO x\r\nBDAT 10 LAST\r\nNOOP\r\nNOOPNOOP\r\n")
        lines = read_replies(sock, 3)
        assert [l[:3] for l in lines] == [b"250", b"503", b"250"]  # the chunk was not parsed as commands


def test_over_long_line_500_and_rest_discarded():
    with Sink(port=0) as s, raw(s) as sock:
        read_replies(sock, 1)
        sock.sendall(b"EHLO x\r\n")
        read_replies(sock, 1)
        sock.sendall(b"NOOP " + b"x" * 2000)
        assert read_replies(sock, 1) == [b"500 5.5.2 Line too long"]
        sock.sendall(b"y" * 100000 + b"QUIT QUIT\r\nNOOP\r\n")  # the tail of the same line: no reply
        assert read_replies(sock, 1)[0].startswith(b"250 2.0.0 Ok")
        # a whole over-long line in one write
        sock.sendall(b"RCPT TO:<" + b"z" * 1200 + b">\r\nNOOP\r\n")
        assert [l[:3] for l in read_replies(sock, 2)] == [b"500", b"250"]
        # exactly 1000 bytes with CRLF is allowed
        sock.sendall(b"NOOP " + b"n" * (1000 - 7) + b"\r\n")
        assert read_replies(sock, 1)[0][:3] == b"250"
        still_serves(s)


def test_flooding_client_is_bounded_and_others_served():
    cmd = b"EHLO flood.example\r\n"  # 20 bytes in, ~170 bytes of reply owed
    with Sink(port=0, max_output=64 * 1024) as s:
        flood = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        flood.connect((s.host, s.port))
        flood.setblocking(False)
        sent = 0
        block = cmd * 5000
        stuck_since = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                sent += flood.send(block[sent % len(cmd):])  # the stream goes on where a short send stopped
                stuck_since = None
            except BlockingIOError:
                now = time.monotonic()
                stuck_since = stuck_since or now
                if now - stuck_since > 0.5:
                    break  # the sink stopped reading: its receive buffer and ours are full
                time.sleep(0.02)
        assert stuck_since is not None, "the sink kept reading from a client that reads nothing"
        # The sink holds at most its output cap (+ one reply) and one read for this client,
        # and has read far less than the replies it owes would need.
        [sess] = list(s._sessions)
        assert sess.stalled
        assert sess.outlen <= s.max_output + len(s._ehlo[1])
        assert len(sess.inbuf) <= s.recv_size
        assert s.counts["bytes_in"] < 4 * 1024 * 1024
        still_serves(s)
        # Now the flooder reads everything: every command gets its reply, in order.
        flood.setblocking(True)
        flood.settimeout(30)
        flood.shutdown(socket.SHUT_WR)
        got = 0
        tail = b""
        while True:
            chunk = flood.recv(1 << 20)
            if not chunk:
                break
            data = tail + chunk
            got += data.count(b"250 CHUNKING\r\n")
            tail = data[-13:]  # a reply split across reads (13 < its 14 bytes: never counted twice)
        flood.close()
        assert got == sent // len(cmd)


def test_max_connections_421():
    with Sink(port=0, max_connections=2) as s:
        a, b = raw(s), raw(s)
        read_replies(a, 1)
        read_replies(b, 1)
        with raw(s) as c:
            assert read_replies(c, 1)[0].startswith(b"421 4.7.0")
            assert c.recv(10) == b""
        a.close()
        deadline = time.monotonic() + 5
        while s.counts["active"] > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        still_serves(s)
        b.close()
        assert s.counts["refused"] == 1


def test_garbage_and_truncated_input_survived():
    rng = random.Random(9)
    with Sink(port=0) as s:
        for i in range(30):
            with raw(s) as sock:
                if i % 3 == 1:  # truncated mid-DATA
                    sock.sendall(b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nhalf a mess")
                elif i % 3 == 2:  # truncated mid-BDAT
                    sock.sendall(b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 100000 LAST\r\nxx")
                else:
                    sock.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 20000))))
            # closed without QUIT, maybe with replies unread (RST)
        still_serves(s)
        assert s.counts["messages"] == 1


# -- command line ---------------------------------------------------------------


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastsmtplib"] + list(args),
                          capture_output=True, text=True, timeout=60, **kw)


def test_cli_help_and_usage_errors():
    r = run_cli("sink", "--help")
    assert r.returncode == 0
    for opt in ("--host", "--port", "--unix", "--lmtp", "--size", "--store", "--max-connections"):
        assert opt in r.stdout
    assert "sink" in run_cli("--help").stdout
    for bad in (["--port", "x"], ["--port", "70000"], ["--size", "0"], ["--max-connections", "-1"], ["--bogus"]):
        r = run_cli("sink", *bad)
        assert r.returncode == 2, bad
        assert "error:" in r.stderr


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp-unix"])
def test_cli_serves_until_sigterm(tmp_path, lmtp):
    store = tmp_path / "store"
    argv = [sys.executable, "-m", "fastsmtplib", "sink", "--store", str(store)]
    if lmtp:
        argv += ["--lmtp", "--unix", str(tmp_path / "s.sock")]
    else:
        argv += ["--port", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert "sink: " in first, first + proc.stderr.read()
        where = first.split(" on ", 1)[1].strip()
        if lmtp:
            c = fastsmtplib.LMTP(where.split(":", 1)[1], timeout=10)
        else:
            host, port = where.rsplit(":", 1)
            c = fastsmtplib.SMTP(host, int(port), timeout=10)
        with c:
            assert c.sendmail(FROM, ["a@example.org", "b@example.org"], DOTTY) == {}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "messages 1\n" in out
    assert "recipients 2\n" in out
    assert "replies " in out
    [name] = os.listdir(store)
    assert read_stored(store / name).content == DOTTY


def test_cli_bind_failure_exits_1():
    with Sink(port=0) as s:
        r = run_cli("sink", "--port", str(s.port))
        assert r.returncode == 1
        assert "cannot listen" in r.stderr


# -- the DATA scanner, fed in random pieces ----------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_data_scanner_random_content_random_splits(tmp_path, seed):
    """Random content (dots, bare CR and LF, empty lines) stuffed, cut at random places,
    fed straight to the session parser: each message comes out byte-identical."""
    from fastsmtplib.sink import _Session

    rng = random.Random(seed)
    sink = Sink(port=0, store=tmp_path)
    tmp_path.mkdir(exist_ok=True)
    a, b = socket.socketpair()
    try:
        sess = _Session(a)
        sess.greeted = True
        alphabet = [b".", b"..", b"\r", b"\n", b"x", b"yz", b" ", b"\x00\xff"]
        expected = []
        wire = bytearray()
        for i in range(300):
            lines = []
            for _ in range(rng.randrange(0, 8)):
                line = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 6)))
                while b"\r\n" in line:  # a line holds no CRLF (bare CR and LF are fine)
                    line = line.replace(b"\r\n", b"\r")
                lines.append(line)
            content = b"".join(l + b"\r\n" for l in lines)
            expected.append(content)
            stuffed = b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines)
            wire += b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n" + stuffed + b".\r\n"
        pos = 0
        while pos < len(wire):
            step = rng.choice([1, 2, 3, 5, 7, 64, 1000])
            sess.inbuf += wire[pos:pos + step]
            pos += step
            sink._process(sess)
        assert not sess.inbuf
        got = [m.content for m in sink.stored()]
        assert len(got) == len(expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            assert g == e, i
        assert sink.counts["bytes"] == sum(map(len, expected))
        assert sink.counts["replies"][250] == 300 * 3
    finally:
        a.close()
        b.close()
