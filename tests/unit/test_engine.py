"""The sans-IO engine (``_engine.Engine``), bytes in and bytes out, no socket.

Every rule of the engine's docstring (1-9) and every status it reports, for
DATA pipelining, BDAT (with and without ENHANCEDSTATUSCODES), lock-step and
LMTP: the exact bytes written at each step, the results and when they are
reported, 421 at every step, a lost connection at every step and replies
over the parser's limits.  ``failed`` is the drivers' status (the client
refuses a message before the engine sees it), so it does not appear here.

Faults in the reply stream (dropped, added, garbled replies) are in
``test_engine_faults.py``; the driver loop and the fake server are in
``tests/support/engine_harness.py``.
"""

from __future__ import annotations

import pytest

from fastsmtplib._engine import Engine, SendResult, Status
from fastsmtplib._protocol import Capabilities
from fastsmtplib.errors import (
    SMTPDataError,
    SMTPPipelineError,
    SMTPRecipientsRefused,
    SMTPReplyTimeout,
    SMTPReplyTooLong,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)
from tests.support.engine_harness import (
    CAPS,
    DEFERRED,
    DELIVERED,
    NOT_ATTEMPTED,
    PARTIAL,
    REFUSED,
    UNCERTAIN,
    FakeServer,
    Policy,
    Replies,
    body,
    body_went_out,
    drive,
    expected_status,
    rcpt,
    sender,
)
from tests.support.target import fastsmtplib_only

pytestmark = fastsmtplib_only


# -- helpers --------------------------------------------------------------------------------------
def make(kind: str, **kw) -> Engine:
    return Engine(CAPS[kind], lmtp=kind.startswith("lmtp"), **kw)


def submit(eng: Engine, i: int, nrcpt: int = 1) -> SendResult:
    return eng.submit(i, sender(i), [rcpt(i, j) for j in range(nrcpt)], body(i))


def env(i: int, nrcpt: int = 1) -> bytes:
    """MAIL and RCPT lines of message ``i`` as the engine writes them."""
    return b"mail FROM:<s%d@example.org>\r\n" % i + b"".join(
        b"rcpt TO:<r%d.%d@example.org>\r\n" % (i, j) for j in range(nrcpt))


def stuffed(i: int) -> bytes:
    """Message ``i``'s DATA payload: dot-stuffed, terminated."""
    return b"Subject: m%d\r\n\r\nbody of m%d\r\n..dot line\r\nend\r\n.\r\n" % (i, i)


def bdat(i: int) -> bytes:
    """``BDAT n LAST`` and message ``i``'s payload: not stuffed, n its exact size."""
    payload = body(i)
    assert b"\r\n.dot line" in payload
    return b"BDAT %d LAST\r\n" % len(payload) + payload


def R(*lines: str) -> bytes:
    """Reply lines, CRLF-terminated."""
    return b"".join(line.encode() + b"\r\n" for line in lines)


def statuses(results) -> list[str]:
    return [str(r.status) for r in sorted(results, key=lambda r: r.index)]


def check_stopped(eng: Engine, exc_type: type) -> None:
    assert isinstance(eng.broken, exc_type), eng.broken
    assert eng.bytes_to_send() == b""
    assert eng.owed == 0 and eng.idle


# == basics ========================================================================================
def test_status_is_a_str_enum_and_results_start_empty():
    assert Status.DELIVERED == "delivered" and str(Status.NOT_ATTEMPTED) == "not_attempted"
    eng = make("data")
    r = submit(eng, 0)
    assert (r.index, r.from_addr, r.to_addrs, r.status) == (0, "s0@example.org", ["r0.0@example.org"], "")
    assert eng.queued == 1 and eng.in_flight == 0 and not eng.idle and eng.owed == 0


def test_no_recipients_is_refused_at_submit_and_queues_nothing():
    eng = make("data")
    with pytest.raises(ValueError):
        eng.submit(0, "s@example.org", [], b"x")
    assert eng.idle and eng.bytes_to_send() == b""


def test_window_below_one_raises():
    with pytest.raises(ValueError):
        make("bdat", window=0)


def test_receive_nothing_owed_is_out_of_step():
    # Rule 2: a reply nobody asked for.
    eng = make("data")
    assert eng.receive(b"250 hello\r\n") == []
    check_stopped(eng, SMTPPipelineError)
    # A message submitted after the engine stopped is not attempted, at once.
    r = submit(eng, 0)
    assert eng.take_results() == [r]
    assert r.status == NOT_ATTEMPTED and r.exception is eng.broken
    assert eng.bytes_to_send() == b""


def test_partial_reply_after_everything_owed_is_out_of_step():
    eng = make("data")
    submit(eng, 0)
    assert eng.bytes_to_send() == env(0) + b"data\r\n"
    eng.receive(R("250 ok", "250 ok", "354 go"))
    assert eng.bytes_to_send() == stuffed(0)
    # The final reply and the start of another one in the same read: the
    # server is saying something nobody asked for.
    [r] = eng.receive(b"250 queued\r\n250-more")
    assert r.status == UNCERTAIN and isinstance(r.exception, SMTPPipelineError)
    check_stopped(eng, SMTPPipelineError)


# == DATA pipelining (rules 3, 4, 6) ===============================================================
def test_data_envelope_in_one_write_body_after_354():
    eng = make("data")
    r = submit(eng, 0, 2)
    assert eng.bytes_to_send() == (b"mail FROM:<s0@example.org>\r\nrcpt TO:<r0.0@example.org>\r\n"
                                   b"rcpt TO:<r0.1@example.org>\r\ndata\r\n")
    assert eng.owed == 4 and eng.deadline_kind == "mail"
    assert eng.receive(R("250 2.1.0 sender ok", "250 2.1.5 a ok", "250 2.1.5 b ok")) == []
    assert eng.bytes_to_send() == b""  # the body waits for 354 (RFC 2920 §3.1)
    assert eng.deadline_kind == "data"
    assert eng.receive(R("354 go ahead")) == []
    assert eng.bytes_to_send() == stuffed(0)
    assert eng.deadline_kind == "final"
    assert eng.receive(b"250 2.0.0 que") == []  # half a reply reports nothing
    assert eng.receive(b"ued\r\n") == [r]
    assert r.status == DELIVERED and r.ok and r.exception is None
    assert r.recipients == {"r0.0@example.org": (250, b"2.1.5 a ok"), "r0.1@example.org": (250, b"2.1.5 b ok")}
    assert r.reply == (250, b"2.0.0 queued") and r.refused == {} and r.attempts == 1
    assert r.data_replies == []
    assert eng.idle and eng.bytes_to_send() == b""


