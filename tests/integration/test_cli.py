"""The ``fastsmtplib`` command line, run as a real program in subprocesses.

``python -m fastsmtplib ...`` (and the installed console script when present):
``--version``, ``--help`` on the program and on ``demo``, usage errors (no
command, unknown command, bad option) exiting 2 with argparse's message on
stderr and without running anything, and ``demo`` end to end: a personalised,
DKIM-signed newsletter to the embedded sink, including its failure exit code 1.

Before the command line existed, every one of these invocations ran the demo
and exited 0, so the usage-error tests check that the demo's output is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import importlib.util
import sys
import sysconfig

import pytest

import fastsmtplib

TIMEOUT = 120  # seconds per run; the 10,000-recipient demo takes a few seconds

DEMO_MARKER = "fastsmtplib demo: embedded sink"  # the demo's first line

# Whether a child without FASTSMTPLIB_NO_EXTENSIONS gets the compiled kernels
# (this process may run with the variable set, so not fastsmtplib.HAS_EXTENSIONS).
COMPILED_BUILT = importlib.util.find_spec("fastsmtplib._wire_c") is not None


def run(*args: str, env: dict | None = None, prog: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (prog or [sys.executable, "-m", "fastsmtplib"]) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def run_code(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (to inject a fault before ``cli.main``)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)


def env_with(**extra: str) -> dict:
    env = dict(os.environ)
    env.update(extra)
    return env


# -- --version ------------------------------------------------------------------


def test_version_prints_version_and_extension_state():
    p = run("--version")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "fastsmtplib %s" % fastsmtplib.__version__
    state = "active" if fastsmtplib.HAS_EXTENSIONS else "not active"
    assert lines[1].startswith("compiled extension: %s" % state)
    assert DEMO_MARKER not in p.stdout


def test_version_reports_pure_python_when_extensions_disabled():
    p = run("--version", env=env_with(FASTSMTPLIB_NO_EXTENSIONS="1"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "fastsmtplib %s" % fastsmtplib.__version__,
        "compiled extension: not active (pure-Python kernels)",
    ]


# -- --help -------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_program_help_lists_commands_and_exit_codes(flag):
    p = run(flag)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.startswith("usage: fastsmtplib")
    assert "demo" in out and "--version" in out
    assert "exit codes:" in out
    for code in ("0  success", "1  the command failed", "2  usage error"):
        assert code in out
    assert DEMO_MARKER not in out


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_demo_help(flag):
    p = run("demo", flag)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: fastsmtplib demo [-h]")
    assert "embedded sink" in p.stdout and "exit codes:" in p.stdout and "--count N" in p.stdout
    assert DEMO_MARKER not in p.stdout  # help only: the demo did not run


# -- usage errors: exit 2, message on stderr, nothing run ---------------------


def test_no_command_prints_usage_and_commands_to_stderr():
    p = run()
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.startswith("usage: fastsmtplib")
    assert "demo" in p.stderr
    assert p.stderr.rstrip().endswith("fastsmtplib: error: a command is required")


@pytest.mark.parametrize("argv", [["frobnicate"], ["sendd"], ["benchmark"]])
def test_unknown_command_rejected(argv):
    p = run(*argv)
    assert p.returncode == 2
    assert p.stdout == ""  # the demo (or anything else) did not run
    assert "usage: fastsmtplib" in p.stderr
    assert "invalid choice: %r" % argv[0] in p.stderr
    assert "demo" in p.stderr  # the message names the valid commands


@pytest.mark.parametrize("argv", [["demo", "--bogus"], ["demo", "extra"], ["demo", "--counts=3"]])
def test_bad_argument_to_demo_rejected(argv):
    p = run(*argv)
    assert p.returncode == 2
    assert p.stdout == ""
    assert "usage: fastsmtplib demo" in p.stderr
    assert "fastsmtplib demo: error: unrecognized arguments: %s" % argv[1] in p.stderr


def test_bad_program_option_rejected():
    p = run("--bogus")
    assert p.returncode == 2
    assert p.stdout == ""
    assert "fastsmtplib: error: unrecognized arguments: --bogus" in p.stderr


# -- demo ---------------------------------------------------------------------


def test_demo_default_10000_recipients():
    p = run("demo")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.startswith(DEMO_MARKER)
    assert "10,000 recipients; DKIM ed25519" in out
    assert "10,000 recipients: 10,000 delivered, 0 refused, 0 deferred, 0 uncertain" in out
    assert "replies: 250 x10,000" in out
    assert "the sink received 10,000 messages" in out
    # The first message, shown: personalised, signed, one-click unsubscribe.
    assert "  To: reader1@example.net" in out
    assert "  Subject: Grace, your Porto digest for December" in out
    assert "  DKIM-Signature: v=1; a=ed25519-sha256;" in out
    assert "  List-Unsubscribe-Post: List-Unsubscribe=One-Click" in out
    # Not a terminal: plain progress lines on stderr, ending at 100%.
    assert "sent: 100% 10,000/10,000" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("no_ext", ["", "1"])
def test_demo_json_small(no_ext):
    import json

    p = run("demo", "--count", "300", "--dkim", "rsa", "--json", "--quiet",
            env=env_with(FASTSMTPLIB_NO_EXTENSIONS=no_ext))
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    d = json.loads(p.stdout)
    assert d["states"]["delivered"] == 300 and d["sink_received"] == 300
    assert d["exit_code"] == 0


def test_demo_exits_1_when_a_message_is_not_delivered():
    # Fault: the sink drops every 100th message's reply to "not delivered" (552).
    p = run_code(
        "import sys\n"
        "from fastsmtplib import sink\n"
        "orig = sink.Sink._finish\n"
        "seen = [0]\n"
        "def finish(self, s):\n"
        "    seen[0] += 1\n"
        "    if seen[0] % 100 == 0:\n"
        "        s.too_big = True\n"
        "    return orig(self, s)\n"
        "sink.Sink._finish = finish\n"
        # The compiled hot loop finishes messages without calling _finish: off.
        "orig_init = sink.Sink.__init__\n"
        "def init(self, *a, **k):\n"
        "    orig_init(self, *a, **k)\n"
        "    self._fast = False\n"
        "sink.Sink.__init__ = init\n"
        "from fastsmtplib.cli import main\n"
        "sys.exit(main(['demo', '--count', '500', '--quiet']))\n"
    )
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "5 refused" in p.stdout
    assert "fastsmtplib demo: error: 495 of 500 delivered, the sink received 495" in p.stderr


# -- the installed console script ---------------------------------------------


def _console_script() -> str | None:
    return shutil.which("fastsmtplib", path=sysconfig.get_path("scripts"))


@pytest.mark.skipif(_console_script() is None, reason="fastsmtplib console script not installed")
def test_console_script_entry_point():
    script = [_console_script()]
    p = run("--version", prog=script)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("fastsmtplib %s\n" % fastsmtplib.__version__)
    p = run("frobnicate", prog=script)
    assert p.returncode == 2 and p.stdout == ""
    assert "invalid choice: 'frobnicate'" in p.stderr
    p = run("demo", "--count", "50", "--quiet", prog=script)
    assert p.returncode == 0, p.stderr
    assert "the sink received 50 messages" in p.stdout
