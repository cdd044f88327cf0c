"""The ``fastsmtplib`` command line: ``fastsmtplib <command> [options]``.

One argparse parser with one subcommand per command; ``__main__.py`` and the
``fastsmtplib`` console script both call :func:`main`.  Only commands that work
are listed.  Exit codes are in ``EXIT_CODES`` (shown by ``--help``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import fastsmtplib

PROG = "fastsmtplib"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

EXIT_CODES = """\
exit codes:
  0  success
  1  the command failed (demo: aiosmtpd is not installed, or a message was
     not delivered)
  2  usage error: no command, an unknown command, or a bad option or argument
"""


def version_text() -> str:
    ext = "active" if fastsmtplib.HAS_EXTENSIONS else "not active (pure-Python kernels)"
    return "%s %s\ncompiled extension: %s" % (PROG, fastsmtplib.__version__, ext)


# -- demo ---------------------------------------------------------------------

DEMO_HELP = "send a few messages through an embedded aiosmtpd server"
DEMO_DESCRIPTION = """\
Start an aiosmtpd server on 127.0.0.1 (a free port), send one message with
sendmail() and five with send_many() over one connection, print each reply and
how many messages the server received.  Needs aiosmtpd
(pip install "fastsmtplib[demo]")."""


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from aiosmtpd.controller import Controller
    except ImportError as exc:
        print('%s demo: needs aiosmtpd (pip install "fastsmtplib[demo]"): %s' % (PROG, exc), file=sys.stderr)
        return EXIT_FAILURE

    received = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope.mail_from, list(envelope.rcpt_tos), len(envelope.content)))
            return "250 OK"

    class _Ctl(Controller):
        def _trigger_server(self):
            self.port = self.server.sockets[0].getsockname()[1]
            super()._trigger_server()

    sent = 0
    failed = 0
    ctl = _Ctl(Handler(), hostname="127.0.0.1", port=0)
    ctl.start()
    try:
        print("compiled kernels:", fastsmtplib.HAS_EXTENSIONS)
        with fastsmtplib.SMTP("127.0.0.1", ctl.port, local_hostname="demo.local") as s:
            print("sendmail ->", s.sendmail("me@example.org", ["you@example.org"], "Subject: hi\r\n\r\nhello\r\n"))
            sent += 1
            msgs = [("me@example.org", ["r%d@example.org" % i], "Subject: %d\r\n\r\nbody\r\n" % i) for i in range(5)]
            for r in s.send_many(msgs):
                print("send_many #%d -> %s %r" % (r.index, r.status, r.reply))
                sent += 1
                failed += not r.ok
    finally:
        ctl.stop()
    print("server received %d messages" % len(received))
    if failed or len(received) != sent:
        print(
            "%s demo: %d of %d messages not delivered, server received %d"
            % (PROG, failed, sent, len(received)),
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


# -- parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="fastsmtplib: a drop-in, faster and safer smtplib.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the version and whether the compiled extension is active, then exit")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="<command>")

    demo = commands.add_parser(
        "demo",
        help=DEMO_HELP,
        description=DEMO_DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.set_defaults(func=cmd_demo, command_parser=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse exits 2 itself on bad input)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Reported by the command's own parser, so the message shows its usage.
        getattr(args, "command_parser", parser).error("unrecognized arguments: %s" % " ".join(extra))
    if args.command is None:
        parser.print_help(sys.stderr)
        print("\n%s: error: a command is required" % PROG, file=sys.stderr)
        return EXIT_USAGE
    return args.func(args)
