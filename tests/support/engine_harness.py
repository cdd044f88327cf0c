"""Bytes in, bytes out: drive the sans-IO engine (``_engine.Engine``) with no socket.

Two pieces, used by ``tests/unit/test_engine*.py``:

``drive(eng, script, ...)``
    The loop every driver runs (``SMTP._io_step``): write what the engine
    has, hand it to the server ``script`` (a function from the bytes the
    client wrote to the bytes the server replies, or a list of reply chunks),
    then feed the server's bytes back one chunk per ``receive`` call, writing
    again after each, until nothing is owed (idle or broken) or the engine
    waits for a reply the server never sends ("stalled"; with ``timeout=True``
    that ends in ``connection_lost(SMTPReplyTimeout)``, as a driver's read
    deadline would).

``FakeServer``
    A small SMTP/LMTP server state machine: it parses what the client wrote
    (commands, DATA bodies up to CRLF.CRLF, ``BDAT n LAST`` and its n bytes),
    answers by a ``Policy``, and then applies at most one ``Fault`` to its
    reply stream (drop reply k, add a reply before reply k, garble reply k).
    Every reply text is unique (a serial number), so a test can tell which
    reply the engine paired with which recipient, and the server records what
    it really sent for each recipient and which bodies it accepted.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Iterable

from fastsmtplib._engine import (
    DEFERRED,
    DELIVERED,
    NOT_ATTEMPTED,
    PARTIAL,
    REFUSED,
    UNCERTAIN,
    Engine,
    SendResult,
)
from fastsmtplib._protocol import Capabilities
from fastsmtplib.errors import SMTPReplyTimeout

__all__ = [
    "CAPS", "Run", "drive", "Replies", "Policy", "Fault", "FakeServer", "Sent", "sender", "rcpt", "body",
    "body_went_out",
    "expected_status", "EXTRAS", "GARBLES", "DELIVERED", "PARTIAL", "REFUSED", "DEFERRED",
    "UNCERTAIN", "NOT_ATTEMPTED",
]

#: The server kinds the engine distinguishes.
CAPS = {
    "data": Capabilities(esmtp=True, pipelining=True, eightbitmime=True),
    "bdat": Capabilities(esmtp=True, pipelining=True, chunking=True, enhanced=True),
    "bdat-plain": Capabilities(esmtp=True, pipelining=True, chunking=True),
    "lockstep": Capabilities(esmtp=True, eightbitmime=True),
    "lockstep-enhanced": Capabilities(esmtp=True, enhanced=True),
    "lockstep-bdat": Capabilities(esmtp=True, chunking=True),
    "lmtp": Capabilities(esmtp=True, pipelining=True, enhanced=True),
    "lmtp-plain": Capabilities(esmtp=True, pipelining=True),
    "helo": Capabilities(),
}


# -- the driver loop ------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    writes: list[bytes] = dataclasses.field(default_factory=list)
    results: list[SendResult] = dataclasses.field(default_factory=list)
    stalled: bool = False  # the engine waited for a reply that never came
    timed_out: list[SendResult] = dataclasses.field(default_factory=list)  # reported by the timeout
    leftover: bytes = b""  # server bytes never fed (nothing was owed any more)
    #: Indices of results confirmed by "nothing more owed when a read ends"
    #: (rule 3) while server bytes were in fact still unread: a chunk boundary
    #: fell where the replies owed ran out, so an added reply the engine had
    #: not read yet could not have been seen (see ``drive``).
    early: set = dataclasses.field(default_factory=set)
    after_broken: bytes | None = None  # bytes_to_send() once broken (must be b"")

    def by_index(self) -> dict[Any, SendResult]:
        return {r.index: r for r in self.results}

    def statuses(self) -> list[str]:
        return [str(r.status) for r in sorted(self.results, key=lambda r: r.index)]


def _chunks(reply: Any) -> list[bytes]:
    if reply is None:
        return []
    if isinstance(reply, (bytes, bytearray)):
        return [bytes(reply)] if reply else []
    return [bytes(c) for c in reply if c]


def drive(
    eng: Engine,
    script: Callable[[bytes], Any],
    *,
    split: Callable[[bytes], Iterable[bytes]] | None = None,
    timeout: bool = False,
    before_write: Callable[[Engine], None] | None = None,
    max_rounds: int = 100_000,
) -> Run:
    """Move bytes between ``eng`` and ``script`` until nothing is owed.

    ``split`` cuts each reply chunk into the pieces ``receive`` gets (random
    chunk sizes); ``before_write`` runs before every ``bytes_to_send`` (a
    driver submitting as ``room()`` allows).
    """
    run = Run()
    pending: collections.deque[bytes] = collections.deque()
    for _ in range(max_rounds):
        if before_write is not None:
            before_write(eng)
        out = eng.bytes_to_send()
        if out:
            assert eng.broken is None, "wrote after the engine stopped"
            run.writes.append(out)
            for chunk in _chunks(script(out)):
                pending.extend(split(chunk) if split is not None else (chunk,))
        if eng.broken is not None or not eng.owed:
            break
        if not pending:
            run.stalled = True
            break
        got = eng.receive(pending.popleft())
        if got and pending and not eng.owed and eng.broken is None:
            run.early.update(r.index for r in got)
        run.results += got
    else:  # pragma: no cover - a livelock is a bug
        raise AssertionError("the engine never settled")
    run.results += eng.take_results()
    if run.stalled and timeout:
        run.timed_out = eng.connection_lost(SMTPReplyTimeout("timed out waiting for a reply"))
        run.results += run.timed_out
    if eng.broken is not None:
        run.after_broken = eng.bytes_to_send()
    run.leftover = b"".join(pending)
    return run


class Replies:
    """A script: the i-th client write gets ``replies[i]`` (b"" once they run out)."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.calls = 0

    def __call__(self, data: bytes) -> Any:
        self.calls += 1
        return self.replies.pop(0) if self.replies else b""


