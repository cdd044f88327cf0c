"""The sans-IO transaction engine: one connection's mail transactions, no sockets.

In: messages (``submit``) and the bytes the server sent (``receive``).  Out:
the bytes to write (``bytes_to_send``) and one ``SendResult`` per message.
No socket, no clock, no thread: ``SMTP.sendmail``, ``send_many`` (DATA,
BDAT and lock-step), ``LMTP`` and the pool are drivers that move bytes.

The rules, each next to the code that obeys it:

1. Replies come in command order (RFC 2920 §3.2); each is matched to the
   oldest command still owed one.  Every reply is checked against what its
   command may return (RFC 5321 §4.3.2, RFC 3030 §2, RFC 2033 §4.2): the
   positive codes in ``_POSITIVE``, or any 4yz/5yz (RSET too: RFC 5321
   §4.1.1.5 says it answers 250, but aiosmtpd requiring STARTTLS says 530).  With
   ENHANCEDSTATUSCODES (RFC 2034, RFC 3463) a 2yz to MAIL/RCPT carries
   subject 1 (addressing, ``2.1.x``) and one to DATA's end or BDAT does not,
   so a run of 250s can be told apart (RSET's is not checked: real servers
   differ).
2. A malformed reply, a code the command cannot return, or a reply nobody is
   owed means the stream is out of step: the engine stops writing, and every
   message not yet reported is reported by what is known: ``uncertain`` if
   its body went out, ``not_attempted`` if not; the exception is
   ``SMTPPipelineError``.  The driver must close the connection.
3. A finished message is reported only once the stream is known to have been
   in step up to its last reply (a "confirmation"): a 354 matched to DATA,
   two adjacent 2yz replies whose enhanced classes differ and match their
   commands (this proves the stream through the first of the two), or
   nothing more owed when a read ends.  A single dropped or
   added reply shifts every later pairing and is caught before any message
   paired through it is reported.  A reply timeout confirms nothing (a
   dropped reply looks like one): held messages are then reported as in 2.
4. PIPELINING (RFC 2920 §3.1): MAIL, every RCPT and DATA go in one write; the
   body waits for 354; the next envelope goes in the same write as the body.
   If DATA is answered 354 although the envelope failed, only ``.`` is sent.
5. CHUNKING (RFC 3030): MAIL, RCPTs, ``BDAT n LAST`` and the body in one
   write, nothing waits.  Several messages are in flight only when the server
   offers ENHANCEDSTATUSCODES (rule 1 needs it to check a run of 250s);
   otherwise one at a time.  A BDAT answered 250 for an envelope that failed
   is impossible from a server in step: rule 2.
6. RSET (RFC 5321 §4.1.1.5) follows a failed transaction that may have left
   the server inside it (a refused envelope or DATA, a refused BDAT; not a
   lone "." nor a refused end of data, which end it: §4.1.1.4), and precedes
   every MAIL written behind a BDAT message still unanswered: that one may
   yet fail and leave its transaction open, and a server that then refuses
   the next MAIL ("503 nested") may still take its RCPTs and BDAT into the
   old transaction.  Never after a transaction known to have succeeded.
7. LMTP (RFC 2033 §4.2): after the data, one reply per accepted recipient.
8. 421 (RFC 5321 §3.8): the server is closing.  The message it answers fails
   with it; the rest are reported by what is known.
9. Without PIPELINING (or with it turned off) every command waits for its
   reply (lock-step), with the stdlib's rules: MAIL refused -> RSET; no
   recipient accepted -> RSET; RCPT answered 421 -> stop.
"""

from __future__ import annotations

import collections
import enum
from typing import Any, Iterable, Protocol, Sequence

from ._envelope import Encoder, Prepared
from ._protocol import Capabilities
from ._wire import ReplyLimitError, ReplyParser
from .errors import (
    SMTPDataError,
    SMTPPipelineError,
    SMTPRecipientsRefused,
    SMTPReplyTooLong,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)

