"""``fastsmtplib sink``'s TLS, AUTH, fault and idle-timeout flags, as a subprocess.

Every bad value or combination must exit 2 with a message naming the
option, and never repeat a password; a running sink must do what its flags
say, and print counters that agree with what the client saw.
"""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import subprocess
import sys

import pytest

from tests.support.certs import tls as ca_material

FROM = "sender@example.org"
SECRET = "Tr0ub4dor&3-not-in-output"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastsmtplib", "sink"] + list(args),
                          capture_output=True, text=True, timeout=60)


def test_help_lists_every_option():
    r = run_cli("--help")
    assert r.returncode == 0
    for opt in ("--starttls", "--tls", "--tls-cert", "--tls-key", "--auth", "--auth-file", "--auth-required",
                "--auth-plaintext", "--rcpt-refuse", "--rcpt-defer", "--data-reject", "--data-reject-code",
                "--delay", "--drop-after", "--drop-in-data", "--421-at", "--seed", "--idle-timeout"):
        assert opt in r.stdout, opt


@pytest.mark.parametrize("argv, words", [
    (["--rcpt-refuse", "1.5"], "--rcpt-refuse"),
    (["--rcpt-defer", "x"], "--rcpt-defer"),
    (["--rcpt-refuse", "0.6", "--rcpt-defer", "0.5"], "must not exceed 1"),
    (["--data-reject", "-0.1"], "--data-reject"),
    (["--data-reject-code", "250"], "4xx or 5xx"),
    (["--delay", "-1"], "--delay"),
    (["--delay", "nan"], "--delay"),
    (["--drop-after", "0"], "--drop-after"),
    (["--drop-in-data", "2"], "--drop-in-data"),
    (["--421-at", "zero"], "--421-at"),
    (["--seed", "1.5"], "--seed"),
    (["--idle-timeout", "0"], "--idle-timeout"),
    (["--idle-timeout", "inf"], "--idle-timeout"),
    (["--starttls", "--tls"], "exclude each other"),
    (["--tls-cert", "/nonexistent.pem", "--tls"], "not a readable file"),
    (["--tls-cert", sys.executable], "need --starttls or --tls"),
    (["--tls", "--tls-key", sys.executable], "--tls-key needs --tls-cert"),
    (["--tls", "--tls-cert", sys.executable], "cannot load"),
    (["--auth", SECRET], "USER:PASSWORD"),
    (["--auth", ":" + SECRET, "--tls"], "USER:PASSWORD"),
    (["--auth", "u:" + SECRET], "only offered over TLS"),
    (["--auth-required"], "need --auth"),
])
def test_bad_flags_exit_2(argv, words):
    r = run_cli(*argv)
    assert r.returncode == 2, (argv, r.stdout, r.stderr)
    assert "error:" in r.stderr and words in r.stderr, r.stderr
    assert SECRET not in r.stderr + r.stdout


def test_bad_auth_file_line_not_echoed(tmp_path):
    f = tmp_path / "users"
    f.write_text("# users\nalice:pw\n%s\n" % SECRET)
    r = run_cli("--tls", "--auth-file", str(f))
    assert r.returncode == 2 and "line 3" in r.stderr
    assert SECRET not in r.stderr


class Running:
    """``fastsmtplib sink ARGS --port 0`` until SIGTERM; its address and CA file."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "fastsmtplib", "sink", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        assert " on " in first, first + self.proc.stderr.read()
        self.first = first
        where = first.split(" on ", 1)[1].split()[0]
        host, port = where.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.ca_file = None
        if "TLS" in first and "--tls-cert" not in args:
            line = self.proc.stdout.readline()
            assert "CA certificate" in line, line
            self.ca_file = line.rsplit(" ", 1)[1].strip()

    def stop(self) -> tuple:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err
        return out, err

    def counter(self, out: str, name: str) -> int:
        for line in out.splitlines():
            if line.startswith(name + " "):
                return int(line.split()[1])
        raise AssertionError("%s not in %r" % (name, out))


def test_cli_starttls_auth_file_verified(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice:%s\n" % SECRET)
    sink = Running("--starttls", "--auth-file", str(users), "--auth-required")
    try:
        assert "(STARTTLS)" in sink.first
        ctx = ssl.create_default_context(cafile=sink.ca_file)
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as c:
            c.starttls(context=ctx)
            with pytest.raises(smtplib.SMTPSenderRefused):
                c.sendmail(FROM, ["a@example.org"], b"x\r\n")
            c.rset()
            c.login("alice", SECRET)
            assert c.sendmail(FROM, ["a@example.org"], b"Subject: hi\r\n\r\nhi\r\n") == {}
    finally:
        out, err = sink.stop()
    assert SECRET not in out + err
    assert sink.counter(out, "auth_ok") == 1
    assert sink.counter(out, "tls_handshakes") == 1
    assert sink.counter(out, "messages") == 1


def test_cli_tls_with_given_certificate(tmp_path):
    ca, cert, key = ca_material().write_files(tmp_path)
    sink = Running("--tls", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert "(implicit TLS)" in sink.first
        with smtplib.SMTP_SSL("localhost", sink.port, timeout=10, context=ca_material().client_context()) as c:
            assert c.sendmail(FROM, ["a@example.org"], b"x\r\n") == {}
    finally:
        out, _ = sink.stop()
    assert sink.counter(out, "messages") == 1


def test_cli_faults_counted():
    sink = Running("--rcpt-refuse", "0.5", "--rcpt-defer", "0.5", "--seed", "4", "--421-at", "30")
    try:
        codes = []
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as c:
            c.ehlo()
            c.mail(FROM)
            for i in range(27):
                codes.append(c.rcpt("r%d@example.org" % i)[0])
            assert c.noop()[0] == 421  # the 30th command
    finally:
        out, _ = sink.stop()
    assert set(codes) == {550, 451}
    assert sink.counter(out, "fault_rcpt_refused") == codes.count(550)
    assert sink.counter(out, "fault_rcpt_deferred") == codes.count(451)
    assert sink.counter(out, "fault_421") == 1


def test_cli_idle_timeout_and_delay():
    sink = Running("--idle-timeout", "0.3", "--delay", "0.05")
    try:
        with socket.create_connection((sink.host, sink.port), timeout=10) as sock:
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"220 ") and data.endswith(b"421 4.4.2 Error: timeout exceeded\r\n")
    finally:
        out, _ = sink.stop()
    assert sink.counter(out, "idle_timeouts") == 1
    assert sink.counter(out, "fault_delayed") == 1  # the greeting (the 421 is never delayed)


def test_without_cryptography_the_error_names_the_extra_and_the_flags(tmp_path):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'cryptography' or name.startswith('cryptography.'):\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from fastsmtplib.cli import main\n"
        "sys.exit(main(['sink', '--port', '0', '--starttls']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "fastsmtplib[sink]" in r.stderr and "--tls-cert" in r.stderr
    # With a certificate given, cryptography is not needed.
    ca, cert, key = ca_material().write_files(tmp_path)
    code = code.split("from fastsmtplib.cli")[0] + (
        "from fastsmtplib.sink import Sink\n"
        "s = Sink(port=0, starttls=True, tls_cert=%r, tls_key=%r)\n"
        "print('ok', 'cryptography' in sys.modules)\n" % (str(cert), str(key)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["ok", "False"], r.stderr


def test_unusable_store_directory_names_the_store_not_the_address(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    p = subprocess.run([sys.executable, "-m", "fastsmtplib", "sink", "--port", "0", "--store", str(blocker / "mail")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "cannot use --store" in p.stderr and "cannot listen" not in p.stderr
