"""The ``fastsmtplib`` command line: ``fastsmtplib <command> [options]``.

One argparse parser with one subcommand per command; ``__main__.py`` and the
``fastsmtplib`` console script both call :func:`main`.  Only commands that work
are listed.  Exit codes are in ``EXIT_CODES`` (shown by ``--help``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import fastsmtplib
from .cli_args import port, positive_int

PROG = "fastsmtplib"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

EXIT_CODES = """\
exit codes:
  0  success
  1  the command failed (demo: a message was not delivered; send: see
     `fastsmtplib send --help`; sink: the address could not be bound, or TLS
     could not be set up; bench: a message was not accepted, or the server
     to start could not be started)
  2  usage error: no command, an unknown command, or a bad option or argument
  3  could not start: the server could not be reached (bench, send), the
     login failed or the journal is locked by another run (send)
"""


def version_text() -> str:
    from . import _engine, _envelope

    ext = "active" if fastsmtplib.HAS_EXTENSIONS else "not active (pure-Python kernels)"

    def impl(module: Any) -> str:
        return "compiled" if module.__name__.endswith("_c") else "pure Python"

    return "%s %s\ncompiled extension: %s\nengine: %s; envelope encoder: %s" % (
        PROG, fastsmtplib.__version__, ext, impl(_engine.IMPLEMENTATION), impl(_envelope.IMPLEMENTATION))


# -- sink ---------------------------------------------------------------------

SINK_HELP = "run a fast discard SMTP/LMTP server (for tests and benchmarks)"
SINK_DESCRIPTION = """\
Accept mail and discard it (or keep each message as a file with --store), on
TCP (--host/--port) or a Unix socket (--unix), speaking SMTP or LMTP (--lmtp).
Advertises PIPELINING, CHUNKING, BINARYMIME, 8BITMIME, SMTPUTF8,
ENHANCEDSTATUSCODES and SIZE; optionally STARTTLS or implicit TLS, AUTH PLAIN
and LOGIN, and injected faults (refused/deferred recipients, rejected
messages, slow replies, hang-ups, 421).  Prints where it listens (and, with a
generated certificate, the CA file to trust), runs until Ctrl-C or SIGTERM,
then prints its counters (connections, messages, recipients, bytes, TLS, AUTH,
each fault, replies per code) and exits 0.  Limits and every option in
detail: `pydoc fastsmtplib.sink`."""


def cmd_sink(args: argparse.Namespace) -> int:
    import signal

    from .sink import Sink
    from .sink_cli import sink_kwargs
    from .sink_tls import TLSSetupError

    parser = args.command_parser
    try:
        sink = Sink(
            args.host,
            args.port,
            path=args.unix,
            lmtp=args.lmtp,
            size=args.size,
            store=args.store,
            max_connections=args.max_connections,
            **sink_kwargs(args, parser),
        )
    except TLSSetupError as exc:
        if args.tls_cert:
            parser.error(str(exc))
        print("%s sink: %s" % (PROG, exc), file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as exc:
        parser.error(str(exc))
    if args.store:
        try:
            os.makedirs(args.store, exist_ok=True)
        except OSError as exc:
            print("%s sink: cannot use --store %s: %s" % (PROG, args.store, exc), file=sys.stderr)
            return EXIT_FAILURE
    try:
        sink.bind()
    except OSError as exc:
        where = args.unix if args.unix else "%s:%d" % (args.host, args.port)
        print("%s sink: cannot listen on %s: %s" % (PROG, where, exc), file=sys.stderr)
        return EXIT_FAILURE

    def stop(signum: int, frame: object) -> None:
        sink.stop()

    old = signal.signal(signal.SIGTERM, stop)
    proto = "LMTP" if args.lmtp else "SMTP"
    where = "unix:%s" % sink.path if sink.path else "%s:%d" % (sink.host, sink.port)
    tls = " (implicit TLS)" if args.tls else " (STARTTLS)" if args.starttls else ""
    print("%s sink: %s on %s%s" % (PROG, proto, where, tls), flush=True)
    if sink.tls_ca_file and not args.tls_cert:
        print("%s sink: TLS CA certificate to trust: %s" % (PROG, sink.tls_ca_file), flush=True)
    try:
        sink.serve_forever()
    except KeyboardInterrupt:
        sink.stop()
    finally:
        signal.signal(signal.SIGTERM, old)
    counts = sink.counts
    replies = counts.pop("replies")
    counts.pop("active", None)
    for key, value in counts.items():
        print("%s %d" % (key, value))
    print("replies %s" % " ".join("%d:%d" % kv for kv in sorted(replies.items())), flush=True)
    return EXIT_OK


# -- parser -------------------------------------------------------------------


def _command(commands: Any, name: str, help: str, description: str, func: Any) -> argparse.ArgumentParser:
    """One subcommand: its help, description, the exit codes, and what runs it."""
    parser = commands.add_parser(name, help=help, description=description, epilog=EXIT_CODES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func, command_parser=parser)
    return parser


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

    from .cli_campaign import add_campaign_commands

    add_campaign_commands(commands)  # demo, send, report (their own exit codes)

    from .sink import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SIZE, MAX_CONNECTIONS

    sink = _command(commands, "sink", SINK_HELP, SINK_DESCRIPTION, cmd_sink)
    sink.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)")
    sink.add_argument("--port", type=port, default=DEFAULT_PORT,
                      help="TCP port, 0 for a free one (default %(default)s)")
    sink.add_argument("--unix", metavar="PATH", help="listen on this Unix socket instead of TCP")
    sink.add_argument("--lmtp", action="store_true", help="speak LMTP (LHLO, one reply per recipient)")
    sink.add_argument("--size", metavar="BYTES", type=positive_int, default=DEFAULT_SIZE,
                      help="SIZE limit: larger messages are refused with 552 (default %(default)s)")
    sink.add_argument("--store", metavar="DIR", help="write each accepted message (envelope + content) to DIR")
    sink.add_argument("--max-connections", metavar="N", type=positive_int, default=MAX_CONNECTIONS,
                      help="refuse connections past N with 421 (default %(default)s)")
    from .sink_cli import add_arguments as add_sink_arguments

    add_sink_arguments(sink)

    from . import cli_bench

    cli_bench.add_parser(commands, _command)
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
