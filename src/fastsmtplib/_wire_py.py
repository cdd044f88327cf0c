"""Byte kernels, pure-Python twin.

This module is the reference for the contract of the byte-level hot paths; the
compiled twin ``_wire_c.pyx`` must behave exactly like it (the test-suite runs
every kernel test against both and checks them against each other with
hypothesis).  ``fastsmtplib._wire`` picks which one is used.

Three jobs live here, all pure byte work with no policy:

* ``ReplyParser``: an incremental SMTP reply parser.  ``feed()`` takes whatever
  ``recv`` returned and gives back *every* complete reply in it, so a pipelined
  group of replies costs one call.
* ``dot_stuff`` / ``dot_stuff_sized`` / ``crlf_normalize``: one-pass DATA and
  BDAT encoders.
* ``encode_envelope``: the MAIL and RCPT lines of an envelope of plain
  addresses in one call.

``__all__`` below is the list of names for both twins (``_wire_c`` imports it)
and for the selector ``_wire``.

Reply syntax (RFC 5321 §4.2): a line is three digits followed by SP, ``-`` or
the end of the line; ``-`` means more lines follow, and every line of one reply
carries the same code.  A line that breaks the syntax ends the reply with code
-1, the convention of the stdlib's ``getreply()``.  As in the stdlib, a line ends
at LF (a CR before it is stripped with the text), and each line's text is
``line[4:]`` with blanks and line ends stripped from both sides; the texts are
joined with ``b"\\n"``.
"""

from __future__ import annotations

import re
import sys

__all__ = [
    "MAXLINE",
    "MAX_REPLY_LINES",
    "MAX_REPLY_BYTES",
    "ReplyLimitError",
    "ReplyParser",
    "dot_stuff",
    "dot_stuff_sized",
    "crlf_normalize",
    "encode_envelope",
]

#: Longest accepted reply line including its line end; same as the stdlib's
#: ``smtplib._MAXLINE`` (8 times RFC 5321 §4.5.3.1.5's 512).
MAXLINE = 8192
#: Most lines one reply may have.  EHLO replies are ~20 lines in practice.
MAX_REPLY_LINES = 1000
#: Most bytes one reply may have, line ends included.
MAX_REPLY_BYTES = 1 << 20

_STRIP = b" \t\r\n"


class ReplyLimitError(ValueError):
    """A reply broke one of the parser's limits.

    ``kind`` is ``"line"`` (a line longer than ``max_line``), ``"lines"`` (more
    than ``max_lines`` lines in one reply) or ``"bytes"`` (more than
    ``max_bytes`` bytes in one reply).  The parser is unusable afterwards: the
    stream is no longer in step with the server.
    """

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__(f"SMTP reply exceeds the {kind} limit of {limit}")
        self.kind = kind
        self.limit = limit


def _line_code(line: bytes) -> tuple[int, bool]:
    """Return (code, continued) for one line without its line end.

    code is -1 when the line is not ``DDD``, ``DDD SP ...`` or ``DDD-...``.
    """
    if len(line) < 3:
        return -1, False
    d0, d1, d2 = line[0], line[1], line[2]
    if not (48 <= d0 <= 57 and 48 <= d1 <= 57 and 48 <= d2 <= 57):
        return -1, False
    code = (d0 - 48) * 100 + (d1 - 48) * 10 + (d2 - 48)
    if len(line) == 3:
        return code, False
    sep = line[3]
    if sep == 0x20:  # SP: last line
        return code, False
    if sep == 0x2D:  # '-': more lines follow
        return code, True
    if sep == 0x0D and len(line) == 4:  # "DDD\r" (CRLF-terminated bare code)
        return code, False
    return -1, False


