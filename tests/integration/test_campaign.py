"""``fastsmtplib send`` / ``report`` end to end against real servers.

The project's ``Sink`` with ``store=DIR`` (every accepted message on disk, read
back with ``read_stored``), an in-process aiosmtpd, and ``PoolServer``
(tests/support/pool_server.py: replies by policy and counts what it accepted,
keyed by Subject; the templates here put the address in the Subject so the
ledger is per recipient).  The command line runs in-process through
``cli.main`` (the crash test, in test_campaign_crash.py, runs it as a
subprocess).
"""

from __future__ import annotations

import base64
import collections
import csv
import email
import email.policy
import json
import os
import socket

import pytest

from fastsmtplib.cli import main
from fastsmtplib.journal import Journal
from fastsmtplib.sink import Sink, read_stored
from tests.support.pool_server import HANGUP, PoolServer

FROM = "news@example.org"


# -- helpers ------------------------------------------------------------------------


def write_csv(path, rows, header=("email", "name")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(r)
    return str(path)


def people(n, domain="example.net"):
    return [("user%d@%s" % (i, domain), "Name %d" % i) for i in range(1, n + 1)]


@pytest.fixture
def parts(tmp_path):
    html = tmp_path / "body.html"
    html.write_text("<p>Hello {{name}}!</p>\n", encoding="utf-8")
    text = tmp_path / "body.txt"
    text.write_text("Hello {{name}}!\n", encoding="utf-8")
    return ["--subject", "News for {{email}}", "--html", str(html), "--text", str(text), "--from", FROM]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json", "--quiet")
    return code, (json.loads(out) if out.strip() else None), err


def parse(content: bytes):
    return email.message_from_bytes(content, policy=email.policy.default)


def bodies(msg):
    """``{content type: decoded text}`` of a message's leaf parts."""
    return {p.get_content_type(): p.get_content() for p in msg.walk() if not p.is_multipart()}


def by_recipient(stored):
    out = collections.defaultdict(list)
    for m in stored:
        for r in m.recipients:
            out[r].append(m)
    return out


def journal_states(path):
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT address, state FROM recipients"))
    finally:
        conn.close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- end to end: Sink with a store ----------------------------------------------------


def _dkim_key(kind):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(pub)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        record = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(pub)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, record


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_send_to_sink_personalised_signed_unsubscribe(tmp_path, capsys, parts, kind):
    dkim = pytest.importorskip("dkim")
    pem, record = _dkim_key(kind)
    keyfile = tmp_path / "dkim.pem"
    keyfile.write_bytes(pem)
    rows = people(12)
    rows[3] = ("user4@example.net", "Tom & <Jerry>")  # must be escaped in HTML, verbatim in text
    src = write_csv(tmp_path / "list.csv", rows)
    store = tmp_path / "store"
    with Sink(port=0, store=store) as sink:
        code, summary, err = run_json(
            capsys, "send", "--recipients", src, *parts, "--server", "127.0.0.1:%d" % sink.port,
            "--dkim-key", keyfile, "--dkim-selector", "sel1", "--dkim-domain", "example.org",
            "--unsubscribe-url", "https://example.org/u?e={{email}}", "--unsubscribe-mailto", "unsub@example.org",
            "--connections", "3")
        stored = sink.stored()
    assert code == 0, err
    assert summary["states"]["delivered"] == 12 and summary["total"] == 12
    assert summary["codes"] == {"250": 12}
    assert summary["journal"] == str(tmp_path / "list.journal.db")
    got = by_recipient(stored)
    assert sorted(got) == sorted(a for a, _ in rows)
    mids = set()
    for addr, name in rows:
        (m,) = got[addr]  # exactly once
        assert m.mail_from == FROM
        msg = parse(m.content)
        assert msg["To"] == addr
        assert msg["Subject"] == "News for %s" % addr
        mids.add(msg["Message-ID"])
        assert msg["Date"]
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        lu = msg["List-Unsubscribe"]
        assert "<https://example.org/u?e=%s>" % addr in lu.replace("%40", "@")
        assert "mailto:unsub@example.org" in lu
        b = bodies(msg)
        assert "Hello %s!" % name in b["text/plain"]
        if "&" in name:
            assert "Tom &amp; &lt;Jerry&gt;" in b["text/html"]
            assert "<Jerry>" not in b["text/html"]
        else:
            assert "Hello %s!" % name in b["text/html"]
        ok = dkim.verify(m.content, dnsfunc=lambda name, timeout=5: record if name == b"sel1._domainkey.example.org." else None)
        assert ok, "DKIM signature does not verify for %s" % addr
        tampered = m.content.replace(b"Hello", b"Hallo", 1)
        assert not dkim.verify(tampered, dnsfunc=lambda name, timeout=5: record)
    assert len(mids) == 12  # one Message-ID per recipient


def test_send_to_aiosmtpd(tmp_path, capsys, parts, aiosmtpd_server):
    src = write_csv(tmp_path / "list.csv", people(7))
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--server",
                         "%s:%d" % (aiosmtpd_server.host, aiosmtpd_server.port), "--journal", tmp_path / "j.db")
    assert code == 0, err
    assert "7 recipients: 7 delivered" in out
    msgs = aiosmtpd_server.messages
    assert sorted(r for m in msgs for r in m.rcpt_tos) == sorted(a for a, _ in people(7))
    for m in msgs:
        msg = parse(m.content)
        assert msg["To"] == m.rcpt_tos[0]
        assert msg["Subject"] == "News for %s" % m.rcpt_tos[0]
        i = int(m.rcpt_tos[0][4:].split("@")[0])
        assert "Hello Name %d!" % i in bodies(msg)["text/plain"]
    # Progress goes to stderr as plain lines (not a terminal), ending at 100%.
    assert "journal" in out
    assert "100% 7/7" in err


