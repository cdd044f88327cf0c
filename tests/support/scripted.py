"""A scripted socket server for faults and exact wire checks.

aiosmtpd cannot misbehave on purpose or show how the client grouped its
writes; this server can. A script is a plain function run in a thread for
each accepted connection::

    def script(c):                          # c: Conn
        c.send(b"220 scripted ESMTP\\r\\n")
        c.expect_line(b"EHLO")              # case-insensitive prefix
        c.send(b"250-scripted\\r\\n250 PIPELINING\\r\\n")
        c.expect_line(b"MAIL FROM:<a@example.org>")
        ...
        c.close()

    with ScriptedServer(script) as srv:     # srv.host, srv.port
        client = smtplib.SMTP(srv.host, srv.port)
        ...
    # leaving the block waits for the script and re-raises its error, if any
    srv.chunks                              # every recv() of connection 0, in order
    srv.chunk_lines()                       # [[b"MAIL FROM:...", b"RCPT TO:...", ...], ...]

What the Conn helper offers: ``send``, ``drip(data, interval)``,
``readline``, ``read_until(marker)`` (= ``recv_until``), ``read_exactly``,
``read_data`` (DATA body up to the lone dot), ``expect_line(prefix)``,
``expect(regex)``, ``pending(wait)`` (bytes the client sent without waiting
for a reply), ``read_until_eof``, ``sleep``, ``close``, ``starttls(...)``,
and shortcuts ``greet``/``ehlo``/``handshake``.

Recording: each connection keeps ``chunks`` (one entry per ``recv``; the
OS may still merge two client writes that arrive before the server reads,
but it never splits a small write on loopback, so "these commands arrived
in one chunk" is a reliable sign they were sent in one write, while "they
arrived in separate chunks" is best checked with :meth:`Conn.pending`
before replying) and ``events`` (a transcript of ``("recv"|"send"|
"starttls"|"close", bytes)`` for failure messages).

STARTTLS: ``c.starttls(reply=b"220 go\\r\\n", inject=b"250 evil\\r\\n")``
sends the reply and the injected plaintext in one write, records whatever
plaintext the client had already pipelined after its STARTTLS (RFC 3207
§4.2 forbids that) in ``c.pre_tls_bytes``, then wraps the socket
server-side with the trustme localhost certificate.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from typing import Callable, List, Optional, Pattern, Union

from .certs import tls as _tls

__all__ = ["ScriptedServer", "Conn", "ScriptError", "ClientClosed"]

CRLF = b"\r\n"


class ScriptError(AssertionError):
    """The client did not do what the script expected."""


class ClientClosed(ScriptError):
    """The client closed the connection while the script was reading."""


class Conn:
    """One accepted connection, as seen by a script."""

    MAX_BUFFER = 4 * 1024 * 1024

    def __init__(self, sock: socket.socket, index: int, timeout: float) -> None:
        self.sock = sock
        self.index = index
        self.timeout = timeout
        self.chunks: List[bytes] = []
        self.events: list = []
        self.pre_tls_bytes: Optional[bytes] = None
        self.tls = False
        self.closed = False
        self._buf = bytearray()
        sock.settimeout(timeout)

    # -- sending --------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Write ``data`` in one ``sendall``."""
        self.events.append(("send", bytes(data)))
        self.sock.sendall(data)

    def drip(self, data: bytes, interval: float, size: int = 1) -> None:
        """Write ``data`` ``size`` bytes at a time, sleeping ``interval`` between."""
        for i in range(0, len(data), size):
            if i:
                time.sleep(interval)
            self.send(data[i:i + size])

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    # -- receiving ------------------------------------------------------------
    def _fill(self, timeout: Optional[float] = None) -> bool:
        """One recv into the buffer; False on EOF."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        data = self.sock.recv(65536)
        if not data:
            self.events.append(("eof", b""))
            return False
        self.chunks.append(data)
        self.events.append(("recv", data))
        self._buf += data
        if len(self._buf) > self.MAX_BUFFER:
            raise ScriptError(f"client sent more than {self.MAX_BUFFER} bytes unread")
        return True

    def read_until(self, marker: bytes) -> bytes:
        """Bytes up to and including ``marker`` (raises ClientClosed on EOF)."""
        while True:
            i = self._buf.find(marker)
            if i >= 0:
                end = i + len(marker)
                out = bytes(self._buf[:end])
                del self._buf[:end]
                return out
            if not self._fill():
                raise ClientClosed(
                    f"client closed while the script waited for {marker!r}; "
                    f"unread: {bytes(self._buf)!r}"
                )

    recv_until = read_until

    def readline(self) -> bytes:
        """One line including its line end (LF or CRLF)."""
        return self.read_until(b"\n")

    def read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise ClientClosed(f"client closed after {len(self._buf)} of {n} bytes")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def read_data(self) -> bytes:
        """After 354: the DATA body up to and including ``CRLF.CRLF`` (raw, stuffed)."""
        return self.read_until(b"\r\n.\r\n")

    def read_until_eof(self) -> bytes:
        """Everything until the client closes."""
        while self._fill():
            pass
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def pending(self, wait: float = 0.05) -> bytes:
        """Take what is buffered plus whatever arrives within ``wait`` seconds.

        Call it before replying to a command after which the client must
        wait (EHLO, DATA, STARTTLS, AUTH...): anything returned was sent
        without waiting for the reply.
        """
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                if not self._fill(timeout=left):
                    break
            except (socket.timeout, BlockingIOError):
                break
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def expect_line(self, prefix: bytes) -> bytes:
        """Read a line; it must start with ``prefix`` (ASCII case-insensitive)."""
        line = self.readline()
        if not line.lower().startswith(prefix.lower()):
            raise ScriptError(f"expected a line starting with {prefix!r}, got {line!r}")
        return line

    def expect(self, pattern: Union[bytes, Pattern[bytes]], flags: int = re.IGNORECASE):
        """Read a line; it must match ``pattern`` (``re.match``). Returns the match."""
        line = self.readline()
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, flags)
        m = rx.match(line)
        if m is None:
            raise ScriptError(f"expected {rx.pattern!r}, got {line!r}")
        return m

    # -- SMTP shortcuts -----------------------------------------------------------
    def greet(self, text: bytes = b"220 scripted.test ESMTP ready\r\n") -> None:
        self.send(text)

    def ehlo(self, extensions=("PIPELINING", "8BITMIME"), hostname: bytes = b"scripted.test") -> bytes:
        """Expect EHLO (or LHLO); answer with ``extensions``. Returns the client's line."""
        line = self.expect(rb"(EHLO|LHLO) ")
        lines = [hostname] + [e.encode() if isinstance(e, str) else e for e in extensions]
        reply = b"".join(
            b"250" + (b" " if i == len(lines) - 1 else b"-") + text + CRLF
            for i, text in enumerate(lines)
        )
        self.send(reply)
        return line.string

    def handshake(self, extensions=("PIPELINING", "8BITMIME")) -> None:
        """Greeting, then EHLO answered with ``extensions``."""
        self.greet()
        self.ehlo(extensions)

    def starttls(self, reply: bytes = b"220 2.0.0 Ready to start TLS\r\n", inject: bytes = b"",
                 context: Optional[ssl.SSLContext] = None) -> None:
        """Answer STARTTLS (already read by the script) and wrap the socket.

        ``reply`` and ``inject`` go out in one write before the handshake;
        plaintext the client pipelined after STARTTLS lands in ``pre_tls_bytes``.
        """
        self.pre_tls_bytes = bytes(self._buf)
        self._buf.clear()
        self.events.append(("starttls", self.pre_tls_bytes))
        self.send(reply + inject)
        ctx = context or _tls().server_context()
        self.sock.settimeout(self.timeout)
        self.sock = ctx.wrap_socket(self.sock, server_side=True)
        self.tls = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.events.append(("close", b""))
            try:
                self.sock.close()
            except OSError:
                pass

    def reset(self) -> None:
        """Close with an RST instead of a FIN (SO_LINGER 0)."""
        import struct

        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    @property
    def received(self) -> bytes:
        return b"".join(self.chunks)

    def transcript(self) -> str:
        return "\n".join(f"  {kind:8} {data!r}" for kind, data in self.events)


