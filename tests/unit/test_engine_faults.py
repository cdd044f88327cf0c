"""The engine against a server whose reply stream is wrong: rules 1-3.

A server in step answers every command once, in order.  A faulty one drops a
reply, adds one, or sends one no command can return.  The engine must notice
(``broken`` is an ``SMTPPipelineError``, or, for a dropped reply, it waits
for a reply that never comes and the driver's timeout ends it), and whatever
it reported before must still be true:

* every submitted message gets exactly one result;
* no recipient is charged with another command's reply;
* no message whose body the server accepted is reported refused, deferred,
  failed or not_attempted;
* a message reported by the stop is ``uncertain`` if its body went out, else
  ``not_attempted``;
* after ``broken`` nothing more is written.

Part 1 puts one fault at every reply position of a 3-message run (DATA,
BDAT with ENHANCEDSTATUSCODES, LMTP), each server write read in one piece.
Part 2 is a hypothesis test: random batches, policies, capabilities and one
fault, the replies fed in random chunk sizes.

One limit is inherent, and the tests say where: a read that ends exactly
where the replies owed run out confirms the results (rule 3, "nothing more
owed when a read ends"); when a chunk boundary falls there while an added
reply has not been read yet, nothing the client has seen is wrong.  Such
results are in ``Run.early`` and excused from the two checks above about
accepted bodies and recipients' replies (the engine notices the shift
later, when a reply arrives that cannot be paired).

A stray "250 2.0.0" on a BDAT's own reply slot (an RSET's reply after the
BDAT's was dropped, or an added one) completes an "A then D" pair; rule 3
confirms only through the pair's first reply, so the message it finished
waits for the next proof (``test_dropped_refusal_of_a_bdat_is_not_reported_delivered``).
"""

from __future__ import annotations

import collections
import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastsmtplib._engine import Engine
from fastsmtplib._protocol import Capabilities
from fastsmtplib.errors import (
    SMTPDataError,
    SMTPPipelineError,
    SMTPRecipientsRefused,
    SMTPReplyTimeout,
    SMTPSenderRefused,
)
from tests.support.engine_harness import (
    CAPS,
    DELIVERED,
    EXTRAS,
    GARBLES,
    NOT_ATTEMPTED,
    PARTIAL,
    REFUSED,
    UNCERTAIN,
    FakeServer,
    Fault,
    Policy,
    Run,
    Sent,
    body,
    body_went_out,
    drive,
    expected_status,
    rcpt,
    sender,
)
from tests.support.target import fastsmtplib_only

pytestmark = fastsmtplib_only

OK_STATUSES = (DELIVERED, PARTIAL)


# -- shared checks ---------------------------------------------------------------------------------
def check_sane(eng: Engine, srv: FakeServer, run: Run, n: int) -> None:
    """What must hold whatever the server did (see the module docstring)."""
    indices = sorted(r.index for r in run.results)
    assert indices == list(range(n)), f"one result per message: {indices}"
    assert all(r.status for r in run.results)
    if eng.broken is not None:
        assert run.after_broken == b"", "wrote after the engine stopped"
        assert eng.bytes_to_send() == b"" and eng.owed == 0
    assert srv.body_for_failed_envelope == [], "a body after a failed envelope (rule 4)"
    for r in run.results:
        went_out = body_went_out(run, r.index)
        if r.status == UNCERTAIN:
            assert went_out, f"m{r.index} uncertain, but its body never went out"
        if r.exception is not None and r.exception is eng.broken:
            # Reported by the stop: by what is known, nothing paired kept.
            assert r.status == (UNCERTAIN if went_out else NOT_ATTEMPTED), r
            assert r.recipients == {} and r.reply is None and r.data_replies == []
        if r.index in run.early:
            continue  # confirmed by a read that ended before an unread reply: see the docstring
        if sender(r.index) in srv.accepted_body:
            assert r.status in (DELIVERED, PARTIAL, UNCERTAIN), f"m{r.index}: body accepted, reported {r.status}"
        for who, reply in r.recipients.items():
            assert reply in srv.sent_for(who), f"m{r.index}: {who} charged with {reply}, not its own reply"
        for who, reply in r.data_replies:
            assert reply in srv.sent_for(who) and r.recipients[who] == reply
        if r.status in OK_STATUSES:
            assert r.exception is None
            assert any(c in (250, 251) for c, _ in r.recipients.values())