def test_data_next_envelope_rides_with_the_body_and_results_wait_for_confirmation():
    eng = make("data")
    rs = [submit(eng, i) for i in range(3)]
    assert eng.bytes_to_send() == env(0) + b"data\r\n"
    assert eng.bytes_to_send() == b""  # one envelope awaits its DATA reply at a time
    eng.receive(R("250 ok", "250 ok", "354 go"))
    assert eng.bytes_to_send() == stuffed(0) + env(1) + b"data\r\n"
    # m0's 250 alone does not report it: a shifted stream would look the
    # same until the next 354 lands where DATA's reply belongs (rule 3).
    assert eng.receive(R("250 m0 queued")) == []
    assert eng.receive(R("250 ok", "250 ok")) == []
    assert eng.receive(R("354 go")) == [rs[0]]
    assert rs[0].status == DELIVERED and rs[0].reply == (250, b"m0 queued")
    assert eng.bytes_to_send() == stuffed(1) + env(2) + b"data\r\n"
    # All in one read: m1 is confirmed by m2's 354.
    assert eng.receive(R("250 m1 queued", "250 ok", "250 ok", "354 go")) == [rs[1]]
    assert eng.bytes_to_send() == stuffed(2)
    # The last one: nothing more owed when the read ends confirms it.
    assert eng.receive(R("250 m2 queued")) == [rs[2]]
    assert statuses(rs) == [DELIVERED] * 3 and eng.idle


def test_data_replies_one_byte_at_a_time():
    # A script may answer with a list of chunks: each is one ``receive``, and
    # the engine writes again after each, as a driver does.  Byte by byte,
    # nothing changes but when results come out.
    eng = make("data")
    rs = [submit(eng, 0), submit(eng, 1)]

    def bytewise(data: bytes) -> list[bytes]:
        return [bytes([b]) for b in data]

    script = Replies(bytewise(R("250 ok", "250 ok", "354 go")),
                     bytewise(R("250 m0 queued", "250 ok", "250 ok", "354 go")),
                     bytewise(R("250 m1 queued")))
    run = drive(eng, script)
    assert run.writes == [env(0) + b"data\r\n", stuffed(0) + env(1) + b"data\r\n", stuffed(1)]
    assert script.calls == 3 and statuses(rs) == [DELIVERED, DELIVERED] and not run.early
    assert [r.reply for r in rs] == [(250, b"m0 queued"), (250, b"m1 queued")]


def test_data_partial_delivery():
    eng = make("data")
    r = submit(eng, 0, 3)
    run = drive(eng, FakeServer(policy=Policy(rcpt={rcpt(0, 1): 550})))
    assert run.results == [r]
    assert r.status == PARTIAL and r.ok and r.exception is None
    assert list(r.refused) == [rcpt(0, 1)] and r.refused[rcpt(0, 1)][0] == 550
    assert [c for c, _ in r.recipients.values()] == [250, 550, 250]
    assert run.writes == [env(0, 3) + b"data\r\n", stuffed(0)]


@pytest.mark.parametrize("mail, rcpts, status, exc_type", [
    (550, (250, 250), REFUSED, SMTPSenderRefused),
    (451, (250, 250), DEFERRED, SMTPSenderRefused),
    (250, (550, 550), REFUSED, SMTPRecipientsRefused),
    (250, (550, 450), DEFERRED, SMTPRecipientsRefused),  # any 4yz: try later
])
def test_data_failed_envelope_then_rset(mail, rcpts, status, exc_type):
    # The server refuses DATA too (no valid recipients / no transaction): the
    # transaction may still be open, so RSET follows (rule 6), in the write
    # that carries the next envelope.
    eng = make("data")
    r0, r1 = submit(eng, 0, 2), submit(eng, 1)
    policy = Policy(mail={sender(0): mail}, rcpt={rcpt(0, j): c for j, c in enumerate(rcpts)})
    srv = FakeServer(policy=policy)
    run = drive(eng, srv)
    assert run.writes == [env(0, 2) + b"data\r\n", b"rset\r\n" + env(1) + b"data\r\n", stuffed(1)]
    assert r0.status == status and isinstance(r0.exception, exc_type) and not r0.ok
    if exc_type is SMTPSenderRefused:
        assert r0.exception.smtp_code == mail and r0.exception.sender == sender(0)
    else:
        assert r0.exception.recipients == r0.refused == {rcpt(0, j): r0.recipients[rcpt(0, j)] for j in range(2)}
    assert r0.reply[0] in (503, 554)  # what DATA was answered
    assert r1.status == DELIVERED
    assert not srv.got_body - {sender(1)}


def test_data_failed_last_envelope_rset_alone():
    eng = make("data")
    r = submit(eng, 0)
    run = drive(eng, FakeServer(policy=Policy(rcpt={rcpt(0, 0): 550})))
    assert run.writes == [env(0) + b"data\r\n", b"rset\r\n"]
    assert r.status == REFUSED and eng.idle


@pytest.mark.parametrize("dot_reply", [554, 250])
def test_data_354_after_failed_envelope_sends_only_the_dot(dot_reply):
    # Rule 4 (RFC 2920 §3.1): DATA answered 354 although no recipient was
    # accepted: "." ends the transaction, never the body; and no RSET after
    # it (the end of data closed the transaction, and the next envelope is
    # already behind the dot on the wire).
    eng = make("data")
    r0, r1 = submit(eng, 0, 2), submit(eng, 1)
    policy = Policy(rcpt={rcpt(0, 0): 550, rcpt(0, 1): 550}, data_354_anyway=True, dot={sender(0): dot_reply})
    srv = FakeServer(policy=policy)
    run = drive(eng, srv)
    assert run.writes == [env(0, 2) + b"data\r\n", b".\r\n" + env(1) + b"data\r\n", stuffed(1)]
    assert not body_went_out(run, 0) and srv.body_for_failed_envelope == []
    assert r0.status == REFUSED and isinstance(r0.exception, SMTPRecipientsRefused)
    assert r0.reply == srv.replies("dot")[0].as_reply()
    assert r1.status == DELIVERED
    assert b"rset" not in b"".join(run.writes)