def test_default_server_is_embedded_sink_and_journal_next_to_csv(tmp_path, capsys, parts):
    src = write_csv(tmp_path / "list.csv", people(3))
    code, out, err = run(capsys, "send", "--recipients", src, *parts)
    assert code == 0, err
    assert "embedded sink" in err
    assert "journal: %s" % (tmp_path / "list.journal.db") in err
    assert os.path.isfile(tmp_path / "list.journal.db")
    assert set(journal_states(tmp_path / "list.journal.db").values()) == {"delivered"}


def test_quiet_prints_nothing_on_stderr(tmp_path, capsys, parts):
    src = write_csv(tmp_path / "list.csv", people(3))
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--quiet")
    assert code == 0
    assert err == ""
    assert "3 delivered" in out


# -- validation -------------------------------------------------------------------


def test_missing_template_fields_exit_2_naming_them(tmp_path, capsys):
    src = write_csv(tmp_path / "list.csv", people(3))
    text = tmp_path / "t.txt"
    text.write_text("Dear {{first_name}} of {{city}}, {{name}}\n")
    code, out, err = run(capsys, "send", "--recipients", src, "--subject", "Hi {{plan}}", "--text", text,
                         "--from", FROM)
    assert code == 2
    assert "city, first_name, plan" in err
    assert "the header has: email, name" in err
    assert not os.path.exists(tmp_path / "list.journal.db")  # nothing started


def test_missing_address_column_exit_2(tmp_path, capsys, parts):
    src = write_csv(tmp_path / "list.csv", people(2), header=("mail", "name"))
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--address-column", "mail")
    assert code == 2 and "email" in err  # {{email}} in the subject
    code, out, err = run(capsys, "send", "--recipients", src, *parts[:-2], "--from", FROM)
    assert code == 2 and "lacks column" in err and "email" in err


def test_bad_rows_invalid_duplicate_short(tmp_path, capsys, parts):
    path = tmp_path / "list.csv"
    path.write_text(
        "email,name\n"
        "a@example.net,A\n"
        "not-an-address,B\n"
        "A@EXAMPLE.NET,C\n"          # duplicate of row 1 (domain case folded)
        "c@example.net\n"            # one field short
        "d@example.net,D,extra\n"    # one too many
        "\n"                          # blank line: not a record
        "e@example.net,\"E, with comma\"\n"
        "a@example.net,again\n"      # exact duplicate
        "bad@@example.net,F\n",
        encoding="utf-8")
    with Sink(port=0, store=tmp_path / "store") as sink:
        code, summary, err = run_json(capsys, "send", "--recipients", path, *parts,
                                      "--server", "127.0.0.1:%d" % sink.port)
        stored = sink.stored()
    assert code == 0, err  # invalid and duplicate are final states
    assert summary["states"]["delivered"] == 2
    assert summary["states"]["invalid"] == 4
    assert summary["states"]["duplicate"] == 2
    assert sorted(r for m in stored for r in m.recipients) == ["a@example.net", "e@example.net"]
    out_csv = tmp_path / "report.csv"
    code, out, err = run(capsys, "report", tmp_path / "list.journal.db", "--csv", out_csv)
    assert code == 0
    rows = list(csv.DictReader(open(out_csv, encoding="utf-8")))
    assert [(r["address"], r["state"]) for r in rows] == [
        ("a@example.net", "delivered"), ("not-an-address", "invalid"), ("A@EXAMPLE.NET", "duplicate"),
        ("c@example.net", "invalid"), ("d@example.net", "invalid"), ("e@example.net", "delivered"),
        ("a@example.net", "duplicate"), ("bad@@example.net", "invalid")]
    assert rows[2]["reply"] == "duplicate of row 1"
    assert "fields" in rows[3]["reply"]
    bad = parse(stored[0].content if stored[0].recipients == ["e@example.net"] else stored[1].content)
    assert "E, with comma" in bodies(bad)["text/plain"]