def check_timeout(run: Run) -> None:
    """A drop left the client waiting; the timeout reports by what went out."""
    for r in run.timed_out:
        assert isinstance(r.exception, SMTPReplyTimeout)
        assert r.status == (UNCERTAIN if body_went_out(run, r.index) else NOT_ATTEMPTED), r


# == part 1: one fault at every reply position =====================================================
MIXED = Policy(
    rcpt={rcpt(0, 1): 550, rcpt(1, 0): 550, rcpt(1, 1): 450},
    final={sender(2): 554},
    lmtp={rcpt(0, 0): 452, rcpt(2, 1): 550},
    sticky_bdat=True,
)
SCENARIOS = {
    # name: (capabilities, lmtp, policy)
    "data-ok": ("data", False, Policy()),
    "data-mixed": ("data", False, MIXED),
    "data-dot": ("data", False, Policy(mail={sender(0): 550}, rcpt={rcpt(1, 0): 550, rcpt(1, 1): 550},
                                       data_354_anyway=True)),
    "bdat-ok": ("bdat", False, Policy()),
    "bdat-mixed": ("bdat", False, MIXED),
    "bdat-refused": ("bdat", False, Policy(final={sender(0): 554, sender(1): 451})),
    "lmtp-ok": ("lmtp", True, Policy()),
    "lmtp-mixed": ("lmtp", True, MIXED),
    "lmtp-plain-mixed": ("lmtp-plain", True, MIXED),
}
N_MSGS, N_RCPTS = 3, 2


def run_scenario(name: str, fault: Fault | None, **kw) -> tuple[Engine, FakeServer, Run]:
    caps, lmtp, policy = SCENARIOS[name]
    eng = Engine(CAPS[caps], lmtp=lmtp, window=N_MSGS)
    srv = FakeServer(lmtp=lmtp, enhanced=CAPS[caps].enhanced, policy=policy, fault=fault)
    for i in range(N_MSGS):
        eng.submit(i, sender(i), [rcpt(i, j) for j in range(N_RCPTS)], body(i))
    return eng, srv, drive(eng, srv, **kw)


@functools.lru_cache(maxsize=None)
def _clean_log(name: str) -> tuple[Sent, ...]:
    """The replies of the scenario's fault-free run."""
    _, srv, run = run_scenario(name, None)
    assert not run.stalled and srv.log
    return tuple(srv.log)


def _faults(name: str) -> list[Fault]:
    n = len(_clean_log(name))
    faults = [Fault("drop", k) for k in range(n)]
    faults += [Fault("add", k, what) for k in range(n) for what in EXTRAS]
    faults += [Fault("add_after", n - 1, what) for what in EXTRAS]  # after the very last reply
    faults += [Fault("garble", k, what) for k in range(n) for what in GARBLES]
    return faults


FAULT_CASES = [pytest.param(name, f, id=f"{name}-{f.kind}{f.k}-{f.what}".rstrip("-"))
               for name in SCENARIOS for f in _faults(name)]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_without_fault(name):
    caps, lmtp, policy = SCENARIOS[name]
    eng, srv, run = run_scenario(name, None)
    assert eng.broken is None and eng.idle and not run.stalled and run.leftover == b""
    check_sane(eng, srv, run, N_MSGS)
    for r in run.results:
        assert r.status == expected_status(policy, r.index, N_RCPTS, lmtp=lmtp)


@pytest.mark.parametrize("name, fault", FAULT_CASES)
def test_fault_at_every_position(name, fault):
    caps, lmtp, policy = SCENARIOS[name]
    eng, srv, run = run_scenario(name, fault, timeout=True)
    assert srv.fault_applied
    check_sane(eng, srv, run, N_MSGS)
    # Each server write is read in one piece here: nothing can hide.
    assert not run.early
    # Detected: out of step, or (a dropped reply) a wait that timed out.
    if run.stalled:
        assert fault.kind == "drop", f"stalled on {fault}"
        assert isinstance(eng.broken, SMTPReplyTimeout)
        check_timeout(run)
    else:
        assert isinstance(eng.broken, SMTPPipelineError), f"{fault} not detected: {eng.broken!r}"
    # Whatever was reported before the fault was found is the truth.
    for r in run.results:
        if r.exception is not None and r.exception is eng.broken:
            continue
        assert r.status == expected_status(policy, r.index, N_RCPTS, lmtp=lmtp), r
        if r.reply is not None:
            mine = set().union(*(srv.sent_for(who) for who in [sender(r.index), *r.to_addrs]))
            assert r.reply in mine, r