def test_data_354_after_refused_mail_sends_only_the_dot():
    eng = make("data")
    r = submit(eng, 0)
    assert eng.bytes_to_send() == env(0) + b"data\r\n"
    eng.receive(R("550 5.1.0 no", "503 5.5.1 need mail", "354 go"))
    assert eng.bytes_to_send() == b".\r\n"
    assert eng.receive(R("503 5.5.1 no transaction")) == [r]
    assert r.status == REFUSED and isinstance(r.exception, SMTPSenderRefused)
    assert eng.bytes_to_send() == b"" and eng.idle


@pytest.mark.parametrize("code, status", [(554, REFUSED), (451, DEFERRED)])
def test_data_refused_although_envelope_fine_then_rset(code, status):
    eng = make("data")
    r0, r1 = submit(eng, 0), submit(eng, 1)
    srv = FakeServer(policy=Policy(data={sender(0): code}))
    run = drive(eng, srv)
    assert run.writes == [env(0) + b"data\r\n", b"rset\r\n" + env(1) + b"data\r\n", stuffed(1)]
    assert r0.status == status and type(r0.exception) is SMTPDataError and r0.exception.smtp_code == code
    assert r0.recipients == {rcpt(0, 0): srv.replies("rcpt")[0].as_reply()}
    assert r0.reply == srv.replies("data")[0].as_reply() and r0.reply[0] == code
    assert r1.status == DELIVERED


@pytest.mark.parametrize("code, status", [(554, REFUSED), (451, DEFERRED)])
def test_data_refused_end_of_data_no_rset(code, status):
    # The end of data closes the transaction whatever its reply (RFC 5321
    # §4.1.1.4): no RSET, the next envelope already went with the body.
    eng = make("data")
    rs = [submit(eng, i) for i in range(3)]
    run = drive(eng, FakeServer(policy=Policy(final={sender(0): code, sender(2): code})))
    assert run.writes == [env(0) + b"data\r\n", stuffed(0) + env(1) + b"data\r\n",
                          stuffed(1) + env(2) + b"data\r\n", stuffed(2)]
    assert statuses(rs) == [status, DELIVERED, status]
    assert type(rs[0].exception) is SMTPDataError and rs[0].exception.smtp_code == code
    assert rs[0].reply[0] == code and rs[0].recipients[rcpt(0, 0)][0] == 250
    assert eng.idle


def test_data_dot_stuffing_and_line_ends():
    eng = make("data")
    eng.submit(0, "a@example.org", "b@example.org", b".first\nsecond\r.third\r\n..x")
    eng.bytes_to_send()
    eng.receive(R("250 ok", "250 ok", "354 go"))
    assert eng.bytes_to_send() == b"..first\r\nsecond\r\n..third\r\n...x\r\n.\r\n"


def test_data_options_size_and_string_recipient():
    caps = Capabilities(esmtp=True, pipelining=True, size=1000, dsn=True)
    eng = Engine(caps)
    r = eng.submit("tag", "a@example.org", "b@example.org", b"12345", ["RET=HDRS"], ["NOTIFY=NEVER"])
    assert r.to_addrs == ["b@example.org"] and r.index == "tag"
    assert eng.bytes_to_send() == (b"mail FROM:<a@example.org> size=7 RET=HDRS\r\n"
                                   b"rcpt TO:<b@example.org> NOTIFY=NEVER\r\ndata\r\n")


def test_data_room_and_in_flight():
    eng = make("data")
    assert eng.room() == 1
    submit(eng, 0)
    assert eng.room() == 0 and eng.queued == 1
    eng.bytes_to_send()
    assert eng.room() == 1 and eng.in_flight == 1 and eng.queued == 0
    submit(eng, 1)
    assert eng.bytes_to_send() == b""  # waits to go with m0's body
    eng.receive(R("250 ok", "250 ok", "354 go"))
    assert eng.bytes_to_send() == stuffed(0) + env(1) + b"data\r\n"
    assert eng.in_flight == 2


def test_helo_server_no_options_lockstep():
    # After HELO (no ESMTP): no options, lock-step.
    eng = Engine(Capabilities())
    eng.submit(0, "a@example.org", ["b@example.org"], b"x", ["SMTPUTF8"], ["NOTIFY=NEVER"])
    assert eng.bytes_to_send() == b"mail FROM:<a@example.org>\r\n"


# == BDAT with ENHANCEDSTATUSCODES (rules 1, 3, 5, 6) ==============================================
def test_bdat_window_in_one_write_rset_before_each_mail_behind_an_unanswered_bdat():
    eng = make("bdat", window=3)
    rs = [submit(eng, i) for i in range(3)]
    assert eng.bytes_to_send() == (env(0) + bdat(0) + b"rset\r\n" + env(1) + bdat(1)
                                   + b"rset\r\n" + env(2) + bdat(2))
    assert eng.owed == 11
    # Rule 3: "250 2.1.5" then "250 2.0.0" (classes differ and match their
    # commands) proves the stream in step through the "2.1.5": m0, finished
    # by the "2.0.0", waits for the next such pair (m1's), since a dropped
    # reply to its BDAT would have put the RSET's "250 2.0.0" in its place.
    assert eng.receive(R("250 2.1.0 ok", "250 2.1.5 ok")) == []
    assert eng.receive(R("250 2.0.0 m0 queued")) == []
    assert eng.receive(R("250 2.0.0 reset", "250 2.1.0 ok", "250 2.1.5 ok", "250 2.0.0 m1 queued")) == [rs[0]]
    # The last reply owed, and no more: everything is confirmed.
    assert eng.receive(R("250 2.0.0 reset", "250 2.1.0 ok", "250 2.1.5 ok", "250 2.0.0 m2 queued")) == rs[1:]
    assert statuses(rs) == [DELIVERED] * 3
    assert rs[2].reply == (250, b"2.0.0 m2 queued")
    # Never an RSET after a transaction known to have succeeded.
    assert eng.bytes_to_send() == b"" and eng.idle


def test_bdat_no_rset_before_a_message_written_after_the_previous_succeeded():
    eng = make("bdat")
    submit(eng, 0)
    assert eng.bytes_to_send() == env(0) + bdat(0)
    eng.receive(R("250 2.1.0 ok", "250 2.1.5 ok", "250 2.0.0 ok"))
    submit(eng, 1)
    assert eng.bytes_to_send() == env(1) + bdat(1)


