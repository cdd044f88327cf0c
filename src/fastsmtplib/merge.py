"""Mail merge: a message template compiled once, personalised per recipient at the byte level.

A :class:`Template` is parsed and laid out as MIME once (headers, boundaries,
part headers, transfer encodings).  What is left per recipient is filling the
placeholder slots: every static piece is already final bytes, so rendering a
20 KB newsletter is a handful of small encodes and one ``bytes.join``, not a
new ``EmailMessage``.

Placeholder syntax
------------------
``{{ name }}`` is replaced by the value of the column ``name`` of the row
(spaces inside the braces are optional).  A name is letters, digits, ``_``,
``-`` and ``.`` (the first one a letter, digit or ``_``), matched exactly
(case-sensitive) against the CSV column names.  A ``{{`` that does not start a
well-formed placeholder is left as it is.

Where the value goes decides how it is written:

* text/html parts: HTML-escaped (``& < > " '``), so a subscriber whose name is
  ``<script>`` cannot put markup in the newsletter.  **Opt out** per
  placeholder with ``{{ name | raw }}`` (the value is inserted as it is: use it
  only for columns you trust to hold HTML), or for the whole template with
  ``Template(..., html_escape=False)``.
* text/plain parts: as it is.
* headers (Subject, ...): as text; non-ASCII is written as RFC 2047 encoded
  words, long values are folded (RFC 5322 §2.2.3).  **CR, LF and every other
  control character in a value are neutralised** (each becomes one space), so a
  merge value can never end a header line and start a new header.  Unfolding
  (§2.2.3) turns CRLF + WSP into WSP anyway, so that is what the value means.
* ``{{ name | url }}`` percent-encodes the value (every byte but the RFC 3986
  unreserved characters), for links such as ``https://x.example/u?e={{ email | url }}``.

Placeholders are filled in the headers and in every text part that is not an
attachment; attachments, images and attached messages (``message/*``) go out
byte for byte as the template has them.  In bodies, line ends in values are
normalised to CRLF.  Every placeholder name
used anywhere is in :attr:`Template.fields`; a row without one of them (or
with ``None`` for it, as ``csv.DictReader`` gives for short rows) raises
:class:`MissingFieldError` naming every missing field.

Transfer encodings (why substitution can stay byte-level)
---------------------------------------------------------
Each text part is kept two ways: raw (``7bit``, or ``8bit`` when the template
is built with ``allow_8bit=True`` for servers with 8BITMIME) and
quoted-printable.  A part whose template text is ASCII with lines within
RFC 5322's 998 octets goes out ``7bit`` while its values are plain ASCII too.
Otherwise it goes quoted-printable: every static piece was QP-encoded once and
ends in a soft line break (``=`` CRLF), so each value is QP-encoded on its own
and dropped between them; the lines stay within RFC 2045's 76 characters and
decode to exactly the personalised text.  Multipart boundaries contain ``=_``,
which quoted-printable never produces (a literal ``=`` becomes ``=3D``), and a
raw part whose values contain ``=_`` goes quoted-printable, so no value can
forge a boundary.

DKIM
----
``template.render(row, ..., dkim=signer)`` returns the message signed by a
:class:`fastsmtplib.dkim_sign.DkimSigner`.  The body hash is streamed from the
compiled pieces: their complete lines were canonicalised once, so per
recipient only the lines that hold a value are, and a body without
placeholders is hashed once per template.  ``signer.sign(template.render(...))``
gives the same result, canonicalising the whole body each time.

Usage::

    t = Template.from_parts("News for {{ first_name }}", html=html, text=text,
                            from_addr="News <news@example.com>")
    t.missing_fields(csv_reader.fieldnames)          # [] or the names to report
    extra = unsubscribe_headers(row, url_template="https://example.com/u?e={{ to_addr }}",
                                to_addr=row["email"])
    message = t.render(row, to_addr=row["email"], extra_headers=extra, dkim=signer)

The template's own ``To``, ``Message-ID``, ``Date``, ``Bcc``, ``MIME-Version``,
``Content-*``, ``Received``, ``Return-Path`` and ``DKIM-Signature`` headers are
dropped: the first three are written per recipient, the rest come from the
compiled structure (or must not be copied).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.policy
import email.utils
import functools
import html
import ipaddress
import os
import re
import secrets
import time
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union
from urllib.parse import quote

__all__ = [
    "MergeError",
    "MissingFieldError",
    "TemplateError",
    "Template",
    "unsubscribe_headers",
    "valid_address",
    "normalize_address",
]


class MergeError(ValueError):
    """A row or a per-recipient argument cannot be merged into the template."""


class MissingFieldError(MergeError):
    """The row lacks merge fields the template uses (``fields`` lists them, sorted)."""

    def __init__(self, fields: Iterable[str]) -> None:
        self.fields = sorted(fields)
        super().__init__(
            "row is missing merge field(s): " + ", ".join(repr(f) for f in self.fields)
        )


class TemplateError(ValueError):
    """The template itself is unusable (bad placeholder filter, bad header, ...)."""


# --------------------------------------------------------------------------- placeholders

_PLACEHOLDER = re.compile(
    r"\{\{\s*([A-Za-z0-9_][A-Za-z0-9_.\-]*)\s*(?:\|\s*([A-Za-z_]+)\s*)?\}\}"
)
_FILTERS = frozenset({"raw", "url"})

# Contexts a value is written into.
_HTML, _TEXT, _HEADER = 0, 1, 2

_NEWLINES = re.compile(r"\r\n|\r|\n")
# Header values: CR, LF and the other controls become a space (see module docstring).
_HEADER_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _split_placeholders(text: str) -> list[Any]:
    """``[static, (name, filter), static, ..., static]`` (odd length)."""
    out: list[Any] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        flt = m.group(2)
        if flt is not None and flt not in _FILTERS:
            raise TemplateError(
                f"unknown placeholder filter {flt!r} in {m.group(0)!r} "
                f"(known: {', '.join(sorted(_FILTERS))})"
            )
        out.append(text[pos : m.start()])
        out.append((m.group(1), flt))
        pos = m.end()
    out.append(text[pos:])
    return out


def _convert(value: str, flt: str | None, context: int, escape: bool) -> str:
    if flt == "url":
        return quote(value, safe="")
    if context == _HTML and escape and flt is None:
        return html.escape(value, quote=True)
    return value


def _row_values(row: Mapping[str, Any], names: Iterable[str]) -> dict[str, str]:
    vals: dict[str, str] = {}
    missing = []
    for n in names:
        try:
            v = row[n]
        except KeyError:
            missing.append(n)
            continue
        if v is None:
            missing.append(n)
            continue
        if type(v) is not str:
            v = str(v)
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                # A lone surrogate (bytes that were not UTF-8, smuggled into a str).
                raise MergeError(f"merge field {n!r} is not valid Unicode text: {v!r}") from None
        vals[n] = v
    if missing:
        raise MissingFieldError(missing)
    return vals


# --------------------------------------------------------------------------- headers

_MAX_LINE = 998  # RFC 5322 §2.1.1, octets without CRLF
_FOLD_AT = 78  # RFC 5322 §2.1.1 SHOULD
_FTEXT = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")  # RFC 5322 §3.6.8 field name
_FOLD_TOKENS = re.compile(r"[ \t]+[^ \t]*|[^ \t]+")
_ADDRESS_HEADERS = frozenset({"from", "sender", "reply-to", "cc", "bcc", "to"})
_DROPPED_HEADERS = frozenset(
    {
        "to", "message-id", "date", "bcc", "mime-version", "received",
        "return-path", "dkim-signature", "content-type",
        "content-transfer-encoding",
    }
)
_EW_CHUNK = 39  # raw bytes per encoded word: 52 base64 chars, 64 with =?utf-8?b? ?=


def _check_header_name(name: str) -> None:
    if not isinstance(name, str) or not _FTEXT.match(name):
        raise TemplateError(f"invalid header field name: {name!r}")


def _fold_ascii(name: str, value: str) -> bytes | None:
    """``Name: value`` CRLF, folded at whitespace near 78 columns; None if a line would pass 998."""
    line = name + ":"
    if len(line) + 1 + len(value) <= _FOLD_AT:
        return (line + " " + value + "\r\n").encode("ascii")
    lines = []
    for tok in _FOLD_TOKENS.findall(" " + value):
        # Break only before whitespace that is followed by text: a continuation
        # line of whitespace alone is not allowed (RFC 5322 §3.2.2).
        if (
            len(line) + len(tok) > _FOLD_AT
            and len(line) > len(name) + 1
            and tok[0] in " \t"
            and tok.strip()
        ):
            lines.append(line)
            line = tok
        else:
            line += tok
    lines.append(line)
    if max(map(len, lines)) > _MAX_LINE:
        return None
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 'B' encoded words, never splitting a UTF-8 character (§5)."""
    data = text.encode("utf-8", "surrogateescape")
    words = []
    i, n = 0, len(data)
    while i < n:
        j = min(i + _EW_CHUNK, n)
        while j < n and j > i and 0x80 <= data[j] < 0xC0:
            j -= 1  # back off to a character start
        words.append("=?utf-8?b?" + base64.b64encode(data[i:j]).decode("ascii") + "?=")
        i = j
    return words