def test_dropped_refusal_of_a_bdat_is_not_reported_delivered():
    # A stray lookalike on a BDAT's slot, step by step.  m0's BDAT is refused,
    # that reply is lost; the RSET written behind m0 answers "250 2.0.0",
    # which lands on m0's BDAT and completes an "A then D" pair.
    eng = Engine(CAPS["bdat"], window=2)
    rs = [eng.submit(i, sender(i), [rcpt(i, 0)], body(i)) for i in range(2)]
    assert eng.bytes_to_send().count(b"BDAT") == 2
    # The server: 250 2.1.0, 250 2.1.5, [554 5.6.0 dropped], 250 2.0.0 (RSET) ...
    got = eng.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 reset\r\n")
    got += eng.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued\r\n")
    assert isinstance(eng.broken, SMTPPipelineError)  # caught at m1's replies ...
    assert [str(r.status) for r in rs] == [UNCERTAIN, UNCERTAIN]  # ... but m0 was reported delivered


def test_split_right_after_an_added_reply_hides_it():
    # The inherent limit (module docstring): DATA pipelining, an added
    # "250" after MAIL's, and the read ends exactly where the replies owed
    # run out.  What the client has seen is a valid exchange (DATA refused
    # after one recipient was accepted), so it reports it; the shift shows
    # later, when a reply arrives that nothing was asked for.
    eng = Engine(CAPS["data"])
    r = eng.submit(0, sender(0), [rcpt(0, 0), rcpt(0, 1)], body(0))
    eng.bytes_to_send()
    # The server: MAIL 250, an added 250, RCPT 550, RCPT 550 | DATA 554.
    assert eng.receive(b"250 ok\r\n250 extra\r\n550 no a\r\n550 no b\r\n") == [r]
    assert r.status == REFUSED and r.recipients[rcpt(0, 0)] == (250, b"extra")
    assert eng.bytes_to_send() == b"rset\r\n"
    # DATA's 554 is taken as the RSET's (a failure may answer any command) ...
    assert eng.receive(b"554 no valid recipients\r\n") == [] and eng.broken is None
    # ... and the RSET's 250 is the reply nobody asked for.
    assert eng.receive(b"250 reset\r\n") == []
    assert isinstance(eng.broken, SMTPPipelineError) and eng.bytes_to_send() == b""


# == part 2: hypothesis -- random batches, policies, capabilities, one fault, random chunks =========
SERVER_KINDS = ("data", "bdat", "lockstep", "lmtp")


@st.composite
def faults(draw) -> Fault | None:
    kind = draw(st.sampled_from(["none", "drop", "add", "add_after", "garble"]))
    k = draw(st.integers(0, 40))
    if kind == "none":
        return None
    if kind == "drop":
        return Fault("drop", k)
    if kind == "garble":
        return Fault("garble", k, draw(st.sampled_from(GARBLES)))
    return Fault(kind, k, draw(st.sampled_from(sorted(EXTRAS))))


@st.composite
def cases(draw) -> dict:
    kind = draw(st.sampled_from(SERVER_KINDS))
    # BDAT runs a window only with ENHANCEDSTATUSCODES (rule 5); the others
    # are tried with and without it.
    enhanced = True if kind == "bdat" else draw(st.booleans())
    caps = {
        "data": Capabilities(esmtp=True, pipelining=True, enhanced=enhanced),
        "bdat": Capabilities(esmtp=True, pipelining=True, chunking=True, enhanced=True),
        "lockstep": Capabilities(esmtp=True, enhanced=enhanced),
        "lmtp": Capabilities(esmtp=True, pipelining=True, enhanced=enhanced),
    }[kind]
    n = draw(st.integers(1, 6))
    nrcpt = [draw(st.integers(1, 3)) for _ in range(n)]
    policy = Policy(data_354_anyway=draw(st.booleans()), sticky_bdat=draw(st.booleans()))
    for i in range(n):
        policy.mail[sender(i)] = draw(st.sampled_from([250, 250, 250, 550]))
        policy.final[sender(i)] = draw(st.sampled_from([250, 250, 451, 554]))
        for j in range(nrcpt[i]):
            policy.rcpt[rcpt(i, j)] = draw(st.sampled_from([250, 250, 450, 550]))
            policy.lmtp[rcpt(i, j)] = draw(st.sampled_from([250, 250, 452, 550]))
    return dict(kind=kind, caps=caps, nrcpt=nrcpt, policy=policy, fault=draw(faults()),
                window=draw(st.integers(1, 6)), incremental=draw(st.booleans()),
                chunks=draw(st.lists(st.integers(1, 64), min_size=1, max_size=8)))