def test_bad_csv_encoding_exit_2(tmp_path, capsys, parts):
    path = tmp_path / "list.csv"
    path.write_bytes(b"email,name\na@example.net,\xff\xfe\n")
    code, out, err = run(capsys, "send", "--recipients", path, *parts)
    assert code == 2
    assert "line 2 is not UTF-8" in err


def test_usage_errors_exit_2(tmp_path, capsys, parts):
    src = write_csv(tmp_path / "list.csv", people(1))
    for argv in (["send", "--recipients", src] + parts + ["--ssl", "--starttls", "--server", "x"],
                 ["send", "--recipients", src] + parts + ["--rate", "0"],
                 ["send", "--recipients", src] + parts + ["--bogus"]):
        with pytest.raises(SystemExit) as ei:
            main([str(a) for a in argv])
        assert ei.value.code == 2
    capsys.readouterr()
    code, out, err = run(capsys, "send", "--recipients", tmp_path / "nope.csv", *parts)
    assert code == 2 and "nope.csv" in err
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--user", "bob")
    assert code == 2 and "--password" in err
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--server", "127.0.0.1:1",
                         "--user", "bob", "--password-env", "FSL_TEST_UNSET_VAR")
    assert code == 2 and "FSL_TEST_UNSET_VAR is not set" in err


# -- exit 3: could not start -----------------------------------------------------------


def test_unreachable_server_exit_3_nothing_marked(tmp_path, capsys, parts):
    src = write_csv(tmp_path / "list.csv", people(4))
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--server", "127.0.0.1:%d" % closed_port())
    assert code == 3
    assert "cannot start" in err
    assert set(journal_states(tmp_path / "list.journal.db").values()) == {"pending"}
    # The same command works once the server is there (nothing was sent: no --resume needed).
    with Sink(port=0) as sink:
        code, out, err = run(capsys, "send", "--recipients", src, *parts, "--server", "127.0.0.1:%d" % sink.port)
        assert code == 0, err
        assert sink.counts["messages"] == 4


def test_journal_locked_exit_3(tmp_path, capsys, parts):
    src = write_csv(tmp_path / "list.csv", people(2))
    with Journal(tmp_path / "j.db"):
        code, out, err = run(capsys, "send", "--recipients", src, *parts, "--journal", tmp_path / "j.db")
    assert code == 3
    assert "in use by another run (pid %d)" % os.getpid() in err
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--journal", tmp_path / "j.db")
    assert code == 0, err


def test_login_refused_exit_3_password_never_printed(tmp_path, capsys, parts, auth_server):
    from tests.support.aiosmtpd_server import AUTH_PASSWORD, AUTH_USER

    src = write_csv(tmp_path / "list.csv", people(2))
    server = "%s:%d" % (auth_server.host, auth_server.port)
    os.environ["FSL_TEST_PW"] = "wrong-Secret-123"
    try:
        code, out, err = run(capsys, "send", "--recipients", src, *parts, "--server", server,
                             "--user", AUTH_USER, "--password-env", "FSL_TEST_PW")
        assert code == 3, err
        assert "535" in err
        assert "wrong-Secret-123" not in out + err
        pwfile = tmp_path / "pw"
        pwfile.write_text(AUTH_PASSWORD + "\n")
        code, out, err = run(capsys, "send", "--recipients", src, *parts, "--server", server,
                             "--user", AUTH_USER, "--password-file", pwfile, "--json")
        assert code == 0, err
        assert AUTH_PASSWORD not in out + err
        assert len(auth_server.messages) == 2
    finally:
        del os.environ["FSL_TEST_PW"]


# -- faults: retries, refusals, deferrals, pause ------------------------------------------


def subject_of(addr):
    return "News for %s" % addr


