"""``SMTP.send_many()`` / ``LMTP.send_many()``: many messages, one connection, one result each.

What is checked, against scripted and real peers:

* the writes: with PIPELINING and DATA each write carries the previous
  message's body and the next message's whole envelope (RFC 2920 §3.1 allows
  the content to open a group); with CHUNKING up to ``window`` messages
  (envelope, ``BDAT n LAST``, body) are in flight (RFC 3030 §2);
  without PIPELINING the client waits for every reply;
* the results: one per input message, in input order, with every recipient's
  reply (accepted ones too), the final reply and a status that says what a
  caller may do next (retry ``deferred`` and ``not_attempted``, never resend
  ``uncertain`` blindly, fix ``failed``);
* that one message's failure (server- or client-side) does not stop the
  others, that the session stays in step (RSET where a transaction may still
  be open, RFC 5321 §4.1.1.5), and that nothing is ever sent twice.

``Mta`` below is a small, strict, pipelining-capable server for the scripted
tests: it answers by policy (per sender, recipient or Subject), records every
command with the client write (``recv`` chunk) it arrived in, and refuses a
MAIL inside an open transaction as Postfix does ("503 nested MAIL command"),
so a missing RSET shows up as a wrong result.  Tests whose exact bytes matter
use hand-written scripts.

Tests marked "Regression" failed before commit 3de9907 (they were written as
strict xfails against 5b138d5 and pass since that commit fixed the behaviour).
"""

from __future__ import annotations

import re
from email.message import EmailMessage

import pytest

from tests.support.scripted import ClientClosed, ScriptedServer
from tests.support.target import IS_STDLIB, fastsmtplib_only, smtplib

if not IS_STDLIB:
    from fastsmtplib.batch import SendResult

pytestmark = fastsmtplib_only

FROM = "from@example.org"
HOST = "client.example.org"
CRLF = b"\r\n"


# -- messages and their wire forms ------------------------------------------------------------
def msg(tag: str) -> bytes:
    """A small message named by its Subject, with a line that needs dot-stuffing."""
    t = tag.encode()
    return b"Subject: " + t + b"\r\n\r\nbody of " + t + b"\r\n.dot line\r\n"


def stuffed(tag: str) -> bytes:
    """``msg(tag)`` as it goes after DATA: dots doubled, ended by a lone dot (RFC 5321 §4.5.2)."""
    t = tag.encode()
    return b"Subject: " + t + b"\r\n\r\nbody of " + t + b"\r\n..dot line\r\n.\r\n"


def envelope(rcpts, sender=FROM, *, rset=False, data=True, mail_args=b"", rcpt_args=b"") -> bytes:
    out = b"rset\r\n" if rset else b""
    out += b"mail FROM:<" + sender.encode() + b">" + mail_args + CRLF
    out += b"".join(b"rcpt TO:<" + r.encode() + b">" + rcpt_args + CRLF for r in rcpts)
    return out + (b"data\r\n" if data else b"")


def bdat(payload: bytes) -> bytes:
    """One whole message as a single last chunk: no dot-stuffing, no terminator (RFC 3030 §2)."""
    return b"BDAT %d LAST\r\n" % len(payload) + payload


def client(srv, **kw):
    kw.setdefault("timeout", 3)
    kw.setdefault("local_hostname", HOST)
    return smtplib.SMTP(srv.host, srv.port, **kw)


def lmtp_client(srv, **kw):
    kw.setdefault("timeout", 3)
    kw.setdefault("local_hostname", HOST)
    return smtplib.LMTP(srv.host, srv.port, **kw)


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def check_one_result_each(results, n: int) -> None:
    """Exactly one SendResult per input message, in input order."""
    assert all(isinstance(r, SendResult) for r in results)
    assert [r.index for r in results] == list(range(n))


def read_write(c, expected: bytes) -> None:
    """Read ``expected``: it must be one client write, after which the client waits.

    On loopback a small write is never split across ``recv`` calls, so "one new
    chunk" means "one write"; ``pending`` then shows that nothing more came
    before the server replied.
    """
    before = len(c.chunks)
    got = c.read_exactly(len(expected))
    assert got == expected
    assert len(c.chunks) == before + 1, f"write split or merged: {c.chunks[before:]!r}"
    assert c.pending(0.03) == b"", "the client sent more without waiting for replies"


def quit_ok(c):
    c.expect_line(b"QUIT")
    c.send(b"221 2.0.0 bye\r\n")


# -- a strict little MTA for scripted tests ----------------------------------------------------
HANGUP = "HANGUP"  # in a policy: close the connection instead of replying


class Mta:
    """A pipelining SMTP/LMTP server script that answers by policy and records everything.

    Policies map a sender (``mail``, ``data``), a recipient (``rcpt``,
    ``lmtp_final``) or a message's Subject (``final``) to a reply line (str,
    no CRLF) or ``HANGUP``.  Unlisted ones get a 250 naming the address or
    Subject, so the tests can tell accepted replies apart.  A 421 reply is
    sent and the connection then read to its end (RFC 5321 §3.8: the server
    closes); what the client sent after it lands in ``tail``.

    State follows RFC 5321: the end of the data clears the transaction
    whatever the reply (§4.1.1.4); after a refused DATA, or a refused
    ``BDAT ... LAST`` (RFC 3030 §2: state indeterminate, RSET required), the
    transaction stays open, and a MAIL inside an open transaction is refused.
    """

    def __init__(self, extensions=("PIPELINING", "8BITMIME"), *, mail=None, rcpt=None, data=None,
                 final=None, lmtp_final=None, dot_anyway=False, lmtp=False):
        self.extensions = tuple(extensions)
        self.mail = dict(mail or {})
        self.rcpt = dict(rcpt or {})
        self.data = dict(data or {})
        self.final = dict(final or {})
        self.lmtp_final = dict(lmtp_final or {})
        self.dot_anyway = dot_anyway  # answer 354 to DATA even when the envelope failed
        self.lmtp = lmtp
        self.log: list = []  # (recv chunk index, token): "MAIL a@x", "RCPT b@x", "DATA", "BODY m0", ...
        self.commands: list = []  # every command line as received, without CRLF
        self.received: list = []  # (sender, accepted recipients, Subject, raw body) per body read
        self.delivered: list = []  # Subjects answered 250 after their data
        self.tail: bytes | None = None
        self.client_closed: BaseException | None = None

    # -- what happened ---------------------------------------------------------------
    def groups(self) -> list:
        """The recorded tokens, one list per client write."""
        out: dict = {}
        for index, token in self.log:
            out.setdefault(index, []).append(token)
        return [out[k] for k in sorted(out)]

    def count(self, prefix: str) -> int:
        return sum(1 for _, token in self.log if token.startswith(prefix))

    def bodies(self) -> list:
        return [subject for _, _, subject, _ in self.received]

    # -- the script ------------------------------------------------------------------------
    def __call__(self, c) -> None:
        c.greet(b"220 lmtp.test LMTP ready\r\n" if self.lmtp else b"220 mta.test ESMTP ready\r\n")
        c.ehlo(self.extensions)
        self.reset()
        try:
            while self.step(c):
                pass
        except (ClientClosed, ConnectionError) as exc:
            # The client closed (while we read, or before our reply went out):
            # tests that expect it check client_closed; others see no QUIT.
            self.client_closed = exc

    def reset(self) -> None:
        self.sender = None
        self.accepted: list = []

    def note(self, c, token: str) -> None:
        self.log.append((len(c.chunks) - 1, token))

    def reply(self, c, text) -> bool:
        """Send ``text``; False when the connection is over (hang-up or 421)."""
        if text == HANGUP:
            self.tail = c.pending(0)
            c.close()
            return False
        c.send(text.encode() + CRLF)
        if text.startswith("421"):
            self.tail = c.read_until_eof()
            return False
        return True

    def read_body(self, c) -> bytes:
        lines = []
        while True:
            line = c.readline()
            lines.append(line)
            if line == b".\r\n":
                return b"".join(lines)

    def step(self, c) -> bool:
        line = c.readline()
        command = line.rstrip(b"\r\n").decode("utf-8", "replace")
        self.commands.append(command)
        verb = command.split(" ", 1)[0].upper()
        m = re.search(r"<([^>]*)>", command)
        addr = m.group(1) if m else ""
        if verb == "MAIL":
            self.note(c, "MAIL " + addr)
            if self.sender is not None:
                return self.reply(c, "503 5.5.1 Error: nested MAIL command")
            text = self.mail.get(addr, f"250 2.1.0 <{addr}> sender ok")
            if text.startswith("250"):
                self.sender, self.accepted = addr, []
            return self.reply(c, text)
        if verb == "RCPT":
            self.note(c, "RCPT " + addr)
            if self.sender is None:
                return self.reply(c, "503 5.5.1 Error: need MAIL command")
            text = self.rcpt.get(addr, f"250 2.1.5 <{addr}> ok")
            if text[:3] in ("250", "251"):
                self.accepted.append(addr)
            return self.reply(c, text)
        if verb == "DATA":
            self.note(c, "DATA")
            if self.sender is None or not self.accepted:
                if self.dot_anyway:
                    c.send(b"354 go ahead anyway\r\n")
                    dot = c.readline()
                    self.note(c, "." if dot == b".\r\n" else "BODY?")
                    self.reset()
                    return self.reply(c, "554 5.5.1 Error: no valid recipients")
                if self.sender is None:
                    return self.reply(c, "503 5.5.1 Error: need RCPT command")
                return self.reply(c, "554 5.5.1 Error: no valid recipients")
            if self.sender in self.data:
                return self.reply(c, self.data[self.sender])
            c.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            return self.end_of_data(c, self.read_body(c), "BODY")
        if verb == "BDAT":
            size = int(command.split()[1])
            payload = c.read_exactly(size)
            if self.sender is None or not self.accepted:
                self.note(c, "BDAT " + self.subject(payload))
                return self.reply(c, "503 5.5.1 Error: need RCPT command" if self.sender is None
                                  else "554 5.5.1 Error: no valid recipients")
            return self.end_of_data(c, payload, "BDAT")
        if verb == "RSET":
            self.note(c, "RSET")
            self.reset()
            return self.reply(c, "250 2.0.0 reset")
        if verb == "NOOP":
            self.note(c, "NOOP")
            return self.reply(c, "250 2.0.0 noop ok")
        if verb == "QUIT":
            self.note(c, "QUIT")
            c.send(b"221 2.0.0 bye\r\n")
            return False
        self.note(c, "?" + command)
        return self.reply(c, "500 5.5.2 unknown command")

    @staticmethod
    def subject(body: bytes) -> str:
        m = re.search(rb"^Subject: (\S+)", body, re.M)
        return m.group(1).decode() if m else "?"

    def end_of_data(self, c, body: bytes, kind: str) -> bool:
        subject = self.subject(body)
        self.note(c, f"{kind} {subject}")
        self.received.append((self.sender, list(self.accepted), subject, body))
        accepted = self.accepted
        if self.lmtp:
            # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
            self.reset()
            texts = [self.lmtp_final.get(r, f"250 2.0.0 <{r}> delivered") for r in accepted]
            if any(t.startswith("250") for t in texts):
                self.delivered.append(subject)
            c.send(b"".join(t.encode() + CRLF for t in texts))
            return True
        text = self.final.get(subject, f"250 2.0.0 queued as {subject}")
        if text == HANGUP:
            return self.reply(c, text)
        if text.startswith("250"):
            self.delivered.append(subject)
            self.reset()
        elif kind == "BODY":
            self.reset()  # RFC 5321 §4.1.1.4: the end of the data ends the transaction
        # else a refused BDAT LAST: left open, RFC 3030 §2 wants RSET
        return self.reply(c, text)