def test_bdat_rset_before_a_message_submitted_while_one_is_unanswered():
    eng = make("bdat")
    submit(eng, 0)
    assert eng.bytes_to_send() == env(0) + bdat(0)
    submit(eng, 1)
    assert eng.bytes_to_send() == b"rset\r\n" + env(1) + bdat(1)


def test_bdat_window_refills_once_half_has_drained():
    eng = make("bdat", window=4)
    rs = [submit(eng, i) for i in range(6)]
    first = eng.bytes_to_send()
    assert first == b"rset\r\n".join(env(i) + bdat(i) for i in range(4))
    assert eng.room() == 0
    eng.receive(R("250 2.1.0 ok", "250 2.1.5 ok", "250 2.0.0 ok"))
    assert eng.bytes_to_send() == b""  # 3 in flight, more than half the window
    eng.receive(R("250 2.0.0 reset", "250 2.1.0 ok", "250 2.1.5 ok", "250 2.0.0 ok"))
    # Two in flight: refill, each MAIL behind an unanswered BDAT after an RSET.
    assert eng.bytes_to_send() == b"rset\r\n" + env(4) + bdat(4) + b"rset\r\n" + env(5) + bdat(5)
    eng.receive(R(*["250 2.0.0 reset", "250 2.1.0 ok", "250 2.1.5 ok", "250 2.0.0 ok"] * 4))
    assert statuses(rs) == [DELIVERED] * 6 and eng.idle


def test_bdat_payload_is_crlf_normalised_not_stuffed():
    eng = make("bdat")
    eng.submit(0, "a@example.org", ["b@example.org"], b".x\n.\nend")
    assert eng.bytes_to_send() == env_of("a@example.org", ["b@example.org"]) + b"BDAT 12 LAST\r\n.x\r\n.\r\nend\r\n"


def env_of(frm: str, to: list[str]) -> bytes:
    return b"mail FROM:<%s>\r\n" % frm.encode() + b"".join(b"rcpt TO:<%s>\r\n" % t.encode() for t in to)


@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("code, status", [(554, REFUSED), (451, DEFERRED)])
def test_bdat_refused_rset_unless_one_already_follows(code, status, last):
    # RFC 3030 §2 leaves the state after a refused BDAT to the server: RSET
    # (rule 6), unless an RSET already went out behind it.
    eng = make("bdat", window=2)
    rs = [submit(eng, i) for i in range(2)]
    refused = 1 if last else 0
    srv = FakeServer(enhanced=True, policy=Policy(final={sender(refused): code}, sticky_bdat=True))
    run = drive(eng, srv)
    assert run.writes[0] == env(0) + bdat(0) + b"rset\r\n" + env(1) + bdat(1)
    assert run.writes[1:] == ([b"rset\r\n"] if last else [])
    r = rs[refused]
    assert r.status == status and type(r.exception) is SMTPDataError and r.exception.smtp_code == code
    assert rs[1 - refused].status == DELIVERED
    assert [s.code for s in srv.replies("mail")] == [250, 250]  # never "503 nested"
    assert eng.idle


def test_bdat_envelope_failed():
    eng = make("bdat", window=2)
    rs = [submit(eng, i, 2) for i in range(2)]
    policy = Policy(rcpt={rcpt(1, 0): 550, rcpt(1, 1): 450}, mail={sender(0): 550})
    run = drive(eng, FakeServer(enhanced=True, policy=policy))
    assert statuses(rs) == [REFUSED, DEFERRED]
    assert type(rs[0].exception) is SMTPSenderRefused
    assert type(rs[1].exception) is SMTPRecipientsRefused and set(rs[1].exception.recipients) == {rcpt(1, 0), rcpt(1, 1)}
    assert rs[0].recipients[rcpt(0, 0)][0] == 503  # what the server said to that RCPT
    assert run.writes[1:] == [b"rset\r\n"]  # after the last, failed, transaction


def test_bdat_accepted_for_a_failed_envelope_is_out_of_step():
    # Rule 5: from a server in step, BDAT cannot succeed after the envelope failed.
    eng = make("bdat")
    r = submit(eng, 0)
    eng.bytes_to_send()
    assert eng.receive(R("250 2.1.0 ok", "550 5.1.1 unknown", "250 2.0.0 queued")) == [r]
    assert r.status == UNCERTAIN and isinstance(r.exception, SMTPPipelineError)
    assert r.recipients == {} and r.reply is None
    check_stopped(eng, SMTPPipelineError)


@pytest.mark.parametrize("replies", [
    ("250 2.1.0 ok", "250 2.0.0 ok"),  # a "2.0.0" to RCPT
    ("250 2.1.0 ok", "250 2.1.5 ok", "250 2.1.5 ok"),  # an addressing code to BDAT
    ("250 2.0.0 ok",),  # a "2.0.0" to MAIL
])
def test_bdat_enhanced_class_of_the_wrong_command_is_out_of_step(replies):
    # Rule 1: with ENHANCEDSTATUSCODES, subject 1 only for MAIL/RCPT.
    eng = make("bdat")
    r = submit(eng, 0)
    eng.bytes_to_send()
    assert eng.receive(R(*replies)) == [r]
    assert r.status == UNCERTAIN
    check_stopped(eng, SMTPPipelineError)


def test_bdat_rset_reply_class_not_checked():
    # RSET's 2yz is not checked: smtp-sink answers it "250 2.1.0".
    eng = make("bdat", window=2)
    rs = [submit(eng, i) for i in range(2)]
    eng.bytes_to_send()
    eng.receive(R("250 2.1.0 ok", "250 2.1.5 ok", "250 2.0.0 ok", "250 2.1.0 reset",
                  "250 2.1.0 ok", "250 2.1.5 ok", "250 2.0.0 ok"))
    assert statuses(rs) == [DELIVERED] * 2 and eng.broken is None


def test_bdat_held_results_confirmed_at_the_end_of_a_read_without_codes():
    # A server with ENHANCEDSTATUSCODES that sends plain 250s: no class to
    # confirm with, so results wait for a read that ends with nothing owed.
    eng = make("bdat", window=2)
    rs = [submit(eng, i) for i in range(2)]
    eng.bytes_to_send()
    assert eng.receive(R("250 ok", "250 ok", "250 ok", "250 reset", "250 ok")) == []
    assert eng.receive(R("250 ok", "250 ok")) == rs