def test_451_retried_delivered_once_550_refused(tmp_path, capsys, parts):
    rows = people(10)

    def policy(ev):
        if ev.command == "." and ev.subject in (subject_of("user2@example.net"), subject_of("user7@example.net")):
            if ev.attempt == 1:
                return "451 4.3.0 try again later"
        if ev.command == "RCPT" and "user5@" in ev.line:
            return "550 5.1.1 no such user"
        if ev.command == "." and ev.subject == subject_of("user9@example.net"):
            return "554 =HYPERLINK(\"http://evil\") rejected"
        return None

    src = write_csv(tmp_path / "list.csv", rows)
    with PoolServer(policy) as srv:
        code, summary, err = run_json(capsys, "send", "--recipients", src, *parts, "--server",
                                      "127.0.0.1:%d" % srv.port, "--retry-backoff", "0.05")
    assert code == 0, err  # refused is final
    st = summary["states"]
    assert (st["delivered"], st["refused"], st["deferred"]) == (8, 2, 0)
    assert summary["codes"] == {"250": 8, "550": 1, "554": 1}
    for addr, _ in rows:
        expect = 0 if addr in ("user5@example.net", "user9@example.net") else 1
        assert srv.accepted[subject_of(addr)] == expect, addr
    assert srv.bodies[subject_of("user2@example.net")] == 2  # sent twice, accepted once
    # report: JSON counts, CSV with the formula neutralised
    code, out, err = run(capsys, "report", tmp_path / "list.journal.db", "--json")
    rep = json.loads(out)
    assert code == 0
    assert rep["states"]["refused"] == 2 and rep["codes"]["550"] == 1
    out_csv = tmp_path / "r.csv"
    code, out, err = run(capsys, "report", tmp_path / "list.journal.db", "--csv", out_csv)
    assert code == 0 and "refused" in out and "550" in out
    got = {r["address"]: r for r in csv.DictReader(open(out_csv, encoding="utf-8"))}
    assert got["user9@example.net"]["reply"].startswith("'=HYPERLINK(")
    assert got["user9@example.net"]["code"] == "554"
    assert got["user5@example.net"]["reply"] == "5.1.1 no such user"
    assert got["user2@example.net"]["attempts"] == "2"
    assert got["user1@example.net"]["attempts"] == "1"


def test_deferred_exit_1_then_resume_delivers(tmp_path, capsys, parts):
    rows = people(6)
    blocked = {subject_of("user3@example.net")}

    def policy(ev):
        if ev.command == "." and ev.subject in blocked:
            return "452 4.2.2 mailbox full"
        return None

    src = write_csv(tmp_path / "list.csv", rows)
    with PoolServer(policy) as srv:
        code, summary, err = run_json(capsys, "send", "--recipients", src, *parts, "--server",
                                      "127.0.0.1:%d" % srv.port, "--retry-backoff", "0", "--attempts", "2")
        assert code == 1, err
        assert summary["states"]["deferred"] == 1 and summary["deferred"] == ["user3@example.net"]
        # Without --resume, a journal with a run in it is refused.
        code, out, err = run(capsys, "send", "--recipients", src, *parts, "--server", "127.0.0.1:%d" % srv.port)
        assert code == 2 and "--resume" in err
        blocked.clear()
        code, summary, err = run_json(capsys, "send", "--recipients", src, *parts, "--server",
                                      "127.0.0.1:%d" % srv.port, "--resume")
        assert code == 0, err
        assert summary["states"]["delivered"] == 6 and summary["sent_this_run"] == 1
    assert all(srv.accepted[subject_of(a)] == 1 for a, _ in rows)


def test_resume_refuses_another_csv_or_template(tmp_path, capsys, parts):
    src = write_csv(tmp_path / "list.csv", people(3))
    code, out, err = run(capsys, "send", "--recipients", src, *parts)
    assert code == 0
    write_csv(tmp_path / "list.csv", people(4))
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--resume")
    assert code == 2 and "the CSV changed" in err
    write_csv(tmp_path / "list.csv", people(3))
    code, out, err = run(capsys, "send", "--recipients", src, *parts[:1], "Other {{email}}", *parts[2:], "--resume")
    assert code == 2 and "the template changed" in err
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--resume")
    assert code == 0 and "this run: 0 messages" in out