def _encode_unstructured(name: str, value: str) -> bytes:
    """An unstructured header (RFC 5322 §3.2.5), encoded and folded; value already neutralised."""
    if value.isascii() and "=?" not in value:
        # ("=?" in a plain value would be read as an encoded word: encode it instead.)
        out = _fold_ascii(name, value)
        if out is not None:
            return out
    words = _encoded_words(value) or [""]
    return (name + ": " + "\r\n ".join(words) + "\r\n").encode("ascii")


_SMTP_POLICY = email.policy.SMTP


def _encode_structured(name: str, value: str) -> bytes:
    """Address and other structured headers: the stdlib's header registry knows their syntax."""
    try:
        header = _SMTP_POLICY.header_factory(name, value)
        folded = _SMTP_POLICY.fold(name, header)
    except Exception as exc:  # the registry raises a variety of errors on bad syntax
        raise MergeError(f"cannot encode header {name}: {value!r}: {exc}") from None
    if header.defects and name.lower() in _ADDRESS_HEADERS:
        raise MergeError(f"invalid {name} header value {value!r}: {header.defects[0]}")
    return folded.encode("ascii")


def _encode_header(name: str, value: str) -> bytes:
    value = _HEADER_CONTROLS.sub(" ", value)
    if name.lower() in _ADDRESS_HEADERS:
        return _encode_structured(name, value)
    return _encode_unstructured(name, value)


