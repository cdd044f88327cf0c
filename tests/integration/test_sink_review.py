"""Regression tests for defects found reviewing the sink (each failed before its fix).

Raw sockets against a live ``Sink``: what a client sees must match the
sink's counters, and no input may stop the loop or leave a client waiting.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import time

import pytest

from fastsmtplib.sink import Sink
from tests.support.sink_checks import wait_idle

FINAL = re.compile(rb"(?m)^(\d{3})(?: [^\r\n]*)?\r\n")


def replies(sock, count: int) -> list:
    """Read until ``count`` more final reply lines came (or EOF); their codes and lines."""
    data = b""
    while len(FINAL.findall(data)) < count:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLError, ConnectionError):
            break
        if not chunk:
            break
        data += chunk
    return [m.group(0) for m in FINAL.finditer(data)]


def read_to_eof(sock) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLError, ConnectionError):  # a dropped TLS line: no close_notify
            return data
        if not chunk:
            return data
        data += chunk


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# -- AUTH: an over-long response line ends the exchange --------------------------------


@pytest.mark.parametrize("step", ["plain", "login-user", "login-password"])
def test_over_long_auth_response_ends_the_exchange(step):
    """The 500 is a final reply: the client's next line is a command, not the AUTH answer.

    Before the fix the sink kept waiting for the response: "NOOP" (valid
    base64) was taken as the user name (334), the password (535) or PLAIN
    data (501).
    """
    start = {"plain": b"AUTH PLAIN\r\n", "login-user": b"AUTH LOGIN\r\n",
             "login-password": b"AUTH LOGIN " + b64(b"alice") + b"\r\n"}[step]
    with Sink(port=0, auth={"alice": "pw"}, auth_plaintext=True, max_line=200) as s:
        with socket.create_connection((s.host, s.port), timeout=10) as sock:
            replies(sock, 1)
            sock.sendall(b"EHLO x\r\n")
            replies(sock, 1)
            sock.sendall(start)
            assert replies(sock, 1)[0].startswith(b"334 ")
            sock.sendall(b"A" * 400 + b"\r\n")
            assert replies(sock, 1) == [b"500 5.5.2 Line too long\r\n"]
            sock.sendall(b"NOOP\r\n")
            assert replies(sock, 1) == [b"250 2.0.0 Ok\r\n"]
            # A fresh AUTH works; the half-done one left nothing behind.
            sock.sendall(b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\n")
            assert replies(sock, 1)[0].startswith(b"235 ")
            sock.sendall(b"QUIT\r\n")
            assert replies(sock, 1)[0].startswith(b"221 ")
        counts = wait_idle(s)
        assert (counts["auth_ok"], counts["auth_failed"]) == (1, 0)


def test_over_long_auth_response_in_a_half_line_over_tls():
    """The same over TLS, with the long line cut over reads and never ended within max_line."""
    with Sink(port=0, tls=True, auth={"alice": "pw"}, max_line=100) as s:
        raw = socket.create_connection((s.host, s.port), timeout=10)
        with s.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            replies(sock, 1)
            sock.sendall(b"EHLO x\r\nAUTH LOGIN\r\n")
            assert replies(sock, 2)[1].startswith(b"334 ")
            sock.sendall(b"B" * 150)
            assert replies(sock, 1) == [b"500 5.5.2 Line too long\r\n"]
            sock.sendall(b"B" * 150 + b"\r\nNOOP\r\n")
            assert replies(sock, 1) == [b"250 2.0.0 Ok\r\n"]
        wait_idle(s)


# -- numbers longer than int() takes ----------------------------------------------------


def test_size_and_bdat_counts_of_thousands_of_digits_do_not_stop_the_sink():
    """int() refuses more than 4300 digits: a ValueError ended the sink's loop for every client."""
    nines = b"9" * 5000
    with Sink(port=0, max_line=20000) as s:
        with socket.create_connection((s.host, s.port), timeout=10) as sock:
            replies(sock, 1)
            sock.sendall(b"EHLO x\r\n")
            replies(sock, 1)
            sock.sendall(b"MAIL FROM:<a@x> SIZE=" + nines + b"\r\n")
            assert replies(sock, 1)[0].startswith(b"552 5.3.4")
            sock.sendall(b"MAIL FROM:<a@x> SIZE=" + b"0" * 5000 + b"7\r\nRCPT TO:<b@x>\r\n")
            assert [r[:3] for r in replies(sock, 2)] == [b"250", b"250"]
            sock.sendall(b"BDAT " + nines + b" LAST\r\n")
            assert replies(sock, 1)[0].startswith(b"501 5.5.4")
            sock.sendall(b"BDAT " + b"0" * 5000 + b"3 LAST\r\nabc")
            assert replies(sock, 1)[0].startswith(b"250 2.0.0 Ok: queued as")
        assert s._thread.is_alive()
        assert wait_idle(s)["messages"] == 1