# -- messages -------------------------------------------------------------------------------------
def sender(i: int) -> str:
    return f"s{i}@example.org"


def rcpt(i: int, j: int) -> str:
    return f"r{i}.{j}@example.org"


def body(i: int) -> bytes:
    # A leading dot on a line: DATA must stuff it, BDAT must not.
    return b"Subject: m%d\r\n\r\nbody of m%d\r\n.dot line\r\nend\r\n" % (i, i)


def body_went_out(run: Run, i: int) -> bool:
    """True when the client wrote message ``i``'s body (not just a lone ".")."""
    return b"body of m%d\r\n" % i in b"".join(run.writes)


# -- the fake server ------------------------------------------------------------------------------
@dataclasses.dataclass
class Policy:
    """How the server answers.  Keys are addresses (``sender(i)``/``rcpt(i, j)``).

    mail: MAIL's code by sender (250).  rcpt: RCPT's code by recipient (250).
    data: DATA's code by sender when the envelope is fine (354).
    final: end of data / BDAT code by sender (250).  lmtp: LMTP's code after
    the data by recipient (250).  dot: the reply to a lone "." (554).
    rset: RSET's code by ordinal (250).
    data_354_anyway: DATA answered 354 although no recipient was accepted.
    sticky_bdat: a refused BDAT leaves the transaction open (RFC 3030 §2
    leaves it to the server), so the next MAIL is refused "503 nested".
    A 421 anywhere closes the server after it is sent (it reads nothing more).
    """

    mail: dict[str, int] = dataclasses.field(default_factory=dict)
    rcpt: dict[str, int] = dataclasses.field(default_factory=dict)
    data: dict[str, int] = dataclasses.field(default_factory=dict)
    final: dict[str, int] = dataclasses.field(default_factory=dict)
    lmtp: dict[str, int] = dataclasses.field(default_factory=dict)
    dot: dict[str, int] = dataclasses.field(default_factory=dict)
    rset: dict[int, int] = dataclasses.field(default_factory=dict)
    data_354_anyway: bool = False
    sticky_bdat: bool = False


