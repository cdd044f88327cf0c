"""Protocol rules with no sockets and no clock: commands to bytes, replies to meaning.

The shells (``smtp.py``, ``lmtp.py``, ``batch.py``) do the I/O; everything that
decides *what* to send or what a reply means lives here, so it can be tested
without a server.

Rules this module enforces:

* No CR or LF in any command line (RFC 5321 §2.3.8: a line ends only at CRLF;
  a CR or LF inside an argument would let a caller inject a second command).
  The check runs before anything is sent.
* EHLO keywords are parsed as RFC 5321 §4.1.1.1 / RFC 1869 §4.3 describe, plus
  the old ``AUTH=`` advertisement some servers still send.
* SIZE (RFC 1870 §4): the declared size is the message's octets after line
  ends are normalised, without dot-stuffing or the terminating ``.``
  (``_wire.dot_stuff_sized`` counts it while encoding).
"""

from __future__ import annotations

import email.utils
import re
from typing import Mapping, NamedTuple

from ._wire import dot_stuff

__all__ = [
    "CRLF",
    "bCRLF",
    "command_line",
    "quoteaddr",
    "addr_only",
    "quotedata",
    "parse_ehlo",
    "size_limit",
    "Capabilities",
]

CRLF = "\r\n"
bCRLF = b"\r\n"

# A keyword starts with a letter or digit and goes on with letters, digits and
# dashes (RFC 5321 §4.1.1.1 "ehlo-keyword").
_KEYWORD = re.compile(r"([A-Za-z0-9][A-Za-z0-9\-]*) ?")
_OLD_AUTH = re.compile(r"auth=(.*)", re.I)


def command_line(cmd: str, args: str = "") -> str:
    """Return ``cmd`` and ``args`` as one command line, CRLF included.

    Raises:
        ValueError: a CR or LF appears anywhere in the command; nothing must
            be sent (the escaped command is shown in the message).
    """
    line = f"{cmd} {args}" if args else cmd
    if "\r" in line or "\n" in line:
        shown = line.replace("\r", "\\r").replace("\n", "\\n")
        raise ValueError(
            "SMTP command refused, it contains prohibited newline characters: " + shown
        )
    return line + CRLF


def _refuse_line_breaks(addr: str) -> None:
    # parseaddr would silently drop what follows a CR/LF, turning an injected
    # second command into the real address: refuse before parsing.
    if "\r" in addr or "\n" in addr:
        raise ValueError("SMTP address refused, it contains prohibited newline characters: "
                         + addr.replace("\r", "\\r").replace("\n", "\\n"))


# A plain ``dot-atom@domain`` address, bare or in angle brackets (RFC 5321
# §4.1.2 Dot-string, ASCII only).  For these ``parseaddr`` returns the address
# unchanged, so the path is built directly: parsing costs ~25 us an address,
# which dominated the cost of a many-recipient message.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDR = re.compile(
    rf"<?({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>?"
)


def quoteaddr(addrstring: str) -> str:
    """Return ``addrstring`` as an RFC 5321 path: the bare address in angle brackets.

    A display name is dropped.  Text ``email.utils.parseaddr`` cannot make an
    address of is passed on as it is (wrapped in brackets unless it already
    starts with one), as the stdlib does.
    """
    plain = _PLAIN_ADDR.fullmatch(addrstring)
    if plain is not None and (addrstring[0] == "<") == (addrstring[-1] == ">"):
        return f"<{plain.group(1)}>"
    _refuse_line_breaks(addrstring)
    name, addr = email.utils.parseaddr(addrstring)
    if not name and not addr:
        if addrstring.strip().startswith("<"):
            return addrstring
        return f"<{addrstring}>"
    return f"<{addr}>"


def addr_only(addrstring: str) -> str:
    """Return the bare address of ``addrstring`` (for VRFY and EXPN)."""
    _refuse_line_breaks(addrstring)
    name, addr = email.utils.parseaddr(addrstring)
    if not name and not addr:
        return addrstring
    return addr


def quotedata(data: str) -> str:
    """Legacy helper kept from smtplib: normalise line ends to CRLF, stuff dots.

    Unlike the DATA encoder, no final CRLF and no terminator are added.
    """
    # Line ends and dots are ASCII, so UTF-8 round-trips any text unchanged.
    raw = data.encode("utf-8", "surrogatepass")
    out = dot_stuff(raw)[:-3]  # drop the ".\r\n" terminator
    # dot_stuff adds a final CRLF when missing; quotedata must not.
    normalized_end = raw.endswith(b"\n") or raw.endswith(b"\r")
    if not normalized_end and out.endswith(b"\r\n"):
        out = out[:-2]
    return out.decode("utf-8", "surrogatepass")


def parse_ehlo(resp: bytes) -> dict[str, str]:
    """Parse an EHLO reply's text into ``{keyword.lower(): params}``.

    The first line is the server's greeting and is skipped.  AUTH mechanisms
    from several lines (``AUTH x`` and the old ``AUTH=x``) are accumulated,
    each preceded by a space, as the stdlib does.
    """
    features: dict[str, str] = {}
    for line in resp.decode("latin-1").split("\n")[1:]:
        old = _OLD_AUTH.match(line)
        if old:
            features["auth"] = features.get("auth", "") + " " + old.group(1)
            continue
        m = _KEYWORD.match(line)
        if not m:
            continue
        keyword = m.group(1).lower()
        params = line[m.end(1):].strip()
        if keyword == "auth":
            features["auth"] = features.get("auth", "") + " " + params
        else:
            features[keyword] = params
    return features


def size_limit(features: dict[str, str]) -> int | None:
    """The server's fixed maximum message size (RFC 1870 §4), or None.

    ``SIZE`` with no value or ``SIZE 0`` means no fixed maximum.
    """
    value = features.get("size")
    if value is None:
        return None
    try:
        limit = int(value.split()[0]) if value.strip() else 0
    except ValueError:
        return None
    return limit or None


class Capabilities(NamedTuple):
    """What a server offered in its EHLO/LHLO reply, parsed once (immutable).

    ``esmtp`` is False after a HELO (no extensions may be used).  ``size`` is
    None when SIZE was not offered, 0 when offered without a fixed maximum
    (RFC 1870 §4), else the limit.  ``enhanced`` is ENHANCEDSTATUSCODES
    (RFC 2034): replies then carry a class.subject.detail code, which the
    engine uses to tell a reply to MAIL/RCPT (subject 1, addressing) from one
    to the end of data or RSET.
    """

    esmtp: bool = False
    pipelining: bool = False
    chunking: bool = False
    binarymime: bool = False
    eightbitmime: bool = False
    smtputf8: bool = False
    dsn: bool = False
    enhanced: bool = False
    starttls: bool = False
    size: "int | None" = None
    auth: "tuple[str, ...]" = ()

    @classmethod
    def from_features(cls, features: Mapping[str, str], esmtp: bool = True) -> "Capabilities":
        """Capabilities from ``parse_ehlo``'s dict (``SMTP.esmtp_features``)."""
        if not esmtp:
            return cls()
        size = None
        if "size" in features:
            size = size_limit(features) or 0
        return cls(
            esmtp=True,
            pipelining="pipelining" in features,
            chunking="chunking" in features,
            binarymime="binarymime" in features,
            eightbitmime="8bitmime" in features,
            smtputf8="smtputf8" in features,
            dsn="dsn" in features,
            enhanced="enhancedstatuscodes" in features,
            starttls="starttls" in features,
            size=size,
            auth=tuple(features.get("auth", "").upper().split()),
        )
