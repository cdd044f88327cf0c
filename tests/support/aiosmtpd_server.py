"""In-process aiosmtpd servers that record what they received.

One class, :class:`AiosmtpdServer`, covers every variant the tests need::

    with AiosmtpdServer() as srv:                            # plain ESMTP
        with smtplib.SMTP(srv.host, srv.port) as c:
            c.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nhi\r\n")
    msg = srv.messages[0]          # ReceivedMessage: envelope + content bytes

    AiosmtpdServer(tls="starttls", require_starttls=True)   # STARTTLS (trustme cert)
    AiosmtpdServer(tls="implicit")                          # for SMTP_SSL
    AiosmtpdServer(auth={"user": "pass"})                   # AUTH PLAIN LOGIN CRAM-MD5
    AiosmtpdServer(auth={...}, auth_mechanisms=["LOGIN"])   # advertise only LOGIN
    AiosmtpdServer(smtputf8=True)                           # SMTPUTF8
    AiosmtpdServer(lmtp=True)                               # LMTP over TCP
    AiosmtpdServer(lmtp=True, unix_socket=True)             # LMTP on a Unix socket (srv.path)

Refusals: ``refuse_senders`` / ``refuse_recipients`` map an address to the
reply the server gives to its MAIL / RCPT (``"550 5.1.1 no such user"``,
``(550, "no such user")`` or just ``550``); ``data_reply`` replaces the reply
to the final dot; for LMTP, ``lmtp_data_replies`` maps a recipient to its own
reply after DATA (every other accepted recipient gets ``250``; RFC 2033 §4.2
one reply per accepted RCPT, in RCPT order).

Notes on aiosmtpd 1.4.6 (checked in its source):
- ``Controller(port=0)`` binds an ephemeral port but then tries to connect to
  port 0 for its start-up probe; the subclass below reads the bound port from
  ``controller.server.sockets`` first.
- ``Controller`` turns SMTPUTF8 on unless told otherwise; we pass it explicitly.
- RCPT parameters are always refused (555) by aiosmtpd, so ``rcpt_options``
  is always empty here; MAIL accepts only SIZE, BODY and SMTPUTF8.
- aiosmtpd's LMTP gives one reply after DATA; our handler gives one per
  recipient, as RFC 2033 requires.
- CRAM-MD5 is not built in: the auth handler provides ``auth_CRAM__MD5``
  (aiosmtpd picks ``auth_*`` methods off the handler; ``__`` becomes ``-``).
"""

from __future__ import annotations

import hmac
import os
import secrets
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Union

from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

from .certs import tls as _tls

__all__ = [
    "ReceivedMessage",
    "RecordingHandler",
    "AuthRecordingHandler",
    "AiosmtpdServer",
    "SERVER_HOSTNAME",
    "AUTH_USER",
    "AUTH_PASSWORD",
]

#: The name the servers give in their greeting and EHLO reply.
SERVER_HOSTNAME = "aiosmtpd.test"

#: The account the ``auth_server`` fixture accepts. ASCII: the stdlib
#: encodes AUTH secrets as ASCII.
AUTH_USER = "alice"
AUTH_PASSWORD = "s3cret-pw"

ReplySpec = Union[str, int, "tuple[int, str]"]


def _reply(spec: ReplySpec) -> str:
    if isinstance(spec, int):
        return f"{spec} refused by test server"
    if isinstance(spec, tuple):
        code, text = spec
        return f"{code} {text}"
    return spec


@dataclass
class ReceivedMessage:
    """One DATA transaction as the server saw it."""

    mail_from: str
    rcpt_tos: list  # accepted recipients, in RCPT order
    content: bytes  # after dot-unstuffing, CRLF line ends as sent
    mail_options: list  # upper-cased, as aiosmtpd stores them
    rcpt_options: list
    smtp_utf8: bool
    helo: Optional[str]  # the EHLO/HELO/LHLO argument
    tls: bool  # the session was encrypted (STARTTLS or implicit)
    auth_login: Optional[bytes]  # the authenticated user, if any
    reply: str  # what the server answered to the final dot

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