#: Extra replies a faulty server may add.
EXTRAS = {
    "250": b"250 extra ok\r\n",
    "250-2.1": b"250 2.1.0 extra addressing\r\n",
    "250-2.0": b"250 2.0.0 extra other\r\n",
    "250-2.6": b"250 2.6.0 extra other\r\n",
    "550": b"550 5.7.1 extra refusal\r\n",
}
#: Replacements no command can return where they land ("wrong": 354 where a
#: 354 does not belong, 250 where DATA's 354 does).
GARBLES = ("wrong", "221", "199", "malformed")


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str  # "drop", "add" (before reply k), "add_after" (after reply k), "garble"
    k: int
    what: str = ""  # add: a key of EXTRAS; garble: one of GARBLES


_ENHANCED = {
    ("mail", 250): "2.1.0", ("rcpt", 250): "2.1.5", ("rcpt", 251): "2.1.5", ("final", 250): "2.0.0",
    ("lmtp", 250): "2.0.0", ("dot", 250): "2.0.0", ("rset", 250): "2.0.0", (None, 421): "4.4.2",
    (None, 450): "4.2.1", (None, 451): "4.3.0", (None, 452): "4.2.2", (None, 503): "5.5.1",
    (None, 550): "5.1.1", (None, 554): "5.6.0", (None, 500): "5.5.2", (None, 552): "5.3.4",
}


@dataclasses.dataclass
class Sent:
    """One reply the server decided on."""

    n: int  # its place in the reply stream (before faults)
    kind: str  # the command answered: mail, rcpt, data, final, lmtp, dot, rset, error (unknown)
    key: str  # the sender or recipient it answers
    code: int
    text: bytes
    emitted: bool = True  # False: dropped or garbled by the fault

    def as_reply(self) -> tuple[int, bytes]:
        """As the engine reports it: ``(code, text)``."""
        return self.code, self.text


