"""The ``fastsmtplib sink`` options for TLS, AUTH, faults and the idle timeout.

:func:`add_arguments` adds them to the sink's argparse parser;
:func:`sink_kwargs` checks how they combine (``parser.error``: exit code 2)
and turns them into :class:`~fastsmtplib.sink.Sink` keyword arguments.  No
value of ``--auth`` or a line of ``--auth-file`` is ever echoed: a bad one is
reported by its position only.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Dict

from .cli_args import positive_int
from .sink import IDLE_TIMEOUT
from .sink_auth import parse_user_password

__all__ = ["add_arguments", "sink_kwargs"]


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be a share between 0 and 1 (e.g. 0.1): %r" % text)
    return value


def _seconds(limit: float, allow_zero: bool) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError("not a number of seconds: %r" % text)
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) or value > limit:
            low = "at least 0" if allow_zero else "more than 0"
            raise argparse.ArgumentTypeError("must be %s and at most %g seconds: %r" % (low, limit, text))
        return value
    return parse


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % text)


def _reply_code(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a reply code: %r" % text)
    if not 400 <= value <= 599:
        raise argparse.ArgumentTypeError("must be a 4xx or 5xx reply code (e.g. 554 or 451): %r" % text)
    return value


def _user_password(text: str) -> tuple:
    pair = parse_user_password(text)
    if pair is None:
        # The text holds a password: never repeat it.
        raise argparse.ArgumentTypeError("expected USER:PASSWORD with a non-empty USER (value not shown)")
    return pair


def _readable_file(text: str) -> str:
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError("not a readable file: %r" % text)
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    tls = p.add_argument_group("TLS")
    tls.add_argument("--starttls", action="store_true",
                     help="offer STARTTLS (RFC 3207); plaintext pipelined after it is discarded")
    tls.add_argument("--tls", action="store_true",
                     help="implicit TLS: handshake first, then the greeting (RFC 8314)")
    tls.add_argument("--tls-cert", metavar="FILE", type=_readable_file,
                     help="PEM certificate chain to present (default: generate a CA and a certificate "
                          "for localhost/127.0.0.1/::1 at start, which needs 'cryptography': "
                          "pip install 'fastsmtplib[sink]'; its CA file is printed)")
    tls.add_argument("--tls-key", metavar="FILE", type=_readable_file,
                     help="PEM private key for --tls-cert (if not in the same file)")

    auth = p.add_argument_group("AUTH (PLAIN and LOGIN, RFC 4954; offered only over TLS unless --auth-plaintext)")
    auth.add_argument("--auth", metavar="USER:PASSWORD", type=_user_password, action="append",
                      help="accept this user (repeatable). Visible to other local users in the process "
                           "list: prefer --auth-file")
    auth.add_argument("--auth-file", metavar="FILE", type=_readable_file,
                      help="accept the users in FILE, one USER:PASSWORD a line (# comments)")
    auth.add_argument("--auth-required", action="store_true",
                      help="refuse MAIL with 530 until the client authenticated")
    auth.add_argument("--auth-plaintext", action="store_true",
                      help="also offer and accept AUTH without TLS (passwords then cross in clear)")

    faults = p.add_argument_group(
        "fault injection (each counted in the printed counters as fault_*; shares are drawn "
        "per connection, reproducibly with --seed)")
    faults.add_argument("--rcpt-refuse", metavar="SHARE", type=_share, default=0.0,
                        help="share of RCPTs refused with 550 5.1.1 (e.g. 0.1)")
    faults.add_argument("--rcpt-defer", metavar="SHARE", type=_share, default=0.0,
                        help="share of RCPTs deferred with 451 4.3.0")
    faults.add_argument("--data-reject", metavar="SHARE", type=_share, default=0.0,
                        help="share of messages rejected after their data (with --data-reject-code)")
    faults.add_argument("--data-reject-code", metavar="CODE", type=_reply_code, default=554,
                        help="the reply code for --data-reject: 554 (default) or e.g. 451 (temporary)")
    faults.add_argument("--delay", metavar="SECONDS", type=_seconds(3600, True), default=0.0,
                        help="hold every reply this long before sending it (order kept; other "
                             "connections are not slowed)")
    faults.add_argument("--drop-after", metavar="N", type=positive_int,
                        help="close each connection without a word after its Nth accepted message")
    faults.add_argument("--drop-in-data", metavar="SHARE", type=_share, default=0.0,
                        help="share of messages during whose content the connection is closed, no reply")
    faults.add_argument("--421-at", metavar="N", dest="reply_421_at", type=positive_int,
                        help="answer the Nth command of each connection with 421 4.3.2 and close")
    faults.add_argument("--seed", metavar="N", type=_int, help="seed for the shares (default: random)")

    p.add_argument("--idle-timeout", metavar="SECONDS", type=_seconds(86400, False), default=IDLE_TIMEOUT,
                   help="421 and close a connection silent this long (default %(default)g; RFC 5321 "
                        "4.5.3.2.7 asks for at least 300)")


def _read_auth_file(parser: argparse.ArgumentParser, path: str) -> list:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            pair = parse_user_password(line)
            if pair is None:
                parser.error("--auth-file %s line %d: expected USER:PASSWORD (line not shown)" % (path, number))
            pairs.append(pair)
    if not pairs:
        parser.error("--auth-file %s: no USER:PASSWORD line" % path)
    return pairs


def sink_kwargs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """The Sink keyword arguments for these options; ``parser.error`` (exit 2) on a bad combination."""
    if args.starttls and args.tls:
        parser.error("--starttls and --tls exclude each other")
    if (args.tls_cert or args.tls_key) and not (args.starttls or args.tls):
        parser.error("--tls-cert/--tls-key need --starttls or --tls")
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    users: Dict[str, str] = {}
    for user, password in (args.auth or []):
        users[user] = password
    if args.auth_file:
        for user, password in _read_auth_file(parser, args.auth_file):
            users[user] = password
    if (args.auth_required or args.auth_plaintext) and not users:
        parser.error("--auth-required/--auth-plaintext need --auth or --auth-file")
    if users and not (args.starttls or args.tls or args.auth_plaintext):
        parser.error("AUTH is only offered over TLS: add --starttls or --tls, "
                     "or --auth-plaintext to allow passwords in clear")
    if args.rcpt_refuse + args.rcpt_defer > 1.0:
        parser.error("--rcpt-refuse plus --rcpt-defer must not exceed 1")
    return dict(
        starttls=args.starttls,
        tls=args.tls,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        auth=users or None,
        auth_required=args.auth_required,
        auth_plaintext=args.auth_plaintext,
        rcpt_refuse=args.rcpt_refuse,
        rcpt_defer=args.rcpt_defer,
        data_reject=args.data_reject,
        data_reject_code=args.data_reject_code,
        delay=args.delay,
        drop_after=args.drop_after or 0,
        drop_in_data=args.drop_in_data,
        reply_421_at=args.reply_421_at or 0,
        seed=args.seed,
        idle_timeout=args.idle_timeout,
    )