def test_bdat_writing_stops_while_too_many_results_are_held():
    # Plain 250s confirm nothing until a read ends with nothing owed (rule
    # 3); at most twice the window is held before writing stops.
    eng = make("bdat", window=2)
    rs = [submit(eng, i) for i in range(8)]
    assert eng.bytes_to_send().count(b"BDAT") == 2
    assert eng.receive(R("250 ok", "250 ok", "250 ok")) == []
    for i in range(2, 5):
        assert eng.bytes_to_send() == b"rset\r\n" + env(i) + bdat(i)
        assert eng.receive(R("250 reset", "250 ok", "250 ok", "250 ok")) == []
    # Four held, one in flight: nothing more goes out until they are confirmed.
    assert eng.bytes_to_send() == b""
    assert eng.in_flight == 5 and eng.room() == 0 and eng.owed == 4
    got = eng.receive(R("250 reset", "250 ok", "250 ok", "250 ok"))
    assert got == rs[:5] and statuses(got) == [DELIVERED] * 5
    assert eng.bytes_to_send().count(b"BDAT") == 2  # writing resumes


# == BDAT without ENHANCEDSTATUSCODES: one message at a time (rule 5) ==============================
def test_bdat_plain_one_message_per_round_trip():
    eng = make("bdat-plain", window=8)
    assert eng.window == 1
    rs = [submit(eng, i) for i in range(3)]
    run = drive(eng, FakeServer(policy=Policy(final={sender(1): 554}, sticky_bdat=True)))
    # No RSET between messages written one at a time, except after the
    # refused BDAT (which left the transaction open), before the next MAIL.
    assert run.writes == [env(0) + bdat(0), env(1) + bdat(1), b"rset\r\n" + env(2) + bdat(2)]
    assert statuses(rs) == [DELIVERED, REFUSED, DELIVERED]


def test_bdat_plain_room():
    eng = make("bdat-plain", window=8)
    assert eng.room() == 1
    submit(eng, 0)
    eng.bytes_to_send()
    assert eng.room() == 0
    submit(eng, 1)
    assert eng.bytes_to_send() == b""
    eng.receive(R("250 ok", "250 ok", "250 ok"))
    assert eng.bytes_to_send() == env(1) + bdat(1)


def test_chunking_switched_off_uses_data():
    eng = Engine(CAPS["bdat"], chunking=False)
    submit(eng, 0)
    assert eng.bytes_to_send() == env(0) + b"data\r\n"


# == lock-step (rule 9) =============================================================================
def test_lockstep_one_command_per_write():
    eng = make("lockstep")
    rs = [submit(eng, 0, 2), submit(eng, 1)]
    assert eng.room() == 0
    run = drive(eng, FakeServer())
    assert run.writes == [
        b"mail FROM:<s0@example.org>\r\n", b"rcpt TO:<r0.0@example.org>\r\n",
        b"rcpt TO:<r0.1@example.org>\r\n", b"data\r\n", stuffed(0),
        b"mail FROM:<s1@example.org>\r\n", b"rcpt TO:<r1.0@example.org>\r\n", b"data\r\n", stuffed(1),
    ]
    assert statuses(rs) == [DELIVERED] * 2 and eng.room() == 1


def test_lockstep_each_command_waits_for_its_reply():
    eng = make("lockstep")
    r = submit(eng, 0, 2)
    assert eng.bytes_to_send() == b"mail FROM:<s0@example.org>\r\n"
    assert eng.bytes_to_send() == b""
    eng.receive(R("250 ok"))
    assert eng.bytes_to_send() == b"rcpt TO:<r0.0@example.org>\r\n"
    assert eng.bytes_to_send() == b""
    eng.receive(R("550 no"))
    assert eng.bytes_to_send() == b"rcpt TO:<r0.1@example.org>\r\n"
    eng.receive(R("251 forwarded"))
    assert eng.bytes_to_send() == b"data\r\n"
    eng.receive(R("354 go"))
    assert eng.bytes_to_send() == stuffed(0)
    assert eng.receive(R("250 queued")) == [r]
    assert r.status == PARTIAL and r.refused == {rcpt(0, 0): (550, b"no")}
    assert r.recipients[rcpt(0, 1)] == (251, b"forwarded")


@pytest.mark.parametrize("mail", [550, 451])
def test_lockstep_mail_refused_rset_then_next(mail):
    eng = make("lockstep")
    rs = [submit(eng, 0, 2), submit(eng, 1)]
    run = drive(eng, FakeServer(policy=Policy(mail={sender(0): mail})))
    assert run.writes[:3] == [b"mail FROM:<s0@example.org>\r\n", b"rset\r\n", b"mail FROM:<s1@example.org>\r\n"]
    assert rs[0].status == (REFUSED if mail == 550 else DEFERRED)
    assert type(rs[0].exception) is SMTPSenderRefused and rs[0].recipients == {}
    assert rs[1].status == DELIVERED


def test_lockstep_no_recipient_accepted_rset_no_data():
    eng = make("lockstep")
    rs = [submit(eng, 0, 2), submit(eng, 1)]
    run = drive(eng, FakeServer(policy=Policy(rcpt={rcpt(0, 0): 550, rcpt(0, 1): 450})))
    assert run.writes[:4] == [b"mail FROM:<s0@example.org>\r\n", b"rcpt TO:<r0.0@example.org>\r\n",
                              b"rcpt TO:<r0.1@example.org>\r\n", b"rset\r\n"]
    assert rs[0].status == DEFERRED and type(rs[0].exception) is SMTPRecipientsRefused
    assert rs[1].status == DELIVERED and not body_went_out(run, 0)


@pytest.mark.parametrize("code, status", [(554, REFUSED), (451, DEFERRED)])
def test_lockstep_data_refused_rset(code, status):
    eng = make("lockstep")
    rs = [submit(eng, 0), submit(eng, 1)]
    run = drive(eng, FakeServer(policy=Policy(data={sender(0): code})))
    assert run.writes[3:5] == [b"rset\r\n", b"mail FROM:<s1@example.org>\r\n"]
    assert rs[0].status == status and type(rs[0].exception) is SMTPDataError
    assert rs[1].status == DELIVERED