def test_max_errors_pauses_then_resume(tmp_path, capsys, parts):
    rows = people(30)
    broken = [True]

    def policy(ev):
        if broken[0] and ev.command == "MAIL":
            return HANGUP  # connection-level failure: nothing delivered
        return None

    src = write_csv(tmp_path / "list.csv", rows)
    with PoolServer(policy) as srv:
        code, summary, err = run_json(capsys, "send", "--recipients", src, *parts, "--server",
                                      "127.0.0.1:%d" % srv.port, "--attempts", "1", "--max-errors", "5",
                                      "--connections", "1")
        assert code == 1, err
        assert summary["paused"].startswith("paused after 5 consecutive connection failures")
        assert summary["states"]["pending"] == 30  # never handed over: safe to send again
        assert sum(srv.accepted.values()) == 0
        broken[0] = False
        code, summary, err = run_json(capsys, "send", "--recipients", src, *parts, "--server",
                                      "127.0.0.1:%d" % srv.port, "--resume")
        assert code == 0, err
        assert summary["states"]["delivered"] == 30
    assert all(srv.accepted[subject_of(a)] == 1 for a, _ in rows)


def test_uncertain_listed_and_resent_only_when_asked(tmp_path, capsys, parts):
    rows = people(5)
    drop = {subject_of("user4@example.net")}

    def policy(ev):
        if ev.command == "." and ev.subject in drop:
            return HANGUP  # body received, no reply: uncertain
        return None

    src = write_csv(tmp_path / "list.csv", rows)
    with PoolServer(policy) as srv:
        server = "127.0.0.1:%d" % srv.port
        code, summary, err = run_json(capsys, "send", "--recipients", src, *parts, "--server", server)
        assert code == 1, err
        assert summary["states"]["uncertain"] == 1 and summary["uncertain"] == ["user4@example.net"]
        drop.clear()
        code, out, err = run(capsys, "send", "--recipients", src, *parts, "--server", server, "--resume")
        assert code == 1
        assert "1 uncertain recipient" in err and "user4@example.net" in err
        assert "this run: 0 messages" in out
        assert srv.bodies[subject_of("user4@example.net")] == 1
        code, summary, err = run_json(capsys, "send", "--recipients", src, *parts, "--server", server,
                                      "--resume", "--resend-uncertain")
        assert code == 0, err
        assert summary["states"]["delivered"] == 5
    assert srv.bodies[subject_of("user4@example.net")] == 2


def test_rate_limit_holds(tmp_path, capsys, parts):
    import time

    src = write_csv(tmp_path / "list.csv", people(12))
    with Sink(port=0) as sink:
        t0 = time.monotonic()
        code, summary, err = run_json(capsys, "send", "--recipients", src, *parts, "--server",
                                      "127.0.0.1:%d" % sink.port, "--rate", "20")
        elapsed = time.monotonic() - t0
    assert code == 0 and summary["states"]["delivered"] == 12
    # 12 messages at 20/s with a burst of 2: at least (12 - 2) / 20 s.  A lower bound only.
    assert elapsed >= 0.45


# -- dry run and report ---------------------------------------------------------------------


def test_dry_run_writes_messages_and_sends_nothing(tmp_path, capsys, parts):
    rows = people(4) + [("user1@example.net", "dup"), ("nope", "bad")]
    src = write_csv(tmp_path / "list.csv", rows)
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--dry-run", out_dir,
                         "--server", "127.0.0.1:%d" % closed_port())
    assert code == 0, err
    assert "dry run: 4 messages written to %s" % out_dir in out
    assert "1 invalid, 1 duplicate" in out
    files = sorted(os.listdir(out_dir))
    assert files == ["%08d.eml" % i for i in (1, 2, 3, 4)]
    msg = parse((out_dir / files[2]).read_bytes())
    assert msg["To"] == "user3@example.net" and "Hello Name 3!" in bodies(msg)["text/plain"]
    assert not os.path.exists(tmp_path / "list.journal.db")


def test_report_errors(tmp_path, capsys):
    code, out, err = run(capsys, "report", tmp_path / "missing.db")
    assert code == 2 and "no such journal" in err
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    code, out, err = run(capsys, "report", junk)
    assert code == 2 and "not a campaign journal" in err


def test_neutralise_cell():
    from fastsmtplib.campaign import neutralise_cell

    for bad in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert neutralise_cell(bad) == "'" + bad
    for fine in ("250 ok", "", "a=b", 5, None):
        assert neutralise_cell(fine) == fine


# -- templates, TLS, progress ---------------------------------------------------------------