def drop_idle_rsets(groups: list) -> list:
    """Remove RSETs that directly follow the end of a message's data in the same write.

    Such a RSET has no effect (RFC 5321 §4.1.1.5: after an end of data
    indication RSET is a NOOP), so whether the client sends it is not part of
    the contract; RSETs anywhere else are kept and compared.
    """
    out = []
    for group in groups:
        kept = []
        for token in group:
            if token == "RSET" and kept and (kept[-1].startswith("BODY") or kept[-1] == "."):
                continue
            kept.append(token)
        out.append(kept)
    return out


# == arguments and input forms ======================================================================
@pytest.mark.parametrize("window", [0, -1])
def test_window_below_one_raises_and_sends_nothing(window):
    def script(c):
        c.greet()
        quit_ok(c)  # no EHLO, no MAIL: nothing of the batch reached the wire

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            with pytest.raises(ValueError, match="window"):
                list(s.send_many([(FROM, "b@example.org", msg("w"))], window=window))
    assert b"mail" not in srv.received.lower()


def test_input_forms():
    # (from, str, str), (from, [..], bytes), (None, None, Message), a bare
    # Message, and (from, to, Message) overriding the headers.
    em = EmailMessage()
    em["From"] = "Header Sender <hdr@example.org>"
    em["To"] = "To One <to1@example.org>, to2@example.org"
    em["Cc"] = "cc@example.org"
    em["Bcc"] = "hidden@example.org"
    em["Subject"] = "m2"
    em.set_content("from the headers\n")
    bare = EmailMessage()
    bare["Sender"] = "real-sender@example.org"
    bare["From"] = "author@example.org"
    bare["To"] = "bare@example.org"
    bare["Subject"] = "m3"
    bare.set_content("bare message\n")
    items = [
        (FROM, "str@example.org", "Subject: m0\n\nstr body, bare LF\n.dot\n"),
        (FROM, ["b1@example.org", "b2@example.org"], msg("m1")),
        (None, None, em),
        bare,
        ("env@example.org", "over@example.org", em),
    ]
    mta = Mta()
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many(items))
    check_one_result_each(results, 5)
    assert [r.status for r in results] == ["delivered"] * 5
    assert [(r.from_addr, r.to_addrs) for r in results] == [
        (FROM, ["str@example.org"]),
        (FROM, ["b1@example.org", "b2@example.org"]),
        ("hdr@example.org", ["to1@example.org", "to2@example.org", "hidden@example.org", "cc@example.org"]),
        ("real-sender@example.org", ["bare@example.org"]),  # Sender before From (RFC 5322 §3.6.2)
        ("env@example.org", ["over@example.org"]),
    ]
    assert [(snd, rcpts) for snd, rcpts, _, _ in mta.received] == [
        (r.from_addr, r.to_addrs) for r in results]
    bodies = [body for _, _, _, body in mta.received]
    assert bodies[0] == b"Subject: m0\r\n\r\nstr body, bare LF\r\n..dot\r\n.\r\n"
    assert bodies[1] == stuffed("m1")
    for body in (bodies[2], bodies[4]):
        assert b"from the headers" in body
        assert b"Bcc" not in body and b"hidden@" not in body  # Bcc is never transmitted
    assert b"Subject: m3" in bodies[3]


def test_address_forms_and_null_sender():
    # Plain addresses, bracketed ones, display names and the null reverse-path
    # of a bounce (RFC 5321 §4.5.5, "MAIL FROM:<>") all become bare paths in
    # angle brackets, with the same SIZE parameter (RFC 1870 §3), whichever
    # way the client encodes them internally.
    items = [
        ("", "<b@example.org>", msg("m0")),
        ("Sender Name <s@example.org>", ["B Name <b@example.org>", "c@example.org"], msg("m1")),
        ("s@example.org", ["b@example.org"], msg("m2")),
    ]
    mta = Mta(["PIPELINING", "SIZE 10000"])
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many(items))
    assert [r.status for r in results] == ["delivered"] * 3
    size = len(msg("m0"))
    assert mta.commands == [
        f"mail FROM:<> size={size}", "rcpt TO:<b@example.org>", "data",
        f"mail FROM:<s@example.org> size={size}", "rcpt TO:<b@example.org>", "rcpt TO:<c@example.org>", "data",
        f"mail FROM:<s@example.org> size={size}", "rcpt TO:<b@example.org>", "data",
        "QUIT",
    ]
    assert [r.from_addr for r in results] == ["", "Sender Name <s@example.org>", "s@example.org"]


def test_items_of_the_wrong_type_fail_alone():
    # _unpack() raises TypeError for anything but a 3-tuple or a Message; the
    # pipeline reports it as that message's "failed" result and goes on.
    items = [42, (FROM, "x@example.org"), [FROM, "y@example.org", msg("list")], b"raw bytes",
             (FROM, "ok@example.org", msg("m4"))]
    mta = Mta()
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many(items))
    check_one_result_each(results, 5)
    assert [r.status for r in results] == ["failed"] * 4 + ["delivered"]
    assert all(isinstance(r.exception, TypeError) for r in results[:4])
    assert not any(r.ok for r in results[:4])
    assert mta.groups() == [["MAIL " + FROM, "RCPT ok@example.org", "DATA"], ["BODY m4"], ["QUIT"]]