class ReplyParser:
    """Incremental SMTP reply parser.

    Args:
        max_line: longest line accepted, line end included.
        max_lines: most lines in one reply.
        max_bytes: most bytes in one reply.

    ``feed(data)`` returns a list of ``(code, message)`` tuples, one per reply
    completed by ``data`` (possibly empty), and keeps any incomplete tail.
    Raises ``ReplyLimitError`` as soon as a limit is broken, even before the
    offending line is complete, so memory stays bounded whatever is received.
    """

    def __init__(
        self,
        max_line: int = MAXLINE,
        max_lines: int = MAX_REPLY_LINES,
        max_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        if max_line < 4 or max_lines < 1 or max_bytes < 4:
            raise ValueError("reply limits are too small to hold a reply")
        self.max_line = max_line
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.reset()

    def reset(self) -> None:
        """Forget everything buffered (used after STARTTLS, RFC 3207 §4.2)."""
        self._tail = b""  # incomplete line
        self._texts: list[bytes] = []  # texts of the reply's lines so far
        self._code = 0  # code of the reply's first line
        self._bad = False  # a continuation line changed the code
        self._nbytes = 0  # bytes of the reply's completed lines

    @property
    def pending(self) -> int:
        """Bytes received that belong to a reply not yet complete."""
        return len(self._tail) + self._nbytes

    @property
    def in_reply(self) -> bool:
        """True when part of a reply has been received but not all of it."""
        return bool(self._tail) or bool(self._texts)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Consume ``data``; return every reply it completes, in order."""
        out: list[tuple[int, bytes]] = []
        buf = self._tail + bytes(data) if self._tail else bytes(data)
        pos = 0
        end = len(buf)
        max_line = self.max_line
        while pos < end:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if end - pos > max_line:
                    raise ReplyLimitError("line", max_line)
                break
            length = nl + 1 - pos
            if length > max_line:
                raise ReplyLimitError("line", max_line)
            line = buf[pos:nl]
            pos = nl + 1
            self._nbytes += length
            if self._nbytes > self.max_bytes:
                raise ReplyLimitError("bytes", self.max_bytes)
            code, more = _line_code(line)
            texts = self._texts
            texts.append(line[4:].strip(_STRIP))
            if code < 0:
                # Malformed line: it ends the reply (stdlib does the same).
                out.append((-1, b"\n".join(texts)))
                self._new_reply()
                continue
            if len(texts) == 1:
                self._code = code
            elif code != self._code:
                self._bad = True
            if more:
                if len(texts) >= self.max_lines:
                    raise ReplyLimitError("lines", self.max_lines)
                continue
            out.append((-1 if self._bad else self._code, b"\n".join(texts)))
            self._new_reply()
        self._tail = buf[pos:]
        # The incomplete line counts too, also when it is the reply's first.
        if self._nbytes + len(self._tail) > self.max_bytes:
            raise ReplyLimitError("bytes", self.max_bytes)
        return out

    def _new_reply(self) -> None:
        self._texts = []
        self._code = 0
        self._bad = False
        self._nbytes = 0


def _normalize(data: bytes) -> bytes:
    # Every CRLF, bare CR and bare LF becomes CRLF: fold them all to LF first.
    # (\r\r\n is a bare CR then a CRLF: two line ends, as in the stdlib's regex.)
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data.replace(b"\n", b"\r\n")


def dot_stuff(data: bytes) -> bytes:
    """Encode a message for DATA (RFC 5321 §4.5.2) in one call.

    Every line end (CRLF, bare CR, bare LF) becomes CRLF, a dot is doubled at
    the start of every line, a final CRLF is added unless the message ends with
    one, and the terminator ``.\\r\\n`` is appended.  Normalising bare CR and LF
    is what makes the result safe against SMTP smuggling: no sequence in the
    body can be read by any server as the end of the data.
    """
    data = _normalize(bytes(data))
    if data[:1] == b".":
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if data[-2:] != b"\r\n":
        data += b"\r\n"
    return data + b".\r\n"


def dot_stuff_sized(data: bytes) -> tuple[bytes, int]:
    """``(dot_stuff(data), size)``: size is the message's RFC 1870 size.

    The size counts the octets with line ends normalised, without the added
    dots and the terminator (what SIZE declares).
    """
    payload = dot_stuff(data)
    added = payload.count(b"\r\n..") + payload.startswith(b"..")
    return payload, len(payload) - 3 - added


def crlf_normalize(data: bytes) -> bytes:
    """Encode a message for BDAT (RFC 3030): line ends normalised, no stuffing.

    Every line end becomes CRLF and a final CRLF is added unless the message
    ends with one, so the server stores the same bytes as after DATA.
    """
    data = _normalize(bytes(data))
    if data[-2:] != b"\r\n":
        data += b"\r\n"
    return data


# A plain address (RFC 5321 §4.1.2 Dot-string local part, ASCII only): the same
# text as ``_protocol._PLAIN_ADDR`` with balanced brackets.  One fullmatch over
# the addresses joined by NUL (which none of them can contain) checks them all.
# Possessive repeats (Python 3.11+) make it 2-3 times faster and accept the same
# text: no repeat here can give back a character that would help the match
# (atoms stop at '.' or '@', labels at '.', '>' or NUL, and each repeated group
# starts with a '.' or a NUL).
_POSSESSIVE = "+" if sys.version_info >= (3, 11) else ""
_ATEXT = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~-]+{_POSSESSIVE}"
_LABEL = rf"[A-Za-z0-9-]+{_POSSESSIVE}"
_ADDR = rf"{_ATEXT}(?:\.{_ATEXT})*{_POSSESSIVE}@{_LABEL}(?:\.{_LABEL})*{_POSSESSIVE}"
_PATH = rf"(?:<{_ADDR}>|{_ADDR})"
_PLAIN_PATHS = re.compile(rf"{_PATH}(?:\x00{_PATH})*{_POSSESSIVE}")


def encode_envelope(
    from_addr: str,
    to_addrs: list[str] | tuple[str, ...],
    mail_params: bytes,
    rcpt_params: bytes,
) -> bytes | None:
    """The ``MAIL FROM`` line and every ``RCPT TO`` line of an envelope, or None.

    When ``from_addr`` and every item of ``to_addrs`` (a list or tuple, maybe
    empty) is a plain address, returns::

        b"mail FROM:<" + addr + b">" + mail_params + b"\r\n"
        + b"rcpt TO:<" + addr + b">" + rcpt_params + b"\r\n"   # per recipient

    where ``addr`` is the address without its brackets, ASCII-encoded: the same
    bytes as ``"mail FROM:%s" % quoteaddr(from_addr)`` and so on (lowercase
    verbs, as the stdlib's smtplib writes them).

    A plain address is what ``_protocol.quoteaddr`` passes through unparsed:
    ASCII only, a local part of atoms of letters, digits and
    ``!#$%&'*+/=?^_`{|}~-`` joined by single dots, ``@``, and a domain of labels
    of letters, digits and ``-`` joined by single dots; bare, or in one pair of
    angle brackets.  Anything else (a display name, a quoted local part, an
    address literal, non-ASCII text, a space, CR or LF, an item that is not a
    ``str``, ``to_addrs`` not a list or tuple) gives None: the caller then
    takes the general path.

    ``mail_params`` and ``rcpt_params`` are copied as they are (each starts
    with a space when not empty, e.g. ``b" SIZE=1234 BODY=8BITMIME"``); they
    must be bytes-like (any object with the buffer protocol), else TypeError,
    which is checked before the addresses.
    """
    if type(mail_params) is not bytes:
        mail_params = memoryview(mail_params).tobytes()
    if type(rcpt_params) is not bytes:
        rcpt_params = memoryview(rcpt_params).tobytes()
    if not isinstance(to_addrs, (list, tuple)):
        return None
    addrs = [from_addr, *to_addrs]
    try:
        joined = "\x00".join(addrs)
    except TypeError:  # an item is not a str
        return None
    if _PLAIN_PATHS.fullmatch(joined) is None or joined.count("\x00") != len(addrs) - 1:
        return None  # (a NUL inside an item would pass for a separator)
    if "<" in joined:  # brackets can only wrap a whole address here
        joined = joined.replace("<", "").replace(">", "")
    sender, _, rcpts = joined.encode("ascii").partition(b"\x00")
    head = b"mail FROM:<" + sender + b">" + mail_params + b"\r\n"
    if len(addrs) == 1:
        return head
    rcpt_end = b">" + rcpt_params + b"\r\n"
    return b"".join(
        (head, b"rcpt TO:<", rcpts.replace(b"\x00", rcpt_end + b"rcpt TO:<"), rcpt_end)
    )
