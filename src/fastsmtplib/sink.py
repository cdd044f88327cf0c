"""``Sink``: a fast discard SMTP / LMTP server for tests and benchmarks.

One thread, one :mod:`selectors` loop, non-blocking sockets.  It accepts (or
refuses) mail and keeps nothing unless asked to (``store=DIR``)::

    with Sink(port=0) as s:                  # started in a background thread
        smtp = fastsmtplib.SMTP(s.host, s.port)
        ...
        s.counts                             # {"connections": 1, "messages": ..., "replies": {250: ...}}
    Sink(path="/tmp/lmtp.sock", lmtp=True)   # LMTP on a Unix socket
    Sink(port=0, store="/tmp/mail")          # one file per accepted message (see read_stored);
                                             # one that cannot be written gets 451 (store_failed)

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
  many connections`` and is closed.  If the process runs out of file
  descriptors first (``ulimit -n``), accepting pauses for 0.1 s at a time
  (clients wait in the listen backlog) instead of spinning the loop.
- DATA content is never buffered beyond what one read brought (unless it is
  being stored), and at most 4 bytes of a possibly split terminator are kept.

TLS (``starttls=True`` or ``tls=True``; :mod:`fastsmtplib.sink_tls`):

- ``starttls=True``: EHLO offers STARTTLS while the connection is in clear
  (RFC 3207).  After ``220 2.0.0 Ready to start TLS`` anything the client
  pipelined behind the command is discarded unread (RFC 3207 §4.2: it was not
  protected, so a man in the middle may have put it there; the STARTTLS
  command-injection class of bugs), counted in ``starttls_discarded``; then
  the session forgets everything (EHLO, transaction, AUTH) and wants EHLO
  again.  Over TLS, STARTTLS is neither offered nor accepted (503).
- ``tls=True``: implicit TLS (RFC 8314): the handshake comes first, then the
  greeting.
- The certificate: ``tls_cert``/``tls_key`` files, or ``tls_context`` (a
  server :class:`ssl.SSLContext`), or else one generated at start for
  ``localhost``, ``127.0.0.1`` and ``::1`` by a throw-away CA (needs the
  ``cryptography`` package: ``pip install 'fastsmtplib[sink]'``).  Clients get
  :meth:`Sink.client_context` (verifies the certificate and host name), the
  PEM in :attr:`Sink.tls_ca_pem`, or the file :attr:`Sink.tls_ca_file`.
- Each TLS connection is an ``ssl.SSLObject`` on two memory BIOs, so the loop
  never blocks: a handshake that stalls or is garbage costs one connection
  (``tls_failed``), never the loop.

AUTH (``auth={"user": "password"}``; :mod:`fastsmtplib.sink_auth`): PLAIN
(RFC 4616, with or without an initial response) and LOGIN (RFC 4954).
``235 2.7.0`` on success, ``535 5.7.8`` on a wrong pair, ``501`` for bad
base64 or a cancelled exchange (``*``), ``503`` when already authenticated or
inside a transaction, ``504`` for another mechanism.  AUTH is offered and
accepted only over TLS (in clear: ``538 5.7.11``) unless ``auth_plaintext=
True``; so ``auth`` needs ``starttls`` or ``tls`` or ``auth_plaintext``.
``auth_required=True``: MAIL before AUTH gets ``530 5.7.0``.  Counters
``auth_ok`` and ``auth_failed``; passwords are never printed, logged or
shown in a repr.

Faults (:class:`fastsmtplib.sink_faults.Faults` has the table; each is a
constructor argument and a ``fastsmtplib sink`` flag; each has a counter in
:attr:`Sink.counts`, so a test can compare what the client saw with what
was injected):

- ``rcpt_refuse`` / ``rcpt_defer`` (shares 0..1): RCPTs answered ``550 5.1.1``
  / ``451 4.3.0`` (``fault_rcpt_refused`` / ``fault_rcpt_deferred``).
- ``data_reject`` (share) with ``data_reject_code`` (554 by default, or any
  4xx/5xx such as 451): the message is refused after its data
  (``fault_data_rejected``; for LMTP every recipient gets that reply).
- ``delay`` (seconds): every reply, the greeting included, is held that long
  before it is sent; replies keep their order; the loop runs timers rather
  than sleeping, so other connections go on (``fault_delayed`` replies).
- ``drop_after`` (N): each connection is closed without a word right after
  its Nth accepted message was answered (``fault_dropped_after``).
- ``drop_in_data`` (share): the connection is closed, with no reply, while
  the message's content arrives (after ``354``; at ``BDAT``, at once for a
  ``BDAT 0``); replies owed to the commands before it still go out first
  (``fault_dropped_in_data``).
- ``reply_421_at`` (N): the Nth command of each connection gets ``421 4.3.2``
  and the connection is closed (``fault_421``).
- ``seed``: shares are drawn per connection from ``Random(seed, connection
  number)``, so a client script sees the same faults on every run.

Idle timeout (``idle_timeout``, 300 s by default: RFC 5321 §4.5.3.2.7 asks a
server to wait at least 5 minutes for a command): a connection that sends
nothing for that long (in a command, in DATA or in a TLS handshake) gets
``421 4.4.2 Error: timeout exceeded`` and is closed; one whose replies cannot
be delivered is closed outright (``idle_timeouts``).  Under TLS every limit
above holds too: the decrypted text per read is bounded like a plain read,
and encrypted replies count against ``max_output``.

The hot loop.  ``_process`` hands each received buffer to the byte kernel
``_wire.sink_scan`` (compiled in ``_wire_c``, its pure twin in ``_wire_py``),
which serves the common commands (MAIL, RCPT, DATA, BDAT, RSET, NOOP with
simple arguments), DATA content (end of data and dot-unstuffing, counted) and
BDAT chunks for the whole buffer in one call, and stops before anything else;
the Python methods below (``_command``, ``_data``, ...) then handle that one
item, and the kernel goes on.  They give the same replies either way (tests:
tests/unit/test_sink_kernels.py).  The kernel steps aside entirely (``_fast``
is False, the Python path alone runs) when messages are stored, when any
fault is configured, when AUTH is required, and on a connection that is in
TLS or being upgraded; it keeps no content and knows no policy.  With the
pure twin (no compiled extension) a buffer of less than 64 bytes, a lock-step
client's lone command, skips it: the twin costs more per call than one
Python step.
"""

