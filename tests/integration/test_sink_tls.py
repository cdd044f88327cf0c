"""The sink's STARTTLS, implicit TLS and AUTH, driven by real clients.

Clients: the stdlib's smtplib, fastsmtplib (SMTP, SMTP_SSL, send_many,
SMTPPool) and aiosmtplib, always with certificate and host-name verification
on (the sink's generated CA via ``client_context()``, or a trustme CA for
given certificate files).  Raw sockets do what clients refuse to: plaintext
injected behind STARTTLS, AUTH exchanges byte by byte, half handshakes.
"""

from __future__ import annotations

import asyncio
import base64
import random
import smtplib
import socket
import ssl

import pytest

import fastsmtplib
from fastsmtplib.sink import Sink

from tests.support.certs import tls as ca_material
from tests.support.sink_checks import read_replies, wait_idle

FROM = "sender@example.org"
BODY = (b"Subject: tls\r\n\r\n.leading dot\r\n..two\r\n.\r\nmiddle\r\n" + bytes(range(32, 127)) * 40 + b"\r\nend\r\n")
USERS = {"alice": "s3cret pass", "bob": "hunter2"}


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def starttls_raw(sink: Sink, pipelined_after: bytes = b"") -> ssl.SSLSocket:
    """EHLO + STARTTLS (+ ``pipelined_after`` in the same write), then a verified handshake."""
    sock = socket.create_connection((sink.host, sink.port), timeout=10)
    assert read_replies(sock, 1)[0].startswith(b"220 ")
    sock.sendall(b"EHLO raw.example\r\nSTARTTLS\r\n" + pipelined_after)
    lines = read_replies(sock, 2)
    assert lines[-1] == b"220 2.0.0 Ready to start TLS"
    return sink.client_context().wrap_socket(sock, server_hostname="127.0.0.1")


# -- STARTTLS and implicit TLS with each client ------------------------------------


def test_stdlib_starttls_verified_and_content_intact(tmp_path):
    with Sink(port=0, starttls=True, store=tmp_path) as s:
        with smtplib.SMTP(s.host, s.port, timeout=10) as c:
            c.ehlo()
            assert c.has_extn("starttls")
            assert not c.has_extn("auth")
            assert c.starttls(context=s.client_context())[0] == 220
            c.ehlo()
            assert not c.has_extn("starttls")  # RFC 3207 §4.2: not offered again
            assert c.sock.getpeercert()["subjectAltName"]
            assert c.sendmail(FROM, ["a@example.org", "b@example.org"], BODY) == {}
        counts = wait_idle(s)
        assert counts["tls_handshakes"] == 1
        assert counts["messages"] == 1
        [m] = s.stored()
        assert m.content == BODY
        assert m.recipients == ["a@example.org", "b@example.org"]


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_fastsmtplib_starttls_and_implicit_tls_send_many(tmp_path, chunking):
    bodies = [b"Subject: %d\r\n\r\n.line %d\r\n" % (i, i) + BODY for i in range(40)]
    with Sink(port=0, starttls=True, store=tmp_path / "a") as s:
        with fastsmtplib.SMTP(s.host, s.port, timeout=10) as c:
            c.starttls(context=s.client_context())
            c.chunking = chunking
            results = list(c.send_many((FROM, ["r%d@example.org" % i], b) for i, b in enumerate(bodies)))
        assert all(r.ok for r in results), results
        assert [m.content for m in s.stored()] == bodies
        assert wait_idle(s)["tls_handshakes"] == 1
    with Sink(port=0, tls=True, store=tmp_path / "b") as s:
        with fastsmtplib.SMTP_SSL(s.host, s.port, timeout=10, context=s.client_context()) as c:
            c.ehlo()
            assert not c.has_extn("starttls")
            c.chunking = chunking
            assert c.sendmail(FROM, ["x@example.org"], bodies[0]) == {}
            results = list(c.send_many((FROM, ["y@example.org"], b) for b in bodies[1:]))
        assert all(r.ok for r in results), results
        assert [m.content for m in s.stored()] == bodies
        assert wait_idle(s)["messages"] == len(bodies)


