"""``SMTP`` and ``SMTP_SSL``: the stdlib's client API on a buffered, pipelining reader.

Public names, signatures, attributes, return values and exceptions are those of
``smtplib`` (the contract is the stdlib documentation).  What differs, and why,
is listed in the README ("Differences from smtplib").  In short:

* replies are read with ``recv_into`` into one buffer and parsed by the byte
  kernel, which returns every complete reply at once (the base for pipelining);
* ``timeout`` bounds a whole reply, and replies are bounded in size;
* ``sendmail`` pipelines MAIL/RCPT/DATA when the server offers PIPELINING
  (RFC 2920) and uses BDAT when it offers CHUNKING (RFC 3030);
* bytes messages get bare CR/LF normalised (SMTP smuggling);
* TLS contexts created here verify certificates and host names;
* AUTH secrets never reach debug output or logs.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime
import hmac
import logging
import os
import select
import struct
import socket as _stdlib_socket
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Sequence

import fastsmtplib as _pkg

from . import _message, _protocol
from ._engine import DELIVERED, PARTIAL, RFC5321_TIMEOUTS, Engine, SendResult
from ._protocol import Capabilities
from ._wire import ReplyLimitError, ReplyParser, dot_stuff
from .errors import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupportedError,
    SMTPPipelineError,
    SMTPReplyTimeout,
    SMTPReplyTooLong,
    SMTPResponseException,
    SMTPServerDisconnected,
)

try:
    import ssl
except ImportError:  # pragma: no cover - CPython without OpenSSL
    ssl = None  # type: ignore[assignment]

__all__ = ["SMTP", "SMTP_SSL", "SMTP_PORT", "SMTP_SSL_PORT"]

SMTP_PORT = 25
SMTP_SSL_PORT = 465
#: Most AUTH challenges answered before giving up (a server may loop forever).
_MAXCHALLENGE = 5
#: Size of the receive buffer: a whole pipelined group of replies fits.
_RECV_SIZE = 65536

log = logging.getLogger("fastsmtplib")
_DEBUG = logging.DEBUG
_DONTWAIT = getattr(_stdlib_socket, "MSG_DONTWAIT", 0)  # Linux, BSDs, macOS


_RAW_IO = hasattr(os, "readv") and hasattr(_stdlib_socket, "SO_RCVTIMEO") and sys.platform.startswith("linux")
_readv = getattr(os, "readv", None)
_os_write = os.write
_monotonic = time.monotonic


def _set_sock_timeouts(sock: Any, seconds: float) -> None:
    """SO_RCVTIMEO and SO_SNDTIMEO (0: none) on a blocking socket."""
    sec = int(seconds)
    usec = int((seconds - sec) * 1e6)
    if sec == 0 and usec == 0 and seconds > 0:
        usec = 1
    tv = struct.pack("@ll", sec, usec)
    sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_RCVTIMEO, tv)
    sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_SNDTIMEO, tv)


def _readable_now(sock: Any) -> bool:
    """True if ``sock`` has bytes (or end of file) to read right now."""
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, unlike select()
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


def _socket_module() -> Any:
    """The socket module in use: ``fastsmtplib.socket``, which tests may patch.

    CPython's test_smtplib replaces ``smtplib.socket`` with a mock module; to run
    that suite against us, every socket call goes through the package attribute.
    """
    return _pkg.socket


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("ascii")).decode("ascii")


def _default_tls_context(certfile: str | None = None, keyfile: str | None = None) -> Any:
    """A TLS context that verifies the server's certificate and host name.

    Deliberately stricter than the stdlib, which creates unverified contexts
    for STARTTLS and SMTP_SSL; pass ``context=`` to choose otherwise.
    """
    if ssl is None:
        raise RuntimeError("No SSL support included in this Python")
    context = ssl.create_default_context()
    if certfile is not None or keyfile is not None:
        context.load_cert_chain(certfile, keyfile)
    return context


def _check_tls_args(keyfile: Any, certfile: Any, context: Any) -> None:
    if context is not None and keyfile is not None:
        raise ValueError("context and keyfile arguments are mutually exclusive")
    if context is not None and certfile is not None:
        raise ValueError("context and certfile arguments are mutually exclusive")
    if keyfile is not None or certfile is not None:
        warnings.warn(
            "keyfile and certfile are deprecated, pass an ssl.SSLContext as context",
            DeprecationWarning,
            3,
        )


class SMTP:
    """An SMTP client session, API-compatible with ``smtplib.SMTP``.

    If ``host`` is given, ``connect(host, port)`` is called and a greeting
    other than 220 raises ``SMTPConnectError``.  ``local_hostname`` is the name
    sent with HELO/EHLO; when omitted it is looked up (``socket.getfqdn()``)
    the first time it is needed, not in the constructor.  ``timeout`` (seconds)
    bounds connecting and each whole reply.  ``source_address`` is a
    ``(host, port)`` to bind to.

    Class attributes ``pipelining`` and ``chunking`` (also settable per
    instance) turn off the use of PIPELINING and CHUNKING for servers that
    advertise them but get them wrong.
    """

    debuglevel = 0
    sock: Any = None
    file: Any = None
    helo_resp: bytes | None = None
    ehlo_msg = "ehlo"
    ehlo_resp: bytes | None = None
    does_esmtp = False
    default_port = SMTP_PORT
    #: Use PIPELINING (RFC 2920) in sendmail() when the server advertises it.
    pipelining = True
    #: Use CHUNKING/BDAT (RFC 3030) in sendmail() when the server advertises it.
    chunking = True

    def __init__(
        self,
        host: str = "",
        port: int = 0,
        local_hostname: str | None = None,
        timeout: float | None = _stdlib_socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
        source_address: tuple[str, int] | None = None,
    ) -> None:
        self._host = host
        self.timeout = timeout
        self.esmtp_features: dict[str, str] = {}
        self.command_encoding = "ascii"
        self.source_address = source_address
        self._auth_challenge_count = 0
        self._local_hostname = local_hostname
        self._redact = False  # True while AUTH secrets are on the wire
        self._caps_cache: tuple[Any, Capabilities] | None = None
        self._eng: Engine | None = None
        self._eng_key: tuple[int, bool, bool] | None = None
        self._parser = ReplyParser()
        self._replies: collections.deque[tuple[int, bytes]] = collections.deque()
        self._rbuf = bytearray(_RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        self._rbufs = (self._rview,)
        # Direct fd I/O (see _raw_fd): the socket it was set up for, its fd
        # (-1: use the socket's methods), its timeout then, SO_RCVTIMEO now.
        self._raw_sock: Any = None
        self._raw = -1
        self._raw_timeout: float | None = None
        self._rcvtimeo: float | None = None
        self._poller: Any = None
        if host:
            code, msg = self.connect(host, port)
            if code != 220:
                self.close()
                raise SMTPConnectError(code, msg)

    # -- context manager -------------------------------------------------

    def __enter__(self) -> "SMTP":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            code, message = self.docmd("QUIT")
            if code != 221:
                raise SMTPResponseException(code, message)
        except SMTPServerDisconnected:
            pass
        finally:
            self.close()

    # -- identity ---------------------------------------------------------

    @property
    def local_hostname(self) -> str:
        """Name sent with HELO/EHLO: the FQDN, else an address literal.

        RFC 5321 §4.1.4 wants the client's FQDN, or an address literal when
        there is none.  Looked up lazily so that constructing an ``SMTP``
        without a host does no DNS traffic.
        """
        if self._local_hostname is None:
            sockmod = _socket_module()
            fqdn = sockmod.getfqdn()
            if "." in fqdn:
                self._local_hostname = fqdn
            else:
                addr = "127.0.0.1"
                try:
                    addr = sockmod.gethostbyname(sockmod.gethostname())
                except sockmod.gaierror:
                    pass
                self._local_hostname = "[%s]" % addr
        return self._local_hostname

    @local_hostname.setter
    def local_hostname(self, value: str) -> None:
        self._local_hostname = value

    # -- debug output and logging ------------------------------------------

    def set_debuglevel(self, debuglevel: int) -> None:
        """Print the transcript to stderr: 1 plain, 2 with timestamps."""
        self.debuglevel = debuglevel

    def _print_debug(self, *args: Any) -> None:
        if self.debuglevel > 1:
            print(datetime.datetime.now().time(), *args, file=sys.stderr)
        else:
            print(*args, file=sys.stderr)
        if log.isEnabledFor(_DEBUG):
            log.debug(" ".join(str(a) for a in args))

    def _trace(self, what: str, data: Any) -> None:
        """Transcript of one send or receive, to stderr and/or the logger."""
        if self._redact and what == "send:":
            data = self._redacted(data)
        if self.debuglevel > 0:
            self._print_debug(what, repr(data))
        elif log.isEnabledFor(_DEBUG):
            log.debug("%s %r", what, data)

    @staticmethod
    def _redacted(data: Any) -> str:
        # Keep "AUTH MECHANISM", hide initial responses and challenge answers.
        text = data.decode("ascii", "replace") if isinstance(data, (bytes, bytearray)) else str(data)
        words = text.split()
        if len(words) >= 2 and words[0].upper() == "AUTH":
            return "AUTH %s%s" % (words[1], " <redacted>" if len(words) > 2 else "")
        return "<redacted>"

    # -- connection ----------------------------------------------------------

    def _get_socket(self, host: str, port: int, timeout: Any) -> Any:
        # Kept as a separate step so SMTP_SSL only changes how the socket is made.
        if timeout is not None and not timeout:
            raise ValueError("Non-blocking socket (timeout=0) is not supported")
        if self.debuglevel > 0:
            self._print_debug("connect: to", (host, port), self.source_address)
        sock = _socket_module().create_connection((host, port), timeout, self.source_address)
        try:
            # Pipelined groups are written whole; Nagle would only add delay.
            sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
        except (OSError, AttributeError, TypeError):
            pass
        return sock

    def connect(self, host: str = "localhost", port: int = 0, source_address: Any = None) -> tuple[int, bytes]:
        """Connect to ``host`` on ``port`` and return the server's greeting.

        ``host`` may carry the port as ``"host:port"`` when ``port`` is 0.
        """
        if source_address:
            self.source_address = source_address
        if not port and host.find(":") == host.rfind(":"):
            i = host.rfind(":")
            if i >= 0:
                host, port_text = host[:i], host[i + 1:]
                try:
                    port = int(port_text)
                except ValueError:
                    raise OSError("nonnumeric port") from None
        if not port:
            port = self.default_port
        sys.audit("smtplib.connect", self, host, port)
        # Remember the host actually connected to: TLS checks the certificate
        # against it (the stdlib only remembers the constructor's host).
        self._host = host
        self.sock = self._get_socket(host, port, self.timeout)
        self.file = None
        self._reset_reader()
        code, msg = self.getreply()
        if self.debuglevel > 0:
            self._print_debug("connect:", repr(msg))
        return code, msg

    def close(self) -> None:
        """Close the connection to the SMTP server."""
        try:
            file = self.file
            self.file = None
            if file:
                file.close()
        finally:
            sock = self.sock
            self.sock = None
            self._reset_reader()
            self._raw_sock = None
            self._raw = -1
            self._eng = None
            if sock:
                sock.close()

    def _reset_reader(self) -> None:
        self._parser.reset()
        self._replies.clear()

    # -- bytes out -------------------------------------------------------------

    def send(self, s: str | bytes) -> None:
        """Send ``s`` (str is encoded with ``command_encoding``) to the server."""
        if self.debuglevel > 0 or log.isEnabledFor(_DEBUG):
            self._trace("send:", s)
        if not self.sock:
            raise SMTPServerDisconnected("please run connect() first")
        if isinstance(s, str):
            s = s.encode(self.command_encoding)
        self._write(s, traced=True)

    def putcmd(self, cmd: str, args: str = "") -> None:
        """Send one command; ``ValueError`` (nothing sent) if it holds CR or LF."""
        self.send(_protocol.command_line(cmd, args))

    # -- bytes in ----------------------------------------------------------------

    def getreply(self) -> tuple[int, bytes]:
        """Return the next reply as ``(code, message)``.

        ``code`` is -1 for a malformed reply; the lines of a multi-line reply
        are joined with ``b"\\n"``.  Raises ``SMTPServerDisconnected`` at end of
        file or on a socket error (``SMTPReplyTimeout`` when the reply's
        deadline passes), ``SMTPReplyTooLong`` when a reply breaks a limit.
        """
        replies = self._replies
        if not replies:
            self._receive()
        code, msg = replies.popleft()
        if self.debuglevel > 0:
            self._print_debug("reply: retcode (%s); Msg: %a" % (code, msg))
        elif log.isEnabledFor(_DEBUG):
            log.debug("reply: %s %r", code, msg)
        return code, msg

    def _receive(self) -> None:
        """Read until at least one whole reply is parsed into ``self._replies``."""
        self._replies.extend(self._read_replies())

    # -- transaction I/O ---------------------------------------------------------
    #
    # CPython polls before every recv/send on a socket with a timeout (one extra
    # syscall each).  On a plain socket the fd is made blocking once, with the
    # timeout as SO_RCVTIMEO/SO_SNDTIMEO, and read with readv: a read that
    # finds its reply costs one syscall, and poll runs only after a partial
    # reply (to keep the whole-reply deadline) or when the fd is non-blocking
    # after all (someone called settimeout).  TLS sockets and test doubles use
    # their own methods.

    def _raw_fd(self, sock: Any) -> int:
        """The fd to read and write directly, or -1 to use ``sock``'s methods."""
        if sock is self._raw_sock:
            if sock.gettimeout() == self._raw_timeout:
                return self._raw
        self._raw_sock = sock
        self._raw = -1
        self._raw_timeout = timeout = sock.gettimeout()
        self._rcvtimeo = None
        if type(sock) is not _stdlib_socket.socket or not _RAW_IO:
            return -1
        try:
            fd = sock.fileno()
            if timeout is not None:
                _set_sock_timeouts(sock, timeout)
                self._rcvtimeo = timeout
                os.set_blocking(fd, True)
        except (OSError, ValueError, AttributeError):
            return -1
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        self._raw = fd
        return fd

    def _set_bulk_timeout(self, seconds: float | None) -> None:
        """Bulk sending without a caller's timeout: RFC 5321 §4.5.3.2's, per reply.

        ``None`` goes back to no timeout (at the end of ``send_many``).  Only
        when the caller gave none; a syscall only when the value changes.
        """
        sock = self.sock
        if sock is None or self.timeout is not None:
            return
        if self._raw_fd(sock) < 0:
            # TLS and other socket objects: their own timeout, restored after.
            if sock.gettimeout() != seconds:
                sock.settimeout(seconds)
                self._raw_sock = None
            return
        if seconds != self._rcvtimeo:
            try:
                _set_sock_timeouts(sock, seconds or 0.0)
            except OSError:
                return
            self._rcvtimeo = seconds

    def _read_replies(self) -> list[tuple[int, bytes]]:
        """Read until at least one whole reply is parsed; return every one parsed.

        The first read waits as long as the timeout allows; once part of a
        reply has arrived, the rest must arrive within the same timeout counted
        from the start, so a server that drips bytes cannot hold the client
        for longer than one timeout.
        """
        sock = self.sock
        if sock is None:
            raise SMTPServerDisconnected("please run connect() first")
        fd = self._raw_fd(sock)
        if fd < 0:
            return self._read_replies_sock(sock)
        view = self._rview
        bufs = self._rbufs
        limit = self._rcvtimeo
        start = _monotonic()
        while True:
            try:
                n = _readv(fd, bufs)
            except (BlockingIOError, InterruptedError):
                self._wait_readable(fd, start, limit)
                continue
            except OSError as exc:
                self.close()
                raise SMTPServerDisconnected("Connection unexpectedly closed: " + str(exc)) from exc
            got = self._parse(view, n)
            if got:
                return got
            # Part of a reply: the rest within what is left of the deadline.
            self._wait_readable(fd, start, limit)

    def _wait_readable(self, fd: int, start: float, limit: float | None) -> None:
        if limit is None:
            ready = self._poller.poll()
        else:
            remaining = start + limit - _monotonic()
            ready = self._poller.poll(max(0, remaining) * 1000) if remaining > 0 else []
        if not ready:
            self.close()
            raise SMTPReplyTimeout("Connection unexpectedly closed: reply not complete within %ss" % limit)

    def _parse(self, view: Any, n: int) -> list[tuple[int, bytes]]:
        """Feed ``n`` received bytes to the parser (``n == 0``: end of file)."""
        if not n:
            self.close()
            raise SMTPServerDisconnected("Connection unexpectedly closed")
        chunk = view[:n]
        if self.debuglevel > 0:
            self._print_debug("reply:", repr(bytes(chunk)))
        try:
            return self._parser.feed(chunk)
        except ReplyLimitError as exc:
            self.close()
            raise SMTPReplyTooLong.from_limit(exc) from None

    def _read_replies_sock(self, sock: Any) -> list[tuple[int, bytes]]:
        """``_read_replies`` through the socket object's own methods (TLS, doubles)."""
        recv_into = getattr(sock, "recv_into", None)
        view = self._rview
        started = time.monotonic()
        deadline = None
        saved_timeout: Any = False
        try:
            while True:
                try:
                    if recv_into is not None:
                        n = recv_into(view)
                    else:  # file-like test doubles without recv_into
                        data = sock.recv(_RECV_SIZE)
                        n = len(data)
                        view[:n] = data
                except OSError as exc:
                    self.close()
                    if isinstance(exc, (TimeoutError, _stdlib_socket.timeout)):
                        raise SMTPReplyTimeout("Connection unexpectedly closed: " + str(exc)) from exc
                    raise SMTPServerDisconnected("Connection unexpectedly closed: " + str(exc)) from exc
                got = self._parse(view, n)
                if got:
                    return got
                if deadline is None:
                    total = sock.gettimeout()
                    # No timeout on the socket: the caller asked to wait forever.
                    deadline = float("inf") if total is None else started + total
                    saved_timeout = False if total is None else total
                if deadline == float("inf"):
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.close()
                    raise SMTPReplyTimeout("Connection unexpectedly closed: reply not complete within %ss" % saved_timeout)
                sock.settimeout(remaining)
        finally:
            if saved_timeout is not False and self.sock is not None:
                self.sock.settimeout(saved_timeout)

    def _write(self, data: bytes, traced: bool = False) -> None:
        """Write all of ``data``; ``SMTPServerDisconnected`` if the socket fails."""
        if not traced and (self.debuglevel > 0 or log.isEnabledFor(_DEBUG)):
            self._trace("send:", data)
        sock = self.sock
        if sock is None:
            raise SMTPServerDisconnected("please run connect() first")
        sys.audit("smtplib.send", self, data)
        fd = self._raw_fd(sock)
        try:
            if fd < 0:
                sock.sendall(data)
                return
            n = _os_write(fd, data)
            if n < len(data):
                self._write_rest(fd, memoryview(data)[n:])
        except OSError:
            self.close()
            raise SMTPServerDisconnected("Server not connected") from None

    def _write_rest(self, fd: int, view: memoryview) -> None:
        # A short write: the socket buffer filled (or SO_SNDTIMEO, a signal).
        limit = self._rcvtimeo
        start = _monotonic()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while view:
            try:
                n = _os_write(fd, view)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n:
                view = view[n:]
                start = _monotonic()  # progress: the timeout counts from here
                continue
            remaining = None if limit is None else (start + limit - _monotonic()) * 1000
            if remaining is not None and remaining <= 0 or not poller.poll(remaining):
                raise TimeoutError("write timed out")

    def docmd(self, cmd: str, args: str = "") -> tuple[int, bytes]:
        """Send a command and return its reply."""
        self.putcmd(cmd, args)
        return self.getreply()

    # -- plain commands ----------------------------------------------------------

    def helo(self, name: str = "") -> tuple[int, bytes]:
        """SMTP HELO; the reply's text is kept as ``helo_resp``."""
        self.putcmd("helo", name or self.local_hostname)
        code, msg = self.getreply()
        self.helo_resp = msg
        return code, msg

    def ehlo(self, name: str = "") -> tuple[int, bytes]:
        """SMTP EHLO; fills ``ehlo_resp``, ``does_esmtp`` and ``esmtp_features``."""
        self.esmtp_features = {}
        self.putcmd(self.ehlo_msg, name or self.local_hostname)
        code, msg = self.getreply()
        # RFC 1869 §4.5: some old servers drop the connection on EHLO.
        if code == -1 and len(msg) == 0:
            self.close()
            raise SMTPServerDisconnected("Server not connected")
        self.ehlo_resp = msg
        if code != 250:
            return code, msg
        self.does_esmtp = True
        self.esmtp_features = _protocol.parse_ehlo(msg)
        return code, msg

    def has_extn(self, opt: str) -> bool:
        """True if the server advertised extension ``opt`` (case ignored)."""
        return opt.lower() in self.esmtp_features

    def help(self, args: str = "") -> bytes:
        """SMTP HELP; returns the reply's text."""
        self.putcmd("help", args)
        return self.getreply()[1]

    def rset(self) -> tuple[int, bytes]:
        """SMTP RSET: abort the current mail transaction."""
        self.command_encoding = "ascii"
        return self.docmd("rset")

    def _rset(self) -> None:
        # A reset after a failure: a disconnect then is reported by the next
        # command the caller issues, not on top of the failure being raised.
        try:
            self.rset()
        except SMTPServerDisconnected:
            pass

    def noop(self) -> tuple[int, bytes]:
        """SMTP NOOP."""
        return self.docmd("noop")

    def _mail_args(self, sender: str, options: Sequence[str]) -> str:
        optionlist = ""
        if options and self.does_esmtp:
            if any(x.lower() == "smtputf8" for x in options):
                if self.has_extn("smtputf8"):
                    self.command_encoding = "utf-8"
                else:
                    raise SMTPNotSupportedError("SMTPUTF8 not supported by server")
            optionlist = " " + " ".join(options)
        return "FROM:%s%s" % (_protocol.quoteaddr(sender), optionlist)

    def _rcpt_args(self, recip: str, options: Sequence[str]) -> str:
        optionlist = ""
        if options and self.does_esmtp:
            optionlist = " " + " ".join(options)
        return "TO:%s%s" % (_protocol.quoteaddr(recip), optionlist)

    def mail(self, sender: str, options: Sequence[str] = ()) -> tuple[int, bytes]:
        """SMTP MAIL FROM; SMTPNotSupportedError for SMTPUTF8 the server lacks."""
        self.putcmd("mail", self._mail_args(sender, options))
        return self.getreply()

    def rcpt(self, recip: str, options: Sequence[str] = ()) -> tuple[int, bytes]:
        """SMTP RCPT TO for one recipient."""
        self.putcmd("rcpt", self._rcpt_args(recip, options))
        return self.getreply()

    def data(self, msg: str | bytes) -> tuple[int, bytes]:
        """SMTP DATA: send the message and return the final reply.

        Line ends are normalised to CRLF and leading dots doubled, for bytes as
        well as str (the stdlib leaves bytes' bare CR/LF alone, which permits
        SMTP smuggling).  Raises SMTPDataError if DATA is not answered 354.
        """
        self.putcmd("data")
        code, repl = self.getreply()
        if self.debuglevel > 0:
            self._print_debug("data:", (code, repl))
        if code != 354:
            raise SMTPDataError(code, repl)
        self.send(self._encode_for_data(msg))
        code, repl = self.getreply()
        if self.debuglevel > 0:
            self._print_debug("data:", (code, repl))
        return code, repl

    @staticmethod
    def _encode_for_data(msg: str | bytes) -> bytes:
        if isinstance(msg, str):
            msg = msg.encode("ascii")
        return dot_stuff(msg)

    def verify(self, address: str) -> tuple[int, bytes]:
        """SMTP VRFY for ``address``."""
        self.putcmd("vrfy", _protocol.addr_only(address))
        return self.getreply()

    vrfy = verify

    def expn(self, address: str) -> tuple[int, bytes]:
        """SMTP EXPN for ``address``."""
        self.putcmd("expn", _protocol.addr_only(address))
        return self.getreply()

    def ehlo_or_helo_if_needed(self) -> None:
        """EHLO (falling back to HELO) unless one was done this session."""
        if self.helo_resp is None and self.ehlo_resp is None:
            if not (200 <= self.ehlo()[0] <= 299):
                code, resp = self.helo()
                if not (200 <= code <= 299):
                    raise SMTPHeloError(code, resp)

    # -- AUTH (RFC 4954) ------------------------------------------------------

    def auth(self, mechanism: str, authobject: Callable[..., Any], *, initial_response_ok: bool = True) -> tuple[int, bytes]:
        """Run one AUTH exchange with ``authobject(challenge=None) -> str``.

        Returns the final reply when it is 235 (or 503, already authenticated);
        raises SMTPAuthenticationError otherwise, also for a challenge that is
        not valid base64 (the exchange is cancelled with ``*`` first, RFC 4954
        §4, so the connection stays usable).
        """
        mechanism = mechanism.upper()
        initial = authobject() if initial_response_ok else None
        self._redact = True
        try:
            if initial is not None:
                code, resp = self.docmd("AUTH", mechanism + " " + _b64(initial))
                self._auth_challenge_count = 1
            else:
                code, resp = self.docmd("AUTH", mechanism)
                self._auth_challenge_count = 0
            while code == 334:
                self._auth_challenge_count += 1
                try:
                    challenge = base64.b64decode(resp, validate=True)
                except (binascii.Error, ValueError):
                    self._cancel_auth()
                    raise SMTPAuthenticationError(code, b"invalid base64 in AUTH challenge: " + resp[:100]) from None
                code, resp = self.docmd(_b64(authobject(challenge)))
                if self._auth_challenge_count > _MAXCHALLENGE:
                    raise SMTPException(
                        "Server AUTH mechanism infinite loop. Last response: " + repr((code, resp))
                    )
        finally:
            self._redact = False
        if code in (235, 503):
            return code, resp
        raise SMTPAuthenticationError(code, resp)

    def _cancel_auth(self) -> None:
        try:
            self.docmd("*")
        except SMTPServerDisconnected:
            pass

    def auth_cram_md5(self, challenge: bytes | None = None) -> str | None:
        """Authobject for CRAM-MD5 (RFC 2195); needs ``self.user``/``self.password``."""
        if challenge is None:
            return None  # no initial response in CRAM-MD5
        digest = hmac.HMAC(self.password.encode("ascii"), challenge, "md5").hexdigest()
        return self.user + " " + digest

    def auth_plain(self, challenge: bytes | None = None) -> str:
        """Authobject for PLAIN (RFC 4616); needs ``self.user``/``self.password``."""
        return "\0%s\0%s" % (self.user, self.password)

    def auth_login(self, challenge: bytes | None = None) -> str:
        """Authobject for LOGIN; needs ``self.user``/``self.password``."""
        if challenge is None or self._auth_challenge_count < 2:
            return self.user
        return self.password

    def login(self, user: str, password: str, *, initial_response_ok: bool = True) -> tuple[int, bytes]:
        """Authenticate, trying CRAM-MD5, PLAIN and LOGIN in that order.

        A mechanism that fails is followed by the next one, except after 535
        (credentials invalid, RFC 4954 §6): trying the same wrong password with
        every mechanism only multiplies failed logins (and lockouts).
        """
        self.ehlo_or_helo_if_needed()
        if not self.has_extn("auth"):
            raise SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
        advertised = self.esmtp_features["auth"].split()
        authlist = [m for m in ("CRAM-MD5", "PLAIN", "LOGIN") if m in advertised]
        if not authlist:
            raise SMTPException("No suitable authentication method found.")
        self.user, self.password = user, password
        last_exception: SMTPAuthenticationError | None = None
        for mech in authlist:
            method = getattr(self, "auth_" + mech.lower().replace("-", "_"))
            try:
                code, resp = self.auth(mech, method, initial_response_ok=initial_response_ok)
                if code in (235, 503):
                    return code, resp
            except SMTPAuthenticationError as exc:
                last_exception = exc
                if exc.smtp_code == 535:
                    raise
        assert last_exception is not None
        raise last_exception

    # -- STARTTLS (RFC 3207) ---------------------------------------------------

    def starttls(self, keyfile: str | None = None, certfile: str | None = None, context: Any = None) -> tuple[int, bytes]:
        """Switch the connection to TLS; call ``ehlo()`` again afterwards.

        Without ``context`` a verifying context is created (certificate and
        host name checked).  Anything the server sent after its 220 is
        discarded unread, and the capabilities are forgotten (RFC 3207 §4.2).
        """
        self.ehlo_or_helo_if_needed()
        if not self.has_extn("starttls"):
            raise SMTPNotSupportedError("STARTTLS extension not supported by server.")
        if ssl is None:
            raise RuntimeError("No SSL support included in this Python")
        # Check the arguments before the server is told to expect a handshake.
        _check_tls_args(keyfile, certfile, context)
        if context is None:
            context = _default_tls_context(certfile, keyfile)
        code, reply = self.docmd("STARTTLS")
        if code != 220:
            raise SMTPResponseException(code, reply)
        # RFC 3207 §4.2 / CVE-2011-0411: bytes that arrived with or after the
        # 220 were sent in plaintext and may have been injected; drop them.
        if self._replies or self._parser.in_reply:
            log.warning("discarding %d bytes received in plaintext after STARTTLS's 220",
                        self._parser.pending + sum(len(m) + 4 for _, m in self._replies))
        self._reset_reader()
        try:
            self.sock = context.wrap_socket(self.sock, server_hostname=self._host)
        except Exception:
            self.close()
            raise
        self.file = None
        self.helo_resp = None
        self.ehlo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False
        return code, reply

    # -- sending mail ------------------------------------------------------------
    #
    # Every transaction runs on the sans-IO engine (_engine.py), which owns
    # the rules; this class moves its bytes and maps its results to smtplib's
    # return values and exceptions.

    _lmtp = False

    def _capabilities(self) -> Capabilities:
        """The server's capabilities, parsed again only when the features change."""
        features = self.esmtp_features
        key = (self.does_esmtp, tuple(features.items()))
        cached = self._caps_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        caps = Capabilities.from_features(features, self.does_esmtp)
        self._caps_cache = (key, caps)
        return caps

    def _engine(self, window: int = 32) -> Engine:
        """The engine for this connection as it is now (a new one when anything changed)."""
        caps = self._capabilities()
        eng = self._eng
        if (
            eng is None
            or eng.caps is not caps
            or eng.broken is not None
            or not eng.idle
            or eng.parser is not self._parser
            or self._eng_key != (window, bool(self.pipelining), bool(self.chunking))
        ):
            eng = Engine(caps, lmtp=self._lmtp, window=window, pipelining=self.pipelining,
                         chunking=self.chunking, parser=self._parser)
            self._eng = eng
            self._eng_key = (window, bool(self.pipelining), bool(self.chunking))
        return eng

    # The package's driver interface: ``batch.send_many`` and ``SMTPPool``
    # move an engine's bytes themselves, and use these two methods (stable
    # names, not part of smtplib's API) rather than the private ones.

    def engine(self, window: int = 32) -> Engine:
        """The ``Engine`` for this connection (package interface, for drivers).

        Built from the capabilities of the last EHLO/LHLO, this connection's
        ``pipelining``/``chunking`` switches, LMTP rules for ``LMTP``, and
        sharing this connection's reply parser (``Engine.parser``).  The same
        engine is returned while it is idle and nothing changed.  A driver
        that takes the socket over writes ``bytes_to_send()`` and feeds what
        it reads to ``receive``; it must not use ``sendmail`` meanwhile.
        """
        return self._engine(window)

    def check_in_step(self) -> None:
        """Before a driver starts transactions: raise if a reply nobody asked
        for is waiting, already parsed or on the socket (package interface).

        Closes the connection and raises ``SMTPServerDisconnected`` for an
        unasked 421, ``SMTPPipelineError`` for any other reply.
        """
        self._check_in_step(peek=True)

    def _io_step(self, eng: Engine, bulk: bool = False) -> bool:
        """Write what the engine has, then read once if it is owed replies.

        Returns False once nothing is owed (the engine is idle or stopped).
        A failed write or read ends the engine's connection: every message
        not yet reported gets its result from ``connection_lost``, and the
        socket is closed.
        """
        try:
            data = eng.bytes_to_send()
            if data:
                self._write(data)
            if not eng._owed:
                if eng.broken is not None:
                    self.close()
                return False
            replies = self._replies
            if replies:
                got = list(replies)
                replies.clear()
            else:
                if bulk and self.timeout is None:
                    self._set_bulk_timeout(RFC5321_TIMEOUTS[eng.deadline_kind])
                got = self._read_replies()
            if self.debuglevel > 0:
                for code, msg in got:
                    self._print_debug("reply: retcode (%s); Msg: %a" % (code, msg))
            eng.receive_replies(got)
        except (SMTPServerDisconnected, SMTPReplyTooLong) as exc:
            eng.connection_lost(exc)
            self.close()
            return False
        except Exception as exc:  # e.g. ssl.SSLError: the connection is unusable
            eng.connection_lost(SMTPServerDisconnected("connection failed: %r" % (exc,)))
            self.close()
            raise
        if eng.broken is not None:
            self.close()
            return False
        return bool(eng._owed) or not eng.idle

    def sendmail(
        self,
        from_addr: str,
        to_addrs: str | Sequence[str],
        msg: str | bytes,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> dict[str, tuple[int, bytes]]:
        """Send one message; return ``{recipient: (code, msg)}`` for refused ones.

        Same results and exceptions as ``smtplib.SMTP.sendmail`` in every
        branch.  With PIPELINING, MAIL, every RCPT and DATA go out in one
        write (RFC 2920 §3.1) and all their replies are read before deciding;
        with CHUNKING the envelope and the body go in one write, as
        ``BDAT n LAST`` (RFC 3030).  A reply that cannot answer its command
        raises ``SMTPPipelineError`` and closes the connection.
        """
        self.ehlo_or_helo_if_needed()
        eng = self._engine()
        self._check_in_step(peek=eng.bdat and not eng.enhanced)
        result = eng.submit(None, from_addr, to_addrs, msg, mail_options, rcpt_options)
        if mail_options and any(o.lower() == "smtputf8" for o in mail_options):
            self.command_encoding = "utf-8"  # as the stdlib's mail() leaves it
        while self._io_step(eng):
            pass
        self._sent(result)
        status = result.status
        if status is DELIVERED:
            return {}
        if status is PARTIAL:
            return result.refused
        self.command_encoding = "ascii"  # the stdlib's RSET after a failure resets it
        exc = result.exception
        assert exc is not None, result
        raise exc

    def _sent(self, result: SendResult) -> None:
        """Hook for what a subclass records after each ``sendmail`` (LMTP)."""

    def _check_in_step(self, peek: bool = True) -> None:
        """Refuse to start a transaction when a reply nobody asked for is waiting.

        A reply nobody asked for means the server's replies and our commands no
        longer line up; reading on would pair each command with the wrong reply.
        Replies already parsed are checked; with ``peek`` the socket is also
        looked at, without blocking, for one that arrived since the last read.
        That costs a syscall, so ``sendmail`` peeks only where the engine could
        not see the shift itself: with DATA the 354 would land on the wrong
        command, and with ENHANCEDSTATUSCODES a 250 to RCPT differs from one to
        BDAT, but a run of plain 250s to MAIL/RCPT/BDAT looks the same shifted.
        """
        if not self._replies and peek:
            self._read_unasked()
        if not self._replies:
            return
        code, msg = self._replies[0]
        self.close()
        if code == 421:
            raise SMTPServerDisconnected("server closed the connection: %d %r" % (code, msg))
        raise SMTPPipelineError(code, b"unexpected reply before the transaction: " + msg)

    def _read_unasked(self) -> None:
        """Parse whatever the server sent unasked, without waiting for more.

        Only real sockets are looked at (test doubles of the stdlib's own
        suite are not selectable); an end of file is left for the next read
        to report.
        """
        sock = self.sock
        if not isinstance(sock, _stdlib_socket.socket):
            return
        if ssl is not None and isinstance(sock, ssl.SSLSocket):
            # TLS records that carry no data (a TLS 1.3 session ticket) make
            # the socket readable too, so only decrypted bytes count.
            if not sock.pending() and not (_readable_now(sock) and self._read_nowait(sock)):
                return
        else:
            if _DONTWAIT and sock.gettimeout() is None:
                # A blocking socket: one non-blocking peek says it all.
                flags = _stdlib_socket.MSG_PEEK | _DONTWAIT
            elif _readable_now(sock):
                # A socket with a timeout is non-blocking underneath, and
                # CPython would wait out the timeout inside recv(): poll first.
                flags = _stdlib_socket.MSG_PEEK
            else:
                return
            try:
                if not sock.recv(1, flags):
                    return  # end of file: the next send or read reports it
            except OSError:  # nothing there (EAGAIN), or a broken socket that
                return  # the next send or read reports
        self._receive()

    def _read_nowait(self, sock: Any) -> bool:
        """TLS: decrypt what has arrived into the parser; True if a byte came."""
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            n = sock.recv_into(self._rview)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except OSError:
            return False
        finally:
            sock.settimeout(timeout)
        if not n:
            return False
        try:
            self._replies.extend(self._parser.feed(self._rview[:n]))
        except ReplyLimitError:
            self.close()
            raise SMTPReplyTooLong(500, "unasked reply breaks the reply limits") from None
        return True

    def send_message(
        self,
        msg: Any,
        from_addr: str | None = None,
        to_addrs: str | Sequence[str] | None = None,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> dict[str, tuple[int, bytes]]:
        """Send an ``email.message.Message`` via ``sendmail``.

        Sender and recipients come from the headers when not given (Sender or
        From; To, Bcc and Cc; the Resent-* set instead when there is exactly
        one, ValueError for more).  Bcc and Resent-Bcc are never transmitted.
        Non-ASCII addresses need the server's SMTPUTF8 and add ``SMTPUTF8`` and
        ``BODY=8BITMIME`` to the MAIL options.
        """
        self.ehlo_or_helo_if_needed()
        from_addr, to_list = _message.envelope(msg, from_addr, to_addrs)
        international = _message.needs_smtputf8(from_addr, to_list)
        if international:
            if not self.has_extn("smtputf8"):
                raise SMTPNotSupportedError(
                    "One or more source or delivery addresses require"
                    " internationalized email support, but the server"
                    " does not advertise the required SMTPUTF8 capability"
                )
            mail_options = (*mail_options, "SMTPUTF8", "BODY=8BITMIME")
        flat = _message.flatten(msg, utf8=international)
        return self.sendmail(from_addr, to_list, flat, mail_options, rcpt_options)

    def send_many(
        self,
        messages: Iterable[Any],
        *,
        window: int = 32,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> Any:
        """Send many messages on this connection; yield one result per message.

        Args:
            messages: an iterable of ``(from_addr, to_addrs, msg)`` tuples
                (``msg`` a str, bytes or ``email.message.Message``; with a
                Message, ``from_addr``/``to_addrs`` may be None to take them
                from its headers) or of Message objects alone.  It is consumed
                lazily, so a generator of a million messages keeps memory flat.
            window: most messages in flight at once with CHUNKING; more are
                written once half have been answered, at most 1 MiB of message
                data a write.  With DATA the body must wait for 354, so one
                envelope is in flight and each message costs one round trip.
                A larger window is faster and leaves more messages uncertain
                if the connection dies.
            mail_options, rcpt_options: as for ``sendmail``, for every message.

        Returns:
            An iterator of ``fastsmtplib.batch.SendResult``, in input order: every
            recipient's reply, accepted ones too, and a status (delivered,
            partial, refused, deferred, failed, uncertain, not_attempted).
            One message's failure does not stop the others; if the connection
            dies, messages whose final reply never came are ``uncertain`` and
            those not yet sent ``not_attempted``.  Nothing is retried here.
        """
        from .batch import send_many

        if window < 1:  # here, not in the generator: at the call, not at first next()
            raise ValueError("window must be at least 1")
        return send_many(self, messages, window, mail_options, rcpt_options)

    def quit(self) -> tuple[int, bytes]:
        """SMTP QUIT, then close; a later connect() needs a new EHLO."""
        res = self.docmd("quit")
        self.ehlo_resp = self.helo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False
        self.close()
        return res


class SMTP_SSL(SMTP):
    """``SMTP`` over implicit TLS (port 465), API-compatible with smtplib's.

    Without ``context`` a verifying context is created (certificate and host
    name are checked; the stdlib does not check).  ``keyfile``/``certfile`` are
    still accepted for a client certificate, with a DeprecationWarning.
    """

    default_port = SMTP_SSL_PORT

    def __init__(
        self,
        host: str = "",
        port: int = 0,
        local_hostname: str | None = None,
        keyfile: str | None = None,
        certfile: str | None = None,
        timeout: float | None = _stdlib_socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
        source_address: tuple[str, int] | None = None,
        context: Any = None,
    ) -> None:
        _check_tls_args(keyfile, certfile, context)
        self.keyfile = keyfile
        self.certfile = certfile
        if context is None:
            context = _default_tls_context(certfile, keyfile)
        self.context = context
        super().__init__(host, port, local_hostname, timeout, source_address)

    def _get_socket(self, host: str, port: int, timeout: Any) -> Any:
        if self.debuglevel > 0:
            self._print_debug("connect:", (host, port))
        sock = super()._get_socket(host, port, timeout)
        try:
            return self.context.wrap_socket(sock, server_hostname=self._host)
        except Exception:
            sock.close()
            raise