# == PIPELINING with DATA (RFC 2920) ==============================================================
def test_pipelined_writes_exact_bytes_and_results():
    # Three messages, default window (ignored with DATA: the body waits for
    # 354, so one envelope is in flight).  Each write is the previous body plus
    # the next whole envelope: one round trip per message (RFC 2920 §3.1).
    m1 = "Subject: m1\n\nbare lf line\n.dot\n"
    m1_stuffed = b"Subject: m1\r\n\r\nbare lf line\r\n..dot\r\n.\r\n"

    def script(c):
        c.handshake(["PIPELINING", "8BITMIME"])
        read_write(c, envelope(["b@example.org", "c@example.org"]))
        c.send(b"250 2.1.0 sender ok\r\n250 2.1.5 b ok\r\n251 2.1.5 c will forward\r\n354 go ahead\r\n")
        read_write(c, stuffed("m0") + envelope(["d@example.org"]))
        c.send(b"250 2.0.0 queued as M0\r\n250 2.1.0 ok\r\n250 2.1.5 d ok\r\n354 go ahead\r\n")
        read_write(c, m1_stuffed + envelope(["b@example.org"]))
        c.send(b"250 2.0.0 queued as M1\r\n250 2.1.0 ok\r\n250 2.1.5 b again\r\n354 go ahead\r\n")
        read_write(c, stuffed("m2"))  # the last body travels alone
        c.send(b"250 2.0.0 queued as M2\r\n")
        c.expect_line(b"NOOP")
        c.send(b"250 2.0.0 in step\r\n")
        quit_ok(c)

    items = [(FROM, ["b@example.org", "c@example.org"], msg("m0")),
             (FROM, "d@example.org", m1),
             (FROM, ["b@example.org"], msg("m2"))]
    pulled = []

    def source():
        for item in items:
            pulled.append(item)
            yield item

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            it = s.send_many(source())
            r0 = next(it)
            # m1's envelope went out with m0's body, before m0's reply: exactly
            # one message was taken ahead, no more (the input is lazy).
            assert len(pulled) == 2
            r1 = next(it)
            assert len(pulled) == 3
            r2 = next(it)
            with pytest.raises(StopIteration):
                next(it)
            assert s.noop() == (250, b"2.0.0 in step")
    results = [r0, r1, r2]
    check_one_result_each(results, 3)
    assert [r.status for r in results] == ["delivered"] * 3
    assert all(r.ok and r.refused == {} and r.exception is None for r in results)
    # Every recipient's own reply, accepted ones included, with the server's text.
    assert r0.recipients == {"b@example.org": (250, b"2.1.5 b ok"),
                             "c@example.org": (251, b"2.1.5 c will forward")}
    assert r1.recipients == {"d@example.org": (250, b"2.1.5 d ok")}
    assert r2.recipients == {"b@example.org": (250, b"2.1.5 b again")}
    # ``reply`` is the reply after the final dot, not the 354.
    assert [r.reply for r in results] == [(250, b"2.0.0 queued as M0"), (250, b"2.0.0 queued as M1"),
                                          (250, b"2.0.0 queued as M2")]
    assert [(r.from_addr, r.to_addrs) for r in results] == [
        (FROM, ["b@example.org", "c@example.org"]), (FROM, ["d@example.org"]), (FROM, ["b@example.org"])]


def test_mail_and_rcpt_options_go_with_every_message():
    mta = Mta(["PIPELINING", "SIZE 10000", "DSN"])
    items = [(FROM, ["b@example.org", "c@example.org"], msg("m0")), (FROM, "d@example.org", msg("m1"))]
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many(items, mail_options=["RET=HDRS"], rcpt_options=["NOTIFY=NEVER"]))
    assert [r.status for r in results] == ["delivered", "delivered"]
    size = len(msg("m0"))  # RFC 1870 §3: the size before dot-stuffing, without the final dot
    assert mta.commands == [
        f"mail FROM:<{FROM}> size={size} RET=HDRS",
        "rcpt TO:<b@example.org> NOTIFY=NEVER",
        "rcpt TO:<c@example.org> NOTIFY=NEVER",
        "data",
        f"mail FROM:<{FROM}> size={size} RET=HDRS",
        "rcpt TO:<d@example.org> NOTIFY=NEVER",
        "data",
        "QUIT",
    ]


def test_mixed_outcomes_on_one_connection():
    # Every kind of server refusal in one batch; none stops the others.
    mta = Mta(
        mail={"bad@example.org": "550 5.7.1 sender rejected"},
        rcpt={"gone@example.org": "550 5.1.1 no such user", "full@example.org": "452 4.2.2 over quota",
              "moved@example.org": "551 5.1.6 user moved"},
        data={"nodata@example.org": "554 5.3.0 no data today"},
        final={"m5": "554 5.6.0 content rejected", "m6": "451 4.3.0 try again later"},
    )
    items = [
        (FROM, "r0@example.org", msg("m0")),
        ("bad@example.org", "r1@example.org", msg("m1")),
        (FROM, ["ok@example.org", "gone@example.org", "full@example.org"], msg("m2")),
        (FROM, ["gone@example.org", "moved@example.org"], msg("m3")),
        ("nodata@example.org", "r4@example.org", msg("m4")),
        (FROM, "r5@example.org", msg("m5")),
        (FROM, "r6@example.org", msg("m6")),
        (FROM, "r7@example.org", msg("m7")),
    ]
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many(items))
            assert s.noop() == (250, b"2.0.0 noop ok")  # still in step afterwards
    check_one_result_each(results, 8)
    r = results
    assert [x.status for x in r] == ["delivered", "refused", "partial", "refused", "refused",
                                     "refused", "deferred", "delivered"]
    assert [x.ok for x in r] == [True, False, True, False, False, False, False, True]
    # partial: delivered, the refusals listed as sendmail() would return them
    assert r[2].exception is None
    assert r[2].refused == {"gone@example.org": (550, b"5.1.1 no such user"),
                            "full@example.org": (452, b"4.2.2 over quota")}
    assert r[2].recipients["ok@example.org"] == (250, b"2.1.5 <ok@example.org> ok")
    assert r[2].reply == (250, b"2.0.0 queued as m2")
    # envelope failures (their exception class is checked by the tests below)
    assert isinstance(r[1].exception, smtplib.SMTPException)
    assert r[3].refused == {"gone@example.org": (550, b"5.1.1 no such user"),
                            "moved@example.org": (551, b"5.1.6 user moved")}
    # DATA refused, and refusals after the data: SMTPDataError with the code
    for x, code in ((r[4], 554), (r[5], 554), (r[6], 451)):
        assert isinstance(x.exception, smtplib.SMTPDataError)
        assert x.exception.smtp_code == code
    assert r[5].reply == (554, b"5.6.0 content rejected")
    assert r[6].reply == (451, b"4.3.0 try again later")
    assert all(x.exception is None for x in (r[0], r[7]))
    # No body of a failed envelope was sent; every other body exactly once.
    assert mta.bodies() == ["m0", "m2", "m5", "m6", "m7"]
    assert mta.delivered == ["m0", "m2", "m7"]
    # The writes: an open transaction (MAIL accepted, data never ended) is
    # reset before the next MAIL; after a body the next envelope rides along.
    assert drop_idle_rsets(mta.groups()) == [
        ["MAIL " + FROM, "RCPT r0@example.org", "DATA"],
        ["BODY m0", "MAIL bad@example.org", "RCPT r1@example.org", "DATA"],
        ["RSET", "MAIL " + FROM, "RCPT ok@example.org", "RCPT gone@example.org", "RCPT full@example.org",
         "DATA"],
        ["BODY m2", "MAIL " + FROM, "RCPT gone@example.org", "RCPT moved@example.org", "DATA"],
        ["RSET", "MAIL nodata@example.org", "RCPT r4@example.org", "DATA"],
        ["RSET", "MAIL " + FROM, "RCPT r5@example.org", "DATA"],
        # m5 was refused after its data: the transaction ended with the dot
        # (RFC 5321 §4.1.1.4), so m6's envelope may follow the body directly.
        ["BODY m5", "MAIL " + FROM, "RCPT r6@example.org", "DATA"],
        ["BODY m6", "MAIL " + FROM, "RCPT r7@example.org", "DATA"],
        ["BODY m7"],
        ["NOOP"],
        ["QUIT"],
    ]