def test_stdlib_smtp_ssl_implicit_tls():
    with Sink(port=0, tls=True) as s:
        with smtplib.SMTP_SSL(s.host, s.port, timeout=10, context=s.client_context()) as c:
            assert c.sendmail(FROM, ["a@example.org"], BODY) == {}
        counts = wait_idle(s)
        assert counts["tls_handshakes"] == 1 and counts["messages"] == 1


def test_pool_over_starttls_with_auth():
    msgs = [(FROM, ["p%d@example.org" % i], b"Subject: %d\r\n\r\nbody\r\n" % i) for i in range(200)]
    with Sink(port=0, starttls=True, auth=USERS, auth_required=True) as s:
        with fastsmtplib.SMTPPool(s.host, s.port, size=4, starttls=True, context=s.client_context(),
                                  login=("alice", USERS["alice"]), timeout=10) as pool:
            results = list(pool.send_many(msgs))
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
        counts = wait_idle(s)
        assert counts["messages"] == 200
        assert counts["auth_ok"] == counts["tls_handshakes"] >= 1
        assert counts["auth_failed"] == 0
        assert counts["replies"].get(530, 0) == 0


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_aiosmtplib_tls_and_auth(tmp_path, mode):
    aiosmtplib = pytest.importorskip("aiosmtplib")
    with Sink(port=0, store=tmp_path, auth=USERS, auth_required=True, **{mode: True}) as s:

        async def run():
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=s.port, tls_context=s.client_context(),
                                     use_tls=(mode == "tls"), start_tls=(mode == "starttls"), timeout=10)
            async with client:
                await client.login("bob", USERS["bob"])
                for i in range(5):
                    errors, _ = await client.sendmail(FROM, ["to%d@example.org" % i], BODY + b"%d\r\n" % i)
                    assert errors == {}
            bad = aiosmtplib.SMTP(hostname="127.0.0.1", port=s.port, tls_context=s.client_context(),
                                  use_tls=(mode == "tls"), start_tls=(mode == "starttls"), timeout=10)
            async with bad:
                with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
                    await bad.login("bob", "wrong")
                assert info.value.code == 535

        asyncio.run(run())
        counts = wait_idle(s)
        assert counts["messages"] == 5
        assert counts["auth_ok"] == 1
        assert counts["auth_failed"] >= 1
        assert [m.content for m in s.stored()] == [BODY + b"%d\r\n" % i for i in range(5)]


# -- certificates: verification is real --------------------------------------------


def test_unknown_ca_and_wrong_name_are_refused_by_verifying_clients():
    with Sink(port=0, tls=True) as s:
        with pytest.raises(ssl.SSLCertVerificationError):
            smtplib.SMTP_SSL(s.host, s.port, timeout=10, context=ssl.create_default_context())
        sock = socket.create_connection((s.host, s.port), timeout=10)
        with pytest.raises(ssl.SSLCertVerificationError):
            s.client_context().wrap_socket(sock, server_hostname="mail.example.com")
        sock.close()
        # The generated certificate names localhost too.
        with smtplib.SMTP_SSL("localhost", s.port, timeout=10, context=s.client_context()) as c:
            assert c.noop()[0] == 250
        counts = wait_idle(s)
        assert counts["tls_failed"] == 2  # both refused handshakes, seen from the sink
        with open(s.tls_ca_file, "rb") as f:
            assert f.read() == s.tls_ca_pem
        ca_file = s.tls_ca_file
        ctx = ssl.create_default_context(cafile=ca_file)
        with smtplib.SMTP_SSL(s.host, s.port, timeout=10, context=ctx) as c:
            assert c.noop()[0] == 250
    import os
    assert not os.path.exists(ca_file)  # removed by stop()