class _HeaderTemplate:
    __slots__ = ("name", "pieces", "static")

    def __init__(self, name: str, value: str) -> None:
        _check_header_name(name)
        self.name = name
        self.pieces = _split_placeholders(value)
        self.static = _encode_header(name, value) if len(self.pieces) == 1 else None

    def render(self, vals: Mapping[str, str]) -> bytes:
        if self.static is not None:
            return self.static
        p = self.pieces
        parts = [p[0]]
        for i in range(1, len(p), 2):
            name, flt = p[i]
            parts.append(_convert(vals[name], flt, _HEADER, False))
            parts.append(p[i + 1])
        return _encode_header(self.name, "".join(parts))

    def names(self) -> set[str]:
        return {p[0] for p in self.pieces[1::2]}


def _format_to(addr: str, name: str | None) -> bytes:
    if not name:
        return b"To: " + addr.encode("ascii") + b"\r\n"
    name = _HEADER_CONTROLS.sub(" ", name)
    if name.isascii() and "=?" not in name:
        if re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\- ]+", name):
            phrase = name
        else:
            phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out = _fold_ascii("To", phrase + " <" + addr + ">")
        if out is not None:
            return out
    words = _encoded_words(name)
    return ("To: " + "\r\n ".join(words) + "\r\n <" + addr + ">\r\n").encode("ascii")


# --------------------------------------------------------------------------- bodies

# Values that force a raw part to quoted-printable: anything outside printable
# ASCII (bar TAB and the CRLFs we wrote), and "=_", the boundary marker.
_NEEDS_QP_7BIT = re.compile(r"[^\t\r\n\x20-\x7e]|=_")
_NEEDS_QP_8BIT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|=_")
_QP_MAX = 76  # RFC 2045 §6.7 rule 5, soft line break included


def _qp(data: bytes) -> bytes:
    """Quoted-printable with CRLF line ends (data has CRLF line ends already)."""
    enc = binascii.b2a_qp(data, istext=True)
    if b"\n" not in data:
        # b2a_qp writes LF soft breaks unless the data's first line end is CRLF;
        # with no line end in the data every LF in the output is a soft break.
        enc = enc.replace(b"=\n", b"=\r\n")
    return enc


def _qp_piece(data: bytes) -> bytes:
    """QP-encode a piece that another piece follows on the same logical line.

    The result ends at the start of a line: after a hard line break if the data
    ended with one, else after a soft line break (``=`` CRLF, which decodes to
    nothing), keeping every line within 76 characters.
    """
    if not data:
        return b""
    enc = _qp(data)
    if enc.endswith(b"\r\n"):
        return enc
    start = enc.rfind(b"\n") + 1
    last = enc[start:]
    if len(last) < _QP_MAX:
        return enc + b"=\r\n"
    # The last line is full: cut it, never inside an "=XX" escape.
    i = 0
    while i < len(last):
        step = 3 if last[i] == 0x3D else 1
        if i + step > _QP_MAX - 1:
            break
        i += step
    return enc[:start] + last[:i] + b"=\r\n" + last[i:] + b"=\r\n"