def test_lockstep_end_of_data_refused_no_rset():
    eng = make("lockstep")
    rs = [submit(eng, 0), submit(eng, 1)]
    run = drive(eng, FakeServer(policy=Policy(final={sender(0): 554})))
    assert run.writes[3:5] == [stuffed(0), b"mail FROM:<s1@example.org>\r\n"]
    assert statuses(rs) == [REFUSED, DELIVERED]


def test_lockstep_when_pipelining_is_switched_off():
    eng = Engine(CAPS["data"], pipelining=False)
    submit(eng, 0, 2)
    assert eng.bytes_to_send() == b"mail FROM:<s0@example.org>\r\n"


def test_lockstep_bdat():
    # CHUNKING without PIPELINING: one command at a time, BDAT with its body.
    eng = make("lockstep-bdat")
    rs = [submit(eng, 0), submit(eng, 1)]
    run = drive(eng, FakeServer(policy=Policy(final={sender(0): 554}, sticky_bdat=True)))
    assert run.writes == [b"mail FROM:<s0@example.org>\r\n", b"rcpt TO:<r0.0@example.org>\r\n", bdat(0),
                          b"rset\r\n", b"mail FROM:<s1@example.org>\r\n", b"rcpt TO:<r1.0@example.org>\r\n",
                          bdat(1)]
    assert statuses(rs) == [REFUSED, DELIVERED]


# == LMTP (rule 7) ==================================================================================
def test_lmtp_one_reply_per_accepted_recipient_after_the_data():
    eng = make("lmtp")
    r = submit(eng, 0, 3)
    assert eng.bytes_to_send() == env(0, 3) + b"data\r\n"
    eng.receive(R("250 2.1.0 ok", "250 2.1.5 a", "550 5.1.1 b unknown", "250 2.1.5 c", "354 go"))
    assert eng.bytes_to_send() == stuffed(0)
    assert eng.receive(R("250 2.0.0 a delivered")) == []  # one more owed
    assert eng.owed == 1
    assert eng.receive(R("452 4.2.2 c over quota")) == [r]
    assert r.status == PARTIAL and r.exception is None
    assert r.data_replies == [(rcpt(0, 0), (250, b"2.0.0 a delivered")), (rcpt(0, 2), (452, b"4.2.2 c over quota"))]
    assert r.recipients == {rcpt(0, 0): (250, b"2.0.0 a delivered"), rcpt(0, 1): (550, b"5.1.1 b unknown"),
                            rcpt(0, 2): (452, b"4.2.2 c over quota")}
    assert r.reply == (452, b"4.2.2 c over quota")


@pytest.mark.parametrize("finals, status", [((550, 554), REFUSED), ((550, 452), DEFERRED)])
def test_lmtp_every_recipient_refused_after_the_data(finals, status):
    eng = make("lmtp")
    r = submit(eng, 0, 2)
    srv = FakeServer(lmtp=True, enhanced=True, policy=Policy(lmtp={rcpt(0, j): c for j, c in enumerate(finals)}))
    drive(eng, srv)
    assert r.status == status and type(r.exception) is SMTPDataError
    assert r.exception.recipients == r.refused and set(r.refused) == {rcpt(0, 0), rcpt(0, 1)}
    assert [rep[0] for _, rep in r.data_replies] == list(finals)
    assert r.exception.smtp_code == finals[-1]


def test_lmtp_pipelined_body_and_next_envelope_in_one_write():
    eng = make("lmtp")
    rs = [submit(eng, 0, 2), submit(eng, 1, 2)]
    srv = FakeServer(lmtp=True, enhanced=True, policy=Policy(rcpt={rcpt(1, 0): 450}, lmtp={rcpt(0, 1): 452}))
    run = drive(eng, srv)
    assert run.writes == [env(0, 2) + b"data\r\n", stuffed(0) + env(1, 2) + b"data\r\n", stuffed(1)]
    assert statuses(rs) == [PARTIAL, PARTIAL]
    for r in rs:
        for who, reply in r.data_replies:
            assert reply == r.recipients[who] and reply in srv.sent_for(who)
    assert [w for w, _ in rs[1].data_replies] == [rcpt(1, 1)]


def test_lmtp_bdat():
    eng = Engine(Capabilities(esmtp=True, pipelining=True, chunking=True, enhanced=True), lmtp=True)
    r = submit(eng, 0, 2)
    assert eng.bytes_to_send() == env(0, 2) + bdat(0)
    assert eng.receive(R("250 2.1.0 ok", "250 2.1.5 ok", "250 2.1.5 ok", "250 2.0.0 a")) == []
    assert eng.receive(R("250 2.0.0 b")) == [r]
    assert r.status == DELIVERED and [rep for _, rep in r.data_replies] == [(250, b"2.0.0 a"), (250, b"2.0.0 b")]


def test_lmtp_lone_dot_gets_one_reply():
    eng = make("lmtp")
    rs = [submit(eng, 0, 2), submit(eng, 1)]
    srv = FakeServer(lmtp=True, enhanced=True,
                     policy=Policy(rcpt={rcpt(0, 0): 550, rcpt(0, 1): 550}, data_354_anyway=True))
    run = drive(eng, srv)
    assert run.writes[1] == b".\r\n" + env(1) + b"data\r\n"
    assert statuses(rs) == [REFUSED, DELIVERED] and rs[0].data_replies == []