_ENVELOPE_FAILURES = {
    # name: (Mta policy, envelope, expected status, expected exception class, expected code)
    "sender-550": (dict(mail={"s@example.org": "550 5.7.1 sender rejected"}),
                   ("s@example.org", ["r@example.org"]), "refused", "SMTPSenderRefused", 550),
    "sender-451": (dict(mail={"s@example.org": "451 4.3.0 sender deferred"}),
                   ("s@example.org", ["r@example.org"]), "deferred", "SMTPSenderRefused", 451),
    "rcpts-550-551": (dict(rcpt={"x@example.org": "550 5.1.1 no", "y@example.org": "551 5.1.6 moved"}),
                      (FROM, ["x@example.org", "y@example.org"]), "refused", "SMTPRecipientsRefused", None),
    "rcpts-450-550": (dict(rcpt={"x@example.org": "450 4.2.0 later", "y@example.org": "550 5.1.1 no"}),
                      (FROM, ["x@example.org", "y@example.org"]), "deferred", "SMTPRecipientsRefused", None),
}


def _check_envelope_failure(mta, case, results):
    _policy, (sender, rcpts), status, exc_name, code = _ENVELOPE_FAILURES[case]
    check_one_result_each(results, 2)
    bad, good = results
    assert good.status == "delivered"
    assert "m0" not in mta.bodies()  # the body of a failed envelope is never sent
    assert bad.status == status
    assert type(bad.exception) is getattr(smtplib, exc_name)
    if code is not None:
        assert bad.exception.smtp_code == code
        assert bad.exception.sender == sender
    else:
        # every recipient refused, each with its own RCPT reply
        assert bad.exception.recipients == bad.refused == bad.recipients
        assert set(bad.recipients) == set(rcpts)


@pytest.mark.parametrize("case", list(_ENVELOPE_FAILURES))
def test_envelope_failure_with_354_anyway_sends_only_the_dot(case):
    # RFC 2920 §3.1: the client must check the reply to DATA even when every
    # RCPT failed; if it is 354 anyway, the data is ended at once with a lone
    # dot, never the body.  The next message's envelope rides in that write.
    policy, (sender, rcpts), *_ = _ENVELOPE_FAILURES[case]
    mta = Mta(dot_anyway=True, **policy)
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many([(sender, rcpts, msg("m0")), (FROM, "ok@example.org", msg("m1"))]))
    _check_envelope_failure(mta, case, results)
    groups = drop_idle_rsets(mta.groups())
    assert groups[1] == [".", "MAIL " + FROM, "RCPT ok@example.org", "DATA"]
    assert groups[2:] == [["BODY m1"], ["QUIT"]]


# Regression (before 3de9907): the DATA refusal (503/554) decided the result: SMTPDataError,
# and a 451 sender or all-4xx recipients came out 'refused' instead of 'deferred'.
@pytest.mark.parametrize("case", list(_ENVELOPE_FAILURES))
def test_envelope_failure_with_data_refused_is_classified_by_the_envelope(case):
    policy, (sender, rcpts), *_ = _ENVELOPE_FAILURES[case]
    mta = Mta(**policy)
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many([(sender, rcpts, msg("m0")), (FROM, "ok@example.org", msg("m1"))]))
    _check_envelope_failure(mta, case, results)


# Regression (before 3de9907): the RSET owed after the last message was never sent, so the
# next sendmail()'s MAIL got '503 nested MAIL command'.
@pytest.mark.parametrize("last", ["data-refused", "all-rcpts-refused"])
def test_connection_usable_after_a_failed_last_message(last):
    mta = Mta(rcpt={"gone@example.org": "550 5.1.1 no such user"},
              data={"nodata@example.org": "554 5.3.0 no data today"})
    final_item = (("nodata@example.org", "r@example.org", msg("m1")) if last == "data-refused"
                  else (FROM, "gone@example.org", msg("m1")))
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many([(FROM, "r@example.org", msg("m0")), final_item]))
            assert [r.status for r in results] == ["delivered", "refused"]
            assert s.sendmail(FROM, ["after@example.org"], msg("m2")) == {}
    assert mta.delivered == ["m0", "m2"]


# == client-side failures ===========================================================================
def test_client_side_failures_send_nothing_and_do_not_stop_the_batch():
    utf8 = EmailMessage()
    utf8["From"] = "j\u00f6rg@example.org"
    utf8["To"] = "b@example.org"
    utf8["Subject"] = "utf8"
    utf8.set_content("x\n")
    big = b"Subject: big\r\n\r\n" + b"x" * 300 + b"\r\n"
    items = [
        (FROM, "r0@example.org", msg("m0")),
        ("evil@example.org>\r\nRSET", "r@example.org", msg("crlf-sender")),  # RFC 5321 §2.3.8
        (FROM, ["r@example.org", "x@example.org\nDATA"], msg("crlf-rcpt")),
        (FROM, [], msg("no-rcpt")),
        (FROM, "r@example.org", big),  # over the advertised SIZE (RFC 1870 §6)
        (FROM, "r@example.org", "Subject: 8bit\r\n\r\nK\u00e4se\r\n"),  # str must be ASCII
        utf8,  # a non-ASCII address needs SMTPUTF8, which is not offered (RFC 6531)
        (FROM, "r7@example.org", msg("m7")),
    ]
    mta = Mta(["PIPELINING", "8BITMIME", "SIZE 200"])
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many(items))
    check_one_result_each(results, 8)
    assert [r.status for r in results] == ["delivered"] + ["failed"] * 6 + ["delivered"]
    exc = [r.exception for r in results]
    assert all(isinstance(e, ValueError) for e in exc[1:4])
    assert isinstance(exc[4], smtplib.SMTPMessageTooLarge)
    assert (exc[4].size, exc[4].limit) == (len(big), 200)
    assert isinstance(exc[5], UnicodeEncodeError)
    assert isinstance(exc[6], smtplib.SMTPNotSupportedError)
    assert not any(r.ok for r in results[1:7])
    # Nothing of the failed messages reached the wire, and the pipeline did
    # not lose its rhythm: m7's envelope still rides with m0's body.
    assert mta.groups() == [
        ["MAIL " + FROM, "RCPT r0@example.org", "DATA"],
        ["BODY m0", "MAIL " + FROM, "RCPT r7@example.org", "DATA"],
        ["BODY m7"],
        ["QUIT"],
    ]
    assert b"evil" not in srv.received and b"x@example.org" not in srv.received


# == connection loss and 421 =======================================================================
def test_hangup_after_a_body_makes_it_uncertain():
    # The server reads m2's body (and m3's envelope, in the same write) and
    # hangs up before its reply: m2 may or may not have been delivered.
    mta = Mta(final={"m2": HANGUP})
    items = [(FROM, f"r{i}@example.org", msg(f"m{i}")) for i in range(5)]
    with ScriptedServer(mta, timeout=3) as srv:
        s = client(srv)
        results = list(s.send_many(iter(items)))
        assert s.sock is None
        s.close()
    check_one_result_each(results, 5)
    assert [r.status for r in results] == ["delivered", "delivered", "uncertain", "not_attempted",
                                           "not_attempted"]
    for r in results[2:]:
        assert isinstance(r.exception, smtplib.SMTPServerDisconnected)
        assert not r.ok
    # Results for messages never sent still say which message they are.
    assert [(r.from_addr, r.to_addrs) for r in results[3:]] == [
        (FROM, ["r3@example.org"]), (FROM, ["r4@example.org"])]
    assert mta.bodies() == ["m0", "m1", "m2"]
    # m3's envelope came with m2's body and was never answered; m4 never came.
    assert mta.count("MAIL") == 3
    assert mta.tail == envelope(["r3@example.org"])


def test_hangup_before_354_makes_it_not_attempted():
    mta = Mta(data={"s2@example.org": HANGUP})
    items = [(f"s{i}@example.org", f"r{i}@example.org", msg(f"m{i}")) for i in range(4)]
    with ScriptedServer(mta, timeout=3) as srv:
        s = client(srv)
        results = list(s.send_many(items))
        s.close()
    check_one_result_each(results, 4)
    assert [r.status for r in results] == ["delivered", "delivered", "not_attempted", "not_attempted"]
    assert isinstance(results[2].exception, smtplib.SMTPServerDisconnected)
    assert mta.bodies() == ["m0", "m1"]
    assert mta.count("MAIL") == 3


_421 = "421 4.3.2 shutting down"