class FakeServer:
    """A callable server script: client bytes in, reply bytes out."""

    def __init__(self, *, lmtp: bool = False, enhanced: bool = False, policy: Policy | None = None,
                 fault: Fault | None = None, hangup_after: int | None = None) -> None:
        self.lmtp = lmtp
        self.hangup_after = hangup_after  # go silent for good after reply n (-1: before any)
        self.enhanced = enhanced
        self.policy = policy if policy is not None else Policy()
        self.fault = fault
        self.fault_applied = False
        self.buf = b""
        self.mode = "cmd"  # "data", "bdat"
        self.bdat_left = 0
        self.tx: dict[str, Any] | None = None  # {"sender": str, "accepted": [rcpt]}
        self.last_mail = ""  # the sender of the last MAIL command, accepted or not
        self.closed = hangup_after == -1
        self.after_close: list[bytes] = []  # what the client wrote once the server had closed
        self.nrset = 0
        self.log: list[Sent] = []
        self.commands: list[bytes] = []  # command lines, in order
        self.bodies: dict[str, bytes] = {}  # sender -> body accepted for delivery (unstuffed)
        self.got_body: set[str] = set()  # senders whose body (not a lone ".") arrived
        self.body_for_failed_envelope: list[bytes] = []  # must stay empty (rule 4)
        self.accepted_body: set[str] = set()  # senders whose end of data the server accepted
        self._out: list[bytes] = []

    # -- what the tests look at ----------------------------------------------------------------
    def sent_for(self, key: str) -> set[tuple[int, bytes]]:
        """The replies really emitted for ``key`` (a recipient or a sender)."""
        return {(s.code, s.text) for s in self.log if s.key == key and s.emitted}

    def replies(self, kind: str | None = None) -> list[Sent]:
        return [s for s in self.log if kind is None or s.kind == kind]

    # -- the script ----------------------------------------------------------------------------
    def __call__(self, data: bytes) -> bytes:
        self._out = []
        if self.closed:
            self.after_close.append(data)
        else:
            self.buf += data
            self._process()
        return b"".join(self._out)

    def _process(self) -> None:
        while not self.closed:
            if self.mode == "data":
                framed = b"\r\n" + self.buf
                end = framed.find(b"\r\n.\r\n")
                if end < 0:
                    return
                raw = framed[2:end + 2]
                self.buf = framed[end + 5:]
                self.mode = "cmd"
                content = raw[1:] if raw.startswith(b".") else raw  # undo the stuffing
                self._end_of_data(content.replace(b"\r\n.", b"\r\n"), dot_only=raw == b"")
            elif self.mode == "bdat":
                if len(self.buf) < self.bdat_left:
                    return
                chunk, self.buf = self.buf[:self.bdat_left], self.buf[self.bdat_left:]
                self.mode = "cmd"
                self._end_of_bdat(chunk)
            else:
                nl = self.buf.find(b"\r\n")
                if nl < 0:
                    return
                line, self.buf = self.buf[:nl], self.buf[nl + 2:]
                self.commands.append(line)
                self._command(line)

    def _command(self, line: bytes) -> None:
        verb = line.split(b" ", 1)[0].lower()
        pol = self.policy
        if verb == b"mail":
            who = self.last_mail = _path(line)
            if self.tx is not None:
                self._reply("mail", who, 503, "nested MAIL")
                return
            code = pol.mail.get(who, 250)
            if code == 250:
                self.tx = {"sender": who, "accepted": []}
            self._reply("mail", who, code, "sender")
        elif verb == b"rcpt":
            who = _path(line)
            if self.tx is None:
                self._reply("rcpt", who, 503, "need MAIL")
                return
            code = pol.rcpt.get(who, 250)
            if code in (250, 251):
                self.tx["accepted"].append(who)
            self._reply("rcpt", who, code, "recipient")
        elif verb == b"data":
            tx = self.tx
            if tx is None:
                self._reply("data", self.last_mail, 503, "need MAIL")
            elif not tx["accepted"]:
                if pol.data_354_anyway:
                    self.mode = "data"
                    self._reply("data", tx["sender"], 354, "go ahead anyway")
                else:
                    self._reply("data", tx["sender"], 554, "no valid recipients")
            else:
                code = pol.data.get(tx["sender"], 354)
                if code == 354:
                    self.mode = "data"
                self._reply("data", tx["sender"], code, "go ahead" if code == 354 else "data refused")
        elif verb == b"bdat":
            parts = line.split()
            self.bdat_left = int(parts[1])
            assert len(parts) == 3 and parts[2].lower() == b"last", line
            self.mode = "bdat"
        elif verb == b"rset":
            self.tx = None
            code = pol.rset.get(self.nrset, 250)
            self.nrset += 1
            self._reply("rset", "", code, "reset")
        else:
            self._reply("error", "", 500, "unknown command")

    def _end_of_data(self, content: bytes, dot_only: bool) -> None:
        tx, self.tx = self.tx, None
        assert tx is not None, "DATA mode without a transaction"
        if not tx["accepted"]:
            if not dot_only:
                self.body_for_failed_envelope.append(content)
            self._reply("dot", tx["sender"], self.policy.dot.get(tx["sender"], 554), "no valid recipients")
            return
        self.got_body.add(tx["sender"])
        self._deliver(tx, content)

    def _end_of_bdat(self, content: bytes) -> None:
        tx = self.tx
        if tx is None:
            # The client sent the body (of its last MAIL's message) all the same.
            self.got_body.add(self.last_mail)
            self._reply("final", self.last_mail, 503, "BDAT without MAIL")
            return
        self.got_body.add(tx["sender"])
        if not tx["accepted"]:
            if not self.policy.sticky_bdat:
                self.tx = None
            self._reply("final", tx["sender"], 554, "no valid recipients")
            return
        ok = self._deliver(tx, content)
        if ok or not self.policy.sticky_bdat:
            self.tx = None

    def _deliver(self, tx: dict[str, Any], content: bytes) -> bool:
        who = tx["sender"]
        if self.lmtp:
            codes = [self.policy.lmtp.get(r, 250) for r in tx["accepted"]]
            if 250 in codes:
                self.accepted_body.add(who)
                self.bodies[who] = content
            for r, code in zip(tx["accepted"], codes):
                if self.closed:
                    break
                self._reply("lmtp", r, code, "delivered" if code == 250 else "not delivered")
            return 250 in codes
        code = self.policy.final.get(who, 250)
        if code == 250:
            self.accepted_body.add(who)
            self.bodies[who] = content
        self._reply("final", who, code, "queued" if code == 250 else "not queued")
        return code == 250

    def _reply(self, kind: str, key: str, code: int, what: str) -> None:
        n = len(self.log)
        enh = _ENHANCED.get((kind, code)) or _ENHANCED.get((None, code))
        text = b"%s%s %s #%d" % ((enh + " ").encode() if self.enhanced and enh and code != 354 else b"",
                                  what.encode(), key.encode(), n)
        sent = Sent(n, kind, key, code, text)
        self.log.append(sent)
        line = b"%d %s\r\n" % (code, text)
        fault = self.fault
        if fault is not None and fault.k == n:
            self.fault_applied = True
            if fault.kind == "drop":
                sent.emitted = False
                line = b""
            elif fault.kind == "add":
                self._out.append(EXTRAS[fault.what])
            elif fault.kind == "garble":
                sent.emitted = False
                line = _garble(fault.what, kind)
        self._out.append(line)
        if fault is not None and fault.k == n and fault.kind == "add_after":
            self._out.append(EXTRAS[fault.what])
        if code == 421 or n == self.hangup_after:
            self.closed = True