def test_given_certificate_files_and_context(tmp_path):
    ca, cert, key = ca_material().write_files(tmp_path)
    with Sink(port=0, starttls=True, tls_cert=cert, tls_key=key) as s:
        with smtplib.SMTP(s.host, s.port, timeout=10) as c:
            c.starttls(context=ca_material().client_context())
            assert c.sendmail(FROM, ["a@example.org"], BODY) == {}
        assert b"BEGIN CERTIFICATE" in s.tls_ca_pem and b"PRIVATE" not in s.tls_ca_pem
    with Sink(port=0, tls=True, tls_context=ca_material().server_context()) as s:
        with fastsmtplib.SMTP_SSL("localhost", s.port, timeout=10, context=ca_material().client_context()) as c:
            assert c.sendmail(FROM, ["a@example.org"], BODY) == {}
        with pytest.raises(ValueError):
            s.client_context()  # its CA is the caller's
        assert wait_idle(s)["messages"] == 1


def test_bad_tls_arguments(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        Sink(port=0, starttls=True, tls=True)
    with pytest.raises(ValueError, match="needs starttls"):
        Sink(port=0, tls_context=ca_material().server_context())
    with pytest.raises(ValueError, match="tls_key needs tls_cert"):
        Sink(port=0, tls=True, tls_key=tmp_path / "k")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    from fastsmtplib.sink_tls import TLSSetupError
    with pytest.raises(TLSSetupError, match="cannot load"):
        Sink(port=0, tls=True, tls_cert=junk)


# -- STARTTLS rules ----------------------------------------------------------------


def test_plaintext_pipelined_after_starttls_is_discarded(tmp_path):
    injected = b"MAIL FROM:<mallory@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    with Sink(port=0, starttls=True, store=tmp_path) as s:
        with starttls_raw(s, injected) as tls:
            # The injected transaction is gone: RCPT has no MAIL. And the
            # session starts over: MAIL needs EHLO again (RFC 3207 §4.2).
            tls.sendall(b"RCPT TO:<b@example.org>\r\n")
            assert read_replies(tls, 1)[0].startswith(b"503 5.5.1 Error: need MAIL")
            tls.sendall(b"MAIL FROM:<a@example.org>\r\n")
            assert read_replies(tls, 1)[0].startswith(b"503 5.5.1 Error: send HELO/EHLO")
            tls.sendall(b"EHLO again.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
            assert read_replies(tls, 4)[-1].startswith(b"354 ")
            tls.sendall(b"hello\r\n.\r\nSTARTTLS\r\nQUIT\r\n")
            lines = read_replies(tls, 3)
            assert lines[0].startswith(b"250 2.0.0 Ok: queued")
            assert lines[1] == b"503 5.5.1 Error: TLS already active"
            assert lines[2].startswith(b"221 ")
        counts = wait_idle(s)
        assert counts["starttls_discarded"] == len(injected)
        [m] = s.stored()
        assert m.mail_from == "a@example.org" and m.content == b"hello\r\n"


def test_starttls_refused_when_off_or_malformed():
    with Sink(port=0) as s, socket.create_connection((s.host, s.port), timeout=10) as sock:
        sock.sendall(b"EHLO x\r\nSTARTTLS\r\nNOOP\r\n")
        lines = read_replies(sock, 4)
        assert lines[2].startswith(b"502 ") and lines[3].startswith(b"250 ")
    with Sink(port=0, starttls=True) as s, socket.create_connection((s.host, s.port), timeout=10) as sock:
        sock.sendall(b"EHLO x\r\nSTARTTLS now\r\nNOOP\r\n")
        lines = read_replies(sock, 4)
        assert lines[2].startswith(b"501 ") and lines[3].startswith(b"250 ")


# -- AUTH ------------------------------------------------------------------------


def test_auth_plain_and_login_exchanges_raw():
    plain_ok = b64(b"\0alice\0" + USERS["alice"].encode())
    with Sink(port=0, tls=True, auth=USERS) as s:

        def session():
            sock = socket.create_connection((s.host, s.port), timeout=10)
            tls = s.client_context().wrap_socket(sock, server_hostname="127.0.0.1")
            read_replies(tls, 1)
            tls.sendall(b"EHLO x\r\n")
            ehlo = read_replies(tls, 1)
            return tls

        with session() as t:  # PLAIN with an initial response
            t.sendall(b"AUTH PLAIN " + plain_ok + b"\r\n")
            assert read_replies(t, 1) == [b"235 2.7.0 Authentication successful"]
            t.sendall(b"AUTH PLAIN " + plain_ok + b"\r\n")
            assert read_replies(t, 1)[0].startswith(b"503 ")  # already authenticated
        with session() as t:  # PLAIN after an empty challenge
            t.sendall(b"AUTH PLAIN\r\n")
            assert read_replies(t, 1) == [b"334 "]
            t.sendall(plain_ok + b"\r\n")
            assert read_replies(t, 1)[0].startswith(b"235 ")
        with session() as t:  # LOGIN, both prompts
            t.sendall(b"AUTH LOGIN\r\n")
            assert read_replies(t, 1) == [b"334 VXNlcm5hbWU6"]
            t.sendall(b64(b"bob") + b"\r\n")
            assert read_replies(t, 1) == [b"334 UGFzc3dvcmQ6"]
            t.sendall(b64(b"hunter2") + b"\r\n")
            assert read_replies(t, 1)[0].startswith(b"235 ")
        with session() as t:  # LOGIN with the user as initial response, wrong password
            t.sendall(b"AUTH LOGIN " + b64(b"bob") + b"\r\n")
            assert read_replies(t, 1) == [b"334 UGFzc3dvcmQ6"]
            t.sendall(b64(b"hunter3") + b"\r\n")
            assert read_replies(t, 1)[0].startswith(b"535 5.7.8")
            t.sendall(b"AUTH PLAIN " + b64(b"\0nobody\0hunter2") + b"\r\n")
            assert read_replies(t, 1)[0].startswith(b"535 ")
            t.sendall(b"AUTH PLAIN " + b64(b"alice\0bob\0hunter2") + b"\r\n")  # acting as another
            assert read_replies(t, 1)[0].startswith(b"535 ")
            t.sendall(b"AUTH PLAIN not*base64\r\n")
            assert read_replies(t, 1)[0].startswith(b"501 ")
            t.sendall(b"AUTH PLAIN " + b64(b"no nuls") + b"\r\n")
            assert read_replies(t, 1)[0].startswith(b"501 ")
            t.sendall(b"AUTH LOGIN\r\n*\r\n")
            assert read_replies(t, 2)[1].startswith(b"501 5.7.0")  # cancelled
            t.sendall(b"AUTH CRAM-MD5\r\nAUTH\r\n")
            lines = read_replies(t, 2)
            assert lines[0].startswith(b"504 ") and lines[1].startswith(b"501 ")
            t.sendall(b"MAIL FROM:<a@x>\r\nAUTH PLAIN " + plain_ok + b"\r\n")
            assert read_replies(t, 2)[1].startswith(b"503 ")  # not inside a transaction
        counts = wait_idle(s)
        assert counts["auth_ok"] == 3
        assert counts["auth_failed"] == 5  # wrong password, unknown user, authzid, two malformed (not the cancel)


def test_auth_only_over_tls_unless_allowed():
    with pytest.raises(ValueError, match="only offered over TLS"):
        Sink(port=0, auth=USERS)
    with pytest.raises(ValueError, match="auth_required needs auth"):
        Sink(port=0, auth_required=True)
    with Sink(port=0, starttls=True, auth=USERS, auth_required=True) as s:
        with smtplib.SMTP(s.host, s.port, timeout=10) as c:
            c.ehlo()
            assert not c.has_extn("auth")  # not offered in clear
            assert c.docmd("AUTH", "PLAIN " + b64(b"\0alice\0s3cret pass").decode())[0] == 538
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                c.sendmail(FROM, ["a@example.org"], BODY)
            assert info.value.smtp_code == 530
            c.starttls(context=s.client_context())
            c.ehlo()
            assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
            with pytest.raises(smtplib.SMTPSenderRefused):  # still 530 before AUTH
                c.sendmail(FROM, ["a@example.org"], BODY)
            c.rset()
            with pytest.raises(smtplib.SMTPAuthenticationError):
                c.login("alice", "wrong")
            assert c.login("alice", USERS["alice"])[0] == 235
            assert c.sendmail(FROM, ["a@example.org"], BODY) == {}
        counts = wait_idle(s)
        assert counts["auth_ok"] == 1
        assert counts["auth_failed"] == 2  # smtplib tries PLAIN, then LOGIN
        assert counts["replies"][530] == 2
        assert counts["messages"] == 1
        assert "s3cret" not in repr(s._creds) and "alice" in repr(s._creds)
    with Sink(port=0, auth=USERS, auth_plaintext=True) as s:
        with fastsmtplib.SMTP(s.host, s.port, timeout=10) as c:
            c.ehlo()
            assert c.has_extn("auth")
            assert c.login("bob", "hunter2")[0] == 235
            assert c.sendmail(FROM, ["a@example.org"], BODY) == {}
        assert wait_idle(s)["auth_ok"] == 1


# -- bounded and robust under TLS -------------------------------------------------


def test_flooding_tls_client_is_bounded():
    cmd = b"EHLO flood.example\r\n"
    with Sink(port=0, tls=True, max_output=64 * 1024) as s:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((s.host, s.port))
        tls = s.client_context().wrap_socket(sock, server_hostname="127.0.0.1")
        tls.settimeout(0.5)
        sent = 0
        try:
            for _ in range(20000):
                tls.sendall(cmd * 100)
                sent += 100
        except (socket.timeout, TimeoutError):
            pass  # the sink stopped reading
        [sess] = list(s._sessions)
        # Plain replies owed plus encrypted ones: one cap, TLS record overhead aside.
        assert sess.outlen <= s.max_output * 1.1 + len(s._ehlo_tls[1])
        assert len(sess.inbuf) <= s.recv_size + 20000
        assert sess.stalled or sess.outlen >= s.max_output
        assert s.counts["bytes_in"] < 8 * 1024 * 1024
        tls.close()
        wait_idle(s)
        with smtplib.SMTP_SSL(s.host, s.port, timeout=10, context=s.client_context()) as c:
            assert c.sendmail(FROM, ["a@example.org"], BODY) == {}


def _client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello)."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_garbage_and_truncated_tls_survived(mode):
    rng = random.Random(7)
    hello = _client_hello()
    with Sink(port=0, **{mode: True}) as s:
        for i in range(24):
            sock = socket.create_connection((s.host, s.port), timeout=10)
            if mode == "starttls":
                read_replies(sock, 1)
                sock.sendall(b"EHLO x\r\nSTARTTLS\r\n")
                read_replies(sock, 2)
            kind = i % 4
            if kind == 0:  # not TLS at all
                sock.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 5000))))
            elif kind == 1:  # half a ClientHello, then gone
                sock.sendall(hello[: rng.randrange(1, len(hello))])
            elif kind == 2:  # a whole ClientHello, then garbage records
                sock.sendall(hello + b"\x17\x03\x03\x00\x10" + bytes(16))
            else:  # a handshake, then a command cut in the middle, then garbage
                tls = s.client_context().wrap_socket(sock, server_hostname="127.0.0.1")
                tls.sendall(b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
                read_replies(tls, 4)  # greeting or 354 aside: the command replies came
                tls.sendall(b"half of the content")
                sock = tls.unwrap() if rng.random() < 0.5 else tls
                if sock is not tls:
                    sock.sendall(b"\x00\xff garbage after close_notify")
            sock.close()
        counts = wait_idle(s)
        assert s._thread.is_alive()
        assert counts["tls_failed"] >= 6, counts  # the plainly non-TLS ones at least
        assert counts["messages"] == 0
        with fastsmtplib.SMTP(s.host, s.port, timeout=10) if mode == "starttls" else \
                fastsmtplib.SMTP_SSL(s.host, s.port, timeout=10, context=s.client_context()) as c:
            if mode == "starttls":
                c.starttls(context=s.client_context())
            assert c.sendmail(FROM, ["a@example.org"], BODY) == {}
        assert wait_idle(s)["messages"] == 1


def test_idle_mid_handshake_is_closed():
    hello = _client_hello()
    with Sink(port=0, tls=True, idle_timeout=0.3) as s, socket.create_connection((s.host, s.port), timeout=10) as sock:
        sock.sendall(hello[:20])
        assert sock.recv(100) == b""  # closed, no 421 (there is no TLS to say it in)
        counts = wait_idle(s)
        assert counts["idle_timeouts"] == 1


def test_idle_timeout_421_over_tls():
    with Sink(port=0, tls=True, idle_timeout=0.3) as s:
        sock = socket.create_connection((s.host, s.port), timeout=10)
        with s.client_context().wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"EHLO x\r\nMAIL FROM:<a@x>\r\n")
            data = b""
            while True:
                try:
                    chunk = tls.recv(4096)
                except ssl.SSLError:
                    break
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"220 ") and data.endswith(b"421 4.4.2 Error: timeout exceeded\r\n")
        assert wait_idle(s)["idle_timeouts"] == 1


