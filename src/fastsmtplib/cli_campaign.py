"""``fastsmtplib send``, ``report`` and ``demo``: campaigns from the command line.

The work is :class:`fastsmtplib.campaign.Campaign`'s; this module parses the
options, reads secrets (``--password-env``/``--password-file``: never from
argv, never printed), shows progress on stderr (a bar on a terminal, a plain
line every few seconds otherwise, nothing with ``--quiet``) and prints the
summary (``--json`` for machines).  :func:`add_campaign_commands` registers
the three subcommands on ``cli.py``'s parser.
"""

from __future__ import annotations

import argparse
import csv
import email.utils
import json
import os
import signal
import sys
import time
from typing import Any, Optional, TextIO

from .campaign import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    Campaign,
    CampaignError,
    CampaignInputError,
    Summary,
    neutralise_cell,
)
from .journal import STATES, JournalError, code_counts, counts, iter_rows, open_readonly
from .cli_args import nonneg_float, positive_float, positive_int, read_password

__all__ = ["add_campaign_commands", "Progress", "cmd_send", "cmd_report", "cmd_demo"]

PROG = "fastsmtplib"

SEND_EXIT_CODES = """\
exit codes:
  0  every recipient is in a final state (delivered, refused, invalid,
     duplicate) and none is deferred or uncertain
  1  finished with deferred or uncertain recipients, or paused (--max-errors,
     Ctrl-C): run again with --resume
  2  usage or input error (bad option, missing CSV columns or files, a journal
     of another campaign)
  3  could not start: server unreachable or login refused, journal locked by
     another run
"""

SEND_DESCRIPTION = """\
Send one message per CSV record.  The CSV (UTF-8, with a header line) is
streamed; its columns are merge fields: {{name}} in the template is replaced
by the record's "name" value (HTML-escaped in HTML parts; {{name|raw}} inserts
a trusted value as it is, {{name|url}} percent-encodes it; the syntax is in
`pydoc fastsmtplib.merge`).  Every recipient's
state is kept in a journal (SQLite): --resume continues a stopped or killed run
without resending anything delivered.  A recipient whose message was handed to
the server when the run died, with no reply recorded, is "uncertain": it is
listed, and resent only with --resend-uncertain (it may get two copies).
Without --server, mail goes to an embedded discard server (a practice run)."""

REPORT_DESCRIPTION = """\
Counts by state and by reply code from a campaign journal (readable while a run
is going).  --csv writes every recipient as address,state,code,reply,attempts
(cells a spreadsheet would run as a formula are prefixed with ')."""

DEMO_DESCRIPTION = """\
Start the embedded sink (a discard SMTP server) on a free port and send it a
personalised newsletter to N generated recipients: merge fields, DKIM signature
(a throwaway key), one-click unsubscribe (RFC 8058), a journal; then print the
report.  Needs no setup and no network."""

DEMO_EXIT_CODES = """\
exit codes:
  0  every message was delivered and the sink received each one
  1  some message was not delivered
  2  usage error
"""


# -- progress -----------------------------------------------------------------------


def _fmt_secs(s: float) -> str:
    s = int(s + 0.5)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return "%d:%02d:%02d" % (h, m, sec) if h else "%d:%02d" % (m, sec)


class Progress:
    """``progress(done, total)``: a bar on a terminal, periodic lines otherwise.

    Args:
        stream: where to write (stderr).
        bar: draw a bar (a terminal) or plain lines.
        interval: seconds between plain lines.
    """

    def __init__(self, stream: TextIO, bar: bool, interval: float = 5.0, label: str = "sent") -> None:
        self.stream = stream
        self.bar = bar
        self.interval = interval if not bar else 0.1
        self.label = label
        self.t0 = time.monotonic()
        self.last = 0.0
        self.drawn = False
        self.finished = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.drawn:
            self.t0 = now  # the rate counts from the first message, not from the CSV import
        final = done >= total
        if not final and now - self.last < self.interval and self.drawn:
            return
        if final and self.finished:
            return
        self.last = now
        self.drawn = True
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * done / total if total else 100.0
        eta = (total - done) / rate if rate > 0 else 0.0
        tail = "%s/%s  %s msg/s  %s %s" % (
            format(done, ","), format(total, ","), format(int(rate), ","),
            "elapsed" if final else "ETA", _fmt_secs(elapsed if final else eta))
        if self.bar:
            width = 30
            fill = int(width * pct / 100)
            self.stream.write("\r%3d%% [%s%s] %s\x1b[K" % (pct, "#" * fill, "." * (width - fill), tail))
            if final:
                self.stream.write("\n")
        else:
            self.stream.write("%s: %3d%% %s\n" % (self.label, pct, tail))
        if final:
            self.finished = True
        self.stream.flush()