@pytest.mark.parametrize("where", ["mail", "rcpt", "data", "final"])
def test_421_mid_stream(where):
    # RFC 5321 §3.8: 421 means the server is closing.  The message it answered
    # is deferred, later ones not attempted; the client sends nothing more
    # (no RSET, no QUIT) and closes.
    policy = {
        "mail": dict(mail={"s1@example.org": _421}),
        "rcpt": dict(rcpt={"last1@example.org": _421}),
        "data": dict(data={"s1@example.org": _421}),
        "final": dict(final={"m1": _421}),
    }[where]
    mta = Mta(**policy)
    items = [(f"s{i}@example.org", [f"r{i}@example.org", f"last{i}@example.org"], msg(f"m{i}"))
             for i in range(4)]
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:  # __exit__'s QUIT finds the connection closed
            results = list(s.send_many(items))
            assert s.sock is None
    check_one_result_each(results, 4)
    assert [r.status for r in results] == ["delivered", "deferred", "not_attempted", "not_attempted"]
    e = results[1].exception
    if where == "mail":
        assert isinstance(e, smtplib.SMTPSenderRefused) and e.smtp_code == 421
    elif where == "rcpt":
        assert isinstance(e, smtplib.SMTPRecipientsRefused)
        assert e.recipients == {"last1@example.org": (421, b"4.3.2 shutting down")}
    else:
        assert isinstance(e, smtplib.SMTPDataError) and e.smtp_code == 421
    assert all(isinstance(r.exception, smtplib.SMTPServerDisconnected) for r in results[2:])
    # After the 421 only what was already pipelined may come: never a RSET,
    # QUIT, m1's body (unless it was already out) or anything of m3.
    expected_tail = {
        "mail": b"rcpt TO:<r1@example.org>\r\nrcpt TO:<last1@example.org>\r\ndata\r\n",
        "rcpt": b"data\r\n",
        "data": b"",
        "final": envelope(["r2@example.org", "last2@example.org"], "s2@example.org"),
    }[where]
    assert mta.tail == expected_tail
    assert mta.bodies() == (["m0", "m1"] if where == "final" else ["m0"])


# == the caller stops iterating ====================================================================
def test_stopping_with_a_message_in_flight_closes_the_connection():
    # m1's envelope went out with m0's body.  If the caller stops after r0,
    # nobody will read m1's replies, so they could later be paired with the
    # wrong commands: the connection is closed and nothing more is sent (no
    # body, no RSET, no QUIT; README "If you stop iterating...").
    mta = Mta()
    items = [(FROM, f"r{i}@example.org", msg(f"m{i}")) for i in range(3)]
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            it = s.send_many(items)
            r0 = next(it)
            it.close()
            assert s.sock is None
    assert r0.status == "delivered"
    assert mta.client_closed is not None
    assert mta.bodies() == ["m0"]
    assert (mta.count("MAIL"), mta.count("RSET"), mta.count("QUIT")) == (2, 0, 0)


def test_stopping_with_nothing_in_flight_leaves_the_session_usable():
    # Stopping when no reply is owed keeps the connection, reset if the last
    # transaction was left open (here DATA was refused: MAIL still stands).
    mta = Mta(data={"nodata@example.org": "554 5.3.0 no data today"})
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            it = s.send_many([("nodata@example.org", "r@example.org", msg("m0")), 42])
            r0 = next(it)
            it.close()
            assert r0.status == "refused"
            assert s.sendmail(FROM, ["after@example.org"], msg("m2")) == {}
    assert mta.delivered == ["m2"]
    assert [token for _, token in mta.log] == [
        "MAIL nodata@example.org", "RCPT r@example.org", "DATA",
        "RSET", "MAIL " + FROM, "RCPT after@example.org", "DATA", "BODY m2", "QUIT"]


# == CHUNKING / BDAT (RFC 3030) ===================================================================
@pytest.mark.parametrize("window", [1, 2, 16])
def test_bdat_window_grouping(window):
    # Nothing waits for a 354: up to ``window`` whole messages go out before
    # the first reply.  A RSET precedes each MAIL written while an earlier
    # message is still unanswered (it may yet fail, leaving its transaction
    # open: RFC 3030 §2); with window=1 nothing is in flight, so no RSET.
    n = 4
    rcpts = [[f"r{i}@example.org"] for i in range(n)]

    def group(i, rset):
        return envelope(rcpts[i], rset=rset, data=False) + bdat(msg(f"m{i}"))

    def script(c):
        c.handshake(["PIPELINING", "CHUNKING", "8BITMIME", "ENHANCEDSTATUSCODES"])
        first = min(window, n)
        read_write(c, b"".join(group(i, rset=i > 0) for i in range(first)))
        sent = first
        for i in range(n):
            rset = i > 0 and window > 1
            c.send((b"250 2.0.0 reset\r\n" if rset else b"")
                   + b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued as Q%d\r\n" % i)
            if sent < n:
                # One reply frees one slot: exactly one more message, one write.
                read_write(c, group(sent, rset=window > 1))
                sent += 1
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many([(FROM, rcpts[i], msg(f"m{i}")) for i in range(n)], window=window))
    check_one_result_each(results, n)
    assert [r.status for r in results] == ["delivered"] * n
    assert [r.reply for r in results] == [(250, b"2.0.0 queued as Q%d" % i) for i in range(n)]
    assert b"data\r\n" not in srv.received.lower()


def test_bdat_without_enhanced_codes_goes_one_message_per_round_trip():
    # Without ENHANCEDSTATUSCODES every reply to MAIL, RCPT and BDAT is a bare
    # 250: a dropped one would shift every later pairing unseen.  So one
    # message is in flight at a time, whatever the window: all its replies
    # came, and no more, before the next goes (and so no RSET is needed).
    n = 3

    def script(c):
        c.handshake(["PIPELINING", "CHUNKING"])
        for i in range(n):
            read_write(c, envelope([f"r{i}@example.org"], data=False) + bdat(msg(f"m{i}")))
            c.send(b"250 ok\r\n250 ok\r\n250 queued\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many([(FROM, f"r{i}@example.org", msg(f"m{i}")) for i in range(n)], window=16))
    assert [r.status for r in results] == ["delivered"] * n


@pytest.mark.parametrize("window", [1, 4])
def test_bdat_mixed_outcomes(window):
    # With BDAT the body goes out before the envelope's replies are known; the
    # server discards it when the envelope failed (RFC 3030 §2), and the
    # result is classified by the envelope.  A refused BDAT leaves the state
    # indeterminate, so the next MAIL needs a RSET (this Mta insists).
    mta = Mta(["PIPELINING", "CHUNKING", "8BITMIME", "ENHANCEDSTATUSCODES"],
              mail={"bad@example.org": "550 5.7.1 sender rejected"},
              rcpt={"later@example.org": "450 4.2.0 try later", "gone@example.org": "550 5.1.1 no such user"},
              final={"m4": "554 5.6.0 content rejected"})
    items = [
        (FROM, "r0@example.org", msg("m0")),
        ("bad@example.org", "r1@example.org", msg("m1")),
        (FROM, ["later@example.org", "gone@example.org"], msg("m2")),
        (FROM, ["ok@example.org", "gone@example.org"], msg("m3")),
        (FROM, "r4@example.org", msg("m4")),
        (FROM, "r5@example.org", msg("m5")),
    ]
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many(items, window=window))
            assert s.noop() == (250, b"2.0.0 noop ok")
    check_one_result_each(results, 6)
    assert [r.status for r in results] == ["delivered", "refused", "deferred", "partial", "refused",
                                           "delivered"]
    e = [r.exception for r in results]
    assert type(e[1]) is smtplib.SMTPSenderRefused and e[1].smtp_code == 550
    assert type(e[2]) is smtplib.SMTPRecipientsRefused
    assert e[2].recipients == {"later@example.org": (450, b"4.2.0 try later"),
                               "gone@example.org": (550, b"5.1.1 no such user")}
    assert results[3].refused == {"gone@example.org": (550, b"5.1.1 no such user")}
    assert type(e[4]) is smtplib.SMTPDataError and e[4].smtp_code == 554
    assert results[4].reply == (554, b"5.6.0 content rejected")
    assert mta.delivered == ["m0", "m3", "m5"]
    assert mta.count("MAIL") == 6 and mta.count("BDAT") == 6  # each sent once
    if window == 1:
        # Lock-step by message, so the writes are known exactly.
        assert mta.groups() == [
            ["MAIL " + FROM, "RCPT r0@example.org", "BDAT m0"],
            ["MAIL bad@example.org", "RCPT r1@example.org", "BDAT m1"],
            ["RSET", "MAIL " + FROM, "RCPT later@example.org", "RCPT gone@example.org", "BDAT m2"],
            ["RSET", "MAIL " + FROM, "RCPT ok@example.org", "RCPT gone@example.org", "BDAT m3"],
            ["MAIL " + FROM, "RCPT r4@example.org", "BDAT m4"],
            ["RSET", "MAIL " + FROM, "RCPT r5@example.org", "BDAT m5"],
            ["NOOP"],
            ["QUIT"],
        ]