def test_starttls_with_delayed_replies(tmp_path):
    """The 220 is held like any reply; TLS starts only once it (and all before it) left in clear."""
    with Sink(port=0, starttls=True, delay=0.05, store=tmp_path, auth=USERS) as s:
        with starttls_raw(s, b"NOOP\r\n") as tls:
            tls.sendall(b"EHLO y\r\nAUTH PLAIN " + b64(b"\0alice\0s3cret pass") + b"\r\n")
            assert read_replies(tls, 2)[1].startswith(b"235 ")
            tls.sendall(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
            assert read_replies(tls, 3)[2].startswith(b"354 ")
            tls.sendall(b"Subject: held\r\n\r\n..stuffed\r\n.\r\nQUIT\r\n")
            assert read_replies(tls, 2)[1].startswith(b"221 ")
        counts = wait_idle(s)
        assert counts["starttls_discarded"] == len(b"NOOP\r\n")
        assert [m.content for m in s.stored()] == [b"Subject: held\r\n\r\n.stuffed\r\n"]


@pytest.mark.parametrize("seed", range(3))
def test_random_command_streams_with_every_feature(seed):
    """Random mixes of real commands, AUTH exchanges, STARTTLS and junk, cut anywhere."""
    rng = random.Random(seed)
    words = [b"EHLO x", b"HELO y", b"MAIL FROM:<a@x>", b"RCPT TO:<b@x>", b"DATA", b"body", b".",
             b"BDAT 5", b"BDAT 0 LAST", b"12345", b"RSET", b"NOOP", b"QUIT", b"STARTTLS", b"STARTTLS x",
             b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH PLAIN " + b64(b"\0alice\0s3cret pass"), b"*",
             b64(b"alice"), b"=", b"AUTH", b"AUTH XOAUTH2 abc", b"\x00\xff\x16\x03\x01", b"", b"x" * 1200]
    with Sink(port=0, starttls=True, auth=USERS, auth_plaintext=True, rcpt_refuse=0.2, data_reject=0.2,
              drop_in_data=0.1, reply_421_at=25, seed=seed, max_line=512) as s:
        for _ in range(30):
            sock = socket.create_connection((s.host, s.port), timeout=10)
            stream = b"".join(rng.choice(words) + rng.choice([b"\r\n", b"\r\n", b"\n", b""])
                              for _ in range(rng.randrange(1, 40)))
            stream = stream[: rng.randrange(len(stream) + 1)]
            try:
                for i in range(0, len(stream), 37):
                    sock.sendall(stream[i:i + 37])
                if rng.random() < 0.5:
                    sock.settimeout(0.2)
                    sock.recv(65536)
            except OSError:
                pass
            sock.close()
        counts = wait_idle(s)
        assert s._thread.is_alive()
        with smtplib.SMTP(s.host, s.port, timeout=10) as c:
            c.starttls(context=s.client_context())
            c.login("alice", USERS["alice"])
            assert c.noop()[0] == 250
        assert wait_idle(s)["auth_ok"] >= 1