def _progress_for(args: argparse.Namespace, label: str = "sent") -> Optional[Progress]:
    if args.quiet:
        return None
    return Progress(sys.stderr, bar=sys.stderr.isatty(), label=label)


def _logger(args: argparse.Namespace, progress: Optional[Progress] = None) -> Any:
    def log(line: str) -> None:
        if not args.quiet:
            if progress is not None and progress.bar and progress.drawn and not progress.finished:
                sys.stderr.write("\r\x1b[K")  # the note replaces the bar; the next update redraws it
            print("%s: %s" % (PROG, line), file=sys.stderr, flush=True)

    return log


# -- helpers --------------------------------------------------------------------------


def _error(cmd: str, text: str) -> None:
    print("%s %s: error: %s" % (PROG, cmd, text), file=sys.stderr, flush=True)


def _server(text: str) -> tuple:
    """``HOST[:PORT]`` (``[v6]:PORT`` for IPv6) -> ``(host, port or 0)``."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise argparse.ArgumentTypeError("no host in %r" % text)
    if port:
        try:
            p = int(port)
        except ValueError:
            raise argparse.ArgumentTypeError("not a port number in %r" % text)
        if not 0 < p < 65536:
            raise argparse.ArgumentTypeError("not a port number (1-65535) in %r" % text)
        return host, p
    return host, 0


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CampaignInputError("cannot read %s %s: %s" % (what, path, exc.strerror or exc)) from None


def _password(args: argparse.Namespace) -> Optional[str]:
    try:
        return read_password(args.password_env, args.password_file)
    except ValueError as exc:
        raise CampaignInputError(str(exc)) from None


def _template(args: argparse.Namespace) -> tuple:
    """``(Template, digest)`` from --template or --subject/--html/--text."""
    import hashlib

    from . import merge

    h = hashlib.sha256()
    try:
        if args.template:
            raw = _read(args.template, "--template")
            h.update(b"eml\0" + raw)
            return merge.Template.from_bytes(raw), h.hexdigest()
        if not args.subject or not (args.html or args.text):
            raise CampaignInputError("give --template FILE.eml, or --subject with --html and/or --text")
        html = _read(args.html, "--html").decode("utf-8", "strict") if args.html else None
        text = _read(args.text, "--text").decode("utf-8", "strict") if args.text else None
        for part in (args.subject, html or "", text or "", args.from_addr):
            h.update(part.encode("utf-8", "surrogateescape") + b"\0")
        return merge.Template.from_parts(subject=args.subject, html=html, text=text,
                                         from_addr=args.from_addr), h.hexdigest()
    except UnicodeDecodeError as exc:
        raise CampaignInputError("--html/--text must be UTF-8: %s" % exc) from None
    except (ValueError, TypeError) as exc:
        raise CampaignInputError("bad template: %s" % exc) from None


def _dkim(args: argparse.Namespace) -> Any:
    if not (args.dkim_key or args.dkim_selector or args.dkim_domain):
        return None
    if not (args.dkim_key and args.dkim_selector):
        raise CampaignInputError("DKIM needs --dkim-key and --dkim-selector (--dkim-domain defaults to --from's domain)")
    # The address's domain, not the tail of "Name <addr>" or "addr (comment)".
    domain = args.dkim_domain or email.utils.parseaddr(args.from_addr)[1].rpartition("@")[2]
    from . import dkim_sign

    key = _read(args.dkim_key, "--dkim-key")
    try:
        return dkim_sign.DkimSigner(key, args.dkim_selector, domain)
    except ImportError as exc:  # the extra is not installed: a usage error (exit 2), with the fix
        raise CampaignInputError("--dkim-key: %s" % exc) from None
    except (ValueError, TypeError) as exc:
        raise CampaignInputError("--dkim-key %s: %s" % (args.dkim_key, exc)) from None


class _Stopper:
    """SIGINT/SIGTERM pause the campaign cleanly (a second SIGINT interrupts)."""

    def __init__(self, campaign: Campaign) -> None:
        self.campaign = campaign
        self.old: dict = {}

    def __enter__(self) -> "_Stopper":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.campaign._stop_reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.campaign.stop("interrupted by %s" % signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


def _print_summary(s: Summary, args: argparse.Namespace, resume_hint: str = "") -> None:
    if args.json:
        print(json.dumps(s.as_dict(), indent=2, sort_keys=True))
        return
    st = s.states
    if s.dry_run:
        print("dry run: %s message%s written to %s" % (format(st["delivered"], ","),
                                                        "s" if st["delivered"] != 1 else "", s.dry_run))
        print("skipped: %s invalid, %s duplicate" % (format(st["invalid"], ","), format(st["duplicate"], ",")))
        return
    print("journal: %s" % s.journal)
    parts = ["%s %s" % (format(st[k], ","), k) for k in STATES if k not in ("sending",) and (st[k] or k in (
        "delivered", "refused", "deferred", "uncertain"))]
    print("%s recipients: %s" % (format(s.total, ","), ", ".join(parts)))
    print("this run: %s message%s in %.1f s (%s msg/s)" % (
        format(s.sent, ","), "s" if s.sent != 1 else "", s.elapsed, format(int(s.rate), ",")))
    if s.codes:
        print("replies: %s" % ", ".join("%s x%s" % (c, format(n, ",")) for c, n in s.codes.items()))
    if st["uncertain"]:
        print("uncertain (may have the message; resent only with --resend-uncertain): %s%s"
              % (", ".join(s.uncertain), " ..." if st["uncertain"] > len(s.uncertain) else ""))
    if st["deferred"]:
        print("deferred (run again with --resume to retry): %s%s"
              % (", ".join(s.deferred), " ..." if st["deferred"] > len(s.deferred) else ""))
    if s.paused:
        print("paused: %s; continue with --resume" % s.paused)
    elif resume_hint and (st["deferred"] or st["pending"]):
        print(resume_hint)


# -- send -----------------------------------------------------------------------------


def _start_sink(args: argparse.Namespace) -> Any:
    from .sink import Sink

    sink = Sink(port=0)
    sink.start()
    if not args.quiet:
        print("%s: no --server: sending to the embedded sink on %s:%d (messages are discarded)"
              % (PROG, sink.host, sink.port), file=sys.stderr, flush=True)
    return sink


def cmd_send(args: argparse.Namespace) -> int:
    sink = None
    try:
        if bool(args.user) != bool(args.password_env or args.password_file):
            raise CampaignInputError("--user needs --password-env or --password-file, and they need --user")
        if args.server is None and (args.user or args.ssl or args.starttls):
            raise CampaignInputError("--user, --ssl and --starttls need --server")
        if args.template and (args.subject or args.html or args.text):
            raise CampaignInputError("--template FILE.eml replaces --subject/--html/--text: give one or the other")
        if args.cafile and not (args.ssl or args.starttls):
            raise CampaignInputError("--cafile needs --starttls or --ssl")
        context = None
        if args.cafile:
            import ssl

            try:
                context = ssl.create_default_context(cafile=args.cafile)
            except (OSError, ssl.SSLError) as exc:
                raise CampaignInputError("--cafile %s: %s" % (args.cafile, exc)) from None
        template, digest = _template(args)
        dkim = _dkim(args)
        password = _password(args)
        login = (args.user, password) if args.user else None
        from .retry import Retry

        retry = Retry(attempts=args.attempts, backoff=args.retry_backoff, backoff_max=max(args.retry_backoff, 60.0),
                      total=None)
        if args.server is None and args.dry_run is None:
            sink = _start_sink(args)
            host, port = sink.host, sink.port
        elif args.server is not None:
            host, port = args.server
            if not port:
                port = 465 if args.ssl else 587 if args.starttls else 25
        else:
            host, port = "localhost", 25
        journal = args.journal
        progress = _progress_for(args, "written" if args.dry_run else "sent")
        campaign = Campaign(
            args.recipients, template, args.from_addr, template_digest=digest, journal=journal,
            address_column=args.address_column, host=host, port=port, ssl=args.ssl, starttls=args.starttls,
            context=context, login=login, connections=args.connections, rate=args.rate, retry=retry, dkim=dkim,
            unsubscribe_url=args.unsubscribe_url, unsubscribe_mailto=args.unsubscribe_mailto,
            resume=args.resume, resend_uncertain=args.resend_uncertain, max_errors=args.max_errors,
            dry_run=args.dry_run, progress=progress, log=_logger(args, progress),
        )
        if journal is None and args.dry_run is None and not args.quiet:
            print("%s: journal: %s" % (PROG, campaign.journal_path), file=sys.stderr, flush=True)
        with _Stopper(campaign):
            summary = campaign.run()
    except CampaignError as exc:
        _error("send", str(exc))
        return exc.exit_code
    finally:
        if sink is not None:
            sink.stop()
    _print_summary(summary, args, resume_hint="run again with --resume to retry the rest")
    return summary.exit_code


def _add_send(commands: Any) -> None:
    p = commands.add_parser("send", help="send a mail-merge campaign from a CSV, with a resumable journal",
                            description=SEND_DESCRIPTION, epilog=SEND_EXIT_CODES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_send, command_parser=p)
    g = p.add_argument_group("recipients and message")
    g.add_argument("--recipients", metavar="FILE.csv", required=True, help="the recipients (UTF-8 CSV with a header)")
    g.add_argument("--address-column", metavar="NAME", default="email",
                   help="the column with the addresses (default %(default)s)")
    g.add_argument("--template", metavar="FILE.eml", help="the message as an .eml file with {{field}} placeholders")
    g.add_argument("--subject", metavar="TEXT", help="the Subject (instead of --template)")
    g.add_argument("--html", metavar="FILE", help="the HTML body (instead of --template)")
    g.add_argument("--text", metavar="FILE", help="the plain-text body (instead of --template)")
    g.add_argument("--from", dest="from_addr", metavar="ADDR", required=True, help="the sender address")
    g = p.add_argument_group("server")
    g.add_argument("--server", metavar="HOST[:PORT]", type=_server,
                   help="the SMTP server (default: an embedded discard sink; port 25, 587 with "
                        "--starttls, 465 with --ssl)")
    tls = g.add_mutually_exclusive_group()
    tls.add_argument("--starttls", action="store_true", help="STARTTLS after EHLO (certificate verified)")
    tls.add_argument("--ssl", action="store_true", help="implicit TLS (certificate verified)")
    g.add_argument("--cafile", metavar="FILE.pem",
                   help="verify the server's certificate against these CAs instead of the system's")
    g.add_argument("--user", metavar="NAME", help="AUTH user name")
    pw = g.add_mutually_exclusive_group()
    pw.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable")
    pw.add_argument("--password-file", metavar="FILE", help="read the password from this file's first line")
    g.add_argument("--connections", metavar="N", type=positive_int, default=4,
                   help="connections at once (default %(default)s)")
    g.add_argument("--rate", metavar="N", type=positive_float, help="most messages per second (default: no limit)")
    g.add_argument("--attempts", metavar="N", type=positive_int, default=3,
                   help="attempts per message within a run for 4xx replies and lost connections (default %(default)s)")
    g.add_argument("--retry-backoff", metavar="SECONDS", type=nonneg_float, default=1.0,
                   help="first wait before a retry, doubled each time (default %(default)s)")
    g.add_argument("--max-errors", metavar="N", type=positive_int, default=50,
                   help="pause after N consecutive connection-level failures (default %(default)s)")
    g = p.add_argument_group("journal")
    g.add_argument("--journal", metavar="FILE.db", help="the journal (default: next to the CSV, NAME.journal.db)")
    g.add_argument("--resume", action="store_true", help="continue the run recorded in the journal")
    g.add_argument("--resend-uncertain", action="store_true",
                   help="also send to 'uncertain' recipients (may deliver a second copy)")
    g = p.add_argument_group("signing and unsubscribe")
    g.add_argument("--dkim-key", metavar="FILE", help="DKIM private key (PEM; RSA or Ed25519)")
    g.add_argument("--dkim-selector", metavar="S", help="DKIM selector")
    g.add_argument("--dkim-domain", metavar="D", help="DKIM signing domain (default: --from's domain)")
    g.add_argument("--unsubscribe-url", metavar="TEMPLATE",
                   help="List-Unsubscribe URL with {{field}} placeholders; adds RFC 8058 one-click")
    g.add_argument("--unsubscribe-mailto", metavar="ADDR", help="List-Unsubscribe mailto address")
    g = p.add_argument_group("output")
    g.add_argument("--dry-run", metavar="DIR", help="write the rendered messages to DIR instead of sending")
    g.add_argument("--quiet", action="store_true", help="no progress or notes on stderr")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")


# -- report ---------------------------------------------------------------------------


def report_data(path: str) -> dict:
    conn = open_readonly(path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        c = counts(conn)
        codes = code_counts(conn)
    finally:
        conn.close()
    return {
        "journal": os.path.abspath(path),
        "campaign": meta.get("campaign"),
        "csv": meta.get("csv"),
        "from": meta.get("from"),
        "created": meta.get("created"),
        "total": sum(c.values()),
        "states": c,
        "codes": {str(k): v for k, v in codes.items()},
    }


def write_report_csv(path: str, out: str) -> int:
    """Every recipient as ``address,state,code,reply,attempts``; returns the row count."""
    conn = open_readonly(path)
    n = 0
    try:
        with open(out, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["address", "state", "code", "reply", "attempts"])
            for address, state, code, reply, attempts in iter_rows(conn):
                w.writerow([neutralise_cell(address), state, "" if code is None else code,
                            neutralise_cell(reply or ""), attempts])
                n += 1
    finally:
        conn.close()
    return n


def cmd_report(args: argparse.Namespace) -> int:
    try:
        data = report_data(args.journal)
        if args.csv:
            try:
                data["csv_rows"] = write_report_csv(args.journal, args.csv)
            except OSError as exc:
                raise CampaignInputError("cannot write %s: %s" % (args.csv, exc.strerror or exc)) from None
    except JournalError as exc:
        _error("report", str(exc))
        return EXIT_USAGE
    except CampaignError as exc:
        _error("report", str(exc))
        return exc.exit_code
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        _print_report(data)
        if args.csv:
            print("wrote %s rows to %s" % (format(data["csv_rows"], ","), args.csv))
    st = data["states"]
    return EXIT_INCOMPLETE if (st["pending"] or st["sending"] or st["deferred"] or st["uncertain"]) else EXIT_OK


def _print_report(data: dict) -> None:
    print("journal: %s" % data["journal"])
    if data.get("csv"):
        print("campaign %s: %s, from %s, created %s" % (data["campaign"], data["csv"], data["from"], data["created"]))
    print("recipients: %s" % format(data["total"], ","))
    for k in STATES:
        n = data["states"][k]
        if n or k not in ("sending",):
            print("  %-10s %s" % (k, format(n, ",")))
    if data["codes"]:
        print("reply codes:")
        for code, n in data["codes"].items():
            print("  %-10s %s" % (code, format(n, ",")))


def _add_report(commands: Any) -> None:
    p = commands.add_parser("report", help="counts by state and reply code from a campaign journal",
                            description=REPORT_DESCRIPTION,
                            epilog="exit codes:\n  0  every recipient is final, none deferred or uncertain\n"
                                   "  1  some are pending, deferred or uncertain\n  2  usage error, or not a journal\n",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_report, command_parser=p)
    p.add_argument("journal", metavar="FILE.db", help="the campaign journal")
    p.add_argument("--csv", metavar="OUT.csv", help="write every recipient to OUT.csv")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


# -- demo -----------------------------------------------------------------------------

_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Radia", "Tim",
          "Frances", "John", "Sophie", "Dennis", "Hedy", "Linus")
_CITY = ("Lyon", "Porto", "Tartu", "Ghent", "Bergen", "Kraków", "Turku", "Girona", "Leipzig", "Cork")

DEMO_SUBJECT = "{{first_name}}, your {{city}} digest for December"
DEMO_TEXT = """\
Hello {{first_name}},