from __future__ import annotations

import errno
import heapq
import os
import selectors
import socket
import ssl
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from .sink_auth import (
    LOGIN_PASS_CHALLENGE,
    LOGIN_USER_CHALLENGE,
    AuthSyntaxError,
    Credentials,
    decode_b64,
    decode_plain,
)
from .sink_faults import FAULT_COUNTERS, Faults

from ._wire import HAS_EXTENSIONS, sink_scan

__all__ = ["Sink", "StoredMessage", "read_stored"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2525
DEFAULT_SIZE = 10 * 1024 * 1024
MAX_LINE = 1000
MAX_RECIPIENTS = 1000
MAX_OUTPUT = 256 * 1024
MAX_CONNECTIONS = 1000
RECV_SIZE = 256 * 1024
IDLE_TIMEOUT = 300.0  # RFC 5321 §4.5.3.2.7: at least 5 minutes for a command
ACCEPT_PAUSE = 0.1  # seconds the listener is left alone when accept() runs out of descriptors

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
_R_STARTTLS = (220, b"220 2.0.0 Ready to start TLS\r\n")
_R_TLS_ACTIVE = (503, b"503 5.5.1 Error: TLS already active\r\n")
_R_STARTTLS_SYNTAX = (501, b"501 5.5.4 Syntax: STARTTLS\r\n")
_R_AUTH_OK = (235, b"235 2.7.0 Authentication successful\r\n")
_R_AUTH_FAILED = (535, b"535 5.7.8 Error: authentication failed\r\n")
_R_AUTH_B64 = (501, b"501 5.5.2 Error: invalid base64 or PLAIN syntax\r\n")
_R_AUTH_CANCELLED = (501, b"501 5.7.0 Error: authentication cancelled\r\n")
_R_AUTH_SYNTAX = (501, b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n")
_R_AUTH_AGAIN = (503, b"503 5.5.1 Error: already authenticated\r\n")
_R_AUTH_IN_MAIL = (503, b"503 5.5.1 Error: MAIL transaction in progress\r\n")
_R_AUTH_MECH = (504, b"504 5.5.4 Error: unrecognized authentication type\r\n")
_R_AUTH_NEEDS_TLS = (538, b"538 5.7.11 Error: encryption required for authentication\r\n")
_R_AUTH_REQUIRED = (530, b"530 5.7.0 Error: authentication required\r\n")
_R_PLAIN_CHALLENGE = (334, b"334 \r\n")
_R_LOGIN_USER = (334, LOGIN_USER_CHALLENGE)
_R_LOGIN_PASS = (334, LOGIN_PASS_CHALLENGE)
_R_RCPT_REFUSED = (550, b"550 5.1.1 Error: recipient address rejected (injected fault)\r\n")
_R_RCPT_DEFERRED = (451, b"451 4.3.0 Error: recipient deferred, try again later (injected fault)\r\n")
_R_421_FAULT = (421, b"421 4.3.2 Error: service shutting down (injected fault)\r\n")
_R_IDLE = (421, b"421 4.4.2 Error: timeout exceeded\r\n")
_R_STORE_FAILED = (451, b"451 4.3.0 Error: cannot store the message\r\n")

# AUTH exchange steps (a _Session's auth_step).
_AUTH_NONE, _AUTH_PLAIN, _AUTH_LOGIN_USER, _AUTH_LOGIN_PASS = 0, 1, 2, 3


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


def _bdat_args(line: bytes) -> Optional[tuple]:
    """``BDAT size [LAST]`` -> ``(size, last)``, or None when malformed (RFC 3030 §2).

    A size of more than 18 digits (an exabyte) is no size a client can send,
    and ``int()`` refuses more than 4300 digits (``max_line`` may let that
    many through): malformed.
    """
    parts = line.split()
    if not 2 <= len(parts) <= 3 or not parts[1].isdigit() or (
            len(parts) == 3 and parts[2].upper() != b"LAST"):
        return None
    digits = parts[1].lstrip(b"0")
    if len(digits) > 18:
        return None
    return int(digits or b"0"), len(parts) == 3


class _Session:
    __slots__ = (
        "sock", "inbuf", "out", "outlen", "state", "bol", "remaining", "last", "discard", "greeted",
        "mail", "rcpts", "nrcpt", "body_len", "too_big", "parts", "binary", "bdat_ok", "closing", "closed",
        "events", "stalled", "tls", "wire", "held", "upgrade", "drop_armed", "active", "rng", "ncmd", "accepted",
        "auth_step", "auth_user", "authed", "started", "timer", "dropped",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tls: Any = None  # a sink_tls.TLSLayer once TLS is on
        self.wire = bytearray()  # TLS: encrypted bytes not yet sent (or the plain 220 to STARTTLS)
        self.held: Any = None  # delay: deque of (due, reply bytes) not yet released
        self.timer = 0.0  # delay: when this session's one timer (in Sink._timers) fires; 0: none
        self.upgrade = False  # STARTTLS answered: switch to TLS once the 220 is on its way
        self.drop_armed = False  # drop_in_data: close as soon as this message's content arrives
        self.dropped = False  # drop_in_data happened: owed replies go out, then close
        self.active = 0.0  # monotonic time of the last read or send that made progress
        self.rng: Any = None  # fault dice (sink_faults.Faults.rng)
        self.ncmd = 0  # commands seen (reply_421_at)
        self.accepted = 0  # messages accepted (drop_after)
        self.auth_step = _AUTH_NONE
        self.auth_user = b""
        self.authed = False
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
        self.started = False  # the content of this transaction began (DATA 354 or a BDAT)


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
        starttls: offer STARTTLS (RFC 3207).
        tls: implicit TLS: the handshake first, then the greeting (RFC 8314).
        tls_cert, tls_key: PEM files to present (else a certificate is generated).
        tls_context: a ready server :class:`ssl.SSLContext` instead.
        auth: ``{"user": "password"}``: offer AUTH PLAIN and LOGIN.
        auth_required: MAIL before a successful AUTH gets 530.
        auth_plaintext: offer and accept AUTH without TLS too.
        rcpt_refuse, rcpt_defer, data_reject, data_reject_code, delay,
            drop_after, drop_in_data, reply_421_at, seed: fault injection
            (module docstring; :class:`~fastsmtplib.sink_faults.Faults`).
        idle_timeout: seconds a connection may stay silent (421, then closed).

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
        starttls: bool = False,
        tls: bool = False,
        tls_cert: Union[str, os.PathLike, None] = None,
        tls_key: Union[str, os.PathLike, None] = None,
        tls_context: Optional[ssl.SSLContext] = None,
        auth: Optional[Mapping[str, str]] = None,
        auth_required: bool = False,
        auth_plaintext: bool = False,
        rcpt_refuse: float = 0.0,
        rcpt_defer: float = 0.0,
        data_reject: float = 0.0,
        data_reject_code: int = 554,
        delay: float = 0.0,
        drop_after: int = 0,
        drop_in_data: float = 0.0,
        reply_421_at: int = 0,
        seed: Optional[int] = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        if size < 0 or max_connections < 1 or max_line < 8 or max_recipients < 1 or max_output < 1 or recv_size < 1:
            raise ValueError("Sink limits must be positive")
        if not (idle_timeout > 0 and idle_timeout < float("inf")):
            raise ValueError("idle_timeout must be a positive number of seconds, got %r" % (idle_timeout,))
        if starttls and tls:
            raise ValueError("choose starttls or tls (implicit TLS), not both")
        if tls_key is not None and tls_cert is None:
            raise ValueError("tls_key needs tls_cert")
        if tls_context is not None and tls_cert is not None:
            raise ValueError("pass tls_cert/tls_key or tls_context, not both")
        if (tls_cert is not None or tls_context is not None) and not (starttls or tls):
            raise ValueError("a TLS certificate or context needs starttls=True or tls=True")
        self.faults = Faults(rcpt_refuse=rcpt_refuse, rcpt_defer=rcpt_defer, data_reject=data_reject,
                             data_reject_code=data_reject_code, delay=delay, drop_after=drop_after,
                             drop_in_data=drop_in_data, reply_421_at=reply_421_at, seed=seed)
        self._faulty = self.faults.active
        self._delay = self.faults.delay
        self._dice = self.faults.needs_dice
        self._reject_reply = self.faults.reject_reply()
        self.idle_timeout = float(idle_timeout)
        self.starttls = bool(starttls)
        self.tls = bool(tls)
        self.auth_required = bool(auth_required)
        self.auth_plaintext = bool(auth_plaintext)
        self._creds: Optional[Credentials] = Credentials(auth) if auth is not None else None
        if self._creds is None and auth_required:
            raise ValueError("auth_required needs auth={user: password}")
        if self._creds is not None and not (starttls or tls or auth_plaintext):
            raise ValueError("AUTH is only offered over TLS: pass starttls=True or tls=True, "
                             "or auth_plaintext=True to allow it in clear")
        self.tls_context: Optional[ssl.SSLContext] = None
        self.tls_ca_pem: Optional[bytes] = None  # what clients should trust (PEM)
        self._tls_dir: Optional[str] = None
        if starttls or tls:
            from .sink_tls import server_context
            if tls_context is not None:
                self.tls_context = tls_context
            else:
                self.tls_context, self.tls_ca_pem = server_context(
                    os.fspath(tls_cert) if tls_cert is not None else None,
                    os.fspath(tls_key) if tls_key is not None else None)
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
        auth_ext = [b"AUTH PLAIN LOGIN"] if self._creds is not None else []
        # RFC 3207 §4.2: STARTTLS is offered only in clear; AUTH only over TLS
        # unless auth_plaintext (RFC 4954 §4: PLAIN/LOGIN send the password as is).
        self._ehlo = self._ehlo_reply(ext + ([b"STARTTLS"] if starttls else [])
                                      + (auth_ext if auth_plaintext else []))
        self._ehlo_tls = self._ehlo_reply(ext + auth_ext)
        self._helo = (250, b"250 %s\r\n" % hostname.encode())
        self._replies: dict = {}
        self._counts: dict = {"connections": 0, "refused": 0, "active": 0, "messages": 0,
                              "recipients": 0, "bytes": 0, "bytes_in": 0,
                              "tls_handshakes": 0, "tls_failed": 0, "starttls_discarded": 0,
                              "auth_ok": 0, "auth_failed": 0, "idle_timeouts": 0, "store_failed": 0}
        for key in FAULT_COUNTERS:
            self._counts[key] = 0
        self._timers: list = []  # heap of (due, seq, session): delayed replies to release
        self._timer_seq = 0
        self._now = time.monotonic()
        self._next_idle_check = 0.0
        self._accept_paused = 0.0  # accepting resumes at this time (0: not paused; see _accept)
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
        self._fast = self.store is None and not self._faulty and not self.auth_required
        self._kernel = sink_scan  # the tests swap in either twin
        # The pure twin pays ~5 us per call in Python: it wins only with a few
        # pipelined commands in the buffer, so a lock-step client's lone
        # command goes straight to the Python methods (the results are the same).
        self._scan_min = 0 if HAS_EXTENSIONS else 64

    @staticmethod
    def _ehlo_reply(ext: list) -> tuple:
        return (250, b"".join(b"250%s%s\r\n" % (b" " if i == len(ext) - 1 else b"-", e)
                              for i, e in enumerate(ext)))

    # -- public -------------------------------------------------------------

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this sink's certificate (host names checked)."""
        if self.tls_ca_pem is None:
            raise ValueError("this sink has no TLS certificate of its own to trust "
                             "(no TLS, or a tls_context was given: use its CA)")
        return ssl.create_default_context(cadata=self.tls_ca_pem.decode("ascii"))

    @property
    def tls_ca_file(self) -> Optional[str]:
        """A file holding :attr:`tls_ca_pem` (written on first use, removed by :meth:`stop`)."""
        if self.tls_ca_pem is None:
            return None
        if self._tls_dir is None:
            import tempfile
            self._tls_dir = tempfile.mkdtemp(prefix="fastsmtplib-sink-ca-")
            with open(os.path.join(self._tls_dir, "ca.pem"), "wb") as f:
                f.write(self.tls_ca_pem)
        return os.path.join(self._tls_dir, "ca.pem")

    @property
    def counts(self) -> dict:
        """A snapshot of the counters.

        ``connections`` accepted, ``refused`` (over ``max_connections``),
        ``active`` now, ``messages`` and ``recipients`` accepted, ``bytes`` of
        accepted content (after dot-unstuffing), ``bytes_in`` read from clients
        (encrypted bytes under TLS), ``tls_handshakes`` completed,
        ``tls_failed`` handshakes or TLS streams that failed,
        ``starttls_discarded`` plaintext bytes thrown away after STARTTLS,
        ``auth_ok`` / ``auth_failed`` AUTH exchanges, ``idle_timeouts``,
        ``store_failed`` messages refused with 451 because ``store`` could
        not write them, one
        ``fault_*`` counter per injected fault (module docstring), and
        ``replies``: ``{code: number of replies sent with it}`` (an LMTP
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
        if self._tls_dir is not None:
            import shutil
            shutil.rmtree(self._tls_dir, ignore_errors=True)
            self._tls_dir = None

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
        timers = self._timers
        try:
            while not self._stopping:
                timeout = 0.5
                if timers:
                    timeout = min(timeout, max(0.0, timers[0][0] - time.monotonic()))
                if self._accept_paused:
                    timeout = min(timeout, max(0.0, self._accept_paused - time.monotonic()))
                events = sel.select(timeout)
                self._now = now = time.monotonic()
                for key, mask in events:
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
                while timers and timers[0][0] <= now:
                    s = heapq.heappop(timers)[2]
                    s.timer = 0.0
                    if not s.closed:
                        self._flush(s)
                if self._accept_paused and now >= self._accept_paused:
                    self._accept_paused = 0.0
                    sel.register(self._lsock, selectors.EVENT_READ, None)  # type: ignore[arg-type]
                if now >= self._next_idle_check:
                    self._check_idle(now)
        finally:
            self._shutdown()

    def _check_idle(self, now: float) -> None:
        """RFC 5321 §4.5.3.2.7: 421 to a connection silent past ``idle_timeout``, then close."""
        limit = self.idle_timeout
        self._next_idle_check = now + min(1.0, limit / 4)
        for s in list(self._sessions):
            if now - s.active < limit or s.closed or s.held:
                continue  # (with delayed replies the client is waiting for us, not idle)
            self._counts["idle_timeouts"] += 1
            if s.closing or s.outlen or s.upgrade or (s.tls is not None and not s.tls.ready):
                # Its replies are not being read, or it never finished a
                # handshake: nothing can be said to it.
                self._close(s)
                continue
            s.active = now  # one more period for the 421 to leave, then a hard close
            s.closing = True
            s.held = None  # the 421 goes now, not after a delay
            self._send_reply_now(s, _R_IDLE)
            self._flush(s)

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
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: the pending connection stays
                    # in the backlog and the listener stays readable, so the loop
                    # would spin at full CPU.  Stop watching it for a while.
                    self._sel.unregister(self._lsock)  # type: ignore[union-attr]
                    self._accept_paused = self._now + ACCEPT_PAUSE
                    return
                if exc.errno == errno.ECONNABORTED:
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
            s.active = self._now
            self._sessions.add(s)
            self._counts["connections"] += 1
            self._counts["active"] += 1
            if self._dice:
                s.rng = self.faults.rng(self._counts["connections"])
            if self.tls:
                self._start_tls(s)  # the greeting waits for the handshake (RFC 8314 §3.3)
            self._reply(s, self._greeting)
            self._flush(s)

    def _start_tls(self, s: _Session) -> None:
        from .sink_tls import TLSLayer
        assert self.tls_context is not None
        s.tls = TLSLayer(self.tls_context)

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
        if s.tls is not None and s.tls.ready and not s.wire and not s.dropped:
            try:  # best effort: tell the client the TLS stream ended on purpose
                s.sock.send(s.tls.close_notify())
            except OSError:
                pass
        s.sock.close()
        s.out.clear()
        s.inbuf = bytearray()
        s.wire = bytearray()
        s.held = None
        s.tls = None

    def _drop(self, s: _Session, counter: str) -> None:
        """An injected hang-up in a message's content: no reply to it, nothing more read.

        The replies already owed to the commands before it (MAIL, RCPT, the
        354) still go out, then the connection closes without close_notify
        (``_close`` sees ``drop_armed``): a client that pipelined them with
        the content must see what the counters say it was told.
        """
        self._counts[counter] += 1
        s.dropped = True
        s.closing = True
        s.stalled = False
        s.inbuf = bytearray()

    def _sendable(self, s: _Session) -> bool:
        if s.tls is None:
            return bool(s.out)
        return bool(s.wire) or (s.tls.ready and bool(s.out))

    def _interest(self, s: _Session) -> None:
        """Read unless closing, upgrading, stalled or too many replies are unsent; write while any can be."""
        if s.closed:
            return
        want = 0
        if not s.closing and not s.stalled and not s.upgrade and s.outlen < self.max_output:
            want |= selectors.EVENT_READ
        if self._sendable(s):
            want |= selectors.EVENT_WRITE
        if want == s.events and want:
            return
        sel = self._sel
        assert sel is not None
        if not want:
            if s.closing and not s.held:
                self._close(s)  # closing and everything that can be sent was
                return
            # Only delayed replies are owed (a timer resumes it): stop
            # watching the socket until then.
            if s.events:
                sel.unregister(s.sock)
                s.events = 0
            return
        if not s.events:
            sel.register(s.sock, want, s)
        else:
            sel.modify(s.sock, want, s)
        s.events = want

    def _flush(self, s: _Session) -> None:
        """Send what is owed in one ``send``; resume parsing stalled at the output cap."""
        if s.closed:
            return
        while True:
            if s.held:
                self._release(s)
            if s.upgrade and not s.held:
                self._begin_tls(s)
            if s.tls is not None:
                if not self._send_tls(s):
                    return
            elif s.out:
                data = s.out[0] if len(s.out) == 1 else b"".join(s.out)
                try:
                    n = s.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    self._close(s)
                    return
                if n:
                    s.active = self._now
                rest = data[n:]
                s.out = [rest] if rest else []
                s.outlen -= n
            if not (s.stalled and s.outlen < self.max_output):
                break
            self._parse(s)  # what was held back now has room
        self._interest(s)

    def _send_tls(self, s: _Session) -> bool:
        """Encrypt the ready replies and send what fits; False if the connection was closed."""
        t = s.tls
        if t.ready and s.out:
            plain = s.out[0] if len(s.out) == 1 else b"".join(s.out)
            s.out = []
            s.outlen -= len(plain)
            try:
                t.encrypt(plain)
            except (ssl.SSLError, ValueError):
                self._tls_failed(s)
                return False
        pending = t.outgoing()
        if pending:
            s.wire += pending
            s.outlen += len(pending)
        if s.wire:
            try:
                n = s.sock.send(s.wire)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._close(s)
                return False
            if n:
                s.active = self._now
                del s.wire[:n]
                s.outlen -= n
        return True

    def _tls_failed(self, s: _Session) -> None:
        self._counts["tls_failed"] += 1
        t = s.tls
        if t is not None:
            try:  # the alert, if OpenSSL made one, so the client learns why
                s.sock.send(bytes(s.wire) + t.outgoing())
            except OSError:
                pass
        s.wire = bytearray()
        s.tls = None
        self._close(s)

    def _begin_tls(self, s: _Session) -> None:
        """STARTTLS: the replies owed (the 220 last) go out in clear, then TLS (RFC 3207 §4)."""
        s.upgrade = False
        plain = b"".join(s.out)
        s.out = []
        self._start_tls(s)
        s.wire = bytearray(plain)  # sent as is, ahead of anything TLS produces

    def _on_writable(self, s: _Session) -> None:
        self._flush(s)

    def _on_readable(self, s: _Session) -> None:
        try:
            chunk = s.sock.recv(self.recv_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        eof = False
        if chunk:
            s.active = self._now
            self._counts["bytes_in"] += len(chunk)
            if s.drop_armed:  # drop_in_data: this read holds part of the content
                if not s.dropped:
                    self._drop(s, "fault_dropped_in_data")
                    self._flush(s)
                return
            if s.tls is not None:
                t = s.tls
                try:
                    chunk, done = t.feed(chunk)
                except (ssl.SSLError, ValueError):
                    self._tls_failed(s)
                    return
                if done:
                    self._counts["tls_handshakes"] += 1
                eof = t.eof  # close_notify: nothing more will come
                if not chunk and not eof:
                    self._flush(s)  # handshake records, maybe the greeting
                    return
        if not chunk:
            # End of input (maybe a half-close): a transaction in progress is
            # abandoned, replies still owed are sent, then the socket is closed.
            s.closing = True
            self._flush(s)
            return
        if s.inbuf:
            s.inbuf += chunk
        else:
            s.inbuf = bytearray(chunk)
        self._parse(s)
        if eof:
            s.closing = True
        self._flush(s)

    def _reply(self, s: _Session, reply: tuple) -> None:
        code, line = reply
        if self._delay:
            self._hold(s, line)
        else:
            s.out.append(line)
        s.outlen += len(line)
        replies = self._replies
        replies[code] = replies.get(code, 0) + 1

    def _send_reply_now(self, s: _Session, reply: tuple) -> None:
        """A reply that skips any delay (the idle timeout's 421)."""
        code, line = reply
        s.out.append(line)
        s.outlen += len(line)
        self._replies[code] = self._replies.get(code, 0) + 1

    def _hold(self, s: _Session, line: bytes) -> None:
        """delay: keep ``line`` until its time; one timer per session, for its oldest reply."""
        due = time.monotonic() + self._delay
        if s.held is None:
            import collections
            s.held = collections.deque()
        s.held.append((due, line))
        if not s.timer:
            self._arm(s, due)
        self._counts["fault_delayed"] += 1

    def _release(self, s: _Session) -> None:
        """Move the delayed replies that are due to ``s.out``; re-arm the timer for the rest."""
        held = s.held
        now = time.monotonic()
        while held and held[0][0] <= now:
            s.out.append(held.popleft()[1])
        if held and not s.timer:
            self._arm(s, held[0][0])

    def _arm(self, s: _Session, due: float) -> None:
        """One timer per session at most: the heap stays as small as the connection count."""
        s.timer = due
        self._timer_seq += 1
        heapq.heappush(self._timers, (due, self._timer_seq, s))

    def _parse(self, s: _Session) -> None:
        """Run the parser on ``s.inbuf``, then what a command asked to happen after it.

        STARTTLS and an armed mid-DATA drop stop the parser (``closing``) so
        that nothing after them is read as a command; here the session is
        switched over or dropped.
        """
        self._process(s)
        if s.upgrade:
            # RFC 3207 §4.2: whatever followed STARTTLS in clear is discarded.
            s.closing = False
            s.stalled = False
            s.discard = False
            if s.inbuf:
                self._counts["starttls_discarded"] += len(s.inbuf)
                s.inbuf = bytearray()
            # ... and the session starts over: no EHLO, transaction or AUTH.
            s.reset()
            s.greeted = False
            s.authed = False
            s.auth_step = _AUTH_NONE
        elif s.drop_armed and not s.dropped:
            if s.inbuf:  # the content came with the command: drop now
                self._drop(s, "fault_dropped_in_data")
            else:
                s.closing = False  # wait for the first bytes of content

    # -- parsing ------------------------------------------------------------

    def _process(self, s: _Session) -> None:
        """Consume as much of ``s.inbuf`` as can be, appending replies to ``s.out``."""
        buf = s.inbuf
        n = len(buf)
        pos = 0
        cap = self.max_output
        max_line = self.max_line
        fast = self._fast
        scan_min = self._scan_min
        while pos < n and not s.closing and s.outlen < cap:
            if fast and n - pos >= scan_min and not s.discard and not s.auth_step and s.tls is None:
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
                        self._too_long(s)
                        s.discard = True
                        pos = n - 1 if buf[n - 1] == 13 else n
                    break
                if eol + 2 - pos > max_line:
                    self._too_long(s)
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

    def _too_long(self, s: _Session) -> None:
        """A line over ``max_line``: 500; inside an AUTH exchange that final reply ends it.

        The client takes the 500 as the end of its AUTH (RFC 4954 §4: any
        reply but 334 is final), so the next line it sends is a command: it
        must not be read as the answer to the old challenge.
        """
        if s.auth_step:
            s.auth_step = _AUTH_NONE
            s.auth_user = b""
        self._reply(s, _R_TOO_LONG)

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
        if self._dice and self.faults.data_reject and s.rng.random() < self.faults.data_reject:
            self._counts["fault_data_rejected"] += 1
            for _ in range(nrcpt if self.lmtp else 1):
                self._reply(s, self._reject_reply)
            s.reset()
            return
        self._queue_id += 1
        qid = self._queue_id
        if self.store is not None:
            try:
                self._write_store(s, qid)
            except OSError:
                # Disk full, directory gone...: this message is refused for
                # now (RFC 5321 §4.2.2: 451 local error), the loop and the
                # other connections go on.
                self._counts["store_failed"] += 1
                for _ in range(nrcpt if self.lmtp else 1):
                    self._reply(s, _R_STORE_FAILED)
                s.reset()
                return
        counts = self._counts
        counts["messages"] += 1
        counts["recipients"] += nrcpt
        counts["bytes"] += s.body_len
        reply = (250, b"250 2.0.0 Ok: queued as %08X\r\n" % qid)
        for _ in range(nrcpt if self.lmtp else 1):
            self._reply(s, reply)
        s.reset()
        if self._faulty:
            s.accepted += 1
            if s.accepted == self.faults.drop_after:
                # Answered, then the line goes dead: the parser stops here and
                # the connection closes once the reply is out.
                self._counts["fault_dropped_after"] += 1
                s.closing = True

    def _write_store(self, s: _Session, qid: int) -> None:
        assert self.store is not None and s.mail is not None
        head = [s.mail]
        head.extend(s.rcpts)
        data = b"\r\n".join(head) + b"\r\n\r\n" + b"".join(s.parts or ())
        tmp = self.store / ("%08X.tmp" % qid)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.store / ("%08X.msg" % qid))
        except OSError:
            try:  # no half-written file left behind
                tmp.unlink()
            except OSError:
                pass
            raise

    def _command(self, s: _Session, line: bytes) -> None:
        if s.auth_step:
            self._auth_response(s, line)
            return
        if self._faulty:
            s.ncmd += 1
            if s.ncmd == self.faults.reply_421_at:
                self._counts["fault_421"] += 1
                self._reply(s, _R_421_FAULT)
                s.closing = True
                return
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
                if self._dice:
                    self._maybe_drop_in_data(s)
        elif verb == b"BDAT":
            if self._dice and s.mail is not None and s.nrcpt:
                self._maybe_drop_in_data(s)
                if s.drop_armed:
                    args = _bdat_args(line)
                    if args is None or not args[0]:
                        # No content will come to hang up in (BDAT 0, or a line
                        # not read as BDAT): hang up now, or the client waits
                        # for its reply until the idle timeout.
                        self._drop(s, "fault_dropped_in_data")
                    return  # the chunk is never read
            self._bdat(s, line)
        elif verb == b"EHLO" or verb == b"HELO" or verb == b"LHLO":
            if len(line) < 6 or not line[5:].strip():
                self._reply(s, (501, b"501 5.5.4 Syntax: %s hostname\r\n" % verb))
            elif self.lmtp != (verb == b"LHLO"):
                self._reply(s, _R_HELO_LMTP if self.lmtp else _R_UNKNOWN)
            else:
                s.reset()
                s.greeted = True
                self._reply(s, self._helo if verb == b"HELO" else
                            self._ehlo if s.tls is None else self._ehlo_tls)
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
        elif verb == b"AUTH":
            self._auth(s, line)
        elif line.upper() == b"STARTTLS" or line[:9].upper() == b"STARTTLS ":
            self._starttls(s, line)
        elif not line.strip():
            self._reply(s, _R_BAD_SYNTAX)
        else:
            self._reply(s, _R_UNKNOWN)

    # -- STARTTLS, AUTH, faults ------------------------------------------------

    def _starttls(self, s: _Session, line: bytes) -> None:
        if not self.starttls:
            self._reply(s, _R_UNKNOWN)
        elif s.tls is not None:
            self._reply(s, _R_TLS_ACTIVE)
        elif len(line) > 8:
            self._reply(s, _R_STARTTLS_SYNTAX)
        else:
            self._reply(s, _R_STARTTLS)
            s.upgrade = True
            s.closing = True  # stop the parser: nothing after this line is read (see _parse)

    def _auth(self, s: _Session, line: bytes) -> None:
        """RFC 4954 §4: AUTH mechanism [initial-response]."""
        if self._creds is None:
            self._reply(s, _R_UNKNOWN)
            return
        if s.tls is None and not self.auth_plaintext:
            self._reply(s, _R_AUTH_NEEDS_TLS)
            return
        if not s.greeted:
            self._reply(s, _R_NEED_LHLO if self.lmtp else _R_NEED_HELO)
            return
        if s.authed:
            self._reply(s, _R_AUTH_AGAIN)
            return
        if s.mail is not None:
            self._reply(s, _R_AUTH_IN_MAIL)
            return
        words = line[5:].split()
        if not 1 <= len(words) <= 2:
            self._reply(s, _R_AUTH_SYNTAX)
            return
        mech = words[0].upper()
        initial = words[1] if len(words) == 2 else None
        if mech == b"PLAIN":
            if initial is None:
                s.auth_step = _AUTH_PLAIN
                self._reply(s, _R_PLAIN_CHALLENGE)
            else:
                self._auth_plain(s, initial)
        elif mech == b"LOGIN":
            if initial is None:
                s.auth_step = _AUTH_LOGIN_USER
                self._reply(s, _R_LOGIN_USER)
            else:
                self._auth_login_user(s, initial)
        else:
            self._reply(s, _R_AUTH_MECH)

    def _auth_response(self, s: _Session, line: bytes) -> None:
        """A line answering a 334 challenge (RFC 4954 §4: ``*`` cancels)."""
        step = s.auth_step
        s.auth_step = _AUTH_NONE
        if line.strip() == b"*":
            s.auth_user = b""
            self._auth_done(s, _R_AUTH_CANCELLED, None)
        elif step == _AUTH_PLAIN:
            self._auth_plain(s, line)
        elif step == _AUTH_LOGIN_USER:
            self._auth_login_user(s, line)
        else:
            user, s.auth_user = s.auth_user, b""
            try:
                password = decode_b64(line)
            except AuthSyntaxError:
                self._auth_done(s, _R_AUTH_B64, False)
                return
            self._auth_check(s, user, password)

    def _auth_plain(self, s: _Session, data: bytes) -> None:
        try:
            authzid, user, password = decode_plain(data)
        except AuthSyntaxError:
            self._auth_done(s, _R_AUTH_B64, False)
            return
        if authzid and authzid != user:
            # Acting as another user is not something a test sink grants.
            self._auth_done(s, _R_AUTH_FAILED, False)
            return
        self._auth_check(s, user, password)

    def _auth_login_user(self, s: _Session, data: bytes) -> None:
        try:
            s.auth_user = decode_b64(data)
        except AuthSyntaxError:
            self._auth_done(s, _R_AUTH_B64, False)
            return
        s.auth_step = _AUTH_LOGIN_PASS
        self._reply(s, _R_LOGIN_PASS)

    def _auth_check(self, s: _Session, user: bytes, password: bytes) -> None:
        assert self._creds is not None
        ok = self._creds.check(user, password)
        if ok:
            s.authed = True
        self._auth_done(s, _R_AUTH_OK if ok else _R_AUTH_FAILED, ok)

    def _auth_done(self, s: _Session, reply: tuple, ok: Optional[bool]) -> None:
        if ok is not None:
            self._counts["auth_ok" if ok else "auth_failed"] += 1
        self._reply(s, reply)

    def _maybe_drop_in_data(self, s: _Session) -> None:
        """drop_in_data: once per message, when its content begins, maybe arm a hang-up."""
        if s.started:
            return
        s.started = True
        share = self.faults.drop_in_data
        if share and s.rng.random() < share:
            s.drop_armed = True
            s.closing = True  # stop the parser; _parse drops once content is here

    def _mail(self, s: _Session, line: bytes) -> None:
        if not s.greeted:
            self._reply(s, _R_NEED_LHLO if self.lmtp else _R_NEED_HELO)
            return
        if self.auth_required and not s.authed:
            self._reply(s, _R_AUTH_REQUIRED)  # RFC 4954 §6
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
                # Compared by length first: int() refuses more than 4300
                # digits (ValueError), and max_line may let that many through.
                digits = value.lstrip(b"0")
                if len(digits) > len(str(self.size)) or int(digits or b"0") > self.size:
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
        if self._dice and (self.faults.rcpt_refuse or self.faults.rcpt_defer):
            roll = s.rng.random()
            if roll < self.faults.rcpt_refuse:
                self._counts["fault_rcpt_refused"] += 1
                self._reply(s, _R_RCPT_REFUSED)
                return
            if roll < self.faults.rcpt_refuse + self.faults.rcpt_defer:
                self._counts["fault_rcpt_deferred"] += 1
                self._reply(s, _R_RCPT_DEFERRED)
                return
        s.rcpts.append(line)
        s.nrcpt += 1
        self._reply(s, _R_RCPT_OK)

    def _bdat(self, s: _Session, line: bytes) -> None:
        args = _bdat_args(line)
        if args is None:
            # Without a valid size the chunk cannot be skipped: the stream is lost
            # (RFC 3030 §2: the client must not send the chunk after a bad BDAT).
            self._reply(s, _R_BDAT_SYNTAX)
            return
        size, s.last = args
        s.bdat_ok = s.mail is not None and s.nrcpt > 0
        s.remaining = size
        s.state = _BDAT
        if not size:
            self._chunk_done(s)
