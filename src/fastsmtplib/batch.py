"""``send_many``: stream many messages over one connection, one result per message.

With PIPELINING (RFC 2920) each write carries the previous message's body and
the next message's whole envelope (MAIL, RCPTs, DATA), so a message costs one
round trip instead of stdlib's four.  With CHUNKING (RFC 3030) nothing waits for
a 354: up to ``window`` messages (envelope, ``BDAT n LAST`` and body) are in
flight at once, and more are written once half of them are answered, so each
write and each read carries many messages.  Without PIPELINING the messages go
one by one, lock-step.  A caller that stops iterating while messages are in
flight gets the connection closed: their replies can no longer be paired.

Every message ends in exactly one reported state (``SendResult.status``):

``delivered``      every recipient accepted the message;
``partial``        delivered, but some recipients were refused;
``refused``        not delivered, the server said 5xx (permanent);
``deferred``       not delivered, the server said 4xx (try later);
``failed``         not sent: the client refused it (bad input, SIZE, ...);
``uncertain``      the body was sent but the connection died before its
                   reply: it may or may not have been delivered, so it must
                   not be resent blindly (that could duplicate it);
``not_attempted``  the connection died before the body was sent: nothing was
                   delivered and it is safe to send again.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Iterable, Iterator, Sequence

from . import _message, _protocol
from ._wire import crlf_normalize, dot_stuff_sized
from .errors import (
    SMTPDataError,
    SMTPException,
    SMTPMessageTooLarge,
    SMTPRecipientsRefused,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)

__all__ = ["SendResult", "send_many"]

_log = logging.getLogger("fastsmtplib")
_DEBUG = logging.DEBUG

DELIVERED = "delivered"
PARTIAL = "partial"
REFUSED = "refused"
DEFERRED = "deferred"
FAILED = "failed"
UNCERTAIN = "uncertain"
NOT_ATTEMPTED = "not_attempted"


class SendResult:
    """The outcome of one message of ``send_many``.

    Attributes:
        index: position of the message in the input.
        from_addr, to_addrs: the envelope used.
        status: one of the states listed in the module docstring.
        recipients: every recipient's reply: the RCPT reply, or for LMTP the
            reply after the data; refused recipients carry their refusal.
        reply: the server's final reply to the message, if one came.
        exception: for every status but delivered/partial, the exception
            ``sendmail`` would have raised (or the client-side error).
    """

    # A plain class with slots, not a dataclass: one is made per message, and
    # at tens of thousands of messages a second its construction cost shows.
    __slots__ = ("index", "from_addr", "to_addrs", "status", "recipients", "reply", "exception")

    def __init__(
        self,
        index: int,
        from_addr: str = "",
        to_addrs: list[str] | None = None,
        status: str = "",
        recipients: dict[str, tuple[int, bytes]] | None = None,
        reply: tuple[int, bytes] | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self.index = index
        self.from_addr = from_addr
        self.to_addrs = [] if to_addrs is None else to_addrs
        self.status = status
        self.recipients = {} if recipients is None else recipients
        self.reply = reply
        self.exception = exception

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"SendResult({inner})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SendResult):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    @property
    def ok(self) -> bool:
        """True when the message was delivered to at least one recipient."""
        return self.status in (DELIVERED, PARTIAL)

    @property
    def refused(self) -> dict[str, tuple[int, bytes]]:
        """Refused recipients, as ``sendmail`` returns them."""
        return {r: rep for r, rep in self.recipients.items() if not 200 <= rep[0] <= 299}


def _by_code(code: int) -> str:
    return DEFERRED if 400 <= code <= 499 else REFUSED


def _refusal_status(codes: Iterable[int]) -> str:
    """Several recipients refused: deferred if any refusal was temporary (4xx)."""
    return DEFERRED if any(400 <= c <= 499 for c in codes) else REFUSED


# What a reply answers, in a flight's ``tags``; any other tag is a recipient
# (a str), so these are ints: a recipient named "data" cannot pass for one.
_RSET, _MAIL, _DATA, _FINAL, _DOT = range(5)

#: Most payload bytes gathered into one write (one message always goes).
_WRITE_BUDGET = 1 << 20


class _Flight:
    """One message whose commands were written and whose replies are owed."""

    __slots__ = ("result", "payload", "tags", "mail", "accepted", "body_sent", "final", "dot_only")

    def __init__(self, result: SendResult, payload: bytes) -> None:
        self.result = result
        self.payload = payload
        self.tags: collections.deque[Any] = collections.deque()
        self.mail: tuple[int, bytes] | None = None
        self.accepted: list[str] = []
        self.body_sent = False
        self.final: list[tuple[int, bytes]] = []
        self.dot_only = False  # the envelope failed, only "." ends the DATA


def _unpack(item: Any) -> tuple[Any, Any, Any]:
    if isinstance(item, tuple) and len(item) == 3:
        return item
    if hasattr(item, "get_all"):  # an email Message alone: envelope from headers
        return None, None, item
    raise TypeError("send_many() wants (from_addr, to_addrs, msg) tuples or Message objects, got %r" % type(item))


def send_many(
    conn: Any,
    messages: Iterable[Any],
    window: int = 32,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
) -> Iterator[SendResult]:
    """Send ``messages`` on ``conn``; yield one ``SendResult`` per message, in order.

    See ``SMTP.send_many`` for the arguments.
    """
    if window < 1:
        raise ValueError("window must be at least 1")
    conn.ehlo_or_helo_if_needed()
    conn._check_in_step()  # an unasked reply would shift every pairing below
    if not conn._use_pipelining():
        yield from _lockstep(conn, messages, mail_options, rcpt_options)
        return
    yield from _Pipeline(conn, window, mail_options, rcpt_options).run(messages)


def _prepare(conn: Any, item: Any, mail_options: Sequence[str], rcpt_options: Sequence[str], result: SendResult) -> tuple[bytes, bytes]:
    """Payload and MAIL+RCPT lines of one message; raises for what must not be sent."""
    from_addr, to_addrs, msg = _unpack(item)
    options = tuple(mail_options)
    if hasattr(msg, "get_all"):
        from_addr, to_list = _message.envelope(msg, from_addr, to_addrs)
        utf8 = _message.needs_smtputf8(from_addr, to_list)
        if utf8:
            options += ("SMTPUTF8", "BODY=8BITMIME")
        msg = _message.flatten(msg, utf8=utf8)
    else:
        to_list = [to_addrs] if isinstance(to_addrs, str) else list(to_addrs)
    result.from_addr, result.to_addrs = from_addr, to_list
    if not to_list:
        raise ValueError("message has no recipients")
    payload, bdat, esmtp_opts = conn._prepare(from_addr, msg, options)
    encoding = conn.command_encoding
    conn.command_encoding = "ascii"
    try:
        lines = [_protocol.command_line("mail", conn._mail_args(from_addr, esmtp_opts))]
        lines += [_protocol.command_line("rcpt", conn._rcpt_args(r, rcpt_options)) for r in to_list]
        wire = b"".join([line.encode(conn.command_encoding) for line in lines])
    finally:
        conn.command_encoding = encoding
    return payload, wire


class _FastEnvelopes:
    """The common case of ``_prepare`` without its per-message generality.

    For a str or bytes message whose addresses are all plain ``dot-atom@domain``
    (see ``_protocol._PLAIN_ADDR``) and run-wide options that hold no BODY= or
    SMTPUTF8, the MAIL and RCPT lines are formatted straight into bytes and the
    features they depend on (SIZE, its limit, CHUNKING) are looked up once per
    run.  ``encode`` returns None for anything else, and the caller takes the
    general path, so both produce the same bytes (tests/unit/test_batch_encode.py).
    """

    def __init__(self, conn: Any, mail_options: Sequence[str], rcpt_options: Sequence[str]) -> None:
        self.usable = False
        esmtp = conn.does_esmtp
        opts = " ".join(mail_options) if esmtp and mail_options else ""
        ropts = " ".join(rcpt_options) if esmtp and rcpt_options else ""
        upper = opts.upper()
        if "BODY=" in upper or "SMTPUTF8" in upper:
            return  # these change the payload or the encoding: general path
        if not (opts + ropts).isascii() or "\r" in opts + ropts or "\n" in opts + ropts:
            return  # the general path refuses each message (UnicodeError, ValueError)
        self.mail_suffix = ((" " + opts) if opts else "").encode("ascii") + b"\r\n"
        self.rcpt_suffix = ((" " + ropts) if ropts else "").encode("ascii") + b"\r\n"
        self.bdat = conn._use_chunking()
        if self.bdat and conn.has_extn("binarymime"):
            return  # 8-bit bodies would need BODY=BINARYMIME: general path
        self.size = esmtp and conn.has_extn("size")
        self.limit = conn._size_limit() if self.size else None
        self.plain = _protocol._PLAIN_ADDR.fullmatch
        self.senders: dict[str, bytes] = {}
        self.usable = True

    def encode(self, from_addr: Any, to_addrs: Any, msg: Any) -> tuple[bytes, bytes, list[str]] | None:
        """``(payload, MAIL+RCPT lines, recipients)``, or None: use the general path."""
        if isinstance(msg, str):
            if not msg.isascii():
                return None  # the general path raises the stdlib's UnicodeEncodeError
            msg = msg.encode("ascii")
        elif not isinstance(msg, (bytes, bytearray)):
            return None
        to_list = [to_addrs] if isinstance(to_addrs, str) else list(to_addrs)
        plain = self.plain
        if not isinstance(from_addr, str) or not to_list:
            return None
        head = self.senders.get(from_addr)
        if head is None:  # bulk mail has few senders: their MAIL head is kept
            sender = plain(from_addr)
            if sender is None:
                return None
            head = b"mail FROM:<%s>" % sender.group(1).encode("ascii")
            if len(self.senders) < 64:
                self.senders[from_addr] = head
        suffix = self.rcpt_suffix
        lines = [b""]
        for rcpt in to_list:
            m = plain(rcpt) if isinstance(rcpt, str) else None
            if m is None:
                return None
            lines.append(b"rcpt TO:<%s>%s" % (m.group(1).encode("ascii"), suffix))
        if self.bdat:
            payload = crlf_normalize(msg)
            size = len(payload)
        else:
            payload, size = dot_stuff_sized(msg)
        limit = self.limit
        if limit is not None and size > limit:
            return None  # the general path raises SMTPMessageTooLarge
        if self.size:
            head += b" size=%d" % size
        lines[0] = head + self.mail_suffix
        return payload, b"".join(lines), to_list


def _lockstep(conn: Any, messages: Iterable[Any], mail_options: Sequence[str], rcpt_options: Sequence[str]) -> Iterator[SendResult]:
    """No PIPELINING: one ``sendmail`` per message, outcomes classified.

    ``conn._record`` collects what sendmail's return value cannot carry: the
    accepted recipients' replies, the final reply, and whether the body went
    out (which decides uncertain vs not attempted when the connection dies).
    """
    source = enumerate(messages)
    for index, item in source:
        result = SendResult(index)
        record: dict[str, Any] = {"rcpt": {}, "final": None, "body_sent": False}
        try:
            from_addr, to_addrs, msg = _unpack(item)
            if hasattr(msg, "get_all"):
                from_addr, to_list = _message.envelope(msg, from_addr, to_addrs)
            else:
                to_list = [to_addrs] if isinstance(to_addrs, str) else list(to_addrs)
            result.from_addr, result.to_addrs = from_addr, to_list
            if not to_list:
                # As on the pipelined path: refused here, nothing sent.
                raise ValueError("message has no recipients")
            conn._record = record
            try:
                if hasattr(msg, "get_all"):
                    refused = conn.send_message(msg, from_addr, to_list, mail_options, rcpt_options)
                else:
                    refused = conn.sendmail(from_addr, to_list, msg, mail_options, rcpt_options)
            finally:
                conn._record = None
            result.recipients = {r: refused.get(r) or record["rcpt"].get(r, (250, b"")) for r in to_list}
            _lmtp_replies(conn, result)
            result.reply = record["final"]
            result.status = PARTIAL if refused else DELIVERED
        except SMTPMessageTooLarge as exc:
            result.status, result.exception = FAILED, exc  # the client refused it
        except SMTPSenderRefused as exc:
            result.status, result.exception = _by_code(exc.smtp_code), exc
        except SMTPRecipientsRefused as exc:
            result.recipients = dict(exc.recipients)
            result.status = _refusal_status(c for c, _ in exc.recipients.values())
            result.exception = exc
        except SMTPDataError as exc:
            result.recipients = dict(record["rcpt"])
            result.reply = (exc.smtp_code, exc.smtp_error)
            result.status, result.exception = _by_code(exc.smtp_code), exc
            # LMTP: the per-recipient replies after the data (RFC 2033 §4.2).
            after_data = getattr(exc, "recipients", None)
            if after_data:
                result.recipients.update(after_data)
                result.status = _refusal_status(c for c, _ in after_data.values())
        except SMTPServerDisconnected as exc:
            # The body may have reached the server: only then is it uncertain.
            result.status = UNCERTAIN if record["body_sent"] else NOT_ATTEMPTED
            result.exception = exc
            yield result
            yield from _not_attempted(source, exc)
            return
        except (ValueError, TypeError, UnicodeError, SMTPException) as exc:
            result.status, result.exception = FAILED, exc
        yield result
        if conn.sock is None:
            # A 421 (RFC 5321 §3.8) closed the connection: nothing more can go.
            lost = SMTPServerDisconnected("connection closed by the server (421)")
            yield from _not_attempted(source, lost)
            return


def _lmtp_replies(conn: Any, result: SendResult) -> None:
    """LMTP: each recipient's outcome is its reply after the data (RFC 2033 §4.2)."""
    for rcpt, reply in getattr(conn, "data_replies", ()) or ():
        result.recipients[rcpt] = reply