def _new_boundary() -> str:
    # "=_" can never occur in quoted-printable or base64 output (see module docstring).
    return "=_" + secrets.token_hex(12)


class _TextPart:
    """One text/* leaf: raw and quoted-printable byte pieces with value slots between them."""

    __slots__ = (
        "context", "escape", "raw_pieces", "qp_pieces", "slots", "raw_ok",
        "max_line", "head_raw", "head_qp", "needs_qp", "names_",
    )

    def __init__(
        self,
        content_type: str,
        params: Sequence[tuple[str, str]],
        text: str,
        other_headers: bytes,
        *,
        escape: bool,
        allow_8bit: bool,
    ) -> None:
        # text/html, and HTML variants such as AMP's text/x-amp-html, are escaped.
        self.context = _HTML if "html" in content_type else _TEXT
        self.escape = escape
        text = _NEWLINES.sub("\r\n", text)
        pieces = _split_placeholders(text)
        statics = [s.encode("utf-8", "surrogateescape") for s in pieces[0::2]]
        self.slots = pieces[1::2]
        self.names_ = {s[0] for s in self.slots}
        self.raw_pieces = statics
        self.qp_pieces = [_qp_piece(s) for s in statics[:-1]] + [_qp(statics[-1])]
        joined = b"".join(statics)
        self.max_line = max(map(len, joined.split(b"\r\n")))
        self.needs_qp = _NEEDS_QP_8BIT if allow_8bit else _NEEDS_QP_7BIT
        self.raw_ok = (
            self.max_line <= _MAX_LINE
            and not self.needs_qp.search(joined.decode("utf-8", "surrogateescape"))
        )
        ctype = content_type + '; charset="utf-8"'
        for k, v in params:
            ctype += "; " + k + '="' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        ct = _encode_unstructured("Content-Type", ctype)
        raw_cte = "8bit" if allow_8bit and not joined.isascii() else "7bit"
        self.head_raw = (
            ct + b"Content-Transfer-Encoding: " + raw_cte.encode() + b"\r\n"
            + other_headers + b"\r\n"
        )
        self.head_qp = (
            ct + b"Content-Transfer-Encoding: quoted-printable\r\n" + other_headers + b"\r\n"
        )

    def render(self, vals: Mapping[str, str], out: list[bytes]) -> None:
        ctx, esc = self.context, self.escape
        values = []
        raw = self.raw_ok
        total = 0
        for name, flt in self.slots:
            v = _convert(vals[name], flt, ctx, esc)
            if "\r" in v or "\n" in v:
                v = _NEWLINES.sub("\r\n", v)
            if raw and self.needs_qp.search(v):
                raw = False
            b = v.encode("utf-8")  # _row_values refused lone surrogates
            total += len(b)
            values.append(b)
        if raw and self.max_line + total > _MAX_LINE:
            raw = False  # a value might make a line too long: QP folds it
        if raw:
            out.append(self.head_raw)
            pieces = self.raw_pieces
            out.append(pieces[0])
            for i, b in enumerate(values, 1):
                out.append(b)
                out.append(pieces[i])
        else:
            out.append(self.head_qp)
            pieces = self.qp_pieces
            out.append(pieces[0])
            for i, b in enumerate(values, 1):
                out.append(_qp_piece(b))
                out.append(pieces[i])


def _static_headers(part: Any, skip: frozenset[str]) -> bytes:
    """A MIME part's own headers (Content-Disposition, Content-ID, ...) as encoded bytes."""
    out = []
    for k, v in part.items():
        if k.lower() in skip:
            continue
        out.append(_SMTP_POLICY.fold(k, v).encode("ascii", "surrogateescape"))
    return b"".join(out)


_PART_SKIP = frozenset({"content-type", "content-transfer-encoding", "mime-version"})


