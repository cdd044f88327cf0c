"""The ``fastsmtplib`` command line, run as a real program in subprocesses.

``python -m fastsmtplib ...`` (and the installed console script when present):
``--version``, ``--help`` on the program and on ``demo``, usage errors (no
command, unknown command, bad option) exiting 2 with argparse's message on
stderr and without running anything, and ``demo`` end to end against its
embedded aiosmtpd server, including its failure exit code 1.

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

pytest.importorskip("aiosmtpd")

TIMEOUT = 60  # seconds per run; the demo itself takes well under one second

DEMO_MARKER = "compiled kernels:"  # the demo's first line

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
    assert "aiosmtpd" in p.stdout and "exit codes:" in p.stdout
    assert DEMO_MARKER not in p.stdout  # help only: the demo did not run


# -- usage errors: exit 2, message on stderr, nothing run ---------------------


def test_no_command_prints_usage_and_commands_to_stderr():
    p = run()
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.startswith("usage: fastsmtplib")
    assert "demo" in p.stderr
    assert p.stderr.rstrip().endswith("fastsmtplib: error: a command is required")


@pytest.mark.parametrize("argv", [["send", "x"], ["frobnicate"], ["benchmark"]])
def test_unknown_command_rejected(argv):
    p = run(*argv)
    assert p.returncode == 2
    assert p.stdout == ""  # the demo (or anything else) did not run
    assert "usage: fastsmtplib" in p.stderr
    assert "invalid choice: %r" % argv[0] in p.stderr
    assert "demo" in p.stderr  # the message names the valid commands


@pytest.mark.parametrize("argv", [["demo", "--bogus"], ["demo", "extra"], ["demo", "--count=3"]])
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


@pytest.mark.parametrize("no_ext", ["", "1"])
def test_demo_runs_end_to_end(no_ext):
    p = run("demo", env=env_with(FASTSMTPLIB_NO_EXTENSIONS=no_ext))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "compiled kernels: %s" % (COMPILED_BUILT and not no_ext)
    assert lines[1] == "sendmail -> {}"
    assert lines[2:7] == ["send_many #%d -> delivered (250, b'OK')" % i for i in range(5)]
    assert lines[7:] == ["server received 6 messages"]
    assert p.stderr == ""


def test_demo_exits_1_when_a_message_is_not_delivered():
    # Fault: sendmail() returns success without sending, so the server sees 5, not 6.
    p = run_code(
        "import sys, fastsmtplib\n"
        "fastsmtplib.SMTP.sendmail = lambda self, *a, **k: {}\n"
        "from fastsmtplib.cli import main\n"
        "sys.exit(main(['demo']))\n"
    )
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "server received 5 messages" in p.stdout
    assert "fastsmtplib demo: 0 of 6 messages not delivered, server received 5" in p.stderr


def test_demo_without_aiosmtpd_exits_1_with_a_hint():
    p = run_code(
        "import sys\n"
        "sys.modules['aiosmtpd'] = None  # as if not installed\n"
        "from fastsmtplib.cli import main\n"
        "sys.exit(main(['demo']))\n"
    )
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert p.stdout == ""
    assert 'needs aiosmtpd (pip install "fastsmtplib[demo]")' in p.stderr
    assert "Traceback" not in p.stderr


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
    p = run("demo", prog=script)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == "server received 6 messages"