def _garble(what: str, kind: str) -> bytes:
    if what == "wrong":
        return b"250 2.0.0 garbled\r\n" if kind == "data" else b"354 garbled\r\n"
    if what == "221":
        return b"221 2.0.0 garbled bye\r\n"
    if what == "199":
        return b"199 garbled\r\n"
    assert what == "malformed"
    return b"hello\r\n"


def _path(line: bytes) -> str:
    start, end = line.find(b"<"), line.find(b">")
    return line[start + 1:end].decode()


# -- what the policy implies ----------------------------------------------------------------------
def expected_status(policy: Policy, i: int, nrcpt: int, *, lmtp: bool) -> str:
    """The status a fault-free server answering by ``policy`` implies for message ``i``."""
    who = sender(i)
    rcpts = [rcpt(i, j) for j in range(nrcpt)]
    mail = policy.mail.get(who, 250)
    if mail != 250:
        return DEFERRED if 400 <= mail < 500 else REFUSED
    codes = {r: policy.rcpt.get(r, 250) for r in rcpts}
    accepted = [r for r in rcpts if codes[r] in (250, 251)]
    if not accepted:
        return DEFERRED if any(400 <= c < 500 for c in codes.values()) else REFUSED
    if lmtp:
        finals = {r: policy.lmtp.get(r, 250) for r in accepted}
        if 250 not in finals.values():
            refused = [c for c in list(codes.values()) + list(finals.values()) if c not in (250, 251)]
            return DEFERRED if any(400 <= c < 500 for c in refused) else REFUSED
        return DELIVERED if len(accepted) == len(rcpts) and set(finals.values()) == {250} else PARTIAL
    final = policy.final.get(who, 250)
    if final != 250:
        return DEFERRED if 400 <= final < 500 else REFUSED
    return DELIVERED if len(accepted) == len(rcpts) else PARTIAL