def _compile_part(
    part: EmailMessage, escape: bool, allow_8bit: bool, root: bool = False
) -> list[Any]:
    """Items (bytes or _TextPart) that write this part: its content headers, a blank line, its body.

    For the root, only its other ``Content-*`` headers are part headers (the
    rest are the message's and are written by the template).
    """
    if root:
        own = [k.lower() for k in part.keys()]
        skip = _PART_SKIP | frozenset(k for k in own if not k.startswith("content-"))
    else:
        skip = _PART_SKIP
    if part.get_content_maintype() == "multipart":
        boundary = _new_boundary()
        b = boundary.encode("ascii")
        params = [(k, v) for k, v in part.get_params()[1:] if k.lower() != "boundary"]
        ctype = part.get_content_type() + '; boundary="' + boundary + '"'
        for k, v in params:
            ctype += "; " + k + '="' + str(v) + '"'
        items: list[Any] = [
            _encode_unstructured("Content-Type", ctype)
            + _static_headers(part, skip)
            + b"\r\n"
        ]
        for sub in part.iter_parts():
            items.append(b"--" + b + b"\r\n")
            items.extend(_compile_part(sub, escape, allow_8bit))
            items.append(b"\r\n")
        items.append(b"--" + b + b"--\r\n")
        return items
    if part.get_content_maintype() == "text" and not part.is_attachment():
        params = [
            # No Content-Type at all is text/plain by default (RFC 2045 §5.2):
            # get_params() is then None.
            (k, str(v)) for k, v in (part.get_params() or [])[1:] if k.lower() != "charset"
        ]
        return [
            _TextPart(
                part.get_content_type(),
                params,
                part.get_content(),
                _static_headers(part, skip),
                escape=escape,
                allow_8bit=allow_8bit,
            )
        ]
    # Anything else (images, attachments) goes out as it came, already encoded.
    if root:
        raise TemplateError(f"the template's body is {part.get_content_type()}, not text or multipart")
    raw = part.as_bytes(policy=_SMTP_POLICY)
    return [raw if raw.endswith(b"\r\n") else raw + b"\r\n"]


# --------------------------------------------------------------------------- the template

PathLike = Union[str, "os.PathLike[str]"]