__all__ = ["Engine", "SendResult", "Status", "Connection", "RFC5321_TIMEOUTS"]


class Status(str, enum.Enum):
    """The state a message ends in; equal to its plain string value."""

    DELIVERED = "delivered"  # every recipient accepted the message
    PARTIAL = "partial"  # delivered, some recipients refused
    REFUSED = "refused"  # the server said 5yz
    DEFERRED = "deferred"  # the server said 4yz
    FAILED = "failed"  # the client refused it (bad input, SIZE, ...)
    UNCERTAIN = "uncertain"  # the body went out, no trustworthy reply came
    NOT_ATTEMPTED = "not_attempted"  # nothing delivered; safe to send again

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


DELIVERED, PARTIAL, REFUSED, DEFERRED, FAILED, UNCERTAIN, NOT_ATTEMPTED = Status


class SendResult:
    """The outcome of one message.

    Attributes:
        index: the caller's tag (``send_many``: position in the input).
        from_addr, to_addrs: the envelope used.
        status: a ``Status`` ("" until the message is finished).
        recipients: every recipient's reply: the RCPT reply, or for LMTP the
            reply after the data; empty when the pairing was not trustworthy.
        reply: the server's final reply to the message, if one came.
        exception: for every status but delivered/partial, the exception
            ``sendmail`` raises for it (created, never raised: no traceback).
        attempts: how many times the message was handed to a server.
        data_replies: LMTP: ``(recipient, reply)`` after the data, one per
            accepted recipient, in RCPT order (RFC 2033 §4.2).
        sent_at, done_at: ``time.monotonic()`` when the message's first byte
            was written and when its outcome was known, set by ``SMTPPool``
            (None elsewhere); their difference is the latency a load
            generator reports.  Not compared by ``==``.
    """

    # Slots, not a dataclass: one is made per message at tens of thousands a second.
    __slots__ = ("index", "from_addr", "to_addrs", "status", "recipients", "reply", "exception", "attempts",
                 "data_replies", "sent_at", "done_at")
    _COMPARED = __slots__[:-2]

    def __init__(
        self,
        index: Any,
        from_addr: str = "",
        to_addrs: list[str] | None = None,
        status: str = "",
        recipients: dict[str, tuple[int, bytes]] | None = None,
        reply: tuple[int, bytes] | None = None,
        exception: BaseException | None = None,
        attempts: int = 0,
        data_replies: list[tuple[str, tuple[int, bytes]]] | None = None,
    ) -> None:
        self.index = index
        self.from_addr = from_addr
        self.to_addrs = [] if to_addrs is None else to_addrs
        self.status = status
        self.recipients = {} if recipients is None else recipients
        self.reply = reply
        self.exception = exception
        self.attempts = attempts
        self.data_replies = [] if data_replies is None else data_replies
        self.sent_at: float | None = None
        self.done_at: float | None = None

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._COMPARED)

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
        return {r: rep for r, rep in self.recipients.items() if rep[0] != 250 and rep[0] != 251}


class Connection(Protocol):
    """What a driver needs from a connection to run the engine over it.

    ``SMTP`` (and so ``LMTP``, ``SMTP_SSL``) implements it; its ``_io_step``
    is the blocking driver: ``bytes_to_send`` -> ``_write``, then, while
    replies are owed, ``_read_replies`` -> ``receive_replies``; a failure of
    either -> ``connection_lost`` and ``close``.
    """

    def _write(self, data: bytes) -> None:
        """Write all of ``data`` or raise ``SMTPServerDisconnected``."""

    def _read_replies(self) -> list[tuple[int, bytes]]:
        """At least one whole reply, parsed by the engine's parser; raise
        ``SMTPServerDisconnected`` (``SMTPReplyTimeout`` once the reply's
        deadline passes) or ``SMTPReplyTooLong``."""

    def close(self) -> None:
        """Close the connection (after ``broken`` is set nothing more may be sent)."""