def test_bdat_hangup_with_a_full_window():
    # window=3: three messages go in one write; the client refills once half
    # the window has drained (two answered), writing two more at once.  The
    # server then dies: every message whose body was written but not answered
    # is uncertain; the sixth was never written.
    def group(i, rset):
        return envelope([f"r{i}@example.org"], rset=rset, data=False) + bdat(msg(f"m{i}"))

    def script(c):
        c.handshake(["PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"])
        read_write(c, group(0, False) + group(1, True) + group(2, True))
        c.send(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued\r\n")
        assert c.pending(0.05) == b"", "refilled before half the window drained"
        c.send(b"250 2.0.0 ok\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued\r\n")
        read_write(c, group(3, True) + group(4, True))
        c.close()

    with ScriptedServer(script, timeout=3) as srv:
        s = client(srv)
        results = list(s.send_many([(FROM, f"r{i}@example.org", msg(f"m{i}")) for i in range(6)],
                                   window=3))
        s.close()
    check_one_result_each(results, 6)
    assert [r.status for r in results] == ["delivered", "delivered", "uncertain", "uncertain",
                                           "uncertain", "not_attempted"]
    assert srv.received.count(b"BDAT") == 5  # nothing resent


def test_bdat_binarymime_for_8bit_bodies():
    # RFC 3030 §3: with BINARYMIME an 8-bit body goes raw (no line-end
    # normalisation) and is declared BODY=BINARYMIME; an ASCII body in the same
    # batch is sent as usual (CRLF-normalised, no BODY parameter).
    ascii_msg = b"Subject: m0\n\nbare lf\n.dot\n"
    raw = b"Subject: m1\r\nContent-Type: application/octet-stream\r\n\r\n\x00\xff\nbare\r.\r\n.x"

    def script(c):
        c.handshake(["PIPELINING", "CHUNKING", "BINARYMIME", "SIZE 1000"])
        norm = b"Subject: m0\r\n\r\nbare lf\r\n.dot\r\n"
        read_write(c, envelope(["b@example.org"], data=False, mail_args=b" size=%d" % len(norm)) + bdat(norm))
        c.send(b"250 ok\r\n250 ok\r\n250 2.0.0 queued as A\r\n")
        read_write(c, envelope(["c@example.org"], data=False, mail_args=b" size=%d BODY=BINARYMIME" % len(raw))
                   + bdat(raw))
        c.send(b"250 ok\r\n250 ok\r\n250 2.0.0 queued as B\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many([(FROM, "b@example.org", ascii_msg), (FROM, "c@example.org", raw)],
                                       window=1))
    assert [r.status for r in results] == ["delivered", "delivered"]


# == without PIPELINING: lock-step =================================================================
def test_lockstep_statuses_and_delivery(aiosmtpd_factory):
    srv = aiosmtpd_factory(
        refuse_senders={"bad@example.org": "550 5.7.1 sender rejected",
                        "slow@example.org": "451 4.3.0 sender deferred"},
        refuse_recipients={"gone@example.org": "550 5.1.1 no such user",
                           "full@example.org": "452 4.2.2 over quota"},
    )
    em = EmailMessage()
    em["From"] = "hdr@example.org"
    em["To"] = "to@example.org"
    em["Subject"] = "m6"
    em.set_content("via headers\n")
    items = [
        (FROM, ["r0@example.org", "r0b@example.org"], msg("m0")),
        ("bad@example.org", "r1@example.org", msg("m1")),
        ("slow@example.org", "r2@example.org", msg("m2")),
        (FROM, ["ok@example.org", "gone@example.org", "full@example.org"], msg("m3")),
        (FROM, ["gone@example.org", "full@example.org"], msg("m4")),  # a 4xx among them: deferred
        (FROM, ["gone@example.org"], msg("m5")),
        em,
    ]
    with smtplib.SMTP(srv.host, srv.port, timeout=5, local_hostname=HOST) as s:
        s.ehlo()
        assert not s.has_extn("pipelining")
        results = list(s.send_many(items))
        assert s.noop()[0] == 250
    check_one_result_each(results, 7)
    assert [r.status for r in results] == ["delivered", "refused", "deferred", "partial", "deferred",
                                           "refused", "delivered"]
    e = [r.exception for r in results]
    assert type(e[1]) is smtplib.SMTPSenderRefused and e[1].smtp_code == 550
    assert type(e[2]) is smtplib.SMTPSenderRefused and e[2].smtp_code == 451
    assert results[3].refused == {"gone@example.org": (550, b"5.1.1 no such user"),
                                  "full@example.org": (452, b"4.2.2 over quota")}
    assert set(results[3].recipients) == {"ok@example.org", "gone@example.org", "full@example.org"}
    assert results[3].recipients["ok@example.org"][0] == 250
    assert type(e[4]) is smtplib.SMTPRecipientsRefused and set(e[4].recipients) == {
        "gone@example.org", "full@example.org"}
    assert results[5].refused == {"gone@example.org": (550, b"5.1.1 no such user")}
    assert (results[6].from_addr, results[6].to_addrs) == ("hdr@example.org", ["to@example.org"])
    # What actually arrived, and only that.
    got = [(m.mail_from, m.rcpt_tos, m.content) for m in srv.messages]
    assert got[:2] == [(FROM, ["r0@example.org", "r0b@example.org"], msg("m0")),
                       (FROM, ["ok@example.org"], msg("m3"))]
    assert len(got) == 3 and got[2][:2] == ("hdr@example.org", ["to@example.org"])
    assert b"via headers" in got[2][2]


# Regression (before 3de9907): lock-step results had reply=None and accepted recipients a
# made-up (250, b'').
def test_lockstep_results_carry_the_servers_replies(aiosmtpd_server):
    with smtplib.SMTP(aiosmtpd_server.host, aiosmtpd_server.port, timeout=5, local_hostname=HOST) as s:
        [r] = list(s.send_many([(FROM, "b@example.org", msg("m0"))]))
    assert r.status == "delivered"
    assert r.recipients == {"b@example.org": (250, b"2.1.5 OK")}
    assert r.reply == (250, b"2.0.0 OK queued")


# Regression (before 3de9907): SMTPMessageTooLarge, an SMTPSenderRefused, was reported 'refused'.
def test_lockstep_size_limit_is_a_client_side_failure(aiosmtpd_factory):
    srv = aiosmtpd_factory(data_size_limit=200)
    big = b"Subject: big\r\n\r\n" + b"x" * 300 + b"\r\n"
    with smtplib.SMTP(srv.host, srv.port, timeout=5, local_hostname=HOST) as s:
        results = list(s.send_many([(FROM, "b@example.org", big), (FROM, "c@example.org", msg("m1"))]))
    assert isinstance(results[0].exception, smtplib.SMTPMessageTooLarge)
    assert [m.rcpt_tos for m in srv.messages] == [["c@example.org"]]
    assert [r.status for r in results] == ["failed", "delivered"]


# Regression (before 3de9907): MAIL and RSET were sent and the status was 'refused'.
def test_lockstep_no_recipients_is_a_client_side_failure():
    mta = Mta(["8BITMIME"])
    with ScriptedServer(mta, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many([(FROM, [], msg("m0")), (FROM, "r1@example.org", msg("m1"))]))
    assert [r.status for r in results] == ["failed", "delivered"]
    assert isinstance(results[0].exception, ValueError)
    assert mta.count("MAIL") == 1


def send_numbered(mta, n: int) -> list:
    """send_many() of n messages, sender s<i>, recipient r<i>, on ``mta``; one result each."""
    items = [(f"s{i}@example.org", f"r{i}@example.org", msg(f"m{i}")) for i in range(n)]
    with ScriptedServer(mta, timeout=3) as srv:
        s = client(srv)
        results = list(s.send_many(items))
        s.close()
    check_one_result_each(results, n)
    return results