class Template:
    """A message with ``{{ placeholders }}``, compiled once, rendered per recipient.

    Build it with :meth:`from_parts` or :meth:`from_eml`.  ``fields`` names
    every placeholder used (check it against the CSV columns before sending).
    """

    def __init__(
        self,
        message: EmailMessage,
        *,
        html_escape: bool = True,
        allow_8bit: bool = False,
    ) -> None:
        """Compile *message* (an ``EmailMessage`` whose text may hold placeholders).

        Args:
            html_escape: escape values in text/html parts (``{{ x | raw }}`` opts
                out per placeholder, ``False`` for the whole template).
            allow_8bit: write non-ASCII text parts as ``8bit`` (needs a server
                with 8BITMIME, RFC 6152) instead of quoted-printable.  A relay
                without 8BITMIME may convert the part to quoted-printable and so
                break a DKIM signature: leave it off for mail that leaves your
                own servers signed.
        Raises:
            TemplateError: no From header, a bad header, an unknown filter.
        """
        self.html_escape = html_escape
        self.allow_8bit = allow_8bit
        from_values = message.get_all("From") or []
        if len(from_values) != 1:
            raise TemplateError("the template needs exactly one From header")
        self.from_addr = str(from_values[0])
        addrs = email.utils.getaddresses([self.from_addr])
        domain = addrs[0][1].rpartition("@")[2] if addrs and "@" in addrs[0][1] else ""
        try:
            domain = domain.encode("idna").decode("ascii") if domain else "localhost"
        except UnicodeError:
            domain = "localhost"
        if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", domain):
            domain = "localhost"
        self._msgid_domain = domain  # the right side of generated Message-IDs
        headers: list[_HeaderTemplate] = []
        first: dict[str, _HeaderTemplate] = {}
        for name, value in message.items():
            lname = name.lower()
            if lname in _DROPPED_HEADERS or lname.startswith("content-"):
                continue
            h = _HeaderTemplate(name, str(value))
            if lname in ("from", "subject"):
                first[lname] = h
            else:
                headers.append(h)
        if "subject" not in first:
            first["subject"] = _HeaderTemplate("Subject", "")
        self._from = first["from"]
        self._subject = first["subject"]
        self._headers = headers
        self._items = _compile_part(message, html_escape, allow_8bit, root=True)
        names: set[str] = set()
        for h in [self._from, self._subject, *headers]:
            names |= h.names()
        for it in self._items:
            if isinstance(it, _TextPart):
                names |= it.names_
        self.fields: frozenset[str] = frozenset(names)
        self._date_cache: tuple[int, bytes] = (-1, b"")
        self._body_slots = any(
            isinstance(it, _TextPart) and it.slots for it in self._items
        )
        self._static_bh: bytes | None = None
        self._chunk_infos: dict[int, tuple[bytes, Any]] | None = None

    # -- construction

    @classmethod
    def from_parts(
        cls,
        subject: str,
        *,
        html: str | None = None,
        text: str | None = None,
        from_addr: str,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        html_escape: bool = True,
        allow_8bit: bool = False,
    ) -> "Template":
        """A template from a subject and an HTML and/or a plain-text body.

        With both bodies the message is multipart/alternative (text first, HTML
        preferred, RFC 2046 §5.1.4).  *headers* are extra static-or-templated
        headers (Reply-To, List-Id, ...); To, Message-ID and Date are per
        recipient and may not be given here.
        """
        if html is None and text is None:
            raise TemplateError("give html, text or both")
        msg = EmailMessage(policy=email.policy.default)
        try:
            msg["From"] = from_addr
        except Exception as exc:
            raise TemplateError(f"invalid From address {from_addr!r}: {exc}") from None
        msg["Subject"] = _HEADER_CONTROLS.sub(" ", subject)
        items = headers.items() if isinstance(headers, Mapping) else (headers or ())
        for k, v in items:
            _check_header_name(k)
            if k.lower() in _DROPPED_HEADERS or k.lower().startswith("content-") or k.lower() in ("from", "subject"):
                raise TemplateError(f"header {k} is set by the template itself, not by headers=")
            if re.search(r"[\r\n]", v):
                raise TemplateError(f"header {k} value contains CR or LF")
            msg[k] = v
        if text is not None and html is not None:
            msg.set_content(text)
            msg.add_alternative(html, subtype="html")
        elif html is not None:
            msg.set_content(html, subtype="html")
        else:
            msg.set_content(text)
        return cls(msg, html_escape=html_escape, allow_8bit=allow_8bit)

    @classmethod
    def from_eml(
        cls, path: PathLike, *, html_escape: bool = True, allow_8bit: bool = False
    ) -> "Template":
        """A template from an RFC 5322 file (what a mail client saves as .eml)."""
        data = Path(path).read_bytes()
        return cls.from_bytes(data, html_escape=html_escape, allow_8bit=allow_8bit)

    @classmethod
    def from_bytes(
        cls, data: bytes, *, html_escape: bool = True, allow_8bit: bool = False
    ) -> "Template":
        msg = message_from_bytes(data, _class=EmailMessage, policy=email.policy.default)
        return cls(msg, html_escape=html_escape, allow_8bit=allow_8bit)

    # -- checks

    def missing_fields(self, columns: Iterable[str]) -> list[str]:
        """The template fields not among *columns*, sorted (empty: every field is there)."""
        return sorted(self.fields.difference(columns))

    # -- rendering

    def _date(self) -> bytes:
        now = int(time.time())
        if self._date_cache[0] != now:
            self._date_cache = (
                now,
                b"Date: "
                + email.utils.format_datetime(
                    datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
                ).encode("ascii")
                + b"\r\n",
            )
        return self._date_cache[1]

    def render(
        self,
        row: Mapping[str, Any],
        *,
        to_addr: str,
        message_id: str | None = None,
        date: str | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        to_name: str | None = None,
        dkim: Any = None,
    ) -> bytes:
        """One recipient's complete message (RFC 5322, CRLF line ends).

        Args:
            row: the merge values (a ``csv.DictReader`` row).
            to_addr: the recipient's address (written as the To header).
            message_id: without it, a random ``<hex@from-domain>``.
            date: an RFC 5322 date; without it, now.
            extra_headers: (name, value) pairs, e.g. :func:`unsubscribe_headers`.
                ASCII only; CR/LF or other controls in them raise.
            to_name: an optional display name for the To header.
            dkim: a :class:`~fastsmtplib.dkim_sign.DkimSigner`: the message comes
                back signed.  Faster than ``signer.sign(render(...))``: the
                body hash is streamed from the template's pieces, whose complete
                lines were canonicalised once, so per recipient only the lines
                holding a value are (and a body without placeholders is hashed once).
        Raises:
            MissingFieldError: the row lacks a template field.
            MergeError: a bad to_addr, message_id, date or extra header.
        """
        vals = _row_values(row, self.fields) if self.fields else {}
        if not valid_address(to_addr):
            raise MergeError(f"invalid recipient address: {to_addr!r}")
        out = [self._from.render(vals), _format_to(to_addr, to_name), self._subject.render(vals)]
        if date is None:
            out.append(self._date())
        else:
            if _HEADER_CONTROLS.search(date) or not date.isascii():
                raise MergeError(f"invalid Date value: {date!r}")
            out.append(b"Date: " + date.encode("ascii") + b"\r\n")
        if message_id is None:
            out.append(
                b"Message-ID: <" + secrets.token_hex(16).encode("ascii") + b"@"
                + self._msgid_domain.encode("ascii") + b">\r\n"
            )
        else:
            mid = message_id if message_id.startswith("<") else "<" + message_id + ">"
            if not re.fullmatch(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>", mid):
                raise MergeError(f"invalid Message-ID: {message_id!r}")
            out.append(b"Message-ID: " + mid.encode("ascii") + b"\r\n")
        for h in self._headers:
            out.append(h.render(vals))
        for name, value in extra_headers:
            out.append(_extra_header(name, value))
        out.append(b"MIME-Version: 1.0\r\n")
        # The root's first chunk (its Content-Type ... and the blank line) ends the header block.
        body_start = len(out) + 1
        for it in self._items:
            if type(it) is bytes:
                out.append(it)
            else:
                it.render(vals, out)
        if dkim is None:
            return b"".join(out)
        if not hasattr(dkim, "sign_split"):
            return dkim.sign(b"".join(out))  # any signer with sign(bytes) -> bytes
        head = b"".join(out[:body_start])
        body = b"".join(out[body_start:])
        return dkim.sign_split(head[:-2], body, bh=self._body_hash(out, body_start)) + head + body

    def _body_hash(self, out: list[bytes], start: int) -> bytes:
        """``bh=`` of the body chunks ``out[start:]``, canonicalising only what a recipient changed."""
        if self._static_bh is not None:
            return self._static_bh
        from .dkim_sign import BodyHasher, chunk_info

        infos = self._chunk_infos
        if infos is None:
            infos = {}
            for it in self._items:
                statics = (
                    [it] if type(it) is bytes
                    else [it.head_raw, it.head_qp, *it.raw_pieces, *it.qp_pieces]
                )
                for c in statics:
                    infos[id(c)] = (c, chunk_info(c))  # c: keeps the id's object alive
            self._chunk_infos = infos
        hasher = BodyHasher()
        for c in out[start:]:
            known = infos.get(id(c))
            if known is not None and known[0] is c:
                hasher.feed_static(c, known[1])
            else:
                hasher.feed(c)
        bh = hasher.body_hash()
        if not self._body_slots:
            self._static_bh = bh  # no placeholder in any body part: every body is this one
        return bh


def _extra_header(name: str, value: str) -> bytes:
    if not isinstance(name, str) or not _FTEXT.match(name):
        raise MergeError(f"invalid header field name: {name!r}")
    if not value.isascii() or _HEADER_CONTROLS.search(value):
        raise MergeError(f"header {name} value must be ASCII without CR, LF or controls: {value!r}")
    out = _fold_ascii(name, value)
    if out is None:
        raise MergeError(f"header {name} has a word longer than {_MAX_LINE} octets")
    return out


# --------------------------------------------------------------------------- unsubscribe

@functools.lru_cache(maxsize=16)
def _split_cached(text: str) -> tuple[Any, ...]:
    return tuple(_split_placeholders(text))


_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f<>\"\\^`{|}]")