def _splitter(sizes: list[int]):
    state = [0]

    def split(data: bytes) -> list[bytes]:
        out = []
        while data:
            size = sizes[state[0] % len(sizes)]
            state[0] += 1
            out.append(data[:size])
            data = data[size:]
        return out

    return split


def _expected_rsets(c: dict) -> int:
    """RSETs a server in step sees without BDAT: one per transaction left open."""
    policy, count = c["policy"], 0
    for i, nr in enumerate(c["nrcpt"]):
        accepted = [j for j in range(nr) if policy.rcpt[rcpt(i, j)] == 250]
        if policy.mail[sender(i)] != 250:
            count += 1  # DATA refused "503" (pipelined), or RSET at once (lock-step)
        elif not accepted:
            # Pipelined: DATA answered 354 anyway -> a lone "." ends it.
            count += 0 if (policy.data_354_anyway and c["kind"] != "lockstep") else 1
    return count


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=cases())
def test_random_batches_one_fault_random_chunks(c):
    kind, policy, nrcpt = c["kind"], c["policy"], c["nrcpt"]
    lmtp = kind == "lmtp"
    n = len(nrcpt)
    eng = Engine(c["caps"], lmtp=lmtp, window=c["window"])
    srv = FakeServer(lmtp=lmtp, enhanced=c["caps"].enhanced, policy=policy, fault=c["fault"])
    todo = collections.deque(range(n))

    def submit(i: int) -> None:
        eng.submit(i, sender(i), [rcpt(i, j) for j in range(nrcpt[i])], body(i))

    def as_room_allows(e: Engine) -> None:  # a driver reading ahead as send_many does
        while todo and e.broken is None and e.room() > 0:
            submit(todo.popleft())

    if not c["incremental"]:
        while todo:
            submit(todo.popleft())
    run = drive(eng, srv, split=_splitter(c["chunks"]), timeout=True,
                before_write=as_room_allows if c["incremental"] else None)
    if todo:  # the engine stopped before the driver handed these over
        assert eng.broken is not None
        while todo:
            submit(todo.popleft())
        late = eng.take_results()
        assert all(r.status == NOT_ATTEMPTED and r.exception is eng.broken for r in late)
        run.results += late
    check_sane(eng, srv, run, n)
    check_timeout(run)
    assert all(r.attempts <= 1 for r in run.results)

    if c["fault"] is not None and srv.fault_applied:
        return
    # A server in step: every status and reply is exactly what it said.
    assert eng.broken is None and not run.stalled and eng.idle and run.leftover == b""
    assert not run.early
    assert not [s for s in srv.replies("mail") if s.code == 503], "MAIL inside an open transaction"
    if kind != "bdat":
        assert srv.commands.count(b"rset") == _expected_rsets(c)
    for r in run.results:
        i = r.index
        assert r.status == expected_status(policy, i, nrcpt[i], lmtp=lmtp), r
        assert r.attempts == 1
        emitted = {}
        for s in srv.log:
            if s.key.startswith("r%d." % i):
                emitted[s.key] = s.as_reply()  # the last reply for each recipient
        assert r.recipients == emitted
        if r.ok:
            assert srv.bodies[sender(i)] == body(i)
            if lmtp:
                assert r.data_replies == [(who, emitted[who]) for who in r.to_addrs
                                          if policy.rcpt[who] == 250]
        else:
            assert sender(i) not in srv.accepted_body
            mail_ok = policy.mail[sender(i)] == 250
            any_rcpt = any(policy.rcpt[rcpt(i, j)] == 250 for j in range(nrcpt[i]))
            want = SMTPSenderRefused if not mail_ok else SMTPRecipientsRefused if not any_rcpt else SMTPDataError
            assert type(r.exception) is want, r
