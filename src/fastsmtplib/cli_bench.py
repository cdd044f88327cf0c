"""``fastsmtplib bench``: the command line of the load generator and of ``--compare``.

``cli.py`` registers it with ``cli_bench.add_parser(commands, make_command)``;
the work is done by ``loadgen.run_load`` and ``compare.run_compare``.  This
module only turns arguments into their calls, and reports into text or JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Optional

from .cli_args import bounded_int, positive_float, positive_int, read_password

__all__ = ["add_parser", "cmd_bench", "EXIT_UNREACHABLE"]

PROG = "fastsmtplib bench"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

HELP = "load-test an SMTP/LMTP server, or compare clients side by side (--compare)"
DESCRIPTION = """\
Send a load to HOST[:PORT] (or --unix PATH) through an SMTPPool of
--connections connections, and report msgs/s, MB/s, per-message latency
(p50/p90/p99/max, from writing the message's first byte to its final reply),
connection setup time and errors grouped by reply code (--json: one JSON
object).  With no server given it starts the project's sink itself, in a
subprocess pinned to its own CPU (so the sink's CPU and GIL are not the
client's), and reads the sink's own message count at the end.  Messages are
--size bytes (default 1024) with a unique Subject and Message-ID; nothing is
retried.  A progress line goes to stderr when it is a terminal (not with
--quiet).

--compare sends the same workload through stdlib smtplib (a loop; N threads),
aiosmtplib (if installed; a loop; N tasks), fastsmtplib sendmail(),
send_many() and SMTPPool, and prints msgs/s, the ratio to the stdlib loop
and the client's CPU per message (getrusage, the server runs in another
process); --plot FILE.png draws it (needs matplotlib: fastsmtplib[plot]).
The server is the sink, or --server smtp-sink (Postfix's: no CHUNKING, so
fastsmtplib sends DATA there too), or HOST[:PORT].

Passwords come from --password-env VAR or --password-file FILE, never from
the command line, and are never printed.

examples:
  fastsmtplib bench                                  # against the embedded sink
  fastsmtplib bench mx.test:25 -c 16 -n 50000 --size 4096 --json
  fastsmtplib bench mx.test:587 --starttls --user bob --password-env BENCH_PW
  fastsmtplib bench --unix /run/lmtp.sock --lmtp --duration 30 --rate 2000
  fastsmtplib bench --compare --messages 20000 --plot compare.png"""

BENCH_EXIT_CODES = """\
exit codes:
  0  every message was accepted (--compare: every case completed)
  1  the run finished but some messages were not accepted (the report is
     still printed), a case of --compare failed, the embedded server could
     not be started, or --plot cannot work (no matplotlib, unwritable file)
  2  usage error: a bad option or argument (the message says which)
  3  the server could not be reached, or every connection kept failing:
     nothing (more) was sent
  130  interrupted (Ctrl-C): the report covers the messages finished by then
"""

MAX_SIZE = 1 << 30
MAX_RCPTS = 1000


# -- argument types (argparse turns ArgumentTypeError into exit 2; shared ones: cli_args) ---


def parse_server(text: str) -> tuple:
    """``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address -> (host, port or 0)."""
    if not text:
        raise argparse.ArgumentTypeError("empty server address")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise argparse.ArgumentTypeError("missing ']' in %r" % text)
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise argparse.ArgumentTypeError("expected [HOST]:PORT, got %r" % text)
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise argparse.ArgumentTypeError("no host in %r" % text)
    port = 0
    if port_text or text.endswith(":"):
        try:
            port = int(port_text)
        except ValueError:
            raise argparse.ArgumentTypeError("not a port number: %r" % port_text)
        if not 1 <= port <= 65535:
            raise argparse.ArgumentTypeError("not a port number (1-65535): %r" % port_text)
    return host, port


# -- the parser ---------------------------------------------------------------------------


def add_parser(commands: Any, make_command: Callable) -> argparse.ArgumentParser:
    """Add ``bench`` to ``commands`` with ``make_command(commands, name, help, description, func)``."""
    p = make_command(commands, "bench", HELP, DESCRIPTION, cmd_bench)
    p.epilog = BENCH_EXIT_CODES
    p.add_argument("server", nargs="?", type=parse_server, metavar="HOST[:PORT]",
                   help="the server (default: start the embedded sink); port 25, 465 with --ssl, 2003 with --lmtp")
    load = p.add_argument_group("load")
    load.add_argument("-c", "--connections", type=bounded_int(1000), default=8, metavar="N",
                      help="connections (default %(default)s; --compare: threads/tasks/pool size)")
    load.add_argument("-n", "--messages", type=positive_int, metavar="N",
                      help="messages to send (default 10000, or no limit with --duration)")
    load.add_argument("-d", "--duration", type=positive_float, metavar="S",
                      help="stop after S seconds (with --messages: whichever comes first)")
    load.add_argument("-s", "--size", type=bounded_int(MAX_SIZE), default=1024, metavar="BYTES",
                      help="bytes per message, headers included (default %(default)s; at least ~180)")
    load.add_argument("-r", "--rcpts", type=bounded_int(MAX_RCPTS), default=1, metavar="N",
                      help="recipients per message (default %(default)s)")
    load.add_argument("--rate", type=positive_float, metavar="MSGS_PER_S",
                      help="send at most this many messages per second, over all connections")
    proto = p.add_argument_group("protocol")
    proto.add_argument("--server", dest="start_server", choices=("sink", "smtp-sink"), default=None,
                       help="the server to start when no HOST is given: the project's sink (default) or "
                            "Postfix's smtp-sink")
    proto.add_argument("--unix", metavar="PATH", help="connect to this Unix socket instead of HOST:PORT")
    proto.add_argument("--lmtp", action="store_true", help="speak LMTP (LHLO; one reply per recipient)")
    proto.add_argument("--no-pipelining", action="store_true", help="do not use PIPELINING even if offered")
    proto.add_argument("--no-chunking", action="store_true", help="do not use CHUNKING/BDAT even if offered")
    proto.add_argument("--timeout", type=positive_float, default=30.0, metavar="S",
                       help="seconds to connect and for each reply (default %(default)s)")
    sec = p.add_argument_group("TLS and AUTH")
    sec.add_argument("--starttls", action="store_true", help="STARTTLS after EHLO (RFC 3207)")
    sec.add_argument("--ssl", action="store_true", help="implicit TLS from the first byte (port 465)")
    sec.add_argument("--cafile", metavar="FILE", help="trust the CA certificates in FILE (PEM)")
    sec.add_argument("--insecure", action="store_true",
                     help="do not verify the server's certificate (self-signed test servers only)")
    sec.add_argument("--user", metavar="USER", help="AUTH as USER on every connection")
    sec.add_argument("--password-env", metavar="VAR", help="read the AUTH password from environment variable VAR")
    sec.add_argument("--password-file", metavar="FILE", help="read the AUTH password from FILE (its first line)")
    cmp = p.add_argument_group("comparison")
    cmp.add_argument("--compare", action="store_true",
                     help="run the same workload through stdlib, aiosmtplib and fastsmtplib; print a table")
    cmp.add_argument("--plot", metavar="FILE.png", help="with --compare: draw the table as a bar chart (matplotlib)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress line and no status messages")
    out.add_argument("--no-pin", action="store_true",
                     help="do not pin the started server and this process to different CPUs")
    return p


# -- checks that involve several options ---------------------------------------------------

_NOT_WITH_COMPARE = (
    ("duration", "--duration"), ("unix", "--unix"), ("lmtp", "--lmtp"), ("starttls", "--starttls"),
    ("ssl", "--ssl"), ("cafile", "--cafile"), ("insecure", "--insecure"), ("user", "--user"),
    ("password_env", "--password-env"), ("password_file", "--password-file"), ("rate", "--rate"),
    ("no_pipelining", "--no-pipelining"), ("no_chunking", "--no-chunking"),
)


def _check(args: argparse.Namespace, error: Callable[[str], Any]) -> None:
    """Reject contradictory options (``error`` exits 2)."""
    if args.compare:
        for attr, flag in _NOT_WITH_COMPARE:
            if getattr(args, attr):
                error("%s is not supported with --compare (it compares plain SMTP over TCP)" % flag)
    elif args.plot:
        error("--plot needs --compare")
    if args.server is not None and args.unix:
        error("give either HOST[:PORT] or --unix PATH, not both")
    if args.start_server and (args.server is not None or args.unix):
        error("--server chooses a server to start; it cannot go with HOST[:PORT] or --unix")
    if args.ssl and args.starttls:
        error("--ssl and --starttls are mutually exclusive")
    if args.unix and (args.ssl or args.starttls):
        error("TLS over a Unix socket (--unix with --ssl/--starttls) is not supported")
    if args.lmtp and args.ssl:
        error("LMTP over implicit TLS (--lmtp --ssl) is not supported; use --starttls")
    if (args.cafile or args.insecure) and not (args.ssl or args.starttls):
        error("--cafile and --insecure need --ssl or --starttls")
    if args.cafile and args.insecure:
        error("--cafile and --insecure contradict each other")
    if args.password_env and args.password_file:
        error("give the password with --password-env or --password-file, not both")
    if (args.password_env or args.password_file) and not args.user:
        error("--password-env/--password-file need --user")
    if args.user and not (args.password_env or args.password_file):
        error("--user needs --password-env VAR or --password-file FILE (never a password on the command line)")
    if args.start_server and args.lmtp and args.start_server == "smtp-sink":
        error("--lmtp with --server smtp-sink is not supported; use the embedded sink")


def _password(args: argparse.Namespace, error: Callable[[str], Any]) -> Optional[str]:
    try:
        value = read_password(args.password_env, args.password_file)
    except ValueError as exc:
        error(str(exc))
    if args.password_file and not value:
        error("--password-file: %s has an empty first line" % args.password_file)
    return value


def _context(args: argparse.Namespace, error: Callable[[str], Any]) -> Any:
    if not (args.ssl or args.starttls):
        return None
    import ssl

    if args.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        return ssl.create_default_context(cafile=args.cafile)
    except (OSError, ssl.SSLError) as exc:
        error("--cafile: cannot load %s: %s" % (args.cafile, exc))


# -- running -------------------------------------------------------------------------------


def _status(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print("%s: %s" % (PROG, text), file=sys.stderr, flush=True)


class _Progress:
    """One line on stderr, rewritten in place (only on a terminal)."""

    def __init__(self, total: Optional[int]) -> None:
        self.total = total
        self.shown = False

    def __call__(self, done: int, delivered: int, errors: int, elapsed: float) -> None:
        rate = done / elapsed if elapsed > 0 else 0.0
        of = "/%d" % self.total if self.total else ""
        sys.stderr.write("\r  %d%s msgs  %.0f msgs/s  %d errors  %.1f s \x1b[K" % (done, of, rate, errors, elapsed))
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def cmd_bench(args: argparse.Namespace) -> int:
    error = args.command_parser.error
    _check(args, error)
    if args.compare:
        return _compare(args)
    password = _password(args, error)
    context = _context(args, error)
    return _load(args, password, context)


def _load(args: argparse.Namespace, password: Optional[str], context: Any) -> int:
    from .compare import _SmtpSinkProcess
    from .loadgen import DEFAULT_MESSAGES, EmbeddedSink, ServerUnreachable, run_load

    started: Any = None
    if args.server is None and not args.unix:
        if args.start_server == "smtp-sink":
            started, kind = _SmtpSinkProcess(pin=not args.no_pin), "smtp-sink (subprocess)"
        else:
            started, kind = EmbeddedSink(lmtp=args.lmtp, pin=not args.no_pin), "embedded fastsmtplib sink in a subprocess"
        try:
            started.start()
        except (RuntimeError, OSError) as exc:
            print("%s: cannot start the server: %s" % (PROG, exc), file=sys.stderr)
            return EXIT_FAILURE
        host, port = started.host, started.port
        where = "%s:%d" % (host, port)
        if started.cpu is not None and not args.no_pin:
            started.pin_client()
            kind += ", pinned to CPU %d" % started.cpu
        _status(args, "no server given: started the %s on %s" % (kind, where))
    elif args.unix:
        host, port, kind = "localhost", 0, "given"
    else:
        (host, port), kind = args.server, "given"

    show = not args.quiet and sys.stderr.isatty()
    total = args.messages or (DEFAULT_MESSAGES if args.duration is None else None)
    progress = _Progress(total) if show else None
    try:
        report = run_load(
            host, port, unix=args.unix, lmtp=args.lmtp, connections=args.connections, messages=args.messages,
            duration=args.duration, size=args.size, rcpts=args.rcpts, pipelining=not args.no_pipelining,
            chunking=not args.no_chunking, ssl=args.ssl, starttls=args.starttls, context=context,
            login=(args.user, password) if args.user else None, rate=args.rate, timeout=args.timeout,
            progress=progress,
        )
    except ServerUnreachable as exc:
        if progress is not None:
            progress.clear()
        print("%s: cannot reach the server: %s" % (PROG, exc), file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        counts = started.stop() if started is not None else None
    if progress is not None:
        progress.clear()

    report.extra["server_kind"] = kind
    if isinstance(counts, dict):
        counts.pop("active", None)
        report.server_counts = counts
        report.extra["server_count_matches"] = counts.get("messages") == report.delivered
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=False))
    else:
        print(format_report(report))
    if report.aborted == "interrupted":
        print("%s: interrupted; messages still in flight are not counted" % PROG, file=sys.stderr)
        return EXIT_INTERRUPTED
    if report.aborted:
        print("%s: stopped early: %s" % (PROG, report.aborted), file=sys.stderr)
        return EXIT_UNREACHABLE
    if report.extra.get("server_count_matches") is False:
        print("%s: the sink counted %s messages, the client %d delivered" % (
            PROG, counts.get("messages") if counts else "?", report.delivered), file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if report.errors == 0 else EXIT_FAILURE


def format_report(r: Any) -> str:
    """The text report of one load run."""
    ext = [e for e in ("PIPELINING", "CHUNKING") if getattr(r, e.lower())]
    lines = [
        "server        %s (%s), %s over %s%s" % (r.server, r.extra.get("server_kind", "given"), r.protocol,
                                                 r.transport, ", " + " ".join(ext) if ext else ""),
        "load          %d connections, %d-byte messages, %d recipient%s each%s" % (
            r.connections, r.message_bytes, r.recipients_per_message, "" if r.recipients_per_message == 1 else "s",
            ", at most %g msgs/s" % r.rate_limit if r.rate_limit else ""),
        "messages      %d sent, %d delivered%s, %d errors" % (
            r.messages, r.delivered, " (%d partial)" % r.partial if r.partial else "", r.errors),
        "elapsed       %.3f s" % r.elapsed_s,
        "throughput    %.0f msgs/s, %.2f MB/s" % (r.msgs_per_s, r.mb_per_s),
        "latency       p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms  (first byte written -> final reply%s)" % (
            r.latency_ms["p50"], r.latency_ms["p90"], r.latency_ms["p99"], r.latency_ms["max"],
            "" if r.latency_samples == r.messages else "; %d messages written" % r.latency_samples),
        "setup         %d connections: p50 %.2f ms  max %.2f ms" % (
            r.setup_ms["count"], r.setup_ms["p50"], r.setup_ms["max"]),
    ]
    if r.errors_by_code:
        lines.append("errors        " + ", ".join("%s: %d" % kv for kv in r.errors_by_code.items()))
    if r.refused_recipients_by_code:
        lines.append("refused rcpts " + ", ".join("%s: %d" % kv for kv in r.refused_recipients_by_code.items()))
    if r.server_counts:
        lines.append("server count  %s messages%s" % (
            r.server_counts.get("messages"), "" if r.extra.get("server_count_matches") else "  (DIFFERS)"))
    return "\n".join(lines)


def _compare(args: argparse.Namespace) -> int:
    from .compare import DEFAULT_MESSAGES, PlotUnavailable, check_plot, format_table, plot, run_compare

    if args.plot:
        try:
            check_plot()
        except PlotUnavailable as exc:
            print("%s: %s" % (PROG, exc), file=sys.stderr)
            return EXIT_FAILURE
    host, port = args.server if args.server is not None else (None, 0)

    def progress(name: str) -> None:
        _status(args, "running %s" % name)

    try:
        report = run_compare(host, port or 25, server=args.start_server or "sink",
                             messages=args.messages or DEFAULT_MESSAGES, size=args.size, rcpts=args.rcpts,
                             connections=args.connections, pin=not args.no_pin, progress=progress,
                             timeout=args.timeout)
    except OSError as exc:
        print("%s: cannot reach the server: %s" % (PROG, exc), file=sys.stderr)
        return EXIT_UNREACHABLE
    except RuntimeError as exc:
        print("%s: cannot start the server: %s" % (PROG, exc), file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        head = "%d messages x %d bytes, %d recipient%s, %s on %s%s" % (
            report.messages, report.message_bytes, report.rcpts, "" if report.rcpts == 1 else "s",
            report.server_kind, report.server, "; " + report.pinned if report.pinned else "")
        print(head)
        print(format_table(report))
        if report.server_counts:
            print("server count: %s messages (clients were told %d were delivered)" % (
                report.server_counts.get("messages"), report.delivered_total))
    status = EXIT_OK
    if any(c.error for c in report.cases):
        status = EXIT_FAILURE
    if report.server_counts and report.server_counts.get("messages") != report.delivered_total:
        print("%s: the sink counted %s messages, the clients %d" % (
            PROG, report.server_counts.get("messages"), report.delivered_total), file=sys.stderr)
        status = EXIT_FAILURE
    if args.plot:
        try:
            plot(report, args.plot)
        except (OSError, ValueError) as exc:
            print("%s: cannot write %s: %s" % (PROG, args.plot, exc), file=sys.stderr)
            return EXIT_FAILURE
        _status(args, "wrote %s" % args.plot)
    return status
