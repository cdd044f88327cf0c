"""A reference, not a client: the fewest Python operations that do the same exchange.

``RawClient`` sends the bytes fastsmtplib sends, grouped into the same writes
(so the same round trips), but prebuilt once: no parsing beyond counting reply
lines and checking their first digit, no per-message encoding.  Its rate on
``smtp-sink`` is the ceiling any client doing that exchange can reach on this
core, because what remains is the kernel's and the sink's work.  The benchmark
tables print it beside stdlib and fastsmtplib so that a ratio goal can be read
against what the protocol and the sink allow.
"""

from __future__ import annotations

import socket

from fastsmtplib._wire import dot_stuff


def envelope(from_addr: str, rcpts: list) -> bytes:
    """MAIL and RCPT lines as fastsmtplib writes them for plain addresses."""
    return b"mail FROM:<%s>\r\n" % from_addr.encode() + b"".join(b"rcpt TO:<%s>\r\n" % r.encode() for r in rcpts)


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self._expect(1)  # greeting
        self.sock.sendall(b"EHLO raw.example\r\n")
        while b"\r\n250 " not in b"\r\n" + self.buf and not self.buf.startswith(b"250 "):
            self.buf += self.sock.recv(65536)
        self.buf = b""

    def _expect(self, lines: int) -> None:
        """Read ``lines`` single-line replies; every one must be 2xx or 3xx."""
        buf = self.buf
        while buf.count(b"\r\n") < lines:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("sink closed the connection")
            buf += chunk
        parts = buf.split(b"\r\n")
        for reply in parts[:lines]:
            if reply[:1] not in (b"2", b"3"):
                raise AssertionError(f"sink refused: {reply!r}")
        self.buf = b"\r\n".join(parts[lines:])

    def sendmail_batch(self, from_addr: str, rcpts: list, msg: str, n: int) -> None:
        """Like n x fastsmtplib sendmail(): envelope+DATA in one write, then the body."""
        env = envelope(from_addr, rcpts) + b"data\r\n"
        body = dot_stuff(msg.encode("ascii"))
        owed = 2 + len(rcpts)
        send, expect = self.sock.sendall, self._expect
        for _ in range(n):
            send(env)
            expect(owed)
            send(body)
            expect(1)

    def send_many_batch(self, from_addr: str, rcpts: list, msg: str, n: int) -> None:
        """Like fastsmtplib send_many() over DATA: each body shares a write with the next envelope."""
        env = envelope(from_addr, rcpts) + b"data\r\n"
        body = dot_stuff(msg.encode("ascii"))
        owed = 2 + len(rcpts)
        send, expect = self.sock.sendall, self._expect
        send(env)
        expect(owed)
        body_env = body + env
        for _ in range(n - 1):
            send(body_env)
            expect(1 + owed)
        send(body)
        expect(1)

    def quit(self) -> None:
        self.sock.sendall(b"QUIT\r\n")
        self.sock.close()

    close = quit


def bdat_window_batch(client: RawClient, from_addr: str, rcpts: list, msg: str, n: int, window: int = 16) -> None:
    """Like fastsmtplib send_many() over BDAT: ``window`` whole transactions a write."""
    from fastsmtplib._wire import crlf_normalize

    payload = crlf_normalize(msg.encode("ascii"))
    one = envelope(from_addr, rcpts) + b"BDAT %d LAST\r\n" % len(payload) + payload
    owed = 2 + len(rcpts)
    first = True
    sent = 0
    while sent < n:
        k = min(window, n - sent)
        group = [one if (first and i == 0) else b"rset\r\n" + one for i in range(k)]
        client.sock.sendall(b"".join(group))
        client._expect(k * owed + (k - 1 if first else k))
        first = False
        sent += k