def test_eml_template(tmp_path, capsys):
    eml = tmp_path / "news.eml"
    eml.write_bytes(
        b"From: Newsroom <news@example.org>\r\n"
        b"Subject: Issue 7 for {{name}}\r\n"
        b"Reply-To: editor@example.org\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"Dear {{name}},\r\nthe news.\r\n")
    src = write_csv(tmp_path / "list.csv", people(3))
    with Sink(port=0, store=tmp_path / "store") as sink:
        code, out, err = run(capsys, "send", "--recipients", src, "--template", eml, "--from", FROM,
                             "--server", "127.0.0.1:%d" % sink.port)
        stored = sink.stored()
    assert code == 0, err
    got = by_recipient(stored)
    for addr, name in people(3):
        (m,) = got[addr]
        msg = parse(m.content)
        assert msg["Subject"] == "Issue 7 for %s" % name
        assert msg["Reply-To"] == "editor@example.org"
        assert msg["From"] == "Newsroom <news@example.org>"
        assert "Dear %s," % name in msg.get_content()
    code, out, err = run(capsys, "send", "--recipients", src, "--template", eml, "--subject", "x", "--from", FROM)
    assert code == 2 and "--template" in err


def test_starttls_verified_with_cafile(tmp_path, capsys, parts, starttls_server, tls_material):
    ca, _cert, _key = tls_material.write_files(tmp_path / "tls")
    src = write_csv(tmp_path / "list.csv", people(3))
    server = "127.0.0.1:%d" % starttls_server.port
    # The test CA is not trusted by default: certificate verification fails, nothing is sent.
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--server", server, "--starttls",
                         "--journal", tmp_path / "a.db")
    assert code == 3, err
    assert "CERTIFICATE_VERIFY_FAILED" in err or "certificate verify failed" in err
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--server", server, "--starttls",
                         "--cafile", ca, "--journal", tmp_path / "b.db")
    assert code == 0, err
    assert len(starttls_server.messages) == 3


def test_progress_bar_and_lines():
    import io

    from fastsmtplib.cli_campaign import Progress

    buf = io.StringIO()
    bar = Progress(buf, bar=True)
    bar(0, 200)
    bar(100, 200)  # within 0.1 s of the last draw: skipped
    bar(200, 200)
    text = buf.getvalue()
    assert text.startswith("\r  0% [" + "." * 30 + "] 0/200")
    assert "ETA" in text
    assert text.endswith("elapsed 0:00\x1b[K\n")  # the bar ends its line when done
    assert "\r100% [" + "#" * 30 + "] 200/200" in text
    buf = io.StringIO()
    lines = Progress(buf, bar=False, interval=3600)
    lines(0, 10)
    lines(5, 10)  # not yet: one line per interval
    lines(10, 10)
    lines(10, 10)  # the final line once
    out = buf.getvalue().splitlines()
    assert len(out) == 2
    assert out[0].startswith("sent:   0% 0/10")
    assert out[1].startswith("sent: 100% 10/10") and "elapsed" in out[1]
    assert "\r" not in buf.getvalue()


def test_python_api_and_csv_edited_during_run(tmp_path):
    from fastsmtplib.campaign import Campaign
    from fastsmtplib.merge import Template

    src = write_csv(tmp_path / "list.csv", people(5))
    template = Template.from_parts("Hi {{name}}", text="Hello {{name}}\n", from_addr=FROM)
    with Sink(port=0, store=tmp_path / "store") as sink:
        summary = Campaign(src, template, FROM, host=sink.host, port=sink.port).run()
        assert summary.exit_code == 0 and summary.states["delivered"] == 5
        assert len(sink.stored()) == 5

        class Editing(Campaign):
            def _check_server(self):
                super()._check_server()
                # Swap two rows after the import: row 1 now names someone else.
                write_csv(src2, [("user2@example.net", "x"), ("user1@example.net", "y")])

        src2 = write_csv(tmp_path / "list2.csv", people(2))
        summary = Editing(src2, template, FROM, host=sink.host, port=sink.port).run()
        assert summary.paused.startswith("the CSV changed during the run (row 1 is 'user2@example.net'")
        assert summary.exit_code == 1
        assert summary.states["pending"] == 2
        assert len(sink.stored()) == 5  # nothing more was sent