#: RFC 5321 §4.5.3.2 reply timeouts, seconds, by what the reply answers.
#: Used when the caller gave no timeout in bulk sending.  RSET has none in
#: the RFC; MAIL's is used.
RFC5321_TIMEOUTS = {"rset": 300.0, "mail": 300.0, "rcpt": 300.0, "data": 120.0, "final": 600.0, "dot": 600.0}

# What a reply answers (the kind of an owed slot).
_RSET, _MAIL, _RCPT, _DATA, _FINAL, _DOT = range(6)
_KIND_NAMES = ("rset", "mail", "rcpt", "data", "final", "dot")
# Positive codes each command may return (RFC 5321 §4.3.2; BDAT: RFC 3030 §2).
# Any 4yz/5yz is accepted as a failure of any command.
_POSITIVE = (
    frozenset((250,)),  # RSET
    frozenset((250,)),  # MAIL
    frozenset((250, 251)),  # RCPT
    frozenset((354,)),  # DATA
    frozenset((250,)),  # end of data / BDAT LAST
    frozenset((250,)),  # the lone "." after a failed envelope
)
# Enhanced-code class a 2yz reply must have: "A" addressing (subject 1), "D"
# other.  RSET is not checked: Postfix's smtp-sink answers it "250 2.1.0".
_CLASS = (None, "A", "A", "I", "D", "D")

#: Most messages whose results are held for confirmation before writing stops.
_MAX_HELD_FACTOR = 2
#: Most payload bytes gathered into one write with BDAT (one message always goes).
WRITE_BUDGET = 1 << 20


def _by_code(code: int) -> Status:
    return DEFERRED if 400 <= code <= 499 else REFUSED


def _refusal_status(codes: Iterable[int]) -> Status:
    """Several refusals: deferred if any was temporary (4yz)."""
    return DEFERRED if any(400 <= c <= 499 for c in codes) else REFUSED


class _Msg:
    """One message's progress: what was written, what came back."""

    __slots__ = (
        "result", "prep", "mail", "accepted", "recipients", "finals", "owed",
        "lines", "next_line", "data_sent", "body_sent", "dot_only", "epoch",
        "status", "exc", "reply", "body_due", "nrcpt",
    )

    def __init__(self, result: SendResult, prep: Prepared) -> None:
        self.result = result
        self.prep: Prepared | None = prep
        self.mail: tuple[int, bytes] | None = None
        self.accepted: list[str] = []
        self.recipients: dict[str, tuple[int, bytes]] = {}
        self.finals: list[tuple[int, bytes]] = []
        self.owed = 0  # replies owed to this message's written commands
        self.lines: list[bytes] | None = None  # lock-step: commands left to send
        self.next_line = 0
        self.data_sent = False  # DATA or BDAT went out
        self.body_sent = False  # the body went out: a lost reply leaves it uncertain
        self.dot_only = False  # envelope failed, DATA said 354: only "." ends it
        self.epoch = 0  # RSETs written before this message
        self.status: Status | None = None  # tentative until confirmed
        self.exc: BaseException | None = None
        self.reply: tuple[int, bytes] | None = None
        self.body_due = False
        self.nrcpt = 0  # RCPT replies received (a recipient may be listed twice)


