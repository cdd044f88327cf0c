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
import select
import socket as _stdlib_socket
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Sequence

import fastsmtplib as _pkg

from . import _message, _protocol
from ._wire import ReplyLimitError, ReplyParser, crlf_normalize, dot_stuff, dot_stuff_sized
from .errors import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPMessageTooLarge,
    SMTPNotSupportedError,
    SMTPPipelineError,
    SMTPRecipientsRefused,
    SMTPReplyTimeout,
    SMTPReplyTooLong,
    SMTPResponseException,
    SMTPSenderRefused,
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
        # send_many's lock-step path sets a dict here to learn what sendmail's
        # return value cannot carry: every RCPT reply, the final reply, and
        # whether the body went out (see batch._lockstep).
        self._record: dict[str, Any] | None = None
        self._size_cache: tuple[str | None, int | None] | None = None
        self._parser = ReplyParser()
        self._replies: collections.deque[tuple[int, bytes]] = collections.deque()
        self._rbuf = bytearray(_RECV_SIZE)
        self._rview = memoryview(self._rbuf)
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
        if self.sock:
            if isinstance(s, str):
                s = s.encode(self.command_encoding)
            sys.audit("smtplib.send", self, s)
            try:
                self.sock.sendall(s)
            except OSError:
                self.close()
                raise SMTPServerDisconnected("Server not connected") from None
        else:
            raise SMTPServerDisconnected("please run connect() first")

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
        """Read until at least one whole reply is parsed into ``self._replies``.

        The first ``recv`` waits as long as the socket's timeout allows; once
        part of a reply has arrived, the rest must arrive before the same
        timeout runs out counted from the start, so a server that drips bytes
        cannot hold the client for longer than one timeout.
        """
        sock = self.sock
        if sock is None:
            raise SMTPServerDisconnected("please run connect() first")
        recv_into = getattr(sock, "recv_into", None)
        view = self._rview
        started = time.monotonic()
        deadline = None
        saved_timeout: Any = False
        try:
            while not self._replies:
                try:
                    if recv_into is not None:
                        n = recv_into(view)
                        chunk: Any = view[:n]
                    else:  # file-like test doubles without recv_into
                        chunk = sock.recv(_RECV_SIZE)
                        n = len(chunk)
                except OSError as exc:
                    self.close()
                    if isinstance(exc, TimeoutError) or isinstance(exc, _stdlib_socket.timeout):
                        raise SMTPReplyTimeout("Connection unexpectedly closed: " + str(exc)) from exc
                    raise SMTPServerDisconnected("Connection unexpectedly closed: " + str(exc)) from exc
                if not n:
                    self.close()
                    raise SMTPServerDisconnected("Connection unexpectedly closed")
                if self.debuglevel > 0:
                    self._print_debug("reply:", repr(bytes(chunk)))
                try:
                    got = self._parser.feed(chunk)
                except ReplyLimitError as exc:
                    self.close()
                    if exc.kind == "line":
                        # Same code and text as the stdlib's over-long line error.
                        raise SMTPReplyTooLong(500, "Line too long.") from None
                    raise SMTPReplyTooLong(500, str(exc)) from None
                if got:
                    self._replies.extend(got)
                    break
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

    def _use_pipelining(self) -> bool:
        return bool(self.pipelining) and "pipelining" in self.esmtp_features

    def _use_chunking(self) -> bool:
        return bool(self.chunking) and "chunking" in self.esmtp_features

    def _prepare(
        self, from_addr: str, msg: str | bytes, mail_options: Sequence[str]
    ) -> tuple[bytes, bool, list[str]]:
        """Encode the message and build the MAIL options: (payload, bdat, options).

        Raises SMTPMessageTooLarge before anything is sent when the server's
        SIZE limit is exceeded, SMTPNotSupportedError for BODY=BINARYMIME
        without CHUNKING and BINARYMIME.
        """
        if isinstance(msg, str):
            msg = msg.encode("ascii")
        options = list(mail_options)
        body = [o.split("=", 1)[1].upper() for o in options if o.upper().startswith("BODY=")] if options else ()
        bdat = self._use_chunking()
        raw = False
        if body and body[-1] == "BINARYMIME":
            # RFC 3030 §3: BINARYMIME content may only go with BDAT, unaltered.
            if not (bdat and self.has_extn("binarymime")):
                raise SMTPNotSupportedError("BODY=BINARYMIME needs the server's CHUNKING and BINARYMIME")
            raw = True
        elif bdat and not body and self.has_extn("binarymime") and not msg.isascii():
            options.append("BODY=BINARYMIME")
            raw = True
        if raw:
            payload = bytes(msg)
            size = len(payload)
        elif bdat:
            payload = crlf_normalize(msg)
            size = len(payload)
        else:
            payload, size = dot_stuff_sized(msg)
        esmtp_opts: list[str] = []
        if self.does_esmtp:
            if self.has_extn("size"):
                limit = self._size_limit()
                if limit is not None and size > limit:
                    raise SMTPMessageTooLarge(size, limit, from_addr)
                esmtp_opts.append("size=%d" % size)
            esmtp_opts.extend(options)
        return payload, bdat, esmtp_opts

    def _size_limit(self) -> int | None:
        """The advertised SIZE limit, parsed again only when its text changes."""
        value = self.esmtp_features.get("size")
        cached = self._size_cache
        if cached is not None and cached[0] == value:  # also when edited by hand
            return cached[1]
        limit = _protocol.size_limit(self.esmtp_features)
        self._size_cache = (value, limit)
        return limit

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
        with CHUNKING the body goes as one ``BDAT n LAST`` (RFC 3030).
        """
        self.ehlo_or_helo_if_needed()
        if isinstance(to_addrs, str):
            to_addrs = [to_addrs]
        payload, bdat, esmtp_opts = self._prepare(from_addr, msg, mail_options)
        self._check_in_step()
        # Every command line is built (and checked for CR/LF) before any is sent.
        lines = [_protocol.command_line("mail", self._mail_args(from_addr, esmtp_opts))]
        piped = self._use_pipelining()
        with_options = rcpt_options and self.does_esmtp
        block = _protocol.rcpt_block(to_addrs) if piped and not with_options and len(to_addrs) > 1 else None
        if block is not None:
            lines.append(block)  # one string for all: only ever sent whole, pipelined
        elif with_options:
            lines += [_protocol.command_line("rcpt", self._rcpt_args(r, rcpt_options)) for r in to_addrs]
        else:
            # quoteaddr never returns CR or LF (it refuses them), so the lines
            # need no further check.
            quote = _protocol.quoteaddr
            lines += [f"rcpt TO:{quote(r)}\r\n" for r in to_addrs]
        if not bdat:
            lines.append("data\r\n")
        if piped:
            self.send("".join(lines))
        return self._run_transaction(from_addr, list(to_addrs), lines, payload, bdat, piped)

    def _check_in_step(self) -> None:
        """Refuse to start a transaction when a reply nobody asked for is waiting.

        A reply nobody asked for means the server's replies and our commands no
        longer line up; reading on would pair each command with the wrong reply
        (and, pipelined, send a whole envelope on a misread).  Replies already
        parsed are checked, then the socket is looked at without blocking for
        one that arrived since the last read.
        """
        if not self._replies:
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

    def _run_transaction(
        self,
        from_addr: str,
        to_addrs: list[str],
        lines: list[str],
        payload: bytes,
        bdat: bool,
        piped: bool,
    ) -> dict[str, tuple[int, bytes]]:
        """Read (and, lock-step, send) the envelope; then the body; apply stdlib's rules.

        ``lines`` are MAIL, the RCPTs and (not for BDAT) DATA.  When ``piped``
        they were already sent in one write, so a failure still has to consume
        every reply owed for them before the connection is in step again.
        """
        # MAIL, each RCPT, and DATA unless BDAT (``lines`` may hold the RCPTs
        # as one block when pipelined).
        owed = 1 + len(to_addrs) + (not bdat)
        replies = self._replies
        rec = self._record
        # Straight from the parsed-reply queue when nothing traces replies.
        direct = piped and self.debuglevel <= 0 and not log.isEnabledFor(_DEBUG)

        def reply_to(i: int) -> tuple[int, bytes]:
            nonlocal owed
            owed -= 1
            if direct and replies:
                return replies.popleft()
            if not piped:
                self.send(lines[i])
            return self.getreply()

        code, resp = reply_to(0)
        if code != 250:
            if code == 421:
                self.close()
            else:
                self._drain(owed, piped)
                self._rset()
            raise SMTPSenderRefused(code, resp, from_addr)
        senderrs: dict[str, tuple[int, bytes]] = {}
        for i, rcpt in enumerate(to_addrs, 1):
            if direct and replies:  # reply_to() inlined: 20 recipients, 20 calls
                owed -= 1
                code, resp = replies.popleft()
            else:
                code, resp = reply_to(i)
            if code != 250 and code != 251:
                senderrs[rcpt] = (code, resp)
                if code == 421:
                    self.close()
                    raise SMTPRecipientsRefused(senderrs)
            elif rec is not None:
                rec["rcpt"][rcpt] = (code, resp)
        accepted = len(to_addrs) - len(senderrs)
        if not accepted:
            self._drain(owed, piped)
            self._rset()
            raise SMTPRecipientsRefused(senderrs)
        if bdat:
            if rec is not None:
                rec["body_sent"] = True  # from here a lost connection leaves it uncertain
            self.send(b"BDAT %d LAST\r\n" % len(payload) + payload if payload else b"BDAT 0 LAST\r\n")
        else:
            code, resp = reply_to(-1)
            if self.debuglevel > 0:
                self._print_debug("data:", (code, resp))
            if code != 354:
                if code == 421:
                    self.close()
                else:
                    self._rset()
                raise SMTPDataError(code, resp)
            if rec is not None:
                rec["body_sent"] = True
            self.send(payload)
        return self._finish_message(senderrs, to_addrs)

    def _finish_message(self, senderrs: dict[str, tuple[int, bytes]], to_addrs: list[str]) -> dict[str, tuple[int, bytes]]:
        """Read the reply to the message's end; LMTP overrides (RFC 2033 §4.2)."""
        code, resp = self.getreply()
        if self._record is not None:
            self._record["final"] = (code, resp)
        if self.debuglevel > 0:
            self._print_debug("data:", (code, resp))
        if code != 250:
            if code == 421:
                self.close()
            else:
                self._rset()
            raise SMTPDataError(code, resp)
        return senderrs

    def _drain(self, owed: int, piped: bool) -> None:
        """Consume the replies still owed for a pipelined group after a failure.

        If DATA was among them and the server said 354 anyway, the message is
        ended with a lone ``.`` (RFC 2920 §3.1: the body is never sent when the
        envelope failed) and that reply is consumed too.
        """
        if not piped:
            return
        try:
            for _ in range(owed):
                code, _msg = self.getreply()
                if code == 421:
                    self.close()
                    return
            if owed and code == 354:
                self.send(b".\r\n")
                self.getreply()
        except SMTPServerDisconnected:
            pass

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
