"""``Sink``: a fast discard SMTP / LMTP server for tests and benchmarks.

One thread, one :mod:`selectors` loop, non-blocking sockets.  It accepts (or
refuses) mail and keeps nothing unless asked to (``store=DIR``)::

    with Sink(port=0) as s:                  # started in a background thread
        smtp = fastsmtplib.SMTP(s.host, s.port)
        ...
        s.counts                             # {"connections": 1, "messages": ..., "replies": {250: ...}}
    Sink(path="/tmp/lmtp.sock", lmtp=True)   # LMTP on a Unix socket
    Sink(port=0, store="/tmp/mail")          # one file per accepted message (see read_stored)

Also ``fastsmtplib sink`` on the command line.

Protocol.  EHLO (LHLO with ``lmtp=True``) advertises PIPELINING, SIZE, 8BITMIME,
SMTPUTF8, ENHANCEDSTATUSCODES, BINARYMIME and CHUNKING.  Commands: HELO, EHLO /
LHLO, MAIL (``SIZE=`` checked against the limit: 552; ``BODY=``), RCPT, DATA
(354, then the content up to CRLF.CRLF, dot-unstuffed, RFC 5321 §4.5.2), BDAT
n [LAST] (any number of chunks, RFC 3030), RSET, NOOP, VRFY (252), QUIT.  Bad
syntax gets 500/501, unknown commands 502, bad sequence 503.  Replies carry
enhanced status codes worded like Postfix's (``250 2.1.0 Ok``, ``250 2.1.5
Ok``, ``354 End data with <CR><LF>.<CR><LF>``, ``250 2.0.0 Ok: queued as
N``).  With LMTP, the end of the data gets one reply per accepted recipient
(RFC 2033 §4.2).  Pipelined commands are answered in order, and the replies to
everything one read brought are written with one ``send`` (RFC 2920 §3.2:
the server flushes when its input runs dry).

Limits (each bounds memory or time per connection; all are constructor
arguments):

- ``max_line`` (1000 bytes, CRLF included, RFC 5321 §4.5.3.1.6): a longer
  command line gets ``500 5.5.2 Line too long`` and the rest of that line,
  up to its CRLF, is discarded without being buffered.
- ``size`` (SIZE limit, default 10 MiB): ``MAIL ... SIZE=n`` above it gets 552 at
  once; content that grows past it is discarded as it arrives, and the end of
  the data (the final ``.`` or each BDAT chunk from the one that crossed the
  limit) gets ``552 5.3.4 Message size exceeds fixed limit``.
- ``max_recipients`` (1000 per message): more get ``452 4.5.3``.
- ``max_output`` (256 KiB of unsent replies per connection): past it the sink
  stops parsing and stops reading that client until its replies drain, so a
  client that pipelines commands and never reads cannot grow the sink's memory.
  The input held meanwhile is at most one ``recv`` (``recv_size``, 256 KiB)
  plus one partial line.
- ``max_connections`` (1000): a client past it gets ``421 4.7.0 Error: too
  many connections`` and is closed.
- DATA content is never buffered beyond what one read brought (unless it is
  being stored), and at most 4 bytes of a possibly split terminator are kept.

Not here yet (issue 9 item 2): STARTTLS, AUTH, fault injection (scripted
4xx/5xx, hang-ups, slow replies).

The hot loop.  ``_process`` hands each received buffer to the byte kernel
``_wire.sink_scan`` (compiled in ``_wire_c``, its pure twin in ``_wire_py``),
which serves the common commands (MAIL, RCPT, DATA, BDAT, RSET, NOOP with
simple arguments), DATA content (end of data and dot-unstuffing, counted) and
BDAT chunks for the whole buffer in one call, and stops before anything else;
the Python methods below (``_command``, ``_data``, ...) then handle that one
item, and the kernel goes on.  They give the same replies either way (tests:
tests/unit/test_sink_kernels.py).  The kernel steps aside entirely (``_fast``
is False) when messages are stored, since it keeps no content.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ._wire import sink_scan

__all__ = ["Sink", "StoredMessage", "read_stored"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2525
DEFAULT_SIZE = 10 * 1024 * 1024
MAX_LINE = 1000
MAX_RECIPIENTS = 1000
MAX_OUTPUT = 256 * 1024
MAX_CONNECTIONS = 1000
RECV_SIZE = 256 * 1024

_CMD, _DATA, _BDAT = 0, 1, 2
_WAKE = object()

_R_OK = (250, b"250 2.0.0 Ok\r\n")
_R_MAIL_OK = (250, b"250 2.1.0 Ok\r\n")
_R_RCPT_OK = (250, b"250 2.1.5 Ok\r\n")
_R_354 = (354, b"354 End data with <CR><LF>.<CR><LF>\r\n")
_R_BYE = (221, b"221 2.0.0 Bye\r\n")
_R_VRFY = (252, b"252 2.0.0 Cannot VRFY user, but will accept message\r\n")
_R_TOO_LONG = (500, b"500 5.5.2 Line too long\r\n")
_R_BAD_SYNTAX = (500, b"500 5.5.2 Error: bad syntax\r\n")
_R_UNKNOWN = (502, b"502 5.5.2 Error: command not recognized\r\n")
_R_NEED_HELO = (503, b"503 5.5.1 Error: send HELO/EHLO first\r\n")
_R_NEED_LHLO = (503, b"503 5.5.1 Error: send LHLO first\r\n")
_R_NESTED = (503, b"503 5.5.1 Error: nested MAIL command\r\n")
_R_NEED_MAIL = (503, b"503 5.5.1 Error: need MAIL command\r\n")
_R_NEED_RCPT = (503, b"503 5.5.1 Error: need RCPT command\r\n")
_R_NEED_BDAT = (503, b"503 5.5.1 Error: BODY=BINARYMIME requires BDAT\r\n")
_R_MAIL_SYNTAX = (501, b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
_R_RCPT_SYNTAX = (501, b"501 5.5.4 Syntax: RCPT TO:<address>\r\n")
_R_DATA_SYNTAX = (501, b"501 5.5.4 Syntax: DATA\r\n")
_R_BDAT_SYNTAX = (501, b"501 5.5.4 Syntax: BDAT count [LAST]\r\n")
_R_NO_ARGS = (501, b"501 5.5.4 Syntax: no arguments allowed\r\n")
_R_BAD_SIZE = (501, b"501 5.5.4 Bad message size syntax\r\n")
_R_BAD_BODY = (501, b"501 5.5.4 Unsupported BODY parameter\r\n")
_R_TOO_BIG = (552, b"552 5.3.4 Message size exceeds fixed limit\r\n")
_R_TOO_MANY_RCPTS = (452, b"452 4.5.3 Error: too many recipients\r\n")
_R_TOO_MANY_CONNS = b"421 4.7.0 Error: too many connections\r\n"
_R_HELO_LMTP = (500, b"500 5.5.1 Error: use LHLO with LMTP\r\n")


@dataclass
class StoredMessage:
    """One message written by ``Sink(store=DIR)``."""

    mail_from: str  # the reverse path, without angle brackets
    recipients: list  # accepted forward paths, without angle brackets
    content: bytes  # exactly as received after dot-unstuffing (DATA) or as sent (BDAT)
    mail_line: str = ""  # the MAIL command as received, with its parameters
    path: Optional[Path] = field(default=None, compare=False)


def read_stored(path: Union[str, os.PathLike]) -> StoredMessage:
    """Parse one file written by ``Sink(store=DIR)``.

    The file is the MAIL command line, one RCPT command line per accepted
    recipient (each ending in CRLF), an empty line, then the content.
    """
    raw = Path(path).read_bytes()
    head, sep, content = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("%s: not a stored message" % path)
    lines = head.split(b"\r\n")
    mail_line = lines[0].decode("utf-8", "surrogateescape")
    rcpts = [_address(line[8:]).decode("utf-8", "surrogateescape") for line in lines[1:]]
    return StoredMessage(
        _address(lines[0][10:]).decode("utf-8", "surrogateescape"), rcpts, content, mail_line, Path(path)
    )


def _address(arg: bytes) -> bytes:
    """The path in ``<a@b> PARAMS`` (or a bare ``a@b PARAMS``)."""
    arg = arg.strip()
    if arg.startswith(b"<"):
        end = arg.find(b">")
        return arg[1:end] if end > 0 else b""
    return arg.split(b" ", 1)[0]


class _Session:
    __slots__ = (
        "sock", "inbuf", "out", "outlen", "state", "bol", "remaining", "last", "discard", "greeted",
        "mail", "rcpts", "nrcpt", "body_len", "too_big", "parts", "binary", "bdat_ok", "closing", "closed", "events",
        "stalled",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.out: list = []
        self.outlen = 0
        self.state = _CMD
        self.bol = True  # DATA: the next content byte starts a line
        self.remaining = 0  # BDAT: octets of the current chunk still to come
        self.last = False  # BDAT: the current chunk is the LAST
        self.bdat_ok = False  # BDAT: the chunk belongs to a valid transaction
        self.discard = False  # the rest of an over-long line is being skipped
        self.greeted = False
        self.closing = False
        self.closed = False
        self.stalled = False  # parsing stopped at the output cap with input left
        self.events = 0
        self.reset()

    def reset(self) -> None:
        self.mail: Optional[bytes] = None
        self.rcpts: list = []  # the RCPT lines, kept for the store
        self.nrcpt = 0  # recipients accepted (the kernel counts without keeping lines)
        self.body_len = 0
        self.too_big = False
        self.parts: Optional[list] = None
        self.binary = False


class Sink:
    """A discard SMTP (or LMTP) server on TCP or a Unix socket.

    Args:
        host: address to listen on (TCP).
        port: TCP port; 0 picks a free one (read it from :attr:`port` once started).
        path: listen on this Unix socket path instead of TCP.
        lmtp: speak LMTP (LHLO, one reply per recipient after the data).
        size: the SIZE limit in bytes of message content.
        store: a directory; each accepted message is written there as
            ``NNNNNNNN.msg`` (see :func:`read_stored`).
        max_connections, max_line, max_recipients, max_output, recv_size:
            the limits described in the module docstring.
        hostname: the name in the greeting and the EHLO reply.

    ``with Sink(...) as s`` starts it in a daemon thread and stops it at the
    end; or call :meth:`start` / :meth:`stop`, or :meth:`serve_forever` in the
    current thread (the command line does).
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        path: Union[str, os.PathLike, None] = None,
        lmtp: bool = False,
        size: int = DEFAULT_SIZE,
        store: Union[str, os.PathLike, None] = None,
        max_connections: int = MAX_CONNECTIONS,
        max_line: int = MAX_LINE,
        max_recipients: int = MAX_RECIPIENTS,
        max_output: int = MAX_OUTPUT,
        recv_size: int = RECV_SIZE,
        hostname: str = "sink.fastsmtplib.invalid",
    ) -> None:
        if size < 0 or max_connections < 1 or max_line < 8 or max_recipients < 1 or max_output < 1 or recv_size < 1:
            raise ValueError("Sink limits must be positive")
        self.host: Optional[str] = None if path is not None else host
        self.port: Optional[int] = None if path is not None else port
        self.path: Optional[str] = os.fspath(path) if path is not None else None
        self.lmtp = lmtp
        self.size = size
        self.store: Optional[Path] = Path(store) if store is not None else None
        self.max_connections = max_connections
        self.max_line = max_line
        self.max_recipients = max_recipients
        self.max_output = max_output
        self.recv_size = recv_size
        self.hostname = hostname
        kind = b"LMTP" if lmtp else b"ESMTP"
        self._greeting = (220, b"220 %s %s fastsmtplib sink\r\n" % (hostname.encode(), kind))
        ext = [hostname.encode(), b"PIPELINING", b"SIZE %d" % size, b"8BITMIME", b"SMTPUTF8",
               b"ENHANCEDSTATUSCODES", b"BINARYMIME", b"CHUNKING"]
        self._ehlo = (250, b"".join(b"250%s%s\r\n" % (b" " if i == len(ext) - 1 else b"-", e)
                                    for i, e in enumerate(ext)))
        self._helo = (250, b"250 %s\r\n" % hostname.encode())
        self._replies: dict = {}
        self._counts: dict = {"connections": 0, "refused": 0, "active": 0, "messages": 0,
                              "recipients": 0, "bytes": 0, "bytes_in": 0}
        self._sessions: set = set()
        self._sel: Optional[selectors.BaseSelector] = None
        self._lsock: Optional[socket.socket] = None
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._queue_id = 0
        # The kernel serves the hot loop unless a feature needs every byte or
        # line in Python (see the module docstring).
        self._fast = self.store is None
        self._kernel = sink_scan  # the tests swap in either twin

    # -- public -------------------------------------------------------------

    @property
    def counts(self) -> dict:
        """A snapshot of the counters.

        ``connections`` accepted, ``refused`` (over ``max_connections``),
        ``active`` now, ``messages`` and ``recipients`` accepted, ``bytes`` of
        accepted content (after dot-unstuffing), ``bytes_in`` read from clients,
        and ``replies``: ``{code: number of replies sent with it}`` (an LMTP
        data reply counts once per recipient).
        """
        snap = dict(self._counts)
        snap["replies"] = dict(self._replies)
        return snap

    def stored(self) -> list:
        """Every message in the store directory, in the order accepted."""
        if self.store is None:
            return []
        return [read_stored(p) for p in sorted(self.store.glob("*.msg"))]

    def bind(self) -> None:
        """Open the listening socket (``start`` and ``serve_forever`` call this)."""
        if self._lsock is not None:
            return
        if self.store is not None:
            self.store.mkdir(parents=True, exist_ok=True)
        if self.path is not None:
            try:
                if stat.S_ISSOCK(os.stat(self.path).st_mode):
                    os.unlink(self.path)  # a stale socket from an earlier run
            except FileNotFoundError:
                pass
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                lsock.bind(self.path)
                lsock.listen(128)
            except BaseException:
                lsock.close()
                raise
        else:
            lsock = socket.create_server((self.host, self.port), backlog=128)
            self.port = lsock.getsockname()[1]
        lsock.setblocking(False)
        self._lsock = lsock
        self._sel = selectors.DefaultSelector()
        self._sel.register(lsock, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)

    def start(self) -> "Sink":
        """Bind and serve in a daemon thread; returns self."""
        self.bind()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="fastsmtplib-sink", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Bind and serve in this thread until :meth:`stop` (e.g. from a signal handler)."""
        self.bind()
        self._loop()

    def stop(self) -> None:
        """Stop serving, close every connection and the listener (idempotent)."""
        self._stopping = True
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
            self._thread = None

    def __enter__(self) -> "Sink":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- loop ---------------------------------------------------------------

    def _wake(self) -> None:
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"x")
            except OSError:
                pass

    def _loop(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while not self._stopping:
                for key, mask in sel.select(0.5):
                    s = key.data
                    if s is None:
                        self._accept()
                    elif s is _WAKE:
                        try:
                            self._wake_r.recv(4096)  # type: ignore[union-attr]
                        except OSError:
                            pass
                    else:
                        if mask & selectors.EVENT_WRITE and not s.closed:
                            self._on_writable(s)
                        if mask & selectors.EVENT_READ and not s.closed:
                            self._on_readable(s)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for s in list(self._sessions):
            self._close(s)
        sel = self._sel
        for sock in (self._lsock, self._wake_r, self._wake_w):
            if sock is not None:
                if sel is not None:
                    try:
                        sel.unregister(sock)
                    except (KeyError, ValueError):
                        pass
                sock.close()
        if sel is not None:
            sel.close()
        self._lsock = self._wake_r = self._wake_w = None
        self._sel = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _accept(self) -> None:
        for _ in range(64):
            try:
                conn, _addr = self._lsock.accept()  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED):
                    return
                raise
            conn.setblocking(False)
            if len(self._sessions) >= self.max_connections:
                self._counts["refused"] += 1
                self._replies[421] = self._replies.get(421, 0) + 1
                try:
                    conn.send(_R_TOO_MANY_CONNS)
                except OSError:
                    pass
                conn.close()
                continue
            if conn.family != socket.AF_UNIX:
                try:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            s = _Session(conn)
            self._sessions.add(s)
            self._counts["connections"] += 1
            self._counts["active"] += 1
            self._reply(s, self._greeting)
            self._flush(s)

    def _close(self, s: _Session) -> None:
        if s.closed:
            return
        s.closed = True
        self._sessions.discard(s)
        self._counts["active"] -= 1
        if s.events and self._sel is not None:
            try:
                self._sel.unregister(s.sock)
            except (KeyError, ValueError):
                pass
        s.sock.close()
        s.out.clear()
        s.inbuf = bytearray()

    def _interest(self, s: _Session) -> None:
        """Read unless closing, or parsing is stalled or too many replies are unsent; write while any are."""
        if s.closed:
            return
        want = 0
        if not s.closing and not s.stalled and s.outlen < self.max_output:
            want |= selectors.EVENT_READ
        if s.outlen:
            want |= selectors.EVENT_WRITE
        if not want:
            self._close(s)  # closing and everything sent
            return
        if want == s.events:
            return
        sel = self._sel
        assert sel is not None
        if not s.events:
            sel.register(s.sock, want, s)
        else:
            sel.modify(s.sock, want, s)
        s.events = want

    def _flush(self, s: _Session) -> None:
        """Send what is owed in one ``send``; resume parsing stalled at the output cap."""
        while s.out:
            data = s.out[0] if len(s.out) == 1 else b"".join(s.out)
            try:
                n = s.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._close(s)
                return
            rest = data[n:]
            s.out = [rest] if rest else []
            s.outlen = len(rest)
            if not (s.stalled and s.outlen < self.max_output):
                break
            self._process(s)  # what was held back now has room
        self._interest(s)

    def _on_writable(self, s: _Session) -> None:
        self._flush(s)

    def _on_readable(self, s: _Session) -> None:
        try:
            chunk = s.sock.recv(self.recv_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            # End of input (maybe a half-close): a transaction in progress is
            # abandoned, replies still owed are sent, then the socket is closed.
            s.closing = True
            self._flush(s)
            return
        self._counts["bytes_in"] += len(chunk)
        if s.inbuf:
            s.inbuf += chunk
        else:
            s.inbuf = bytearray(chunk)
        self._process(s)
        self._flush(s)

    def _reply(self, s: _Session, reply: tuple) -> None:
        code, line = reply
        s.out.append(line)
        s.outlen += len(line)
        replies = self._replies
        replies[code] = replies.get(code, 0) + 1

    # -- parsing ------------------------------------------------------------

    def _process(self, s: _Session) -> None:
        """Consume as much of ``s.inbuf`` as can be, appending replies to ``s.out``."""
        buf = s.inbuf
        n = len(buf)
        pos = 0
        cap = self.max_output
        max_line = self.max_line
        fast = self._fast
        while pos < n and not s.closing and s.outlen < cap:
            if fast and not s.discard:
                pos, stop = self._scan(s, buf, pos)
                if stop != 1:  # the input is used up (or incomplete), or the output is full
                    break
                # The kernel stopped before something it does not serve: one
                # step here, then the kernel again.
            state = s.state
            if state == _CMD:
                eol = buf.find(b"\r\n", pos)
                if s.discard:  # the tail of an over-long line
                    if eol < 0:
                        pos = n - 1 if buf[n - 1] == 13 else n  # keep a CR that may start the CRLF
                        break
                    pos = eol + 2
                    s.discard = False
                    continue
                if eol < 0:
                    if n - pos >= max_line:  # no CRLF within max_line bytes: too long already
                        self._reply(s, _R_TOO_LONG)
                        s.discard = True
                        pos = n - 1 if buf[n - 1] == 13 else n
                    break
                if eol + 2 - pos > max_line:
                    self._reply(s, _R_TOO_LONG)
                    pos = eol + 2
                    continue
                line = bytes(buf[pos:eol])
                pos = eol + 2
                self._command(s, line)
            elif state == _DATA:
                pos, more = self._data(s, buf, pos, n)
                if not more:
                    break
            else:  # _BDAT: length-delimited, no dot-stuffing (RFC 3030 §2)
                take = min(s.remaining, n - pos)
                if take:
                    s.remaining -= take
                    self._content(s, buf, pos, pos + take, take)
                    pos += take
                if not s.remaining:
                    self._chunk_done(s)
        s.stalled = pos < n and s.outlen >= cap and not s.closing
        if pos:
            del buf[:pos]

    def _scan(self, s: _Session, buf: bytearray, pos: int) -> tuple:
        """Run the kernel from ``pos``; take over its replies, counts and session state."""
        st = [s.state, s.bol, s.remaining, s.last, s.mail is not None, s.nrcpt, s.binary, s.body_len,
              s.too_big, s.greeted, s.bdat_ok, self._queue_id, 0, 0, 0, 0, 0]
        pos, out, mail, stop = self._kernel(buf, pos, st, self.size, self.max_recipients, self.max_line,
                                   self.lmtp, self.max_output - s.outlen)
        (s.state, s.bol, s.remaining, s.last, mail_open, nrcpt, binary, body_len, too_big, _greeted,
         s.bdat_ok, self._queue_id, n250, n354, messages, recipients, nbytes) = st
        if not mail_open:
            if s.mail is not None:
                s.reset()
        elif mail is not None:  # a transaction opened by the kernel
            s.reset()
            s.mail = mail
        s.nrcpt, s.binary, s.body_len, s.too_big = nrcpt, binary, body_len, too_big
        if out:
            s.out.append(out)
            s.outlen += len(out)
            replies = self._replies
            if n250:
                replies[250] = replies.get(250, 0) + n250
            if n354:
                replies[354] = replies.get(354, 0) + n354
            if messages:
                counts = self._counts
                counts["messages"] += messages
                counts["recipients"] += recipients
                counts["bytes"] += nbytes
        return pos, stop

    def _content(self, s: _Session, buf: bytearray, start: int, end: int, length: int) -> None:
        """Account ``length`` bytes of content (``buf[start:end]``, unstuffed if DATA)."""
        if s.too_big or s.mail is None or (s.state == _BDAT and not s.bdat_ok):
            return
        s.body_len += length
        if s.body_len > self.size:
            s.too_big = True
            s.parts = None
            return
        if self.store is not None:
            chunk = bytes(memoryview(buf)[start:end])
            if s.state == _DATA:
                chunk = chunk.replace(b"\r\n.", b"\r\n")
            if s.parts is None:
                s.parts = []
            s.parts.append(chunk)

    def _data(self, s: _Session, buf: bytearray, pos: int, n: int) -> tuple:
        """Scan DATA content in ``buf[pos:n]``; return (new position, whether to go on).

        RFC 5321 §4.5.2: the content ends at a line holding only ".", and a
        line starting with "." lost its first dot.  ``s.bol`` says whether
        ``buf[pos]`` starts a line, so the terminator and a stuffed dot may
        be split across reads: a segment is consumed only up to its last CRLF
        (or up to a trailing CR), so "\\r\\n." never straddles two segments.
        """
        if s.bol:
            if buf.startswith(b".\r\n", pos):
                self._data_done(s)
                return pos + 3, True
            if n - pos < 3 and b".\r\n".startswith(bytes(buf[pos:n])):
                return pos, False  # ".", ".\r" : wait for more
            if buf[pos] == 46:  # "."
                pos += 1  # a stuffed dot
            s.bol = False
        end = buf.find(b"\r\n.\r\n", pos)
        if end >= 0:
            cut = end + 2
            self._content(s, buf, pos, cut, cut - pos - buf.count(b"\r\n.", pos, cut))
            self._data_done(s)
            return end + 5, True
        last = buf.rfind(b"\r\n", pos, n)
        if last >= 0:
            cut = last + 2
            s.bol = True
        else:
            cut = n - 1 if n > pos and buf[n - 1] == 13 else n
        if cut > pos:
            self._content(s, buf, pos, cut, cut - pos - buf.count(b"\r\n.", pos, cut))
        return cut, False

    def _data_done(self, s: _Session) -> None:
        s.state = _CMD
        s.bol = True
        self._finish(s)

    def _chunk_done(self, s: _Session) -> None:
        s.state = _CMD
        if not s.bdat_ok:
            self._reply(s, _R_NEED_RCPT if s.mail is not None else _R_NEED_MAIL)
        elif s.too_big:
            if s.last:
                self._finish(s)
            else:
                self._reply(s, _R_TOO_BIG)
        elif s.last:
            self._finish(s)
        else:
            self._reply(s, (250, b"250 2.0.0 Ok: %d octets\r\n" % s.body_len))

    def _finish(self, s: _Session) -> None:
        """The end of a message's content: accept it (or refuse it: too big)."""
        nrcpt = s.nrcpt
        if s.too_big:
            for _ in range(nrcpt if self.lmtp else 1):
                self._reply(s, _R_TOO_BIG)
            s.reset()
            return
        self._queue_id += 1
        qid = self._queue_id
        counts = self._counts
        counts["messages"] += 1
        counts["recipients"] += nrcpt
        counts["bytes"] += s.body_len
        if self.store is not None:
            self._write_store(s, qid)
        reply = (250, b"250 2.0.0 Ok: queued as %08X\r\n" % qid)
        for _ in range(nrcpt if self.lmtp else 1):
            self._reply(s, reply)
        s.reset()

    def _write_store(self, s: _Session, qid: int) -> None:
        assert self.store is not None and s.mail is not None
        head = [s.mail]
        head.extend(s.rcpts)
        data = b"\r\n".join(head) + b"\r\n\r\n" + b"".join(s.parts or ())
        tmp = self.store / ("%08X.tmp" % qid)
        tmp.write_bytes(data)
        os.replace(tmp, self.store / ("%08X.msg" % qid))

    def _command(self, s: _Session, line: bytes) -> None:
        verb = line[:4].upper()
        if len(line) > 4 and line[4] != 32:
            verb = b""
        if verb == b"RCPT":
            self._rcpt(s, line)
        elif verb == b"MAIL":
            self._mail(s, line)
        elif verb == b"DATA":
            if len(line) > 4:
                self._reply(s, _R_DATA_SYNTAX)
            elif s.mail is None:
                self._reply(s, _R_NEED_MAIL)
            elif not s.nrcpt:
                self._reply(s, _R_NEED_RCPT)
            elif s.binary:
                self._reply(s, _R_NEED_BDAT)
            else:
                self._reply(s, _R_354)
                s.state = _DATA
                s.bol = True
        elif verb == b"BDAT":
            self._bdat(s, line)
        elif verb == b"EHLO" or verb == b"HELO" or verb == b"LHLO":
            if len(line) < 6 or not line[5:].strip():
                self._reply(s, (501, b"501 5.5.4 Syntax: %s hostname\r\n" % verb))
            elif self.lmtp != (verb == b"LHLO"):
                self._reply(s, _R_HELO_LMTP if self.lmtp else _R_UNKNOWN)
            else:
                s.reset()
                s.greeted = True
                self._reply(s, self._helo if verb == b"HELO" else self._ehlo)
        elif verb == b"RSET":
            if len(line) > 4:
                self._reply(s, _R_NO_ARGS)
            else:
                s.reset()
                self._reply(s, _R_OK)
        elif verb == b"NOOP":
            self._reply(s, _R_OK)
        elif verb == b"QUIT":
            self._reply(s, _R_BYE)
            s.closing = True
        elif verb == b"VRFY":
            self._reply(s, _R_VRFY if len(line) > 5 else (501, b"501 5.5.4 Syntax: VRFY address\r\n"))
        elif not line.strip():
            self._reply(s, _R_BAD_SYNTAX)
        else:
            self._reply(s, _R_UNKNOWN)

    def _mail(self, s: _Session, line: bytes) -> None:
        if not s.greeted:
            self._reply(s, _R_NEED_LHLO if self.lmtp else _R_NEED_HELO)
            return
        if s.mail is not None:
            self._reply(s, _R_NESTED)
            return
        if line[5:10].upper() != b"FROM:":
            self._reply(s, _R_MAIL_SYNTAX)
            return
        arg = line[10:].strip()
        if arg.startswith(b"<"):
            end = arg.find(b">")
            if end < 0:
                self._reply(s, _R_MAIL_SYNTAX)
                return
            params = arg[end + 1:].split()
        else:
            words = arg.split()
            if not words:
                self._reply(s, _R_MAIL_SYNTAX)
                return
            params = words[1:]
        binary = False
        for p in params:
            key, _, value = p.partition(b"=")
            key = key.upper()
            if key == b"SIZE":
                if not value.isdigit():
                    self._reply(s, _R_BAD_SIZE)
                    return
                if int(value) > self.size:
                    self._reply(s, _R_TOO_BIG)
                    return
            elif key == b"BODY":
                value = value.upper()
                if value == b"BINARYMIME":
                    binary = True
                elif value not in (b"7BIT", b"8BITMIME"):
                    self._reply(s, _R_BAD_BODY)
                    return
            # Other parameters (SMTPUTF8, ...) are accepted and ignored.
        s.reset()
        s.mail = line
        s.binary = binary
        self._reply(s, _R_MAIL_OK)

    def _rcpt(self, s: _Session, line: bytes) -> None:
        if s.mail is None:
            self._reply(s, _R_NEED_MAIL)
            return
        if line[5:8].upper() != b"TO:" or not _address(line[8:]):
            self._reply(s, _R_RCPT_SYNTAX)
            return
        if s.nrcpt >= self.max_recipients:
            self._reply(s, _R_TOO_MANY_RCPTS)
            return
        s.rcpts.append(line)
        s.nrcpt += 1
        self._reply(s, _R_RCPT_OK)

    def _bdat(self, s: _Session, line: bytes) -> None:
        parts = line.split()
        if not 2 <= len(parts) <= 3 or not parts[1].isdigit() or (
                len(parts) == 3 and parts[2].upper() != b"LAST"):
            # Without a valid size the chunk cannot be skipped: the stream is lost
            # (RFC 3030 §2: the client must not send the chunk after a bad BDAT).
            self._reply(s, _R_BDAT_SYNTAX)
            return
        size = int(parts[1])
        s.last = len(parts) == 3
        s.bdat_ok = s.mail is not None and s.nrcpt > 0
        s.remaining = size
        s.state = _BDAT
        if not size:
            self._chunk_done(s)