# Regression (before 3de9907): the message after the 421 was reported 'uncertain'.
def test_lockstep_after_421_the_rest_is_not_attempted():
    mta = Mta(["8BITMIME"], mail={"s1@example.org": _421})
    results = send_numbered(mta, 4)
    assert results[1].status == "deferred"
    assert type(results[1].exception) is smtplib.SMTPSenderRefused
    assert mta.tail == b""
    assert [r.status for r in results] == ["delivered", "deferred", "not_attempted", "not_attempted"]


def test_lockstep_waits_for_every_reply():
    # No PIPELINING: nothing may be sent before the previous reply (RFC 5321
    # §4.3.1 / RFC 2920 §1: pipelining only when offered).
    def script(c):
        c.handshake(["8BITMIME"])
        for i in range(2):
            for line, reply in ((b"mail FROM:<%s>\r\n" % FROM.encode(), b"250 ok\r\n"),
                                (b"rcpt TO:<r%d@example.org>\r\n" % i, b"250 ok\r\n"),
                                (b"data\r\n", b"354 go\r\n")):
                assert c.readline() == line
                assert c.pending(0.03) == b"", f"sent before the reply to {line!r}"
                c.send(reply)
            assert c.read_data() == stuffed(f"m{i}")
            assert c.pending(0.03) == b""
            c.send(b"250 2.0.0 queued\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            results = list(s.send_many([(FROM, f"r{i}@example.org", msg(f"m{i}")) for i in range(2)]))
    assert [r.status for r in results] == ["delivered", "delivered"]


@pytest.mark.parametrize("when", ["after-body", "before-354"])
def test_lockstep_hangup(when):
    # After the body the message is uncertain (a resend could duplicate it);
    # before the 354 nothing of it can have been delivered: not attempted.
    policy = dict(final={"m1": HANGUP}) if when == "after-body" else dict(data={"s1@example.org": HANGUP})
    mta = Mta(["8BITMIME"], **policy)
    results = send_numbered(mta, 3)
    assert results[0].status == "delivered"
    if when == "after-body":
        assert results[1].status == "uncertain"
    else:
        assert results[1].status == "not_attempted"
    assert results[2].status == "not_attempted"
    assert all(isinstance(r.exception, smtplib.SMTPServerDisconnected) for r in results[1:])
    assert mta.count("MAIL") == 2


# == LMTP (RFC 2033) ==============================================================================
def test_lmtp_pipelined_per_recipient_replies():
    # After the data an LMTP server replies once per accepted recipient, in
    # RCPT order (RFC 2033 §4.2); each lands on its own recipient.
    mta = Mta(lmtp=True,
              rcpt={"c@example.org": "550 5.1.1 c unknown"},
              lmtp_final={"d@example.org": "452 4.2.2 d over quota",
                          "q1@example.org": "452 4.2.2 q1 over quota", "q2@example.org": "451 4.3.0 q2 later",
                          "x1@example.org": "550 5.2.1 x1 disabled", "x2@example.org": "552 5.2.2 x2 full",
                          "y1@example.org": "550 5.2.1 y1 disabled", "y2@example.org": "452 4.2.2 y2 full"})
    items = [
        (FROM, ["b@example.org", "c@example.org", "d@example.org"], msg("m0")),
        (FROM, ["q1@example.org", "q2@example.org"], msg("m1")),
        (FROM, ["x1@example.org", "x2@example.org"], msg("m2")),
        (FROM, "e@example.org", msg("m3")),
        # Nobody delivered, one refusal temporary: deferred, as the same codes
        # at RCPT time would give (a retry may reach y2).
        (FROM, ["y1@example.org", "y2@example.org"], msg("m4")),
    ]
    with ScriptedServer(mta, timeout=3) as srv:
        s = lmtp_client(srv)
        try:
            results = list(s.send_many(items))
            assert s.noop() == (250, b"2.0.0 noop ok")  # every per-recipient reply was read
            s.quit()
        finally:
            s.close()
    assert srv.received.lower().startswith(b"lhlo " + HOST.encode())
    check_one_result_each(results, 5)
    assert [r.status for r in results] == ["partial", "deferred", "refused", "delivered", "deferred"]
    r0 = results[0]
    assert r0.recipients == {"b@example.org": (250, b"2.0.0 <b@example.org> delivered"),
                             "c@example.org": (550, b"5.1.1 c unknown"),
                             "d@example.org": (452, b"4.2.2 d over quota")}
    assert r0.refused == {"c@example.org": (550, b"5.1.1 c unknown"),
                          "d@example.org": (452, b"4.2.2 d over quota")}
    assert r0.ok and r0.exception is None
    assert results[1].recipients == {"q1@example.org": (452, b"4.2.2 q1 over quota"),
                                     "q2@example.org": (451, b"4.3.0 q2 later")}
    assert results[2].recipients == {"x1@example.org": (550, b"5.2.1 x1 disabled"),
                                     "x2@example.org": (552, b"5.2.2 x2 full")}
    for r in results[1:3]:
        assert isinstance(r.exception, smtplib.SMTPDataError) and not r.ok
    assert results[3].recipients == {"e@example.org": (250, b"2.0.0 <e@example.org> delivered")}
    # One round trip per message, as with SMTP.
    assert mta.groups() == [
        ["MAIL " + FROM, "RCPT b@example.org", "RCPT c@example.org", "RCPT d@example.org", "DATA"],
        ["BODY m0", "MAIL " + FROM, "RCPT q1@example.org", "RCPT q2@example.org", "DATA"],
        ["BODY m1", "MAIL " + FROM, "RCPT x1@example.org", "RCPT x2@example.org", "DATA"],
        ["BODY m2", "MAIL " + FROM, "RCPT e@example.org", "DATA"],
        ["BODY m3", "MAIL " + FROM, "RCPT y1@example.org", "RCPT y2@example.org", "DATA"],
        ["BODY m4"],
        ["NOOP"],
        ["QUIT"],
    ]


def _lmtp_lockstep(aiosmtpd_factory):
    srv = aiosmtpd_factory(lmtp=True, lmtp_data_replies={
        "full@example.org": "452 4.2.2 over quota", "full2@example.org": "452 4.2.2 also over quota"})
    items = [(FROM, ["b@example.org", "full@example.org"], msg("m0")),
             (FROM, ["full@example.org", "full2@example.org"], msg("m1")),
             (FROM, "c@example.org", msg("m2"))]
    s = smtplib.LMTP(srv.host, srv.port, timeout=5, local_hostname=HOST)
    try:
        results = list(s.send_many(items))
        assert s.noop()[0] == 250
        s.quit()
    finally:
        s.close()
    return srv, results


def test_lmtp_lockstep_against_aiosmtpd(aiosmtpd_factory):
    srv, results = _lmtp_lockstep(aiosmtpd_factory)
    check_one_result_each(results, 3)
    assert [r.status for r in results] == ["partial", "deferred", "delivered"]
    assert results[0].refused == {"full@example.org": (452, b"4.2.2 over quota")}
    assert set(results[0].recipients) == {"b@example.org", "full@example.org"}
    assert isinstance(results[1].exception, smtplib.SMTPDataError)
    assert results[1].exception.smtp_code == 452
    assert [m.rcpt_tos for m in srv.messages] == [["b@example.org", "full@example.org"],
                                                 ["full@example.org", "full2@example.org"],
                                                 ["c@example.org"]]
    assert srv.messages[2].content == msg("m2")


# Regression (before 3de9907): the per-recipient replies after the data were dropped.
def test_lmtp_lockstep_undelivered_keeps_per_recipient_replies(aiosmtpd_factory):
    _srv, results = _lmtp_lockstep(aiosmtpd_factory)
    assert results[1].recipients == {"full@example.org": (452, b"4.2.2 over quota"),
                                     "full2@example.org": (452, b"4.2.2 also over quota")}


# == real servers ===================================================================================
def test_sink_500_messages_from_a_generator(smtp_sink_factory):
    # smtp-sink: a real pipelining peer (no CHUNKING); -d records each message.
    sink = smtp_sink_factory(dump=True)
    n = 500
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(n):
            pulled += 1
            yield (FROM, [f"r{i}@example.org"], msg(f"m{i}"))

    results = []
    with smtplib.SMTP(sink.host, sink.port, timeout=10, local_hostname=HOST) as s:
        for r in s.send_many(source()):
            # Lazy: with DATA at most one message beyond the last result is
            # taken from the generator (its envelope rides with the body).
            assert pulled <= r.index + 2
            results.append(r)
    check_one_result_each(results, n)
    assert all(r.status == "delivered" and r.reply[0] == 250 for r in results)
    dumps = sink.dumps(expect=n)
    assert len(dumps) == n
    assert sorted(d.rcpt_args[0] for d in dumps) == sorted(f"<r{i}@example.org>" for i in range(n))
    assert {d.data for d in dumps[:5]} <= {lf(msg(f"m{i}")) for i in range(n)}


POSTFIX_MSG = b"Subject: %d\r\n\r\nline one\r\n.leading dot\r\n.\r\n..\r\nend\r\n"


def test_postfix_bdat_batch(postfix):
    # Real Postfix with CHUNKING: pipelined BDAT messages with RSETs between
    # them, refusals classified, bodies stored intact (dot lines included).
    items = [
        ("s@example.org", ["r0@example.org"], POSTFIX_MSG % 0),
        ("reject@example.org", ["r1@example.org"], POSTFIX_MSG % 1),
        ("s@example.org", ["r2@example.org", "defer@example.org", "bounce@example.org"], POSTFIX_MSG % 2),
        ("s@example.org", ["reject@example.org", "defer2@example.org"], POSTFIX_MSG % 3),
        ("s@example.org", ["r4a@example.org", "r4b@example.org"], POSTFIX_MSG % 4),
        ("s@example.org", ["reject@example.org"], POSTFIX_MSG % 5),
    ]
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10, local_hostname=HOST) as s:
        s.ehlo()
        assert s.has_extn("chunking") and s.has_extn("pipelining")
        results = list(s.send_many(items, window=3))
        # BDAT leaves no transaction open behind it: a plain sendmail still works.
        assert s.sendmail("s@example.org", ["after@example.org"], POSTFIX_MSG % 9) == {}
    check_one_result_each(results, 6)
    assert [r.status for r in results] == ["delivered", "refused", "partial", "deferred", "delivered",
                                           "refused"]
    assert type(results[1].exception) is smtplib.SMTPSenderRefused
    assert {k: v[0] for k, v in results[2].refused.items()} == {"defer@example.org": 450,
                                                                "bounce@example.org": 550}
    assert type(results[3].exception) is smtplib.SMTPRecipientsRefused
    assert all(b"queued as" in results[i].reply[1] for i in (0, 2, 4))
    got = sorted((m.recipients, m.body_without_received) for m in postfix.messages())
    assert got == sorted([(["r0@example.org"], lf(POSTFIX_MSG % 0)),
                          (["r2@example.org"], lf(POSTFIX_MSG % 2)),
                          (["r4a@example.org", "r4b@example.org"], lf(POSTFIX_MSG % 4)),
                          (["after@example.org"], lf(POSTFIX_MSG % 9))])