# == 421 at every step (rule 8) =====================================================================
# (server, step) -> what 421 answers, and the statuses of m0..m2: m1 is the
# message the 421 answers (or, for "rset", the one behind the RSET).
CLOSING = {
    ("data", "mail"): (dict(mail={sender(1): 421}), [DELIVERED, DEFERRED, NOT_ATTEMPTED], SMTPSenderRefused),
    ("data", "rcpt"): (dict(rcpt={rcpt(1, 1): 421}), [DELIVERED, DEFERRED, NOT_ATTEMPTED], SMTPRecipientsRefused),
    ("data", "data"): (dict(data={sender(1): 421}), [DELIVERED, DEFERRED, NOT_ATTEMPTED], SMTPDataError),
    ("data", "final"): (dict(final={sender(1): 421}), [DELIVERED, DEFERRED, NOT_ATTEMPTED], SMTPDataError),
    ("data", "dot"): (dict(rcpt={rcpt(1, 0): 550, rcpt(1, 1): 550}, data_354_anyway=True, dot={sender(1): 421}),
                      [DELIVERED, DEFERRED, NOT_ATTEMPTED], SMTPDataError),
    ("data", "rset"): (dict(data={sender(0): 554}, rset={0: 421}), [REFUSED, NOT_ATTEMPTED, NOT_ATTEMPTED], None),
    ("bdat", "mail"): (dict(mail={sender(1): 421}), [DELIVERED, DEFERRED, UNCERTAIN], SMTPSenderRefused),
    ("bdat", "rcpt"): (dict(rcpt={rcpt(1, 0): 421}), [DELIVERED, DEFERRED, UNCERTAIN], SMTPRecipientsRefused),
    ("bdat", "final"): (dict(final={sender(1): 421}), [DELIVERED, DEFERRED, UNCERTAIN], SMTPDataError),
    ("bdat", "rset"): (dict(rset={0: 421}), [DELIVERED, UNCERTAIN, UNCERTAIN], None),
    ("lmtp", "mail"): (dict(mail={sender(1): 421}), [DELIVERED, DEFERRED, NOT_ATTEMPTED], SMTPSenderRefused),
    ("lmtp", "final"): (dict(lmtp={rcpt(1, 0): 421}), [DELIVERED, DEFERRED, NOT_ATTEMPTED], SMTPDataError),
    ("lmtp", "final-2nd"): (dict(lmtp={rcpt(1, 1): 421}), [DELIVERED, PARTIAL, NOT_ATTEMPTED], None),
    ("lockstep", "mail"): (dict(mail={sender(1): 421}), [DELIVERED, DEFERRED, NOT_ATTEMPTED], SMTPSenderRefused),
    ("lockstep", "rcpt"): (dict(rcpt={rcpt(1, 0): 421}), [DELIVERED, DEFERRED, NOT_ATTEMPTED], SMTPRecipientsRefused),
    ("lockstep", "data"): (dict(data={sender(1): 421}), [DELIVERED, DEFERRED, NOT_ATTEMPTED], SMTPDataError),
    ("lockstep", "final"): (dict(final={sender(1): 421}), [DELIVERED, DEFERRED, NOT_ATTEMPTED], SMTPDataError),
    ("lockstep", "rset"): (dict(mail={sender(0): 550}, rset={0: 421}), [REFUSED, NOT_ATTEMPTED, NOT_ATTEMPTED], None),
}


@pytest.mark.parametrize("kind, step", sorted(CLOSING))
def test_421_at_every_step(kind, step):
    policy, want, exc_type = CLOSING[kind, step]
    eng = make(kind, window=3)
    rs = [submit(eng, i, 2) for i in range(3)]
    srv = FakeServer(lmtp=kind == "lmtp", enhanced=CAPS[kind].enhanced, policy=Policy(**policy))
    run = drive(eng, srv)
    assert statuses(rs) == want and sorted(r.index for r in run.results) == [0, 1, 2]
    # The server is closing: stop, nothing more is written (no RSET, no QUIT).
    assert isinstance(eng.broken, SMTPServerDisconnected) and not isinstance(eng.broken, SMTPPipelineError)
    assert "421" in str(eng.broken)
    assert run.after_broken == b"" and srv.after_close == [] and not run.stalled
    answered = rs[1]
    if exc_type is not None:
        # The message the 421 answers fails with smtplib's exception for that step.
        assert type(answered.exception) is exc_type
        if exc_type is SMTPRecipientsRefused:
            assert {c for c, _ in answered.exception.recipients.values()} == {421}
        else:
            assert answered.exception.smtp_code == 421
    for r in rs:
        if r.status in (UNCERTAIN, NOT_ATTEMPTED):
            assert r.exception is eng.broken and r.recipients == {}
            assert (r.status == UNCERTAIN) == body_went_out(run, r.index)
    if step == "final-2nd":
        assert [rep[0] for _, rep in answered.data_replies] == [250, 421]


# == a lost connection at every step ================================================================
def _reply_stream(kind: str, policy: Policy, n: int = 3, nrcpt: int = 2) -> tuple[FakeServer, dict[int, int]]:
    """A fault-free run: the server's log, and the index of each message's last reply."""
    eng = make(kind, window=3)
    for i in range(n):
        submit(eng, i, nrcpt)
    srv = FakeServer(lmtp=kind.startswith("lmtp"), enhanced=CAPS[kind].enhanced, policy=policy)
    drive(eng, srv)
    last = {}
    for s in srv.log:
        for i in range(n):
            if s.key == sender(i) or s.key.startswith("r%d." % i):
                last[i] = s.n
    return srv, last


LOSS_POLICY = Policy(rcpt={rcpt(1, 0): 550}, final={sender(2): 554})
LOSS_CASES = [(kind, cut) for kind in ("data", "bdat", "lockstep", "lmtp")
              for cut in range(-1, len(_reply_stream(kind, LOSS_POLICY)[0].log))]


@pytest.mark.parametrize("timeout", [False, True], ids=["closed", "timeout"])
@pytest.mark.parametrize("kind, cut", LOSS_CASES)
def test_connection_lost_at_every_step(kind, cut, timeout):
    # The server goes silent after reply ``cut``; the connection is then
    # closed (SMTPServerDisconnected) or the reply times out.
    full, last = _reply_stream(kind, LOSS_POLICY)
    eng = make(kind, window=3)
    rs = [submit(eng, i, 2) for i in range(3)]
    srv = FakeServer(lmtp=kind == "lmtp", enhanced=CAPS[kind].enhanced, policy=LOSS_POLICY, hangup_after=cut)
    run = drive(eng, srv)
    if cut == len(full.log) - 1:
        assert not run.stalled and eng.idle  # nothing was cut
        return
    assert run.stalled and eng.owed and eng.broken is None
    before = {r.index for r in run.results}
    exc = SMTPReplyTimeout("timed out") if timeout else SMTPServerDisconnected("closed")
    lost = eng.connection_lost(exc)
    assert sorted(before | {r.index for r in lost}) == [0, 1, 2] and not before & {r.index for r in lost}
    assert eng.broken is exc and eng.bytes_to_send() == b"" and eng.idle
    assert eng.connection_lost(SMTPServerDisconnected("again")) == []
    for r in rs:
        truth = expected_status(LOSS_POLICY, r.index, 2, lmtp=kind == "lmtp")
        if r.index in before:
            assert r.status == truth  # confirmed before the loss
        elif last[r.index] <= cut and not timeout:
            # Every reply came (the result was held for confirmation); a
            # closed connection says nothing against them.
            assert r.status == truth and r.exception is not exc
        else:
            # Unanswered (or, on a timeout, never confirmed): by what went out.
            assert r.status == (UNCERTAIN if body_went_out(run, r.index) else NOT_ATTEMPTED), (r, cut)
            assert r.exception is exc and r.recipients == {}


