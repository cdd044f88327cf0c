# cython: annotation_typing=False
"""The sans-IO transaction engine: one connection's mail transactions, no sockets.

In: messages (``submit``) and the bytes the server sent (``receive``).  Out:
the bytes to write (``bytes_to_send``) and one ``SendResult`` per message.
No socket, no clock, no thread: ``SMTP.sendmail``, ``send_many`` (DATA,
BDAT and lock-step), ``LMTP`` and the pool are drivers that move bytes.

The rules, each next to the code that obeys it:

1. Replies come in command order (RFC 2920 §3.2); each is matched to the
   oldest command still owed one.  Every reply is checked against what its
   command may return (RFC 5321 §4.3.2, RFC 3030 §2, RFC 2033 §4.2): the
   positive codes in ``_positive``, or any 4yz/5yz (RSET too: RFC 5321
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

import enum
import operator
from typing import Any, Iterable, Protocol, Sequence

from ._envelope import Encoder
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

    # Slots, not a dataclass: one is made per message at tens of thousands a
    # second.  (Compiled, it is a cdef class with these fields: _engine_py.pxd.)
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
        self.sent_at = None  # float | None
        self.done_at = None  # float | None

    def _fields(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self._COMPARED])

    def __repr__(self) -> str:
        inner = ", ".join([f"{name}={getattr(self, name)!r}" for name in self.__slots__])
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

# What a reply answers (the kind of an owed slot).  Compiled, these are C
# ints (_engine_py.pxd); they are never seen outside this module.
_RSET = 0
_MAIL = 1
_RCPT = 2
_DATA = 3
_FINAL = 4
_DOT = 5
_KIND_NAMES = ("rset", "mail", "rcpt", "data", "final", "dot")

# A reply's signature, for rule 3: 0 a failure (4yz/5yz), else a positive
# reply that is plain ("2"), carries an addressing enhanced code ("A",
# subject 1), another enhanced code ("D"), or is DATA's 354 ("I").
_SIG_FAIL = 0
_SIG_PLAIN = 1
_SIG_A = 2
_SIG_D = 3
_SIG_I = 4

#: Most messages whose results are held for confirmation before writing stops.
_MAX_HELD_FACTOR = 2
#: Most payload bytes gathered into one write with BDAT (one message always goes).
WRITE_BUDGET = 1 << 20
#: Answered slots of the owed queue kept before they are dropped (amortised).
_OWED_COMPACT = 256


def _positive(kind: int, code: int) -> bool:
    """Rule 1: the positive codes each command may return (RFC 5321 §4.3.2;
    BDAT: RFC 3030 §2).  Any 4yz/5yz is accepted as a failure of any command."""
    if kind == _RCPT:
        return code == 250 or code == 251
    if kind == _DATA:
        return code == 354
    return code == 250  # RSET, MAIL, end of data / BDAT LAST, the lone "."


def _expected_class(kind: int) -> int:
    """The enhanced-code class a 2yz reply to ``kind`` must have: "A"
    addressing (subject 1) or "D" other; 0 for RSET, which is not checked
    (Postfix's smtp-sink answers it "250 2.1.0")."""
    if kind == _MAIL or kind == _RCPT:
        return _SIG_A
    if kind == _FINAL or kind == _DOT:
        return _SIG_D
    if kind == _DATA:
        return _SIG_I
    return 0


def _enhanced_class(text: bytes) -> int:
    """RFC 3463 §2: class "." subject "." detail at the start of a 2yz text:
    ``_SIG_A`` for subject 1, ``_SIG_D`` for another subject, else
    ``_SIG_PLAIN`` (no enhanced code)."""
    n = len(text)
    if n < 2 or text[0] != 0x32 or text[1] != 0x2E:  # "2."
        return _SIG_PLAIN
    if n >= 4 and text[2] == 0x31 and text[3] == 0x2E:  # "2.1."
        return _SIG_A
    i = 2
    while i < n and 0x30 <= text[i] <= 0x39:
        i += 1
    return _SIG_D if i > 2 and i < n and text[i] == 0x2E else _SIG_PLAIN


def _bdat_last(size: int) -> bytes:
    """The ``BDAT n LAST`` command for a payload of ``size`` octets (RFC 3030 §2)."""
    # An f-string: compiled, Cython builds it from a C integer directly.
    return f"BDAT {size} LAST\r\n".encode("ascii")


def _by_code(code: int) -> Status:
    return DEFERRED if 400 <= code <= 499 else REFUSED


def _refused(recipients: dict) -> dict:
    """The refused recipients of ``recipients`` (what sendmail raises/returns)."""
    return {r: rep for r, rep in recipients.items() if rep[0] != 250 and rep[0] != 251}


def _refusal_status(refused: dict) -> Status:
    """Several refusals: deferred if any was temporary (4yz)."""
    for rep in refused.values():
        if 400 <= rep[0] <= 499:
            return DEFERRED
    return REFUSED


class _Msg:
    """One message's progress: what was written, what came back."""

    __slots__ = (
        "result", "to_addrs", "envelope", "payload", "mail", "mail_ok", "accepted", "recipients", "finals",
        "owed", "lines", "next_line", "data_sent", "body_sent", "dot_only", "epoch",
        "status", "exc", "reply", "body_due", "nrcpt",
    )

    def __init__(self, result: SendResult, to_addrs: list, envelope: bytes, payload: bytes) -> None:
        self.result = result
        self.to_addrs = to_addrs
        self.envelope = envelope  # the MAIL and RCPT lines (None once finished)
        self.payload = payload  # what follows DATA's 354 or BDAT's command (None once sent)
        self.mail = None  # MAIL's reply
        self.mail_ok = False  # MAIL was answered 250
        self.accepted = []  # recipients answered 250/251, in RCPT order
        self.recipients = {}
        self.finals = []
        self.owed = 0  # replies owed to this message's written commands
        self.lines = None  # lock-step: commands left to send
        self.next_line = 0
        self.data_sent = False  # DATA or BDAT went out
        self.body_sent = False  # the body went out: a lost reply leaves it uncertain
        self.dot_only = False  # envelope failed, DATA said 354: only "." ends it
        self.epoch = 0  # RSETs written before this message
        self.status = None  # tentative until confirmed
        self.exc = None
        self.reply = None
        self.body_due = False
        self.nrcpt = 0  # RCPT replies received (a recipient may be listed twice)


def _publish(m: _Msg) -> SendResult:
    r = m.result
    r.recipients = m.recipients
    r.reply = m.reply if m.reply is not None else (m.finals[-1] if m.finals else None)
    r.exception = m.exc
    r.status = m.status
    return r


def _report_unknown(m: _Msg, exc: BaseException) -> None:
    # Rule 2: pairings can no longer be trusted; only what went out is known.
    m.status = UNCERTAIN if m.body_sent else NOT_ATTEMPTED
    m.exc = exc
    m.recipients = {}
    m.reply = None
    m.finals = []
    m.result.data_replies = []


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
        window = operator.index(window)  # an int in both twins (compiled: a C integer)
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
        # Messages submitted and not yet written, _queue[_qhead:]; messages
        # written and unfinished, _flights[_fhead:] in write order.  Lists read
        # from a head index, as the owed replies below (no deque method calls).
        self._queue: list[_Msg | None] = []
        self._qhead = 0
        self._flights: list[_Msg | None] = []
        self._fhead = 0
        # The replies owed, oldest first: what each answers (kind) and the
        # message it belongs to (None for RSET), as two lists read from
        # ``_ohead`` on (a queue with no object per command).
        self._okinds: list[int] = []
        self._omsgs: list[_Msg | None] = []
        self._ohead = 0
        self._held: list[_Msg] = []  # finished, awaiting confirmation (rule 3)
        self._ready: list[SendResult] = []  # confirmed, not yet handed out
        self._body_due: list[_Msg] = []  # DATA answered: body or "." goes next
        self._need_rset = False
        self._epoch = 0  # RSETs written so far
        self._envelopes_out = 0  # DATA: envelopes written whose DATA reply is owed
        self._prev_sig = _SIG_FAIL
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
        to_list = prep.to_addrs
        result.from_addr = from_addr
        result.to_addrs = to_list
        if not to_list:
            raise ValueError("message has no recipients")
        m = _Msg(result, to_list, prep.envelope, prep.payload)
        if self.broken is not None:
            self._finish(m, NOT_ATTEMPTED, self.broken)
            self._ready.append(_publish(m))
        else:
            self._queue.append(m)
        return result

    @property
    def owed(self) -> int:
        """Replies owed by the server for what was written."""
        return len(self._okinds) - self._ohead

    @property
    def _owed(self) -> int:
        """As ``owed`` (drivers test it for truth)."""
        return len(self._okinds) - self._ohead

    @property
    def deadline_kind(self) -> str | None:
        """What the oldest owed reply answers: a key of ``RFC5321_TIMEOUTS``."""
        if self._ohead < len(self._okinds):
            return _KIND_NAMES[self._okinds[self._ohead]]
        return None

    @property
    def held(self) -> int:
        """Messages finished and awaiting the reply that confirms them (rule 3)."""
        return len(self._held)

    @property
    def in_flight(self) -> int:
        """Messages written and not yet reported."""
        return len(self._flights) - self._fhead + len(self._held)

    @property
    def queued(self) -> int:
        """Messages submitted and not yet written."""
        return len(self._queue) - self._qhead

    @property
    def idle(self) -> bool:
        """Nothing to write, nothing owed, nothing unreported."""
        return not (self._ohead < len(self._okinds) or self._qhead < len(self._queue) or self._body_due
                    or self._need_rset or self._held or self._fhead < len(self._flights))

    def room(self) -> int:
        """How many more messages the engine would take now: what it can write
        with the next write, no more (drivers use it to bound read-ahead)."""
        if self.broken is not None or len(self._held) >= self.window * _MAX_HELD_FACTOR:
            return 0
        if not self.pipelining:
            return 0 if (self._qhead < len(self._queue) or self._fhead < len(self._flights)) else 1
        if not self.bdat:
            # DATA: the next envelope waits to go out with the current body.
            return 0 if self._qhead < len(self._queue) else 1
        return max(0, self.window - (len(self._queue) - self._qhead) - (len(self._flights) - self._fhead))

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
            for m in self._body_due:
                m.body_due = False
                if m.dot_only:
                    out.append(b".\r\n")  # RFC 2920 §3.1: never the body after a failed envelope
                    self._owe(_DOT, m)
                else:
                    out.append(m.payload)
                    m.body_sent = True
                    self._owe(_FINAL, m)
                m.payload = None  # sent: nothing keeps the payload alive while awaiting the reply
            del self._body_due[:]
        if not self.pipelining:
            self._lockstep_write(out)
        elif self._qhead < len(self._queue) or self._need_rset:
            self._pipelined_write(out)
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _pop_queue(self) -> _Msg:
        """The oldest message submitted and not yet written (one must be)."""
        head = self._qhead
        m = self._queue[head]
        self._queue[head] = None
        head += 1
        if head >= _OWED_COMPACT:
            del self._queue[:head]
            head = 0
        self._qhead = head
        return m

    def _add_flight(self, m: _Msg) -> None:
        head = self._fhead
        if head >= _OWED_COMPACT:
            del self._flights[:head]
            self._fhead = 0
        self._flights.append(m)

    def _owe(self, kind: int, m: _Msg | None) -> None:
        head = self._ohead
        if head >= _OWED_COMPACT:
            # Drop answered slots in bulk (amortised; their messages are
            # already None, so nothing is kept alive meanwhile).
            del self._okinds[:head]
            del self._omsgs[:head]
            self._ohead = 0
        self._okinds.append(kind)
        self._omsgs.append(m)
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
        if self._qhead >= len(self._queue):
            return
        if self.bdat:
            flying = len(self._flights) - self._fhead
            room = self.window - flying if flying <= self.low_water else 0
        else:
            # DATA: one envelope awaits its DATA reply at a time (its body must
            # wait for 354); the next goes out with the body before it.
            room = 0 if self._envelopes_out else 1
        if len(self._held) >= self.window * _MAX_HELD_FACTOR:
            room = 0  # rule 3: stop until the held results are confirmed
        budget = WRITE_BUDGET
        while room > 0 and self._qhead < len(self._queue) and budget > 0:
            m = self._pop_queue()
            if self.bdat and self._fhead < len(self._flights):
                self._write_rset(out)  # rule 6: the message before may yet fail
            m.epoch = self._epoch
            m.result.attempts += 1
            out.append(m.envelope)
            self._owe(_MAIL, m)
            for _ in range(len(m.to_addrs)):
                self._owe(_RCPT, m)
            if self.bdat:
                payload = m.payload
                out.append(_bdat_last(len(payload)))
                out.append(payload)
                budget -= len(payload)
                m.data_sent = m.body_sent = True
                m.payload = None
                self._owe(_FINAL, m)
            else:
                out.append(b"data\r\n")
                m.data_sent = True
                self._owe(_DATA, m)
                self._envelopes_out += 1
            self._add_flight(m)
            room -= 1

    def _lockstep_write(self, out: list[bytes]) -> None:
        """Rule 9: one command, then wait for its reply."""
        if self._ohead < len(self._okinds):
            return
        if self._need_rset:
            self._write_rset(out)
            return
        m = self._lockstep
        if m is None:
            if self._qhead >= len(self._queue):
                return
            m = self._lockstep = self._pop_queue()
            # The MAIL and RCPT lines one by one (Prepared.envelope_lines).
            m.lines = [line + b"\r\n" for line in m.envelope.split(b"\r\n")[:-1]]
            m.epoch = self._epoch
            m.result.attempts += 1
            self._add_flight(m)
        lines = m.lines
        if m.next_line < len(lines):
            line = lines[m.next_line]
            m.next_line += 1
            self._owe(_MAIL if m.next_line == 1 else _RCPT, m)
            out.append(line)
            return
        if not m.data_sent:
            m.data_sent = True
            if self.bdat:
                payload = m.payload
                out.append(_bdat_last(len(payload)))
                out.append(payload)
                m.body_sent = True
                m.payload = None
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
        for reply in replies:
            code, text = reply
            if self._ohead >= len(self._okinds):
                self._stop(SMTPPipelineError(code, b"reply nobody asked for: " + text[:200]))
                return self.take_results()
            if type(reply) is not tuple:
                reply = (code, text)
            self._match(code, text, reply)
            if self.broken is not None:
                return self.take_results()
        if self._ohead >= len(self._okinds):
            if self.parser.in_reply:
                # Part of a reply nobody asked for: out of step (rule 2).
                self._stop(SMTPPipelineError(-1, b"partial reply nobody asked for"))
                return self.take_results()
            self._confirm(-1)  # rule 3: every reply owed came, and no more
        return self.take_results()

    def connection_lost(self, exc: BaseException) -> list[SendResult]:
        """The connection ended (closed, reset, timed out): report everything."""
        if self.broken is None:
            self._stop(exc)
        return self.take_results()

    # -- matching -------------------------------------------------------------------

    def _match(self, code: int, text: bytes, reply: tuple) -> None:
        head = self._ohead
        kind = self._okinds[head]
        m = self._omsgs[head]
        # Rule 1: a failure may answer any command; a positive code only its own.
        if 400 <= code <= 599:
            sig = _SIG_FAIL
        elif _positive(kind, code):
            if code == 354:
                sig = _SIG_I
            else:
                sig = _SIG_PLAIN
                want = _expected_class(kind) if self.enhanced else 0
                if want:
                    sig = _enhanced_class(text)
                    if sig != _SIG_PLAIN and sig != want:
                        self._stop(SMTPPipelineError(code, b"reply to the wrong command (enhanced code for "
                                                     + _KIND_NAMES[kind].encode() + b"): " + text[:200]))
                        return
        else:
            self._stop(SMTPPipelineError(code, ("reply %d cannot answer %s: " % (code, _KIND_NAMES[kind].upper())).encode() + text[:200]))
            return
        # The slot is answered: forget its message (nothing kept alive by it).
        self._omsgs[head] = None
        self._ohead = head + 1
        if m is not None:
            m.owed -= 1
        if code == 421:
            self._closing(kind, m, code, text, reply)
            return
        prev = self._prev_sig
        self._prev_sig = sig
        if kind == _RCPT:
            rcpt = m.to_addrs[m.nrcpt]
            m.nrcpt += 1
            m.recipients[rcpt] = reply
            if code == 250 or code == 251:
                m.accepted.append(rcpt)
        elif kind == _MAIL:
            m.mail = reply
            m.mail_ok = code == 250
        elif kind == _DATA:
            self._envelopes_out -= 1
            if code == 354:
                m.dot_only = not m.mail_ok or not m.accepted
                m.body_due = True
                self._body_due.append(m)
            else:
                m.reply = reply
        elif kind == _FINAL:
            m.finals.append(reply)
            if self.lmtp and m.mail_ok and len(m.finals) < len(m.accepted):
                # Rule 7: one reply per accepted recipient; the slot stays owed.
                self._ohead = head
                self._omsgs[head] = m
                m.owed += 1
        elif kind == _DOT:
            m.reply = reply  # the final reply to a message whose envelope failed
        held_before = len(self._held)
        if m is not None and not m.owed and not m.body_due:
            self._advance(m)
        # Rule 3: confirmations.  A 354 in DATA's place proves the stream in
        # step through it.  A pair of classes proves it through the pair's
        # first reply only: had this reply's own command lost its reply, the
        # next one (of the same class: an RSET's or a BDAT's 250 2.0.0) would
        # stand here, so a message this reply finished waits for the next proof.
        if self._held:
            if sig == _SIG_I:
                self._confirm(-1)
            elif (sig == _SIG_A and prev == _SIG_D) or (sig == _SIG_D and prev == _SIG_A):
                self._confirm(held_before)

    def _advance(self, m: _Msg) -> None:
        """Every reply owed to ``m`` came: finish it, or (lock-step) go on."""
        if m.mail is None:
            return  # lock-step, nothing answered yet
        if (not m.mail_ok or not m.accepted) and m.finals and m.finals[0][0] == 250:
            # Rule 5: a body taken for an envelope that failed: out of step.
            self._stop(SMTPPipelineError(250, b"BDAT accepted although the envelope failed"))
            return
        if not m.mail_ok:
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
        if not m.mail_ok:
            code, text = m.mail
            self._finish(m, _by_code(code), SMTPSenderRefused(code, text, m.result.from_addr))
            return
        refused = _refused(m.recipients)
        self._finish(m, _refusal_status(refused), SMTPRecipientsRefused(refused))

    def _finish_final(self, m: _Msg) -> None:
        """The end of data was answered (rule 7 for LMTP)."""
        finals = m.finals
        if not self.lmtp:
            reply = finals[0]
            m.reply = reply
            code = reply[0]
            if code != 250:
                if self.bdat:
                    # RFC 3030 §2 leaves the state after a refused BDAT to the
                    # server; DATA's end closes the transaction (RFC 5321 §4.1.1.4).
                    self._reset_after_failure(m)
                self._finish(m, _by_code(code), SMTPDataError(code, reply[1]))
                return
            # Every RCPT reply was a 250/251 unless fewer were accepted.
            self._finish(m, PARTIAL if len(m.accepted) != m.nrcpt else DELIVERED, None)
            return
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
            refused = _refused(m.recipients)
            exc.recipients = refused  # type: ignore[attr-defined]
            self._finish(m, _refusal_status(refused), exc)
            return
        partial = len(m.accepted) != m.nrcpt
        if not partial:
            for rep in m.recipients.values():
                if rep[0] != 250:
                    partial = True
                    break
        self._finish(m, PARTIAL if partial else DELIVERED, None)

    def _finish(self, m: _Msg, status: Status, exc: BaseException | None) -> None:
        m.status = status
        m.exc = exc
        m.payload = m.envelope = None  # nothing keeps the message alive while the result waits
        flights = self._flights
        head = self._fhead
        if head < len(flights) and flights[head] is m:
            flights[head] = None
            self._fhead = head + 1
        else:
            for i in range(head + 1, len(flights)):
                if flights[i] is m:
                    del flights[i]
                    break
        if self._lockstep is m:
            self._lockstep = None
        self._held.append(m)

    def _confirm(self, upto: int) -> None:
        """Rule 3: the stream is in step up to here: report what is held
        (the first ``upto`` held messages, or all when ``upto`` < 0)."""
        held = self._held
        if held:
            ready = self._ready
            n = len(held) if upto < 0 else min(upto, len(held))
            for i in range(n):
                ready.append(_publish(held[i]))
            del held[:n]

    # -- endings --------------------------------------------------------------------

    def _closing(self, kind: int, m: _Msg | None, code: int, text: bytes, reply: tuple) -> None:
        """Rule 8: a 421 answers one command; the server closes after it."""
        lost = SMTPServerDisconnected("server closed the connection: %d %r" % (code, text))
        if m is not None:
            if kind == _MAIL:
                m.mail = reply
                m.mail_ok = False
                self._finish_envelope(m)
            elif kind == _RCPT:
                m.recipients[m.to_addrs[m.nrcpt]] = reply
                self._finish(m, DEFERRED, SMTPRecipientsRefused(_refused(m.recipients)))
            elif kind == _FINAL and self.lmtp and m.mail_ok and m.accepted:
                m.finals.append(reply)
                missing = len(m.accepted) - len(m.finals)
                m.finals += [(421, b"connection closed before this recipient's reply")] * missing
                self._finish_final(m)
            else:  # DATA, the end of data, the lone dot
                m.reply = reply
                self._finish(m, DEFERRED, SMTPDataError(code, text))
        # The 421 is a reply in its place, not a sign of a shifted stream.
        self._confirm(-1)
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
                _report_unknown(m, exc)
        self._confirm(-1)
        ready = self._ready
        for m in self._flights[self._fhead:]:
            _report_unknown(m, exc)
            ready.append(_publish(m))
        self._flights.clear()
        self._fhead = 0
        for m in self._queue[self._qhead:]:
            m.status, m.exc, m.recipients = NOT_ATTEMPTED, exc, {}
            ready.append(_publish(m))
        self._queue.clear()
        self._qhead = 0
        self._okinds.clear()
        self._omsgs.clear()
        self._ohead = 0
        self._body_due.clear()
        self._lockstep = None
        self._need_rset = False
        self._envelopes_out = 0