def test_postfix_data_mode_batch(postfix):
    # The same server with CHUNKING switched off: pipelined DATA.
    items = [("s@example.org", [f"r{i}@example.org"], POSTFIX_MSG % i) for i in range(5)]
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10, local_hostname=HOST) as s:
        s.chunking = False
        results = list(s.send_many(items))
    assert [r.status for r in results] == ["delivered"] * 5
    got = sorted((m.recipients, m.body_without_received) for m in postfix.messages())
    assert got == [([f"r{i}@example.org"], lf(POSTFIX_MSG % i)) for i in range(5)]


# Regression (before 3de9907), on real Postfix: SMTPDataError(503 'need RCPT command') for a
# rejected sender; 'refused' + SMTPDataError(554) for recipients 550+450.
def test_postfix_data_mode_envelope_failures(postfix):
    items = [("reject@example.org", ["r0@example.org"], POSTFIX_MSG % 0),
             ("s@example.org", ["reject@example.org", "defer@example.org"], POSTFIX_MSG % 1),
             ("s@example.org", ["r2@example.org"], POSTFIX_MSG % 2)]
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10, local_hostname=HOST) as s:
        s.chunking = False
        results = list(s.send_many(items))
    assert results[2].status == "delivered"
    assert type(results[0].exception) is smtplib.SMTPSenderRefused
    assert type(results[1].exception) is smtplib.SMTPRecipientsRefused
    assert [r.status for r in results] == ["refused", "deferred", "delivered"]


# Regression (before 3de9907), on real Postfix: '503 nested MAIL command', the stale
# transaction took the next RCPT/DATA and Postfix queued an empty message.
def test_postfix_connection_usable_after_send_many(postfix):
    items = [("s@example.org", ["r0@example.org"], POSTFIX_MSG % 0),
             ("s@example.org", ["reject@example.org"], POSTFIX_MSG % 1)]
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10, local_hostname=HOST) as s:
        s.chunking = False
        results = list(s.send_many(items))
        assert [r.status for r in results] == ["delivered", "refused"]
        try:
            refused = s.sendmail("s@example.org", ["after@example.org"], POSTFIX_MSG % 9)
        finally:
            stored = sorted((m.recipients, m.body_without_received) for m in postfix.messages())
    assert refused == {}
    assert stored == [(["after@example.org"], lf(POSTFIX_MSG % 9)), (["r0@example.org"], lf(POSTFIX_MSG % 0))]


@pytest.mark.parametrize("extensions", [["PIPELINING"], ["PIPELINING", "CHUNKING"]])
def test_recipients_named_like_commands(extensions):
    # Local recipients may be called anything, "data" or "final" included:
    # their replies must still be matched to them, not to the DATA command.
    rcpts = ["data", "final", "mail"]

    def script(c):
        c.handshake(extensions)
        if "CHUNKING" in extensions:
            read_write(c, envelope(rcpts, data=False) + bdat(msg("m0")))
            c.send(b"250 sender ok\r\n250 data ok\r\n251 final forwarded\r\n250 mail ok\r\n250 queued\r\n")
        else:
            read_write(c, envelope(rcpts))
            c.send(b"250 sender ok\r\n250 data ok\r\n251 final forwarded\r\n250 mail ok\r\n354 go\r\n")
            read_write(c, stuffed("m0"))
            c.send(b"250 queued\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=3) as srv:
        with client(srv) as s:
            [r] = list(s.send_many([(FROM, rcpts, msg("m0"))]))
    assert r.status == "delivered", r
    assert r.recipients == {"data": (250, b"data ok"), "final": (251, b"final forwarded"),
                            "mail": (250, b"mail ok")}
    assert r.reply == (250, b"queued")


def test_bdat_window_is_bounded_in_bytes_too():
    # 600 KB messages with window=16: a write gathers at most ~1 MiB of
    # message data (the first message always goes), so two go, then the
    # client waits for their replies before writing the third.
    big = [b"Subject: big%d\r\n\r\n" % i + b"x" * 600_000 + b"\r\n" for i in range(3)]

    def group(i, rset):
        return envelope([f"r{i}@example.org"], rset=rset, data=False) + bdat(big[i])

    def script(c):
        c.handshake(["PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"])
        assert c.read_exactly(len(group(0, False) + group(1, True))) == group(0, False) + group(1, True)
        assert c.pending(0.1) == b"", "more than the byte budget in one write"
        c.send(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued 0\r\n"
               b"250 2.0.0 ok\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued 1\r\n")
        # Nothing is unanswered now, so no RSET: it goes only behind a message
        # that may yet fail (the engine's rule 6).
        assert c.read_exactly(len(group(2, False))) == group(2, False)
        c.send(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued 2\r\n")
        quit_ok(c)

    with ScriptedServer(script, timeout=5) as srv:
        with client(srv) as s:
            results = list(s.send_many([(FROM, f"r{i}@example.org", big[i]) for i in range(3)], window=16))
    assert [r.reply for r in results] == [(250, b"2.0.0 queued 0"), (250, b"2.0.0 queued 1"),
                                          (250, b"2.0.0 queued 2")]


def test_send_many_over_smtp_ssl(ssl_server, client_tls_context):
    # Implicit TLS (SMTP_SSL): the unasked-reply check and every read go
    # through the TLS layer; aiosmtpd offers no PIPELINING, so lock-step.
    items = [(FROM, f"r{i}@example.org", msg(f"m{i}")) for i in range(3)]
    with smtplib.SMTP_SSL(ssl_server.host, ssl_server.port, context=client_tls_context, timeout=10) as s:
        results = list(s.send_many(items))
        results += list(s.send_many(items[:1]))  # the connection stays usable
    assert [r.status for r in results] == ["delivered"] * 4
    assert all(r.reply[0] == 250 for r in results)
    got = ssl_server.messages
    assert [m.tls for m in got] == [True] * 4
    assert [m.content for m in got] == [msg("m0"), msg("m1"), msg("m2"), msg("m0")]
