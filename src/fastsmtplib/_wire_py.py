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
* ``sink_scan``: the server side, for ``fastsmtplib.sink``: the common
  commands of a whole buffer of pipelined input, DATA content up to its end
  (dot-unstuffing counted on the way) and BDAT chunks, in one call.

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
    "sink_scan",
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


# ---------------------------------------------------------------------------
# The sink's hot loop (fastsmtplib.sink).  Index names of the state list.

_ST_STATE, _ST_BOL, _ST_REMAINING, _ST_LAST, _ST_MAIL, _ST_NRCPT, _ST_BINARY, _ST_BODY = range(8)
_ST_TOO_BIG, _ST_GREETED, _ST_BDAT_OK, _ST_QID, _ST_N250, _ST_N354, _ST_MESSAGES = range(8, 15)
_ST_RECIPIENTS, _ST_BYTES = 15, 16
_ST_LEN = 17

_R_MAIL_OK = b"250 2.1.0 Ok\r\n"
_R_RCPT_OK = b"250 2.1.5 Ok\r\n"
_R_OK = b"250 2.0.0 Ok\r\n"
_R_354 = b"354 End data with <CR><LF>.<CR><LF>\r\n"


def _mail_ok(line: bytearray, size: int) -> int:
    """-1 when the sink must see this MAIL line, else 1 for BODY=BINARYMIME, else 0."""
    if line[5:10].upper() != b"FROM:":
        return -1
    arg = line[10:].strip()
    if not arg.startswith(b"<"):
        return -1  # a bare address, or none
    end = arg.find(b">")
    if end < 0:
        return -1
    binary = 0
    for p in arg[end + 1:].split():
        key, _, value = p.partition(b"=")
        key = key.upper()
        if key == b"SIZE":
            if not value.isdigit() or len(value) > 18 or int(value) > size:
                return -1
        elif key == b"BODY":
            value = value.upper()
            if value == b"BINARYMIME":
                binary = 1
            elif value != b"7BIT" and value != b"8BITMIME":
                return -1
    return binary


def _rcpt_ok(line: bytearray) -> bool:
    if line[5:8].upper() != b"TO:":
        return False
    arg = line[8:].strip()
    return arg.startswith(b"<") and arg.find(b">") > 1