Here is what happened in {{city}} this month.
Your plan: {{plan}}.

Unsubscribe: https://news.example.org/u?id={{id}}
"""
DEMO_HTML = """\
<!doctype html>
<html><body style="font-family: sans-serif">
<h1>Hello {{first_name}}!</h1>
<p>Here is what happened in <b>{{city}}</b> this month.</p>
<p>Your plan: <i>{{plan}}</i>.</p>
<p><a href="https://news.example.org/u?id={{id}}">Unsubscribe</a></p>
</body></html>
"""


def write_demo_csv(path: str, count: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "email", "first_name", "city", "plan"])
        for i in range(1, count + 1):
            w.writerow([i, "reader%d@example.net" % i, _FIRST[i % len(_FIRST)], _CITY[i % len(_CITY)],
                        "Pro & <Team>" if i % 7 == 0 else "Free"])


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from . import merge
    from .sink import Sink

    progress = _progress_for(args)
    log = _logger(args, progress)
    with tempfile.TemporaryDirectory(prefix="fastsmtplib-demo-") as tmp:
        csv_path = os.path.join(tmp, "readers.csv")
        write_demo_csv(csv_path, args.count)
        template = merge.Template.from_parts(subject=DEMO_SUBJECT, html=DEMO_HTML, text=DEMO_TEXT,
                                             from_addr="News <news@example.org>")
        dkim = None
        try:
            from . import dkim_sign

            key, _record = dkim_sign.generate_key(args.dkim)
            dkim = dkim_sign.DkimSigner(key, "demo", "example.org")
        except ImportError as exc:
            log("DKIM skipped: %s" % exc)
        with Sink(port=0) as sink:
            if not args.quiet and not args.json:
                print("%s demo: embedded sink on %s:%d; %s recipients; DKIM %s (selector demo, example.org); "
                      "one-click unsubscribe" % (PROG, sink.host, sink.port, format(args.count, ","),
                                                 args.dkim if dkim else "off"), flush=True)
            campaign = Campaign(
                csv_path, template, "news@example.org", template_digest="demo",
                journal=os.path.join(tmp, "readers.journal.db"), host=sink.host, port=sink.port,
                connections=args.connections, dkim=dkim,
                unsubscribe_url="https://news.example.org/u?id={{id}}",
                unsubscribe_mailto="unsubscribe@example.org",
                progress=progress, log=log,
            )
            with _Stopper(campaign):
                try:
                    summary = campaign.run()
                except CampaignError as exc:
                    _error("demo", str(exc))
                    return EXIT_INCOMPLETE
            received = sink.counts["messages"]
        delivered = summary.states["delivered"]
        if args.json:
            d = summary.as_dict()
            d["sink_received"] = received
            print(json.dumps(d, indent=2, sort_keys=True))
        else:
            summary.journal = "(temporary) " + summary.journal
            _print_summary(summary, args)
            print("the sink received %s messages" % format(received, ","))
            if not args.quiet:
                sample = campaign.preview(1)
                head = sample.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
                print("\nthe first message's headers:")
                for line in head.split("\r\n"):
                    print("  " + (line if len(line) <= 100 else line[:97] + "..."))
        if delivered != args.count or received != delivered:
            _error("demo", "%d of %d delivered, the sink received %d" % (delivered, args.count, received))
            return EXIT_INCOMPLETE
    return EXIT_OK


def _add_demo(commands: Any) -> None:
    p = commands.add_parser("demo", help="send a personalised, DKIM-signed newsletter to an embedded sink",
                            description=DEMO_DESCRIPTION, epilog=DEMO_EXIT_CODES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_demo, command_parser=p)
    p.add_argument("--count", metavar="N", type=positive_int, default=10000,
                   help="recipients (default %(default)s)")
    p.add_argument("--connections", metavar="N", type=positive_int, default=4,
                   help="connections at once (default %(default)s)")
    p.add_argument("--dkim", choices=("ed25519", "rsa"), default="ed25519",
                   help="the throwaway key's kind (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress or notes")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_campaign_commands(commands: Any) -> None:
    """Register ``demo``, ``send`` and ``report`` on ``cli.py``'s subparsers."""
    _add_demo(commands)
    _add_send(commands)
    _add_report(commands)