def test_fault_injecting_sink_retries_refusals_drops(tmp_path, capsys, parts):
    """The sink's own dice: 451s retried and delivered once, 550s refused, dropped
    connections mid-data uncertain (never stored twice)."""
    import sqlite3

    rows = people(150)
    src = write_csv(tmp_path / "list.csv", rows)
    with Sink(port=0, store=tmp_path / "store", rcpt_refuse=0.1, rcpt_defer=0.25, drop_in_data=0.03,
              seed=7) as sink:
        server = "127.0.0.1:%d" % sink.port
        code, summary, err = run_json(capsys, "send", "--recipients", src, *parts, "--server", server,
                                      "--attempts", "6", "--retry-backoff", "0.01", "--max-errors", "1000")
        for _ in range(5):  # until nothing is deferred
            if not summary["states"]["deferred"]:
                break
            code, summary, err = run_json(capsys, "send", "--recipients", src, *parts, "--server", server,
                                          "--resume", "--attempts", "6", "--retry-backoff", "0.01")
        stored = sink.stored()
        faults = sink.counts
    assert faults["fault_rcpt_refused"] > 0 and faults["fault_rcpt_deferred"] > 0
    assert faults["fault_dropped_in_data"] > 0
    st = summary["states"]
    assert st["deferred"] == 0 and st["pending"] == 0
    assert code == (1 if st["uncertain"] else 0)
    got = collections.Counter(r for m in stored for r in m.recipients)
    assert max(got.values()) == 1
    conn = sqlite3.connect(tmp_path / "list.journal.db")
    journal = {a: (s, c, n) for a, s, c, n in conn.execute("SELECT address, state, code, attempts FROM recipients")}
    conn.close()
    assert len(journal) == 150
    for addr, (state, code_, attempts) in journal.items():
        if state == "delivered":
            assert got[addr] == 1 and code_ == 250
        elif state == "refused":
            assert got[addr] == 0 and code_ == 550
        else:
            assert state == "uncertain" and got[addr] <= 1
    assert sum(1 for s, c, n in journal.values() if s == "delivered" and n > 1) > 0  # retried, then delivered
    assert st["delivered"] == len(stored) - sum(1 for a in got if journal[a][0] == "uncertain")


@pytest.mark.parametrize("from_addr", ["News <news@example.org>", "news@example.org (News)"])
def test_display_name_from_signs_for_its_domain(tmp_path, capsys, from_addr):
    # --dkim-domain defaults to --from's domain: with a display name (or a
    # comment) that is still example.org, and the Message-ID's domain too.
    dkim = pytest.importorskip("dkim")
    pem, record = _dkim_key("rsa")
    keyfile = tmp_path / "dkim.pem"
    keyfile.write_bytes(pem)
    text = tmp_path / "body.txt"
    text.write_text("Hello {{name}}!\n", encoding="utf-8")
    src = write_csv(tmp_path / "list.csv", people(3))
    with Sink(port=0, store=tmp_path / "store") as sink:
        code, summary, err = run_json(
            capsys, "send", "--recipients", src, "--subject", "News", "--text", text, "--from", from_addr,
            "--server", "127.0.0.1:%d" % sink.port, "--dkim-key", keyfile, "--dkim-selector", "sel1")
        stored = sink.stored()
    assert code == 0, err
    assert len(stored) == 3
    for m in stored:
        assert m.mail_from == FROM
        msg = parse(m.content)
        assert msg["Message-ID"].endswith("@example.org>")
        assert dkim.verify(m.content, dnsfunc=lambda name, timeout=5: record
                           if name == b"sel1._domainkey.example.org." else None), msg["DKIM-Signature"]


def test_spreadsheet_export_with_empty_trailing_columns(tmp_path, capsys, parts):
    # Spreadsheets export a column whose cells were only formatted as an
    # unnamed column, often several: they are no merge field and no error.
    path = tmp_path / "list.csv"
    path.write_bytes(b"\xef\xbb\xbfemail,name,,,\r\na@example.net,A,,,\r\nb@example.net,B,,,\r\n")
    with Sink(port=0, store=tmp_path / "store") as sink:
        code, summary, err = run_json(capsys, "send", "--recipients", path, *parts,
                                      "--server", "127.0.0.1:%d" % sink.port)
        stored = sink.stored()
    assert code == 0, err
    assert summary["states"]["delivered"] == 2
    assert sorted(r for m in stored for r in m.recipients) == ["a@example.net", "b@example.net"]


def test_journal_that_cannot_be_opened_exit_2(tmp_path, capsys, parts):
    src = write_csv(tmp_path / "list.csv", people(1))
    (tmp_path / "adir").mkdir()
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--journal", tmp_path / "adir")
    assert code == 2, err
    assert "cannot use journal" in err and "Traceback" not in err