def unsubscribe_headers(
    row: Mapping[str, Any],
    *,
    url_template: str | None = None,
    mailto: str | None = None,
    to_addr: str,
) -> list[tuple[str, str]]:
    """``List-Unsubscribe`` (RFC 2369) and, for an https URL, ``List-Unsubscribe-Post`` (RFC 8058).

    Args:
        row: the recipient's merge values.
        url_template: e.g. ``https://example.com/u?id={{ id }}&e={{ to_addr }}``:
            placeholders take the row's columns, ``{{ to_addr }}`` the
            recipient's address; every value is percent-encoded (RFC 3986).
        mailto: an address that unsubscribes whoever mails it.
        to_addr: the recipient's address.
    Returns:
        [] when neither is given, else the header pairs for ``render(extra_headers=...)``.
        ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` only with an https
        URL (RFC 8058 §3.1); DKIM must then sign both headers (§4), which
        :class:`~fastsmtplib.dkim_sign.DkimSigner` does by default.
    Raises:
        MissingFieldError, MergeError (a non-http(s) URL, a bad mailto address).
    """
    targets = []
    https = False
    if url_template is not None:
        pieces = _split_cached(url_template)
        names = {p[0] for p in pieces[1::2]} - {"to_addr"}
        vals = _row_values(row, names)
        vals["to_addr"] = to_addr
        parts = [pieces[0]]
        for i in range(1, len(pieces), 2):
            parts.append(quote(vals[pieces[i][0]], safe=""))
            parts.append(pieces[i + 1])
        url = "".join(parts)
        scheme = url.split(":", 1)[0].lower()
        if scheme not in ("http", "https") or not url.isascii() or _URL_UNSAFE.search(url):
            raise MergeError(f"unsubscribe URL must be an http(s) URL without spaces or controls: {url!r}")
        https = scheme == "https"
        targets.append("<" + url + ">")
    if mailto is not None:
        if not valid_address(mailto):
            raise MergeError(f"invalid unsubscribe mailto address: {mailto!r}")
        targets.append("<mailto:" + quote(mailto, safe="@!$&'()*+,;=") + "?subject=unsubscribe>")
    if not targets:
        return []
    headers = [("List-Unsubscribe", ", ".join(targets))]
    if https:
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    return headers