# -- drop_in_data: hang up at once, after the replies owed -------------------------------


@pytest.mark.parametrize("bdat", [b"BDAT 0 LAST", b"BDAT 0", b"BDAT x"])
def test_drop_in_data_at_a_bdat_without_content_hangs_up_at_once(bdat):
    """No content follows such a BDAT: the drop was waiting for bytes that never come,
    and the client for its reply, until the idle timeout (421, and no drop counted)."""
    with Sink(port=0, drop_in_data=1.0, idle_timeout=60) as s:
        with socket.create_connection((s.host, s.port), timeout=10) as sock:
            replies(sock, 1)
            sock.sendall(b"EHLO x\r\n")
            replies(sock, 1)
            sock.sendall(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n")
            replies(sock, 2)
            t0 = time.monotonic()
            sock.sendall(bdat + b"\r\n")
            assert read_to_eof(sock) == b""
            assert time.monotonic() - t0 < 5
        counts = wait_idle(s)
        assert counts["fault_dropped_in_data"] == 1
        assert counts["idle_timeouts"] == 0


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_drop_in_data_still_sends_the_replies_owed_before_the_content(tls):
    """A pipelining client sends MAIL, RCPTs and BDAT with its chunk in one write.

    The sink counted (``replies``, ``fault_rcpt_refused``) the replies to MAIL
    and RCPT, then dropped the connection before sending them: the client saw
    none of them.  Now they go out, then the line goes dead (no reply to the
    content, and no TLS close_notify).
    """
    with Sink(port=0, drop_in_data=1.0, rcpt_refuse=0.5, seed=1, tls=tls) as s:
        raw = socket.create_connection((s.host, s.port), timeout=10)
        sock = s.client_context().wrap_socket(raw, server_hostname="127.0.0.1") if tls else raw
        with sock:
            seen = replies(sock, 1)
            sock.sendall(b"EHLO x\r\n")
            seen += replies(sock, 1)
            rcpts = b"".join(b"RCPT TO:<r%d@x>\r\n" % i for i in range(8))
            sock.sendall(b"MAIL FROM:<a@x>\r\n" + rcpts + b"BDAT 10 LAST\r\n0123456789")
            data = read_to_eof(sock)
        seen += [m.group(0) for m in FINAL.finditer(data)]
        counts = wait_idle(s)
    assert counts["fault_dropped_in_data"] == 1
    assert counts["messages"] == 0
    codes: dict = {}
    for line in seen:
        codes[int(line[:3])] = codes.get(int(line[:3]), 0) + 1
    assert codes == counts["replies"]
    assert codes.get(550, 0) == counts["fault_rcpt_refused"] >= 1
    assert len(seen) == 2 + 1 + 8  # greeting, EHLO, MAIL, the RCPTs; nothing for the BDAT


# -- bench --compare --timeout ------------------------------------------------------------


def test_compare_honours_timeout():
    """``--timeout`` was accepted with ``--compare`` and ignored (every client waited 30 s)."""
    import json
    import subprocess
    import sys

    with Sink(port=0, delay=3.0) as s:  # every reply, the greeting first, comes after 3 s
        p = subprocess.run(
            [sys.executable, "-m", "fastsmtplib", "bench", "--compare", "%s:%d" % (s.host, s.port),
             "--timeout", "0.3", "-n", "1", "-c", "1", "--json", "-q"],
            capture_output=True, text=True, timeout=25)
    assert p.returncode == 1, (p.stdout, p.stderr)
    cases = json.loads(p.stdout)["cases"]
    assert len(cases) >= 5
    for case in cases:  # none waited for the greeting: each gave up at the 0.3 s timeout
        assert case["error"] and case["delivered"] == 0, case
    assert all("time" in c["error"].lower() for c in cases if "SMTPPool" not in c["name"]), cases


# -- store: a write that fails refuses that message, the sink goes on ----------------------


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_store_write_failure_is_451_not_the_end_of_the_sink(tmp_path, lmtp):
    """An OSError writing the message went up through the loop: the sink stopped for everyone."""
    import shutil
    import smtplib

    import fastsmtplib

    store = tmp_path / "store"
    with Sink(port=0, store=store, lmtp=lmtp) as s:
        def send(to):
            c = fastsmtplib.LMTP(s.host, s.port, timeout=10) if lmtp else smtplib.SMTP(s.host, s.port, timeout=10)
            with c:
                return c.sendmail("a@example.org", to, b"Subject: x\r\n\r\nbody\r\n")

        assert send(["b@example.org"]) == {}
        shutil.rmtree(store)  # the directory is gone: the next write fails
        with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused)) as info:
            send(["c@example.org", "d@example.org"])
        exc = info.value
        codes = [exc.smtp_code] if isinstance(exc, smtplib.SMTPDataError) else [v[0] for v in exc.recipients.values()]
        assert codes and all(code == 451 for code in codes), exc
        assert s._thread.is_alive()
        store.mkdir()
        assert send(["e@example.org"]) == {}
        counts = wait_idle(s)
    assert (counts["messages"], counts["store_failed"]) == (2, 1)
    assert [m.recipients for m in s.stored()] == [["e@example.org"]]


