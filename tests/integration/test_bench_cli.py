"""``fastsmtplib bench``, run as a real program (``python -m fastsmtplib``) in subprocesses.

Against the embedded sink (which bench starts itself, in a subprocess) and
against servers this test starts: the project's ``Sink`` in this process,
``PoolServer`` (refuses and defers by policy, and keeps a ledger of what it
accepted), aiosmtpd (STARTTLS, implicit TLS, AUTH) and Postfix's
``smtp-sink``.  Every count bench reports is checked against the server's
own count; no timing is asserted (except that a rate cap does slow a run).
Every argument error must exit 2 with a message naming the problem, before
anything is started.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from fastsmtplib.sink import Sink
from tests.support.aiosmtpd_server import AUTH_PASSWORD, AUTH_USER
from tests.support.pool_server import HANGUP, PoolServer
from tests.support.ports import require_binary

TIMEOUT = 60
FIELDS = ("messages", "delivered", "errors", "msgs_per_s", "latency_ms")
STARTED = "started the embedded"


def bench(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fastsmtplib", "bench", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, **kw)


def bench_json(*args: str, expect: int = 0, env: dict | None = None) -> dict:
    p = bench("--json", "-q", *args, env=env)
    assert p.returncode == expect, (p.returncode, p.stdout, p.stderr)
    report = json.loads(p.stdout)
    check_report(report)
    return report


def check_report(r: dict) -> None:
    """The fields ``--json`` promises, and the counts and percentiles consistent."""
    for name in FIELDS:
        assert name in r, name
    lat = r["latency_ms"]
    assert set(lat) >= {"p50", "p90", "p99", "max"}
    assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert r["delivered"] + r["errors"] == r["messages"]
    assert sum(r["status_counts"].values()) == r["messages"]
    assert sum(r["errors_by_code"].values()) == r["errors"]
    assert r["msgs_per_s"] > 0 and r["elapsed_s"] > 0
    # The pool stamps sent_at/done_at on every message it wrote.
    assert r["latency_samples"] == r["messages"] - r["status_counts"].get("not_attempted", 0)
    assert r["setup_ms"]["count"] >= 1
    assert 0 <= r["setup_ms"]["p50"] <= r["setup_ms"]["max"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the embedded sink -----------------------------------------------------------------------


def test_embedded_sink_json_counts_match_the_sinks_own():
    r = bench_json("-n", "500", "-c", "4")
    assert r["messages"] == 500 and r["delivered"] == 500 and r["errors"] == 0
    assert r["server_counts"]["messages"] == 500
    assert r["server_counts"]["recipients"] == 500
    assert r["server_counts"]["bytes"] == 500 * r["message_bytes"] == 500 * 1024
    assert r["server_count_matches"] is True
    assert "embedded" in r["server_kind"]
    assert r["connections"] == 4 and r["pipelining"] and r["chunking"]
    assert r["mb_per_s"] > 0


def test_embedded_sink_text_report_and_status_line():
    p = bench("-n", "200", "-c", "2", "--size", "300")
    assert p.returncode == 0, p.stderr
    assert STARTED in p.stderr and "127.0.0.1:" in p.stderr
    assert "\r" not in p.stderr  # no progress line: stderr is not a terminal
    out = p.stdout
    assert "200 sent, 200 delivered, 0 errors" in out
    assert "msgs/s" in out and "MB/s" in out
    for word in ("p50", "p90", "p99", "max"):
        assert word in out
    assert "setup" in out and "300-byte messages" in out
    assert "server count  200 messages" in out


def test_embedded_lmtp_sink_with_recipients():
    r = bench_json("--lmtp", "-n", "100", "-c", "2", "--rcpts", "3")
    assert r["protocol"] == "LMTP" and r["delivered"] == 100
    assert r["server_counts"]["messages"] == 100
    assert r["server_counts"]["recipients"] == 300


def test_progress_line_only_on_a_terminal_and_not_with_quiet():
    def run(*extra: str) -> str:
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "fastsmtplib", "bench", "-n", "100", "-c", "2", *extra],
                                    stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
            os.close(slave)
            chunks = []
            while True:
                ready, _, _ = select.select([master], [], [], TIMEOUT)
                if not ready:
                    break
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0
            return b"".join(chunks).decode("utf-8", "replace")
        finally:
            os.close(master)

    shown = run()
    assert "\r" in shown and "100/100 msgs" in shown and "msgs/s" in shown
    assert run("--quiet") == ""


# -- servers started by the test -------------------------------------------------------------


@pytest.mark.parametrize("flags,chunking,pipelining", [
    ((), True, True),
    (("--no-chunking",), False, True),
    (("--no-pipelining", "--no-chunking"), False, False),
])
def test_sink_in_this_process_counts_every_message(flags, chunking, pipelining):
    with Sink(port=0) as s:
        r = bench_json("127.0.0.1:%d" % s.port, "-n", "300", "-c", "3", "--size", "2000", "--rcpts", "2", *flags)
        counts = s.counts
    assert r["delivered"] == r["messages"] == counts["messages"] == 300
    assert counts["recipients"] == 600
    assert counts["bytes"] == 300 * r["message_bytes"] == 300 * 2000
    assert r["chunking"] is chunking and r["pipelining"] is pipelining
    # DATA gets a 354 per message; BDAT never does.
    assert counts["replies"].get(354, 0) == (0 if chunking else 300)
    assert r["server_counts"] is None  # bench did not start this server


def test_unix_socket_smtp_and_lmtp(tmp_path):
    for lmtp in (False, True):
        path = str(tmp_path / ("lmtp.sock" if lmtp else "smtp.sock"))
        with Sink(path=path, lmtp=lmtp) as s:
            r = bench_json("--unix", path, "-n", "200", "-c", "2", *(["--lmtp"] if lmtp else []))
            counts = s.counts
        assert r["transport"] == "unix" and r["server"] == "unix:" + path
        assert r["delivered"] == counts["messages"] == 200


def test_duration_stops_the_run_and_counts_stay_consistent():
    with Sink(port=0) as s:
        r = bench_json("127.0.0.1:%d" % s.port, "--duration", "0.3", "-c", "2")
        counts = s.counts
    assert r["duration_limit_s"] == 0.3
    assert r["messages"] > 0 and r["delivered"] == r["messages"] == counts["messages"]


def test_rate_cap_holds_the_run_back():
    # 60 messages at 100/s with a burst of 10: at least 0.5 s however fast the machine.
    with Sink(port=0) as s:
        r = bench_json("127.0.0.1:%d" % s.port, "-n", "60", "-c", "2", "--rate", "100")
        counts = s.counts
    assert r["rate_limit"] == 100 and r["delivered"] == counts["messages"] == 60
    assert r["elapsed_s"] >= 0.4


def test_errors_are_grouped_by_reply_code_and_match_the_servers_ledger():
    # Message i (its number is in the Subject): i % 5 == 1 refused, i % 5 == 2 deferred.
    def policy(ev):
        if ev.command == "." and ev.subject:
            n = int(ev.subject.rsplit(" ", 1)[1])
            if n % 5 == 1:
                return "550 5.7.1 rejected by policy"
            if n % 5 == 2:
                return "451 4.3.0 try later"
        return None

    with PoolServer(policy) as srv:
        p = bench("--json", "-q", "127.0.0.1:%d" % srv.port, "-n", "100", "-c", "3")
        assert p.returncode == 1, p.stderr  # some messages were not accepted
        r = json.loads(p.stdout)
        check_report(r)
        accepted = dict(srv.accepted)
        bodies = sum(srv.bodies.values())
    assert r["errors_by_code"] == {"550": 20, "451": 20}
    assert r["status_counts"] == {"delivered": 60, "refused": 20, "deferred": 20}
    assert r["delivered"] == sum(accepted.values()) == 60
    assert max(accepted.values()) == 1  # nothing delivered twice
    assert bodies == 100  # nothing retried: a load generator reports, it does not hide
    assert not r["chunking"]  # PoolServer has no CHUNKING


def test_refused_recipients_make_partial_messages():
    def policy(ev):
        if ev.command == "RCPT" and "rcpt2@" in ev.line:
            return "550 5.1.1 no such user"
        return None

    with PoolServer(policy) as srv:
        r = bench_json("127.0.0.1:%d" % srv.port, "-n", "30", "-c", "2", "--rcpts", "2")
        accepted = sum(srv.accepted.values())
    assert r["delivered"] == r["partial"] == accepted == 30 and r["errors"] == 0
    assert r["refused_recipients_by_code"] == {"550": 30}


def test_unreachable_server_exits_3_with_a_clear_message():
    port = free_port()  # nothing listens there now
    p = bench("127.0.0.1:%d" % port, "-n", "10")
    assert p.returncode == 3
    assert "cannot reach the server: 127.0.0.1:%d" % port in p.stderr
    assert "Connection refused" in p.stderr and "Traceback" not in p.stderr
    assert p.stdout == ""


def test_connections_failing_mid_run_stop_it_with_exit_3():
    # The first connection (bench's reachability check) works; every later one is cut at EHLO.
    def policy(ev):
        if ev.connection >= 1 and ev.command == "EHLO":
            return HANGUP
        return None

    with PoolServer(policy) as srv:
        p = bench("--json", "-q", "127.0.0.1:%d" % srv.port, "-n", "100000", "-c", "2")
    assert p.returncode == 3
    assert "stopped early: " in p.stderr and "connection attempts in a row failed" in p.stderr
    r = json.loads(p.stdout)
    check_report(r)
    assert r["aborted"] and r["delivered"] == 0 and 0 < r["messages"] < 100000
    assert r["errors_by_code"] == {"not_attempted (SMTPServerDisconnected)": r["messages"]}


def test_ctrl_c_reports_what_finished_and_exits_130():
    proc = subprocess.Popen([sys.executable, "-m", "fastsmtplib", "bench", "--json", "-d", "30", "-c", "2",
                             "--rate", "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # the embedded sink is up: the run starts now
        assert STARTED in line
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    r = json.loads(out)
    check_report(r)
    assert r["aborted"] == "interrupted" and r["messages"] > 0
    # The sink saw every message reported delivered (and maybe some in flight).
    assert r["delivered"] <= r["server_counts"]["messages"] <= r["delivered"] + 2 * 32


def test_unix_socket_missing_exits_3(tmp_path):
    p = bench("--unix", str(tmp_path / "nothing.sock"), "-n", "5")
    assert p.returncode == 3 and "cannot reach the server: unix:" in p.stderr


# -- TLS and AUTH (aiosmtpd) -----------------------------------------------------------------


def test_starttls_verifies_with_cafile_and_fails_without(starttls_server, tls_material, tmp_path):
    ca, _cert, _key = tls_material.write_files(tmp_path)
    addr = "127.0.0.1:%d" % starttls_server.port
    r = bench_json(addr, "--starttls", "--cafile", str(ca), "-n", "20", "-c", "2")
    assert r["transport"] == "starttls" and r["delivered"] == 20
    assert len(starttls_server.wait_for_messages(20)) == 20
    # The default context verifies: a certificate from an unknown CA is refused.
    p = bench(addr, "--starttls", "-n", "5")
    assert p.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in p.stderr
    r = bench_json(addr, "--starttls", "--insecure", "-n", "10", "-c", "1")
    assert r["delivered"] == 10


def test_implicit_tls(ssl_server, tls_material, tmp_path):
    ca, _cert, _key = tls_material.write_files(tmp_path)
    r = bench_json("127.0.0.1:%d" % ssl_server.port, "--ssl", "--cafile", str(ca), "-n", "20", "-c", "2")
    assert r["transport"] == "ssl" and r["delivered"] == 20
    assert len(ssl_server.wait_for_messages(20)) == 20


def test_auth_password_from_env_or_file_never_printed(auth_server, tmp_path):
    addr = "127.0.0.1:%d" % auth_server.port
    env = dict(os.environ, FSL_BENCH_PW=AUTH_PASSWORD)
    p = bench(addr, "--user", AUTH_USER, "--password-env", "FSL_BENCH_PW", "-n", "10", "-c", "2", env=env)
    assert p.returncode == 0, p.stderr
    assert AUTH_PASSWORD not in p.stdout + p.stderr
    logins = auth_server.handler.logins
    assert logins and all(ok and user == AUTH_USER for _mech, user, ok in logins)
    assert len(auth_server.wait_for_messages(10)) == 10

    pw_file = tmp_path / "pw"
    pw_file.write_text("wrong-password\n")
    p = bench(addr, "--user", AUTH_USER, "--password-file", str(pw_file), "-n", "5")
    assert p.returncode == 3 and "535" in p.stderr
    assert "wrong-password" not in p.stdout + p.stderr


# -- smtp-sink -------------------------------------------------------------------------------


def test_bench_starts_smtp_sink_when_asked():
    from fastsmtplib.compare import SMTP_SINK

    require_binary(SMTP_SINK, "bench --server smtp-sink")
    r = bench_json("--server", "smtp-sink", "-n", "200", "-c", "2")
    assert r["delivered"] == 200 and not r["chunking"] and r["pipelining"]
    assert "smtp-sink" in r["server_kind"]


# -- --compare -------------------------------------------------------------------------------


def test_compare_json():
    p = bench("--compare", "-n", "30", "-c", "2", "--json", "-q")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    names = [c["name"] for c in r["cases"]]
    expected = ["stdlib loop", "stdlib 2 threads", "fastsmtplib sendmail", "fastsmtplib send_many",
                "fastsmtplib SMTPPool(2)"]
    if importlib.util.find_spec("aiosmtplib") is not None:  # in the test extra
        expected[2:2] = ["aiosmtplib", "aiosmtplib 2 tasks"]
    assert names == expected
    for c in r["cases"]:
        assert c["error"] is None and c["delivered"] == c["messages"] == 30
        assert c["msgs_per_s"] > 0 and c["cpu_us_per_msg"] >= 0 and c["ratio"] > 0
    assert r["cases"][0]["ratio"] == 1.0
    assert r["server_counts"]["messages"] == r["delivered_total"] == 30 * len(names)
    assert r["message_bytes"] == 1024 and r["pinned"] in (None, "server CPU %d, client CPU %s" % (
        max(os.sched_getaffinity(0)), ",".join(map(str, sorted(os.sched_getaffinity(0))[:-1]))))


def test_compare_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")  # the test extra installs it
    png = tmp_path / "compare.png"
    p = bench("--compare", "-n", "20", "-c", "2", "--plot", str(png))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[1].split() == ["case", "msgs/s", "x", "stdlib", "CPU", "us/msg", "note"]
    assert any(line.startswith("fastsmtplib SMTPPool(2)") for line in lines)
    assert "running stdlib loop" in p.stderr and "wrote %s" % png in p.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000


def test_plot_without_matplotlib_is_a_clear_error(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from fastsmtplib.cli import main\n"
            "sys.exit(main(['bench', '--compare', '-n', '5', '--plot', %r]))" % str(tmp_path / "x.png"))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 1
    assert 'pip install "fastsmtplib[plot]"' in p.stderr
    assert "running" not in p.stderr  # failed before running anything
    assert not (tmp_path / "x.png").exists()


# -- usage errors ----------------------------------------------------------------------------

USAGE_ERRORS = [
    (["--connections", "0"], "must be at least 1"),
    (["-n", "ten"], "not an integer: 'ten'"),
    (["--duration", "-1"], "must be a positive number"),
    (["--duration", "nan"], "must be a positive number"),
    (["--size", "0"], "must be at least 1"),
    (["--rcpts", "1001"], "must be at most 1000"),
    (["--rate", "fast"], "not a number: 'fast'"),
    (["--timeout", "0"], "must be a positive number"),
    (["mx.test:99999"], "not a port number (1-65535)"),
    (["mx.test:smtp"], "not a port number: 'smtp'"),
    (["[::1:25"], "missing ']'"),
    ([":25"], "no host"),
    (["--ssl", "--starttls"], "--ssl and --starttls are mutually exclusive"),
    (["--unix", "/tmp/x.sock", "mx.test"], "not both"),
    (["--unix", "/tmp/x.sock", "--starttls"], "TLS over a Unix socket"),
    (["--lmtp", "--ssl"], "LMTP over implicit TLS"),
    (["--insecure"], "need --ssl or --starttls"),
    (["--cafile", "ca.pem"], "need --ssl or --starttls"),
    (["--ssl", "--cafile", "ca.pem", "--insecure"], "contradict"),
    (["--ssl", "--cafile", "/nonexistent/ca.pem"], "--cafile: cannot load /nonexistent/ca.pem"),
    (["--user", "bob"], "--user needs --password-env VAR or --password-file FILE"),
    (["--password-env", "PW"], "need --user"),
    (["--user", "bob", "--password-env", "PW", "--password-file", "f"], "not both"),
    (["--user", "bob", "--password-env", "FSL_BENCH_SURELY_UNSET"], "FSL_BENCH_SURELY_UNSET is not set"),
    (["--user", "bob", "--password-file", "/nonexistent/pw"], "--password-file: cannot read /nonexistent/pw"),
    (["--password", "hunter2"], "--password"),
    (["--plot", "x.png"], "--plot needs --compare"),
    (["--compare", "--duration", "1"], "--duration is not supported with --compare"),
    (["--compare", "--starttls"], "--starttls is not supported with --compare"),
    (["--server", "smtp-sink", "mx.test"], "cannot go with HOST"),
    (["--server", "exim"], "invalid choice: 'exim'"),
    (["--lmtp", "--server", "smtp-sink"], "--lmtp with --server smtp-sink"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["mx.test", "extra"], "unrecognized arguments: extra"),
]


def check_usage_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2, (code, out, err)
    assert message in err
    assert "usage: fastsmtplib bench" in err and "fastsmtplib bench: error:" in err
    assert out == "" and STARTED not in err and "Traceback" not in err
    assert "hunter2" not in err


@pytest.mark.parametrize("argv,message", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_exit_2_with_a_clear_message(argv, message, capsys):
    # In this process (argparse exits through SystemExit), to keep the file fast;
    # a sample of them runs as a real program below.
    from fastsmtplib.cli import main

    with pytest.raises(SystemExit) as info:
        main(["bench", *argv])
    out, err = capsys.readouterr()
    check_usage_error(info.value.code, out, err, message)


@pytest.mark.parametrize("index", [0, 1, 8, 12, 20, 25, 26, 28, 33])
def test_usage_errors_exit_2_as_a_program(index):
    argv, message = USAGE_ERRORS[index]
    p = bench(*argv)
    check_usage_error(p.returncode, p.stdout, p.stderr, message)


def test_help_lists_the_options_and_exit_codes():
    p = bench("--help")
    assert p.returncode == 0
    for word in ("--connections", "--messages", "--duration", "--size", "--rcpts", "--json", "--unix",
                 "--lmtp", "--no-pipelining", "--no-chunking", "--starttls", "--ssl", "--insecure",
                 "--cafile", "--user", "--password-env", "--password-file", "--rate", "--compare",
                 "--plot", "exit codes:", "3  the server could not be reached"):
        assert word in p.stdout, word