class Engine:
    """One connection's mail transactions, bytes in and bytes out.

    Args:
        caps: the server's capabilities (from its EHLO/LHLO reply).
        lmtp: LMTP rules (one reply per accepted recipient after the data).
        window: most messages in flight with CHUNKING (and ENHANCEDSTATUSCODES).
        pipelining, chunking: use those extensions when offered.
        parser: the reply parser to share with the driver's own commands.
    """

    def __init__(
        self,
        caps: Capabilities,
        *,
        lmtp: bool = False,
        window: int = 32,
        pipelining: bool = True,
        chunking: bool = True,
        parser: Any = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.caps = caps
        self.lmtp = lmtp
        self.encoder = Encoder(caps, chunking)
        self.pipelining = bool(pipelining and caps.pipelining)
        self.bdat = self.encoder.bdat
        self.enhanced = caps.enhanced
        # Rule 5: a window of BDAT messages only where replies can be checked.
        self.window = window if (self.bdat and self.pipelining and self.enhanced) else 1
        self.low_water = self.window // 2
        self.parser = parser if parser is not None else ReplyParser()
        self._queue: collections.deque[_Msg] = collections.deque()
        self._flights: collections.deque[_Msg] = collections.deque()  # written, unfinished
        self._owed: collections.deque[tuple[int, Any]] = collections.deque()  # (kind, msg)
        self._held: list[_Msg] = []  # finished, awaiting confirmation (rule 3)
        self._ready: list[SendResult] = []  # confirmed, not yet handed out
        self._body_due: list[_Msg] = []  # DATA answered: body or "." goes next
        self._need_rset = False
        self._epoch = 0  # RSETs written so far
        self._envelopes_out = 0  # DATA: envelopes written whose DATA reply is owed
        self._prev_sig: str | None = None
        self._lockstep: _Msg | None = None
        #: Set once the engine stopped for good: the exception every message
        #: not yet reported was given.  The driver must close the connection.
        self.broken: BaseException | None = None

    # -- caller side ------------------------------------------------------------

    def submit(
        self,
        tag: Any,
        from_addr: str,
        to_addrs: str | Sequence[str],
        msg: str | bytes,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        *,
        result: SendResult | None = None,
    ) -> SendResult:
        """Queue one message; return the result it will be reported in.

        Raises (nothing is queued then): the caller's errors, as
        ``Encoder.encode`` lists them, and ``ValueError`` for no recipients.
        If the engine has stopped, the message is reported ``not_attempted``
        at once (in the next ``receive``/``take_results``).
        """
        prep = self.encoder.encode(from_addr, to_addrs, msg, mail_options, rcpt_options)
        if result is None:
            result = SendResult(tag)
        result.from_addr, result.to_addrs = from_addr, prep.to_addrs
        if not prep.to_addrs:
            raise ValueError("message has no recipients")
        m = _Msg(result, prep)
        if self.broken is not None:
            self._finish(m, NOT_ATTEMPTED, self.broken)
            self._ready.append(self._publish(m))
        else:
            self._queue.append(m)
        return result

    @property
    def owed(self) -> int:
        """Replies owed by the server for what was written."""
        return len(self._owed)

    @property
    def deadline_kind(self) -> str | None:
        """What the oldest owed reply answers: a key of ``RFC5321_TIMEOUTS``."""
        return _KIND_NAMES[self._owed[0][0]] if self._owed else None

    @property
    def held(self) -> int:
        """Messages finished and awaiting the reply that confirms them (rule 3)."""
        return len(self._held)

    @property
    def in_flight(self) -> int:
        """Messages written and not yet reported."""
        return len(self._flights) + len(self._held)

    @property
    def queued(self) -> int:
        """Messages submitted and not yet written."""
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing to write, nothing owed, nothing unreported."""
        return not (self._owed or self._queue or self._body_due or self._need_rset or self._held or self._flights)

    def room(self) -> int:
        """How many more messages the engine would take now: what it can write
        with the next write, no more (drivers use it to bound read-ahead)."""
        if self.broken is not None or len(self._held) >= self.window * _MAX_HELD_FACTOR:
            return 0
        if not self.pipelining:
            return 0 if (self._queue or self._flights) else 1
        if not self.bdat:
            # DATA: the next envelope waits to go out with the current body.
            return 0 if self._queue else 1
        return max(0, self.window - len(self._queue) - len(self._flights))

    def take_results(self) -> list[SendResult]:
        """Results confirmed since the last call (also returned by ``receive``)."""
        out = self._ready
        self._ready = []
        return out

    # -- bytes out ----------------------------------------------------------------

    def bytes_to_send(self) -> bytes:
        """Everything that may be written now (``b""`` if nothing)."""
        if self.broken is not None:
            return b""
        out: list[bytes] = []
        if self._body_due:
            owed = self._owed
            for m in self._body_due:
                m.body_due = False
                if m.dot_only:
                    out.append(b".\r\n")  # RFC 2920 §3.1: never the body after a failed envelope
                    owed.append((_DOT, m))
                else:
                    out.append(m.prep.payload)  # type: ignore[union-attr]
                    m.body_sent = True
                    owed.append((_FINAL, m))
                m.owed += 1
                m.prep = None  # sent: nothing keeps the payload alive while awaiting the reply
            self._body_due.clear()
        if not self.pipelining:
            self._lockstep_write(out)
        elif self._queue or self._need_rset:
            self._pipelined_write(out)
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _owe(self, kind: int, m: _Msg | None) -> None:
        self._owed.append((kind, m))
        if m is not None:
            m.owed += 1

    def _write_rset(self, out: list[bytes]) -> None:
        out.append(b"rset\r\n")
        self._owe(_RSET, None)
        self._need_rset = False
        self._epoch += 1

    def _pipelined_write(self, out: list[bytes]) -> None:
        if self._need_rset:
            self._write_rset(out)
        if not self._queue:
            return
        if self.bdat:
            flying = len(self._flights)
            room = self.window - flying if flying <= self.low_water else 0
        else:
            # DATA: one envelope awaits its DATA reply at a time (its body must
            # wait for 354); the next goes out with the body before it.
            room = 0 if self._envelopes_out else 1
        if len(self._held) >= self.window * _MAX_HELD_FACTOR:
            room = 0  # rule 3: stop until the held results are confirmed
        budget = WRITE_BUDGET
        while room > 0 and self._queue and budget > 0:
            m = self._queue.popleft()
            prep = m.prep
            assert prep is not None
            if self.bdat and self._flights:
                self._write_rset(out)  # rule 6: the message before may yet fail
            m.epoch = self._epoch
            m.result.attempts += 1
            out.append(prep.envelope)
            self._owe(_MAIL, m)
            for _ in prep.to_addrs:
                self._owe(_RCPT, m)
            if self.bdat:
                out.append(b"BDAT %d LAST\r\n" % len(prep.payload))
                out.append(prep.payload)
                budget -= len(prep.payload)
                m.data_sent = m.body_sent = True
                m.prep = None
                self._owe(_FINAL, m)
            else:
                out.append(b"data\r\n")
                m.data_sent = True
                self._owe(_DATA, m)
                self._envelopes_out += 1
            self._flights.append(m)
            room -= 1

    def _lockstep_write(self, out: list[bytes]) -> None:
        """Rule 9: one command, then wait for its reply."""
        if self._owed:
            return
        if self._need_rset:
            self._write_rset(out)
            return
        m = self._lockstep
        if m is None:
            if not self._queue:
                return
            m = self._lockstep = self._queue.popleft()
            prep = m.prep
            assert prep is not None
            m.lines = prep.envelope_lines()
            m.epoch = self._epoch
            m.result.attempts += 1
            self._flights.append(m)
        lines = m.lines
        assert lines is not None
        if m.next_line < len(lines):
            line = lines[m.next_line]
            m.next_line += 1
            self._owe(_MAIL if m.next_line == 1 else _RCPT, m)
            out.append(line)
            return
        if not m.data_sent:
            prep = m.prep
            assert prep is not None
            m.data_sent = True
            if prep.bdat:
                out.append(b"BDAT %d LAST\r\n" % len(prep.payload))
                out.append(prep.payload)
                m.body_sent = True
                m.prep = None
                self._owe(_FINAL, m)
            else:
                out.append(b"data\r\n")
                self._owe(_DATA, m)
                self._envelopes_out += 1

    # -- bytes in -------------------------------------------------------------------

    def receive(self, data: Any) -> list[SendResult]:
        """Take bytes from the server; return every result they confirmed.

        After a limit broken by a reply, or a reply out of step, ``broken``
        is set and every message not yet reported is in the results.
        """
        if self.broken is not None:
            return self.take_results()
        try:
            replies = self.parser.feed(data)
        except ReplyLimitError as exc:
            self._stop(SMTPReplyTooLong.from_limit(exc))
            return self.take_results()
        return self.receive_replies(replies)

    def receive_replies(self, replies: Iterable[tuple[int, bytes]]) -> list[SendResult]:
        """As ``receive``, for replies the driver's parser already parsed."""
        if self.broken is not None:
            return self.take_results()
        owed = self._owed
        match = self._match
        for code, text in replies:
            if not owed:
                self._stop(SMTPPipelineError(code, b"reply nobody asked for: " + text[:200]))
                return self.take_results()
            match(code, text)
            if self.broken is not None:
                return self.take_results()
        if not owed:
            if self.parser.in_reply:
                # Part of a reply nobody asked for: out of step (rule 2).
                self._stop(SMTPPipelineError(-1, b"partial reply nobody asked for"))
                return self.take_results()
            self._confirm()  # rule 3: every reply owed came, and no more
        return self.take_results()

    def connection_lost(self, exc: BaseException) -> list[SendResult]:
        """The connection ended (closed, reset, timed out): report everything."""
        if self.broken is None:
            self._stop(exc)
        return self.take_results()

    # -- matching -------------------------------------------------------------------

    def _match(self, code: int, text: bytes) -> None:
        owed = self._owed
        kind, m = owed[0]
        # Rule 1: a failure may answer any command; a positive code only its own.
        if 400 <= code <= 599:
            sig = None
        elif code in _POSITIVE[kind]:
            if code == 354:
                sig = "I"
            elif self.enhanced and _CLASS[kind] is not None and text.startswith(b"2."):
                # RFC 3463 §2: class "." subject "." detail, at the start of the text.
                if text.startswith(b"2.1."):
                    sig = "A"
                else:
                    dot = text.find(b".", 2)
                    sig = "D" if dot > 2 and text[2:dot].isdigit() else "2"
                if sig != "2" and sig != _CLASS[kind]:
                    self._stop(SMTPPipelineError(code, b"reply to the wrong command (enhanced code for "
                                                 + _KIND_NAMES[kind].encode() + b"): " + text[:200]))
                    return
            else:
                sig = "2"
        else:
            self._stop(SMTPPipelineError(code, ("reply %d cannot answer %s: " % (code, _KIND_NAMES[kind].upper())).encode() + text[:200]))
            return
        owed.popleft()
        if m is not None:
            m.owed -= 1
        if code == 421:
            self._closing(kind, m, code, text)
            return
        prev = self._prev_sig
        self._prev_sig = sig
        if kind == _RCPT:
            rcpt = m.result.to_addrs[m.nrcpt]
            m.nrcpt += 1
            m.recipients[rcpt] = (code, text)
            if code == 250 or code == 251:
                m.accepted.append(rcpt)
        elif kind == _MAIL:
            m.mail = (code, text)
        elif kind == _DATA:
            self._envelopes_out -= 1
            if code == 354:
                m.dot_only = m.mail is None or m.mail[0] != 250 or not m.accepted
                m.body_due = True
                self._body_due.append(m)
            else:
                m.reply = (code, text)
        elif kind == _FINAL:
            m.finals.append((code, text))
            if self.lmtp and m.mail is not None and m.mail[0] == 250 and len(m.finals) < len(m.accepted):
                owed.appendleft((kind, m))  # rule 7: one reply per accepted recipient
                m.owed += 1
        elif kind == _DOT:
            m.reply = (code, text)  # the final reply to a message whose envelope failed
        held_before = len(self._held)
        if m is not None and not m.owed and not m.body_due:
            self._advance(m)
        # Rule 3: confirmations.  A 354 in DATA's place proves the stream in
        # step through it.  A pair of classes proves it through the pair's
        # first reply only: had this reply's own command lost its reply, the
        # next one (of the same class: an RSET's or a BDAT's 250 2.0.0) would
        # stand here, so a message this reply finished waits for the next proof.
        if self._held:
            if sig == "I":
                self._confirm()
            elif (sig == "A" and prev == "D") or (sig == "D" and prev == "A"):
                self._confirm(held_before)

    def _advance(self, m: _Msg) -> None:
        """Every reply owed to ``m`` came: finish it, or (lock-step) go on."""
        if m.mail is None:
            return  # lock-step, nothing answered yet
        if (m.mail[0] != 250 or not m.accepted) and m.finals and m.finals[0][0] == 250:
            # Rule 5: a body taken for an envelope that failed: out of step.
            self._stop(SMTPPipelineError(250, b"BDAT accepted although the envelope failed"))
            return
        if m.mail[0] != 250:
            self._reset_after_failure(m)
            self._finish_envelope(m)
            return
        lines = m.lines
        if lines is not None and not m.data_sent:
            # Lock-step (rule 9): more RCPTs, or DATA once they are done.
            if m.next_line < len(lines):
                return
            if not m.accepted:
                self._need_rset = True
                self._finish_envelope(m)
            return
        if not m.accepted:
            self._reset_after_failure(m)
            self._finish_envelope(m)
            return
        if m.reply is not None and not m.finals:
            # DATA refused although the envelope was fine.
            self._need_rset = True
            code, text = m.reply
            self._finish(m, _by_code(code), SMTPDataError(code, text))
            return
        self._finish_final(m)

    def _reset_after_failure(self, m: _Msg) -> None:
        """Rule 6: RSET, unless a lone "." already ended the transaction.

        The end of data closes a transaction whatever its reply (RFC 5321
        §4.1.1.4); and the next envelope may already follow the "." on the
        wire, where an RSET would cancel it.
        """
        if not m.dot_only and self._epoch == m.epoch:  # no RSET went out after it yet
            self._need_rset = True

    def _finish_envelope(self, m: _Msg) -> None:
        """The envelope failed: what ``sendmail`` would raise for it."""
        mail = m.mail
        assert mail is not None
        if mail[0] != 250:
            code, text = mail
            self._finish(m, _by_code(code), SMTPSenderRefused(code, text, m.result.from_addr))
            return
        refused = {r: rep for r, rep in m.recipients.items() if rep[0] != 250 and rep[0] != 251}
        self._finish(m, _refusal_status(c for c, _ in refused.values()), SMTPRecipientsRefused(refused))

    def _finish_final(self, m: _Msg) -> None:
        """The end of data was answered (rule 7 for LMTP)."""
        finals = m.finals
        if not self.lmtp:
            code, text = finals[0]
            m.reply = (code, text)
            if code != 250:
                if self.bdat:
                    # RFC 3030 §2 leaves the state after a refused BDAT to the
                    # server; DATA's end closes the transaction (RFC 5321 §4.1.1.4).
                    self._reset_after_failure(m)
                self._finish(m, _by_code(code), SMTPDataError(code, text))
                return
        else:
            delivered = 0
            last_failure = None
            m.result.data_replies = list(zip(m.accepted, finals))
            for rcpt, reply in zip(m.accepted, finals):
                m.recipients[rcpt] = reply
                if reply[0] == 250:
                    delivered += 1
                else:
                    last_failure = reply
            m.reply = finals[-1]
            if not delivered:
                code, text = last_failure or finals[-1]
                exc = SMTPDataError(code, text)
                refused = {r: rep for r, rep in m.recipients.items() if rep[0] != 250 and rep[0] != 251}
                exc.recipients = refused  # type: ignore[attr-defined]
                self._finish(m, _refusal_status(c for c, _ in refused.values()), exc)
                return
        if len(m.accepted) != m.nrcpt:
            refused = True
        elif self.lmtp:
            refused = any(c != 250 for c, _ in m.recipients.values())
        else:
            refused = False
        self._finish(m, PARTIAL if refused else DELIVERED, None)

    def _finish(self, m: _Msg, status: Status, exc: BaseException | None) -> None:
        m.status = status
        m.exc = exc
        m.prep = None  # nothing keeps the payload alive while the result waits
        flights = self._flights
        if flights and flights[0] is m:
            flights.popleft()
        else:
            try:
                flights.remove(m)
            except ValueError:
                pass
        if self._lockstep is m:
            self._lockstep = None
        self._held.append(m)

    def _confirm(self, upto: int | None = None) -> None:
        """Rule 3: the stream is in step up to here: report what is held
        (the first ``upto`` held messages, or all)."""
        held = self._held
        if held:
            ready = self._ready
            confirmed = held if upto is None else held[:upto]
            for m in confirmed:
                ready.append(self._publish(m))
            del held[:len(confirmed)]

    @staticmethod
    def _publish(m: _Msg) -> SendResult:
        r = m.result
        r.recipients = m.recipients
        r.reply = m.reply if m.reply is not None else (m.finals[-1] if m.finals else None)
        r.exception = m.exc
        r.status = m.status  # type: ignore[assignment]
        return r

    # -- endings --------------------------------------------------------------------

    def _closing(self, kind: int, m: _Msg | None, code: int, text: bytes) -> None:
        """Rule 8: a 421 answers one command; the server closes after it."""
        lost = SMTPServerDisconnected("server closed the connection: %d %r" % (code, text))
        if m is not None:
            if kind == _MAIL:
                m.mail = (code, text)
                self._finish_envelope(m)
            elif kind == _RCPT:
                m.recipients[m.result.to_addrs[m.nrcpt]] = (code, text)
                refused = {r: rep for r, rep in m.recipients.items() if rep[0] != 250 and rep[0] != 251}
                self._finish(m, DEFERRED, SMTPRecipientsRefused(refused))
            elif kind == _FINAL and self.lmtp and m.mail is not None and m.mail[0] == 250 and m.accepted:
                m.finals.append((code, text))
                missing = len(m.accepted) - len(m.finals)
                m.finals += [(421, b"connection closed before this recipient's reply")] * missing
                self._finish_final(m)
            else:  # DATA, the end of data, the lone dot
                m.reply = (code, text)
                self._finish(m, DEFERRED, SMTPDataError(code, text))
        # The 421 is a reply in its place, not a sign of a shifted stream.
        self._confirm()
        self._stop(lost)

    def _stop(self, exc: BaseException) -> None:
        """Stop for good; report every message not yet reported by what is known.

        Finished messages awaiting confirmation keep their outcome when the
        connection is lost or a reply breaks the limits, but not when the
        stream was found out of step (rule 2) nor when a reply timed out:
        a dropped reply shows itself only as a wait for a reply that never
        comes, and by then a later reply has been paired with an earlier
        command (the next MAIL's 550 with the end of data before it), so a
        held result may be another command's (rule 3: never confirmed).
        """
        self.broken = exc
        if isinstance(exc, (SMTPPipelineError, TimeoutError)):
            for m in self._held:
                self._report_unknown(m, exc)
        self._confirm()
        ready = self._ready
        for m in self._flights:
            self._report_unknown(m, exc)
            ready.append(self._publish(m))
        self._flights.clear()
        for m in self._queue:
            m.status, m.exc, m.recipients = NOT_ATTEMPTED, exc, {}
            ready.append(self._publish(m))
        self._queue.clear()
        self._owed.clear()
        self._body_due.clear()
        self._lockstep = None
        self._need_rset = False
        self._envelopes_out = 0

    @staticmethod
    def _report_unknown(m: _Msg, exc: BaseException) -> None:
        # Rule 2: pairings can no longer be trusted; only what went out is known.
        m.status = UNCERTAIN if m.body_sent else NOT_ATTEMPTED
        m.exc = exc
        m.recipients = {}
        m.reply = None
        m.finals = []
        m.result.data_replies = []