class ScriptedServer:
    """Listen on 127.0.0.1:0 and run ``script(conn)`` for each connection.

    Args:
        script: ``def script(conn: Conn)``; or a list of scripts, one per
            connection in accept order (then ``connections`` is its length).
        connections: how many connections to accept (each gets a thread).
        timeout: per socket operation, so a script never hangs a test.
        check: re-raise the first script error when the ``with`` block ends
            (only if the block itself did not raise).
    """

    def __init__(
        self,
        script: Union[Callable[[Conn], None], list],
        *,
        connections: int = 1,
        timeout: float = 5.0,
        check: bool = True,
    ) -> None:
        if isinstance(script, (list, tuple)):
            self.scripts = list(script)
            connections = len(self.scripts)
        else:
            self.scripts = [script] * connections
        self.n_connections = connections
        self.timeout = timeout
        self.check = check
        self.conns: List[Conn] = []
        self.errors: List[BaseException] = []
        self._threads: List[threading.Thread] = []
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self.host = "127.0.0.1"
        self.port: Optional[int] = None

    def start(self) -> "ScriptedServer":
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, 0))
        ls.listen(16)
        ls.settimeout(self.timeout)
        self._listener = ls
        self.port = ls.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name=f"scripted-accept-{self.port}")
        self._accept_thread.start()
        return self

    def _accept_loop(self) -> None:
        for i in range(self.n_connections):
            try:
                sock, _ = self._listener.accept()
            except (socket.timeout, OSError) as exc:
                if self._listener is not None:  # not closed by stop()
                    self.errors.append(ScriptError(f"connection {i} never came: {exc}"))
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock, i, self.timeout)
            self.conns.append(conn)
            t = threading.Thread(target=self._run, args=(self.scripts[i], conn), daemon=True,
                                 name=f"scripted-{self.port}-{i}")
            self._threads.append(t)
            t.start()

    def _run(self, script, conn: Conn) -> None:
        try:
            script(conn)
        except BaseException as exc:  # recorded for the test thread
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(f"connection {conn.index} transcript:\n{conn.transcript()}")
            self.errors.append(exc)
        finally:
            conn.close()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Wait for every script to finish (or ``timeout``)."""
        limit = self.timeout * 2 if timeout is None else timeout
        deadline = time.monotonic() + limit
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                self.errors.append(ScriptError(f"{t.name} still running after {limit}s"))

    def stop(self) -> None:
        """Stop accepting, cut every connection, wait for the scripts."""
        ls, self._listener = self._listener, None
        if ls is not None:
            ls.close()  # unblocks accept() (it also has a timeout)
        for c in list(self.conns):
            try:
                c.sock.shutdown(socket.SHUT_RDWR)  # unblocks a script's recv()
            except OSError:
                pass
        self.wait()
        for c in self.conns:
            c.close()

    def raise_errors(self) -> None:
        """Re-raise the first script error in the calling (test) thread."""
        if self.errors:
            raise self.errors[0]

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            # Let the scripts finish what the client triggered before closing.
            self.wait()
        self.stop()
        if exc_type is None:
            if self.check:
                self.raise_errors()
        elif self.errors and hasattr(exc, "add_note"):
            # The client's failure is often explained by the script's.
            for err in self.errors:
                exc.add_note(f"scripted server: {type(err).__name__}: {err}")

    # -- conveniences -------------------------------------------------------
    @property
    def conn(self) -> Conn:
        """The first connection (most scripts have only one)."""
        if not self.conns:
            raise ScriptError("no client connected")
        return self.conns[0]

    @property
    def chunks(self) -> List[bytes]:
        return self.conn.chunks

    @property
    def received(self) -> bytes:
        return self.conn.received

    def chunk_lines(self, index: int = 0) -> List[List[bytes]]:
        """Per recv chunk of connection ``index``, its complete CRLF lines (without CRLF)."""
        out = []
        for chunk in self.conns[index].chunks:
            lines = chunk.split(CRLF)
            if not lines[-1]:
                lines.pop()
            out.append(lines)
        return out

    def __repr__(self) -> str:
        return f"<ScriptedServer {self.host}:{self.port} conns={len(self.conns)}>"