def _not_attempted(source: Iterator[tuple[int, Any]], exc: BaseException) -> Iterator[SendResult]:
    for index, item in source:
        result = SendResult(index, status=NOT_ATTEMPTED, exception=exc)
        try:
            result.from_addr, to, _msg = _unpack(item)
            if to is not None:
                result.to_addrs = [to] if isinstance(to, str) else list(to)
        except TypeError:
            pass
        yield result


class _Pipeline:
    """The pipelined engine: what is written, what replies are owed, in order.

    Each message becomes a ``_Flight`` whose ``tags`` name the replies it is
    owed, in the order the server will send them (RFC 2920 §3.2: replies come
    in command order).  The loop writes as much as the protocol allows, then
    reads until the oldest flight is finished or waits for its body.
    """

    def __init__(self, conn: Any, window: int, mail_options: Sequence[str], rcpt_options: Sequence[str]) -> None:
        self.conn = conn
        self.bdat = conn._use_chunking()
        self.lmtp = conn.ehlo_msg == "lhlo"
        # With DATA the body waits for 354, so one envelope is in flight at a
        # time; with BDAT nothing waits and ``window`` messages may be.
        self.window = window if self.bdat else 1
        self.low_water = self.window // 2 if self.bdat else 0
        self.mail_options = mail_options
        self.rcpt_options = rcpt_options
        self.fast = _FastEnvelopes(conn, mail_options, rcpt_options)
        self.flights: collections.deque[_Flight] = collections.deque()
        self.order: collections.deque[SendResult] = collections.deque()
        # Envelopes written whose message does not yet let the next one go:
        # with BDAT every unfinished flight; with DATA one still owed its body.
        self.blocking = 0
        self.need_rset = False
        self.body_next: _Flight | None = None  # DATA: 354 came, body goes next write

    def run(self, messages: Iterable[Any]) -> Iterator[SendResult]:
        try:
            yield from self._run(messages)
        except GeneratorExit:
            # The caller stopped iterating.  Messages already written have
            # replies owed that nobody will read: the connection cannot be
            # used in step again, so close it rather than mis-pair replies.
            if self.flights or self.body_next is not None:
                self.conn.close()
            else:
                self._close_transaction()
            raise

    def _run(self, messages: Iterable[Any]) -> Iterator[SendResult]:
        source = enumerate(messages)
        exhausted = False
        conn = self.conn
        order = self.order
        fast = self.fast.encode if self.fast.usable else None
        while True:
            parts: list[bytes] = []
            flight = self.body_next
            if flight is not None:
                self.body_next = None
                parts.append(flight.payload)
                flight.payload = b""  # sent: not kept while the reply is awaited
                flight.body_sent = True
                self.blocking -= 1
            # With BDAT, refill only once half the window has drained, so that
            # each write carries many messages and each read many replies.
            if self.blocking <= self.low_water:
                room = self.window
            else:
                room = 0
            # Bytes bound too: a window of large messages must not become one
            # huge write (and copy); the first message always goes.
            budget = _WRITE_BUDGET
            while not exhausted and self.blocking < room and budget > 0:
                try:
                    index, item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                result = SendResult(index)
                order.append(result)
                try:
                    encoded = None
                    if fast is not None and type(item) is tuple and len(item) == 3:
                        encoded = fast(*item)
                    if encoded is None:
                        payload, wire = _prepare(conn, item, self.mail_options, self.rcpt_options, result)
                    else:
                        payload, wire, result.to_addrs = encoded
                        result.from_addr = item[0]
                except (ValueError, TypeError, UnicodeError, SMTPException) as exc:
                    result.status, result.exception = FAILED, exc
                    continue
                self._queue(result, payload, wire, parts)
                budget -= len(payload)
            while order and order[0].status:
                yield order.popleft()
            if not self.flights:
                if exhausted:
                    self._close_transaction()
                    return
                continue
            try:
                if parts:
                    conn.send(b"".join(parts))
                self._read_head()
            except SMTPServerDisconnected as exc:
                self._connection_lost(exc)
                while order:
                    yield order.popleft()
                yield from _not_attempted(source, exc)
                return

    def _close_transaction(self) -> None:
        """After the last message: RSET if a failed one left the server in a transaction.

        Otherwise the connection is handed back mid-transaction and the
        caller's next MAIL gets "503 nested MAIL command".  Every result has
        already been yielded, so a failure here is not any message's.
        """
        if not self.need_rset:
            return
        self.need_rset = False
        try:
            self.conn._rset()
        except SMTPServerDisconnected:
            pass

    def _queue(self, result: SendResult, payload: bytes, wire: bytes, parts: list[bytes]) -> None:
        flight = _Flight(result, payload)
        # After a failed transaction the server may still be inside it; with
        # BDAT, an earlier in-flight message may yet fail, so always reset.
        rset = self.need_rset or (self.bdat and self.flights)
        if rset:
            parts.append(b"rset\r\n")
            self.need_rset = False
        parts.append(wire)
        if self.bdat:
            parts.append(b"BDAT %d LAST\r\n" % len(payload))
            parts.append(payload)
            flight.payload = b""  # sent now: in-flight messages hold no payload
            flight.body_sent = True
            last = _FINAL
        else:
            parts.append(b"data\r\n")
            last = _DATA
        if rset:
            flight.tags.extend((_RSET, _MAIL, *result.to_addrs, last))
        else:
            flight.tags.extend((_MAIL, *result.to_addrs, last))
        self.flights.append(flight)
        self.blocking += 1

    def _done_head(self) -> None:
        """The oldest flight is finished: it no longer holds the window."""
        flight = self.flights.popleft()
        if self.bdat or not flight.body_sent:
            self.blocking -= 1

    def _read_head(self) -> None:
        """Read replies until the oldest flight is finished or awaits its body."""
        conn = self.conn
        replies = conn._replies
        # Straight from the parsed-reply queue unless replies are being traced.
        direct = conn.debuglevel <= 0 and not _log.isEnabledFor(_DEBUG)
        flight = self.flights[0]
        tags = flight.tags
        result = flight.result
        while tags:
            tag = tags.popleft()
            if direct:
                if not replies:
                    conn._receive()
                code, msg = replies.popleft()
            else:
                code, msg = conn.getreply()
            if code == 421 and tag != _RSET:
                # RFC 5321 §3.8: the server is closing the channel.
                self._finish_failed(flight, code, msg, tag)
                conn.close()
                raise SMTPServerDisconnected("server closed the connection: 421 %r" % (msg,))
            if tag == _RSET:
                continue
            if tag == _MAIL:
                flight.mail = (code, msg)
            elif tag == _DATA:
                if code == 354 and flight.mail[0] == 250 and flight.accepted:  # type: ignore[index]
                    tags.append(_FINAL)
                    self.body_next = flight
                    return
                if code == 354:
                    # RFC 2920 §3.1: envelope failed yet DATA accepted: end the
                    # data at once, never send the body.
                    flight.payload = b".\r\n"
                    flight.dot_only = True
                    tags.append(_DOT)
                    self.body_next = flight
                    return
                self.need_rset = True
                if flight.mail[0] != 250 or not flight.accepted:  # type: ignore[index]
                    # The envelope failed first: DATA's refusal (503/554) is
                    # only its echo, so report what sendmail would raise.
                    self._finish_envelope_failure(flight)
                else:
                    self._finish_failed(flight, code, msg, tag)
                self._done_head()
                return
            elif tag == _DOT:
                # The lone dot ended the transaction (RFC 5321 §4.1.1.4): no RSET owed.
                self._finish_envelope_failure(flight)
                self._done_head()
                return
            elif tag == _FINAL:
                if self.lmtp and not flight.final and len(flight.accepted) > 1:
                    # RFC 2033 §4.2: one reply per accepted recipient.
                    tags.extend([_FINAL] * (len(flight.accepted) - 1))
                flight.final.append((code, msg))
            else:  # a recipient
                result.recipients[tag] = (code, msg)
                if code == 250 or code == 251:
                    flight.accepted.append(tag)
        self._done_head()
        self._finish(flight)

    def _finish(self, flight: _Flight) -> None:
        result = flight.result
        if flight.mail is None or flight.mail[0] != 250 or not flight.accepted:
            self.need_rset = True
            self._finish_envelope_failure(flight)
            return
        if self.lmtp:
            delivered = 0
            for rcpt, reply in zip(flight.accepted, flight.final):
                result.recipients[rcpt] = reply
                delivered += reply[0] == 250
            result.reply = flight.final[-1] if flight.final else None
            if not delivered:
                # As for refused recipients at RCPT time: one 4xx means a
                # retry may succeed for someone, so the message is deferred.
                result.status = _refusal_status(c for c, _ in flight.final)
                result.exception = SMTPDataError(*flight.final[-1])
                return
        else:
            result.reply = flight.final[0]
            code, msg = result.reply
            if code != 250:
                # After DATA the end of data closed the transaction whatever the
                # reply (RFC 5321 §4.1.1.4); a refused BDAT may leave it open
                # (RFC 3030 §2 leaves the state to the server), so reset then.
                self.need_rset = self.need_rset or self.bdat
                result.status = _by_code(code)
                result.exception = SMTPDataError(code, msg)
                return
        if not self.lmtp and len(flight.accepted) == len(result.to_addrs):
            result.status = DELIVERED  # the common case, without scanning the replies
            return
        refused = any(not 200 <= c <= 299 for c, _ in result.recipients.values())
        result.status = PARTIAL if refused else DELIVERED

    def _finish_envelope_failure(self, flight: _Flight) -> None:
        result = flight.result
        if flight.mail is not None and flight.mail[0] != 250:
            code, msg = flight.mail
            result.status = _by_code(code)
            result.exception = SMTPSenderRefused(code, msg, result.from_addr)
            return
        refused = result.refused
        result.status = _refusal_status(c for c, _ in refused.values())
        result.exception = SMTPRecipientsRefused(refused)

    def _finish_failed(self, flight: _Flight, code: int, msg: bytes, tag: str) -> None:
        result = flight.result
        if tag == _MAIL:
            flight.mail = (code, msg)
            self._finish_envelope_failure(flight)
        elif tag in (_DATA, _FINAL, _DOT):
            if tag == _FINAL:
                flight.final.append((code, msg))
            result.reply = (code, msg)
            result.status = _by_code(code)
            result.exception = SMTPDataError(code, msg)
        else:
            result.recipients[tag] = (code, msg)
            result.status = _by_code(code)
            result.exception = SMTPRecipientsRefused(result.refused)

    def _connection_lost(self, exc: BaseException) -> None:
        """Report every message still in flight: uncertain if its body went out."""
        for flight in self.flights:
            result = flight.result
            if result.status:
                continue
            result.exception = exc
            result.status = UNCERTAIN if flight.body_sent and not flight.dot_only else NOT_ATTEMPTED
        self.flights.clear()
        self.blocking = 0
        self.body_next = None