@dataclass
class RecordingHandler:
    """aiosmtpd handler recording every DATA transaction in ``messages``.

    It also records refused envelope commands in ``refused`` as
    ``("MAIL"|"RCPT", address, reply)``.
    """

    refuse_senders: Mapping[str, ReplySpec] = field(default_factory=dict)
    refuse_recipients: Mapping[str, ReplySpec] = field(default_factory=dict)
    data_reply: Optional[str] = None
    lmtp: bool = False
    lmtp_data_replies: Mapping[str, ReplySpec] = field(default_factory=dict)
    messages: list = field(default_factory=list)
    refused: list = field(default_factory=list)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address in self.refuse_senders:
            reply = _reply(self.refuse_senders[address])
            self.refused.append(("MAIL", address, reply))
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse_recipients:
            reply = _reply(self.refuse_recipients[address])
            self.refused.append(("RCPT", address, reply))
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.lmtp:
            # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
            replies = [
                _reply(self.lmtp_data_replies[r]) if r in self.lmtp_data_replies
                else f"250 2.0.0 <{r}> delivered"
                for r in envelope.rcpt_tos
            ]
            reply = "\r\n".join(replies)
        else:
            reply = self.data_reply or "250 2.0.0 OK queued"
        auth_data = session.auth_data
        content = envelope.original_content
        if isinstance(content, str):  # only with decode_data=True
            content = content.encode("utf-8", "surrogateescape")
        self.messages.append(
            ReceivedMessage(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                content=bytes(content),
                mail_options=list(envelope.mail_options),
                rcpt_options=list(envelope.rcpt_options),
                smtp_utf8=bool(envelope.smtp_utf8),
                helo=session.host_name,
                tls=server.transport.get_extra_info("ssl_object") is not None,
                auth_login=getattr(auth_data, "login", None) if session.authenticated else None,
                reply=reply,
            )
        )
        return reply


@dataclass
class AuthRecordingHandler(RecordingHandler):
    """A :class:`RecordingHandler` that also implements AUTH CRAM-MD5.

    ``users`` maps user name to password (both str). PLAIN and LOGIN use
    aiosmtpd's built-in mechanisms with :meth:`authenticator`.
    ``logins`` records ``(mechanism, login, success)``. (No attribute of a
    handler may start with ``auth_`` unless it is a mechanism: aiosmtpd
    advertises every such name.)
    """

    users: Mapping[str, str] = field(default_factory=dict)
    logins: list = field(default_factory=list)

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode("utf-8", "replace")
        ok = (
            login in self.users
            and hmac.compare_digest(self.users[login].encode("utf-8"), auth_data.password)
        )
        self.logins.append((mechanism, login, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def auth_CRAM__MD5(self, server, args):
        """RFC 2195: challenge ``<random@host>``, answer ``user hex(hmac_md5)``."""
        if len(args) != 1:  # CRAM-MD5 has no initial response
            await server.push("501 5.5.2 CRAM-MD5 takes no initial response")
            return AuthResult(success=False, handled=True)
        challenge = f"<{secrets.token_hex(8)}.{os.getpid()}@{SERVER_HOSTNAME}>".encode()
        answer = await server.challenge_auth(challenge)
        if answer is MISSING:  # '*' or bad base64: challenge_auth replied already
            return AuthResult(success=False, handled=True)
        user, _, digest = answer.decode("utf-8", "replace").rpartition(" ")
        password = self.users.get(user)
        ok = password is not None and hmac.compare_digest(
            hmac.new(password.encode("utf-8"), challenge, "md5").hexdigest(), digest.lower()
        )
        self.logins.append(("CRAM-MD5", user, ok))
        if not ok:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))