# -- out of file descriptors: no busy loop --------------------------------------------------

_EMFILE_SCRIPT = r"""
import os, resource, socket, time
from fastsmtplib.sink import Sink
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
s = Sink(port=0)
s.bind()
calls = [0]
real = s._sel.select
def counting(timeout=None):
    calls[0] += 1
    return real(timeout)
s._sel.select = counting
s.start()
socks = []
try:  # the client ends use this process's descriptors too: accept() soon gets EMFILE
    for _ in range(200):
        socks.append(socket.create_connection((s.host, s.port), timeout=5))
except OSError:
    pass
time.sleep(0.2)
before = calls[0]
time.sleep(0.5)
spins = calls[0] - before
for k in socks[:20]:
    k.close()
deadline = time.monotonic() + 5
while not s._sessions and time.monotonic() < deadline:
    time.sleep(0.02)
print(spins, len(s._sessions), s._thread.is_alive(), flush=True)
os._exit(0)
"""


def test_out_of_descriptors_pauses_accepting_instead_of_spinning():
    """accept() failing with EMFILE left the listener readable: ~10^5 select() calls a second."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    p = subprocess.run([sys.executable, "-c", _EMFILE_SCRIPT], capture_output=True, text=True, timeout=30, env=env)
    spins, sessions, alive = p.stdout.split()
    # Paused: a select() per 0.1 s pause (and a few more); spinning: tens of thousands.
    assert int(spins) < 200, p.stdout
    assert int(sessions) > 0 and alive == "True", p.stdout  # accepting resumed once descriptors freed