def test_timeout_after_a_dropped_final_reply_is_uncertain_not_refused():
    # The engine bug this suite found: m0's "250" to its end of data is
    # lost; m1's MAIL is refused, so its "550" lands on m0's end of data and
    # the client waits for a reply that never comes.  m0 must not be
    # reported refused (the server took it): its pairing was never
    # confirmed, so on the timeout it is uncertain (its body went out).
    eng = make("data")
    rs = [submit(eng, 0), submit(eng, 1)]
    assert eng.bytes_to_send() == env(0) + b"data\r\n"
    eng.receive(R("250 ok", "250 ok", "354 go"))
    assert eng.bytes_to_send() == stuffed(0) + env(1) + b"data\r\n"
    # "250 m0 queued" dropped:
    assert eng.receive(R("550 5.1.0 s1 refused", "503 5.5.1 need MAIL")) == []
    assert eng.bytes_to_send() == b""
    lost = eng.connection_lost(SMTPReplyTimeout("timed out"))
    assert statuses(lost) == [UNCERTAIN, NOT_ATTEMPTED]
    assert all(isinstance(r.exception, SMTPReplyTimeout) for r in rs)


def test_closed_after_a_final_reply_keeps_it():
    # A plain hang-up after m0's reply (m1's 354 never comes): m0 keeps its
    # outcome, m1 never sent its body.
    eng = make("data")
    rs = [submit(eng, 0), submit(eng, 1)]
    eng.bytes_to_send()
    eng.receive(R("250 ok", "250 ok", "354 go"))
    eng.bytes_to_send()
    assert eng.receive(R("250 m0 queued", "250 ok", "250 ok")) == []
    assert statuses(eng.connection_lost(SMTPServerDisconnected("closed"))) == [DELIVERED, NOT_ATTEMPTED]
    assert rs[0].reply == (250, b"m0 queued") and rs[0].exception is None


# == replies over the limits ========================================================================
def test_reply_line_too_long_mid_run():
    eng = make("bdat", window=3)
    rs = [submit(eng, i) for i in range(4)]
    eng.bytes_to_send()
    # m0 is finished but unconfirmed (rule 3) when the over-long reply comes;
    # a reply over the limits is no sign of a shifted stream, so it keeps its outcome.
    assert eng.receive(R("250 2.1.0 ok", "250 2.1.5 ok", "250 2.0.0 ok")) == []
    got = eng.receive(b"250 " + b"x" * 9000 + b"\r\n")
    assert sorted(r.index for r in got) == [0, 1, 2, 3]
    assert statuses(rs) == [DELIVERED, UNCERTAIN, UNCERTAIN, NOT_ATTEMPTED]
    exc = eng.broken
    assert type(exc) is SMTPReplyTooLong and exc.smtp_code == 500 and exc.smtp_error == "Line too long."
    assert all(r.exception is exc for r in rs[1:])
    check_stopped(eng, SMTPReplyTooLong)
    assert eng.receive(R("250 2.0.0 late")) == []


def test_reply_line_too_long_before_its_end_arrives():
    # The limit is enforced before the line ends: memory stays bounded.
    eng = make("data")
    r = submit(eng, 0)
    eng.bytes_to_send()
    assert eng.receive(b"250 " + b"y" * 9000) == [r]
    assert r.status == NOT_ATTEMPTED and type(r.exception) is SMTPReplyTooLong
    check_stopped(eng, SMTPReplyTooLong)


def test_reply_with_too_many_lines():
    eng = make("lockstep")
    r = submit(eng, 0)
    eng.bytes_to_send()
    assert eng.receive(b"250-x\r\n" * 1000 + b"250 x\r\n") == [r]
    assert r.status == NOT_ATTEMPTED and type(r.exception) is SMTPReplyTooLong
    assert r.exception.smtp_code == 500 and "lines" in str(r.exception.smtp_error)


def test_reply_too_long_keeps_a_held_result():
    # Rule 3 held m0 (no 354 of m1 yet); a reply over the limits says
    # nothing about how m0's reply was paired.
    eng = make("data")
    rs = [submit(eng, 0), submit(eng, 1)]
    eng.bytes_to_send()
    eng.receive(R("250 ok", "250 ok", "354 go"))
    eng.bytes_to_send()
    eng.receive(R("250 m0 queued"))
    assert statuses(eng.receive(b"250 " + b"z" * 9000 + b"\r\n")) == [DELIVERED, NOT_ATTEMPTED]
    assert rs[1].exception is eng.broken


# == replies no command can return (rule 1) =========================================================
@pytest.mark.parametrize("kind, replies", [
    ("data", ("354 go",)),  # 354 to MAIL
    ("data", ("250 ok", "354 go")),  # 354 to RCPT
    ("data", ("250 ok", "250 ok", "250 ok")),  # 250 to DATA
    ("data", ("221 bye",)),
    ("data", ("199 what",)),
    ("data", ("hello",)),  # malformed
    ("data", ("250-a", "251 b")),  # continuation lines with different codes
    ("lockstep", ("252 maybe",)),
    ("bdat", ("250 2.1.0 ok", "250 2.1.5 ok", "354 go")),  # 354 to BDAT
])
def test_impossible_reply_is_out_of_step(kind, replies):
    eng = make(kind)
    r = submit(eng, 0)
    eng.bytes_to_send()
    got = []
    for reply in replies:
        got += eng.receive(R(reply))
        if eng.broken is None and kind == "lockstep":
            eng.bytes_to_send()
    assert got == [r]
    assert r.status == (UNCERTAIN if kind == "bdat" else NOT_ATTEMPTED)
    assert isinstance(r.exception, SMTPPipelineError) and r.recipients == {}
    check_stopped(eng, SMTPPipelineError)