class _PortZeroMixin:
    """Learn the ephemeral port before aiosmtpd's start-up probe connects."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class _ServerClassMixin:
    smtp_class: type = SMTP

    def factory(self):
        return self.smtp_class(self.handler, **self.SMTP_kwargs)


class _InetController(_ServerClassMixin, _PortZeroMixin, Controller):
    pass


class _UnixController(_ServerClassMixin, UnixSocketController):
    pass


class AiosmtpdServer:
    """A threaded aiosmtpd server on 127.0.0.1 (port 0) or a Unix socket.

    Args:
        tls: None, ``"starttls"`` (offer STARTTLS) or ``"implicit"`` (TLS
            from the first byte, for SMTP_SSL). The certificate is the
            trustme localhost certificate from :mod:`tests.support.certs`.
        require_starttls: refuse other commands until STARTTLS (starttls only).
        auth: ``{user: password}``; enables AUTH PLAIN, LOGIN and CRAM-MD5
            without requiring TLS.
        auth_mechanisms: advertise only these (e.g. ``["LOGIN"]``).
        auth_require_tls: offer AUTH only after TLS (default: False when
            ``auth`` is given, else aiosmtpd's default True).
        smtputf8: advertise and accept SMTPUTF8.
        lmtp: speak LMTP (LHLO; one DATA reply per recipient).
        unix_socket: True for a socket in a fresh temp dir, or a path.
        handler: a ready handler (otherwise one is made from the refusal args).
        server_context: the server's SSLContext (default: the trustme
            localhost certificate), e.g. one for another host name.
        **smtp_kwargs: passed on to aiosmtpd's ``SMTP`` (e.g. data_size_limit).
    """

    def __init__(
        self,
        *,
        tls: Optional[str] = None,
        require_starttls: bool = False,
        auth: Optional[Mapping[str, str]] = None,
        auth_mechanisms: Optional[Iterable[str]] = None,
        auth_require_tls: Optional[bool] = None,
        smtputf8: bool = False,
        lmtp: bool = False,
        unix_socket: Union[bool, str, os.PathLike] = False,
        handler: Optional[RecordingHandler] = None,
        refuse_senders: Mapping[str, ReplySpec] = (),
        refuse_recipients: Mapping[str, ReplySpec] = (),
        data_reply: Optional[str] = None,
        lmtp_data_replies: Mapping[str, ReplySpec] = (),
        hostname: str = SERVER_HOSTNAME,
        server_context: Optional[ssl.SSLContext] = None,
        **smtp_kwargs: Any,
    ) -> None:
        if tls not in (None, "starttls", "implicit"):
            raise ValueError(f"tls must be None, 'starttls' or 'implicit', not {tls!r}")
        if handler is None:
            common = dict(
                refuse_senders=dict(refuse_senders),
                refuse_recipients=dict(refuse_recipients),
                data_reply=data_reply,
                lmtp=lmtp,
                lmtp_data_replies=dict(lmtp_data_replies),
            )
            handler = (
                AuthRecordingHandler(users=dict(auth), **common) if auth is not None
                else RecordingHandler(**common)
            )
        self.handler = handler
        self.tls = tls
        self.lmtp = lmtp
        kwargs: dict = dict(
            server_hostname=hostname,
            enable_SMTPUTF8=smtputf8,
            # With ``auth`` AUTH works in the clear; without, keep aiosmtpd's
            # default (AUTH offered only after TLS, and always failing).
            auth_require_tls=(auth is None) if auth_require_tls is None else auth_require_tls,
        )
        if auth is not None:
            kwargs["authenticator"] = handler.authenticator
            if auth_mechanisms is not None:
                wanted = {m.upper() for m in auth_mechanisms}
                kwargs["auth_exclude_mechanism"] = sorted(
                    {"PLAIN", "LOGIN", "CRAM-MD5"} - wanted
                )
        controller_kwargs: dict = {}
        server_context = server_context or (_tls().server_context() if tls else None)
        if tls == "starttls":
            kwargs["tls_context"] = server_context
            kwargs["require_starttls"] = require_starttls
        elif tls == "implicit":
            controller_kwargs["ssl_context"] = server_context
        kwargs.update(smtp_kwargs)

        self._tmpdir: Optional[str] = None
        self.host: Optional[str] = None
        self.port: Optional[int] = None
        self.path: Optional[str] = None
        if unix_socket:
            if unix_socket is True:
                # Short path: AF_UNIX paths are limited to ~107 bytes.
                self._tmpdir = tempfile.mkdtemp(prefix="fsl-aiosmtpd-")
                unix_socket = os.path.join(self._tmpdir, "lmtp.sock" if lmtp else "smtp.sock")
            self.path = os.fspath(unix_socket)
            ctl = _UnixController(handler, unix_socket=self.path, **controller_kwargs, **kwargs)
        else:
            self.host = "127.0.0.1"
            ctl = _InetController(handler, hostname=self.host, port=0, **controller_kwargs, **kwargs)
        ctl.smtp_class = LMTP if lmtp else SMTP
        self.controller = ctl
        self._started = False

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> "AiosmtpdServer":
        try:
            self.controller.start()
        except BaseException:
            try:
                self.controller.stop(no_assert=True)
            except RuntimeError:  # the loop never ran
                pass
            self.stop()
            raise
        self._started = True
        if self.path is None:
            self.port = self.controller.port
        return self

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.controller.stop()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> "AiosmtpdServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- conveniences -------------------------------------------------------
    @property
    def messages(self) -> list:
        """Every DATA transaction received, oldest first."""
        return self.handler.messages

    @property
    def address(self):
        """``(host, port)`` for TCP, the socket path for a Unix socket."""
        return self.path if self.path is not None else (self.host, self.port)

    def client_context(self):
        """An SSLContext that trusts this server's certificate (hostname checked)."""
        return _tls().client_context()

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> list:
        """Wait until at least ``n`` messages arrived (for clients that do not wait)."""
        import time

        deadline = time.monotonic() + timeout
        while len(self.messages) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.messages)} of {n} messages after {timeout}s")
            time.sleep(0.005)
        return self.messages

    def __repr__(self) -> str:
        where = self.path or f"{self.host}:{self.port}"
        kind = "LMTP" if self.lmtp else "SMTP"
        return f"<AiosmtpdServer {kind} {where} tls={self.tls}>"