# --------------------------------------------------------------------------- addresses

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_ATOM = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*\Z")
_DOT_ATOM_UTF8 = re.compile(rf"(?:[{_ATEXT}]|[^\x00-\x7f])+(?:\.(?:[{_ATEXT}]|[^\x00-\x7f])+)*\Z")
_QUOTED = re.compile(r'"(?:[\x21\x23-\x5b\x5d-\x7e]|\\[\x21-\x7e])*"\Z')
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\Z")
_LABEL_UTF8 = re.compile(r"(?:[A-Za-z0-9]|[^\x00-\x7f])(?:(?:[A-Za-z0-9\-]|[^\x00-\x7f])*(?:[A-Za-z0-9]|[^\x00-\x7f]))?\Z")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]|\s")


def valid_address(addr: str, *, smtputf8: bool = False) -> bool:
    """A practical check that *addr* is a deliverable-looking mailbox (no display name, no <>).

    Accepts ``local@domain`` where local is a dot-atom or a quoted string
    (RFC 5321 §4.1.2; whitespace is refused even inside quotes) and domain is
    dot-separated LDH labels with at least one dot and a non-numeric top label,
    or an address literal ``[192.0.2.1]`` / ``[IPv6:2001:db8::1]`` (§4.1.3).
    Refuses spaces, CR, LF and other controls anywhere, and enforces §4.5.3.1:
    local part <= 64 octets, domain <= 255, the whole address <= 254 (a path of
    256 octets with its angle brackets).  Non-ASCII is accepted only with
    ``smtputf8=True`` (RFC 6531).
    """
    if not isinstance(addr, str) or _BAD_CHARS.search(addr):
        return False
    if not smtputf8 and not addr.isascii():
        return False
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        return False
    if len(local.encode("utf-8", "surrogateescape")) > 64:
        return False
    if len(addr.encode("utf-8", "surrogateescape")) > 254 or len(domain) > 255:
        return False
    if local.startswith('"'):
        if not _QUOTED.match(local):
            return False
    elif not (_DOT_ATOM_UTF8 if smtputf8 else _DOT_ATOM).match(local):
        return False
    if domain.startswith("["):
        if not domain.endswith("]"):
            return False
        lit = domain[1:-1]
        try:
            if lit[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(lit[5:])
            else:
                ipaddress.IPv4Address(lit)
        except ValueError:
            return False
        return True
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    lab = _LABEL_UTF8 if smtputf8 else _LABEL
    for label in labels:
        if len(label.encode("utf-8", "surrogateescape")) > 63 or not lab.match(label):
            return False
    return not labels[-1].isdigit()


def normalize_address(addr: str, *, fold_local: bool = True) -> str:
    """The key under which two addresses count as the same recipient.

    The domain is always lower-cased (domains are case-insensitive, RFC 5321
    §2.4).  The local part is case-folded too by default: §2.4 lets a server
    treat it case-sensitively, but no large mailbox provider does, and mailing
    ``Ann@x`` and ``ann@x`` separately would give one person two copies.  Pass
    ``fold_local=False`` to keep the local part as written.  Surrounding
    whitespace is stripped; nothing else (dots, ``+tags``) is touched, since
    what they mean is up to each provider.
    """
    addr = addr.strip()
    local, at, domain = addr.rpartition("@")
    if not at:
        return addr.lower() if fold_local else addr
    return (local.lower() if fold_local else local) + "@" + domain.lower()