def test_csv_with_bare_cr_line_ends(tmp_path, capsys, parts):
    # Excel for Mac's "CSV (Macintosh)" ends lines with a bare CR; a quoted
    # field may still hold a line break.
    path = tmp_path / "list.csv"
    path.write_bytes(b"email,name\ra@example.net,A\rb@example.net,\"B\rsecond line\"\r\rc@example.net,C")
    with Sink(port=0, store=tmp_path / "store") as sink:
        code, summary, err = run_json(capsys, "send", "--recipients", path, *parts,
                                      "--server", "127.0.0.1:%d" % sink.port)
        stored = sink.stored()
    assert code == 0, err
    assert summary["states"]["delivered"] == 3 and summary["total"] == 3
    got = by_recipient(stored)
    assert sorted(got) == ["a@example.net", "b@example.net", "c@example.net"]
    assert "Hello B\r\nsecond line!" in bodies(parse(got["b@example.net"][0].content))["text/plain"]


def test_stop_before_sending_starts_is_a_clean_pause(tmp_path):
    # A SIGINT/SIGTERM while the CSV is imported or the server checked (a
    # slow start) pauses the run like one during sending: exit 1, nothing sent.
    from fastsmtplib.campaign import Campaign
    from fastsmtplib.merge import Template

    src = write_csv(tmp_path / "list.csv", people(5))
    template = Template.from_parts("Hi {{name}}", text="Hello {{name}}\n", from_addr=FROM)

    class StoppedEarly(Campaign):
        def _check_server(self):
            super()._check_server()
            self.stop("interrupted by SIGINT")

    with Sink(port=0, store=tmp_path / "store") as sink:
        summary = StoppedEarly(src, template, FROM, host=sink.host, port=sink.port).run()
        assert summary.paused == "interrupted by SIGINT"
        assert summary.exit_code == 1
        assert summary.states["pending"] == 5
        assert sink.stored() == []
        summary = Campaign(src, template, FROM, host=sink.host, port=sink.port, resume=True).run()
        assert summary.exit_code == 0 and summary.states["delivered"] == 5
        assert len(sink.stored()) == 5


def test_unsubscribe_url_fields_missing_exit_2_also_in_a_dry_run(tmp_path, capsys, parts):
    # The URL template's fields are merge fields: checked before anything,
    # named, exit 2 -- a dry run must not call every row invalid and exit 0.
    src = write_csv(tmp_path / "list.csv", people(3))
    url = "https://example.org/u?id={{ sub_id }}&e={{ to_addr }}"
    for extra in (["--dry-run", tmp_path / "out"], ["--journal", tmp_path / "j.db"]):
        code, out, err = run(capsys, "send", "--recipients", src, *parts, "--unsubscribe-url", url, *extra)
        assert code == 2, (extra, out, err)
        assert "sub_id" in err and "to_addr" not in err
    assert not (tmp_path / "j.db").exists()  # refused before the journal was made
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--unsubscribe-url",
                         "https://example.org/u?e={{ email | bogus }}", "--dry-run", tmp_path / "out")
    assert code == 2 and "bogus" in err


def test_dry_run_refuses_a_message_the_real_run_refuses(tmp_path, capsys, parts):
    src = write_csv(tmp_path / "list.csv", people(3))
    for extra in (["--unsubscribe-mailto", "not an address"], ["--unsubscribe-url", "ftp://example.org/u"]):
        code, out, err = run(capsys, "send", "--recipients", src, *parts, *extra, "--dry-run", tmp_path / "out")
        assert code == 2, (extra, out, err)
        assert "cannot build the message" in err
        code, out, err = run(capsys, "send", "--recipients", src, *parts, *extra, "--journal", tmp_path / "j.db")
        assert code == 2, (extra, out, err)
    assert not os.listdir(tmp_path / "out")


def test_dkim_without_the_extra_exit_2(tmp_path, capsys, parts, monkeypatch):
    from fastsmtplib import dkim_sign

    monkeypatch.setattr(dkim_sign, "_IMPORT_ERROR", ImportError("No module named 'dkim'"))
    src = write_csv(tmp_path / "list.csv", people(1))
    key = tmp_path / "k.pem"
    key.write_bytes(b"unused")
    code, out, err = run(capsys, "send", "--recipients", src, *parts, "--dkim-key", key,
                         "--dkim-selector", "s1", "--journal", tmp_path / "j.db")
    assert code == 2, err
    assert "pip install" in err
    assert not (tmp_path / "j.db").exists()