def sink_scan(buf, pos: int, st: list, size: int, max_recipients: int, max_line: int,
              lmtp: bool, room: int) -> tuple:
    """Serve the common part of ``buf[pos:]`` for the sink; return ``(pos, replies, mail, stop)``.

    ``fastsmtplib.sink`` calls this for a whole received buffer (a
    ``bytearray``) and does the rest itself: the kernel handles only what needs
    no policy beyond the limits given, and stops *before* anything else, so the
    sink's own Python code handles that one item and calls again.  The result
    is exactly what that Python code would do.

    ``st`` is the session, a list of 17 ints read at the start and written back
    at the end (flags are 0/1)::

        0 state (0 commands, 1 DATA content, 2 BDAT chunk)   1 bol: DATA content is at a line start
        2 BDAT octets still to come   3 the chunk is LAST   4 a MAIL transaction is open
        5 recipients accepted   6 BODY=BINARYMIME   7 content octets so far
        8 content over ``size`` (the kernel stops)   9 HELO/EHLO/LHLO done
        10 the BDAT chunk belongs to a valid transaction (the kernel stops if not)
        11 the last queue id
        12..16 added to: 250 replies, 354 replies, messages accepted,
               their recipients, their content octets

    What it serves (RFC 5321 §4.1.1, §4.5.2; RFC 3030; RFC 2033 §4.2 for
    ``lmtp``), on lines of at most ``max_line`` bytes with their CRLF:

    * ``MAIL FROM:<path>`` after HELO with no transaction open, parameters
      ``SIZE=n`` (n at most ``size``) and ``BODY=7BIT/8BITMIME/BINARYMIME``
      checked, others ignored: ``250 2.1.0 Ok``;
    * ``RCPT TO:<path>`` (a non-empty path; parameters ignored) in a
      transaction with fewer than ``max_recipients``: ``250 2.1.5 Ok``;
    * ``DATA`` with recipients and not BINARYMIME: ``354 ...``, then the
      content up to CRLF.CRLF, a leading dot of a line not counted;
    * ``BDAT n [LAST]`` with recipients, then its n octets: ``250 2.0.0 Ok: n
      octets``, or for the last chunk the end of the message;
    * ``RSET`` (no argument), ``NOOP``: ``250 2.0.0 Ok``;
    * the end of a message within ``size``: ``250 2.0.0 Ok: queued as %08X``
      (the next queue id; once per recipient with ``lmtp``), and the
      transaction closes.

    Verbs and keywords in any case; blanks as ``bytes.split()`` sees them.
    It stops at a line it does not serve (another verb, other syntax, a
    sequence error, a bare address, a refusal), at a line not complete within
    ``max_line`` bytes, at content that would cross ``size``, when the
    replies reach ``room`` bytes, and at the end of the input (DATA content
    is consumed up to its last line end, or up to a trailing CR; a line start
    that may be a split ``.CRLF`` is kept).

    ``replies`` is the bytes to send (maybe empty).  ``mail`` is the MAIL line
    (without CRLF) of a transaction opened in this call and still open at its
    end, else None.  ``stop`` says why it stopped at ``pos``: 0, the input
    ends there or what follows is incomplete (an incomplete line, DATA
    content after its last line end, or a possibly split ``.CRLF``), so the
    caller waits for more; 1, what follows is the caller's to handle (one
    line, one DATA or BDAT step); 2, the replies reached ``room``.
    """
    if len(st) != _ST_LEN:
        raise ValueError("sink_scan: the state list must have 17 items")
    if pos < 0:
        raise ValueError("sink_scan: pos must not be negative")
    (state, bol, remaining, last, mail_open, nrcpt, binary, body, too_big, greeted, bdat_ok, qid,
     n250, n354, messages, recipients, nbytes) = st
    bol, last, mail_open, binary = int(bol), int(last), int(mail_open), int(binary)
    too_big, greeted, bdat_ok = int(too_big), int(greeted), int(bdat_ok)
    n = len(buf)
    out: list = []
    outlen = 0
    mail = None
    done = False  # a message ended: account it and reset the transaction
    stop = 1  # why the loop ended: see the docstring
    while pos < n and outlen < room:
        if state == 0:
            eol = buf.find(b"\r\n", pos, pos + max_line)
            if eol < 0:
                stop = 0 if n - pos < max_line else 1  # an incomplete line, or one too long
                break
            line = buf[pos:eol]
            verb = line[:4].upper()
            if len(line) > 4 and line[4] != 32:
                break
            if verb == b"MAIL":
                if not greeted or mail_open:
                    break
                b = _mail_ok(line, size)
                if b < 0:
                    break
                mail_open, nrcpt, binary, body, too_big = 1, 0, b, 0, 0
                mail = bytes(line)
                reply = _R_MAIL_OK
            elif verb == b"RCPT":
                if not mail_open or nrcpt >= max_recipients or not _rcpt_ok(line):
                    break
                nrcpt += 1
                reply = _R_RCPT_OK
            elif verb == b"DATA":
                if len(line) > 4 or not mail_open or not nrcpt or binary or too_big:
                    break
                state, bol = 1, 1
                n354 += 1
                out.append(_R_354)
                outlen += len(_R_354)
                pos = eol + 2
                continue
            elif verb == b"BDAT":
                parts = line.split()
                if (not 2 <= len(parts) <= 3 or not parts[1].isdigit() or len(parts[1]) > 18
                        or (len(parts) == 3 and parts[2].upper() != b"LAST")
                        or not mail_open or not nrcpt or too_big):
                    break
                state, remaining, last, bdat_ok = 2, int(parts[1]), int(len(parts) == 3), 1
                pos = eol + 2
                if remaining:
                    continue
                reply = None  # BDAT 0: the chunk is complete already
            elif verb == b"RSET":
                if len(line) > 4:
                    break
                mail_open, nrcpt, binary, body, too_big = 0, 0, 0, 0, 0
                mail = None
                reply = _R_OK
            elif verb == b"NOOP":
                reply = _R_OK
            else:
                break
            if reply is not None:
                n250 += 1
                out.append(reply)
                outlen += len(reply)
                pos = eol + 2
                continue
        elif state == 1:
            if too_big:
                break
            start, start_bol = pos, bol
            if bol:
                if buf.startswith(b".\r\n", pos):
                    state, bol, pos, done = 0, 1, pos + 3, True
                if not done and n - pos < 3 and b".\r\n".startswith(bytes(buf[pos:n])):
                    stop = 0
                    break  # ".", ".\r": wait for more
                if not done:
                    if buf[pos] == 46:
                        pos += 1  # a stuffed dot (RFC 5321 §4.5.2)
                    bol = 0
            if not done:
                end = buf.find(b"\r\n.\r\n", pos)
                if end >= 0:
                    cut = end + 2
                    length = cut - pos - buf.count(b"\r\n.", pos, cut)
                    if body + length > size:
                        pos, bol = start, start_bol
                        break
                    body += length
                    state, bol, pos, done = 0, 1, end + 5, True
                else:
                    last_eol = buf.rfind(b"\r\n", pos, n)
                    if last_eol >= 0:
                        cut = last_eol + 2
                        bol = 1
                    else:
                        cut = n - 1 if n > pos and buf[n - 1] == 13 else n
                    length = cut - pos - buf.count(b"\r\n.", pos, cut) if cut > pos else 0
                    if body + length > size:
                        pos, bol = start, start_bol
                        break
                    body += length
                    pos = cut
                    stop = 0
                    break  # the rest is not here yet
        else:
            if too_big or not bdat_ok:
                break
            take = min(remaining, n - pos)
            if take:
                if body + take > size:
                    break
                body += take
                remaining -= take
                pos += take
            if remaining:
                continue
        if state == 2:
            # The end of a chunk (RFC 3030 §2); BDAT 0 comes here too.
            state = 0
            if not last:
                reply = b"250 2.0.0 Ok: %d octets\r\n" % body
                n250 += 1
                out.append(reply)
                outlen += len(reply)
                continue
            done = True
        if done:
            done = False
            qid += 1
            messages += 1
            recipients += nrcpt
            nbytes += body
            reply = b"250 2.0.0 Ok: queued as %08X\r\n" % qid
            count = nrcpt if lmtp else 1
            n250 += count
            out.append(reply * count)
            outlen += len(reply) * count
            mail_open, nrcpt, binary, body, too_big = 0, 0, 0, 0, 0
            mail = None
    else:
        stop = 0 if pos >= n else 2
    st[:] = (state, bol, remaining, last, mail_open, nrcpt, binary, body, too_big, greeted, bdat_ok,
             qid, n250, n354, messages, recipients, nbytes)
    return pos, b"".join(out), mail, stop
