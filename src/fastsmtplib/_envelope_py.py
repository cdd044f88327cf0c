# cython: annotation_typing=False
"""One message to wire bytes: its payload and its MAIL/RCPT lines.

This is the one envelope encoder: ``sendmail()``, ``send_many()`` and ``LMTP``
all go through ``Encoder.encode`` (via the engine), so the rules below exist once.

* The payload for DATA is dot-stuffed with every line end made CRLF (RFC 5321
  §4.5.2; bare CR/LF normalised against SMTP smuggling); for BDAT (RFC 3030)
  it is CRLF-normalised, not stuffed; with BODY=BINARYMIME it goes unaltered.
* SIZE (RFC 1870 §4): the declared size is the normalised message without
  stuffing or terminator; a message over the server's limit raises
  ``SMTPMessageTooLarge`` before anything is sent.
* No CR or LF in any command (``_protocol.command_line``); non-ASCII
  addresses need SMTPUTF8 (RFC 6531), else the encoding error is raised, as
  in the stdlib.

The common case (plain ``dot-atom@domain`` addresses, options without BODY= or
SMTPUTF8) is encoded by the byte kernel ``encode_envelope`` in one call; the
general path gives the same bytes for it (tests/unit/test_envelope.py).
"""

from __future__ import annotations

from typing import Any, Sequence

from . import _protocol, _wire
from ._protocol import Capabilities
from .errors import SMTPMessageTooLarge, SMTPNotSupportedError

__all__ = ["Encoder", "Prepared"]

_encode_envelope = getattr(_wire, "encode_envelope", None)
_crlf_normalize = _wire.crlf_normalize
_dot_stuff_sized = _wire.dot_stuff_sized
_NO_SUFFIX = (b"", b"")  # no MAIL or RCPT parameters


class Prepared:
    """A message ready for the wire.

    Attributes:
        from_addr, to_addrs: the envelope as given (``to_addrs`` a list).
        envelope: the MAIL line and every RCPT line, CRLF-terminated, encoded.
        payload: what follows DATA's 354 (stuffed, terminated) or BDAT's command.
        bdat: True when the payload goes with ``BDAT n LAST``.
        utf8: True when the commands are UTF-8 (SMTPUTF8 was asked for).
    """

    __slots__ = ("from_addr", "to_addrs", "envelope", "payload", "bdat", "utf8")

    def __init__(self, from_addr: str, to_addrs: list[str], envelope: bytes, payload: bytes, bdat: bool, utf8: bool) -> None:
        self.from_addr = from_addr
        self.to_addrs = to_addrs
        self.envelope = envelope
        self.payload = payload
        self.bdat = bdat
        self.utf8 = utf8

    def envelope_lines(self) -> list[bytes]:
        """The MAIL and RCPT lines one by one (for lock-step sending)."""
        return [line + b"\r\n" for line in self.envelope.split(b"\r\n")[:-1]]


class Encoder:
    """Encodes messages for one server's capabilities.

    Args:
        caps: the server's capabilities.
        chunking: use BDAT when CHUNKING is offered (the caller's switch).
    """

    def __init__(self, caps: Capabilities, chunking: bool = True) -> None:
        self.caps = caps
        self.bdat = bool(chunking and caps.chunking)
        # What the fast path reads of ``caps`` (immutable), read once.
        self._esmtp = bool(caps.esmtp)
        self._binarymime = bool(caps.binarymime)
        self._size = caps.size
        # Option suffixes of the fast path, per (mail_options, rcpt_options).
        self._suffixes: dict[tuple[Any, Any], tuple[bytes, bytes] | None] = {}

    def encode(
        self,
        from_addr: str,
        to_addrs: str | Sequence[str],
        msg: str | bytes,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> Prepared:
        """Encode one message; raise for anything that must not be sent.

        Raises:
            UnicodeEncodeError: a str message or an address is not ASCII
                (and SMTPUTF8 was not asked for), as in the stdlib.
            SMTPMessageTooLarge: over the server's SIZE limit.
            SMTPNotSupportedError: SMTPUTF8 or BINARYMIME the server lacks.
            ValueError: CR or LF in an address or option.
        """
        to_list = [to_addrs] if isinstance(to_addrs, str) else list(to_addrs)
        fast = self._fast(from_addr, to_list, msg, mail_options, rcpt_options)
        if fast is not None:
            return fast
        return self._general(from_addr, to_list, msg, mail_options, rcpt_options)

    # -- the common case -------------------------------------------------------

    def _suffix(self, mail_options: Sequence[str], rcpt_options: Sequence[str]) -> tuple[bytes, bytes] | None:
        if not mail_options and not rcpt_options:
            return _NO_SUFFIX
        key = (tuple(mail_options), tuple(rcpt_options))
        try:
            return self._suffixes[key]
        except KeyError:
            pass
        except TypeError:  # unhashable options: general path
            return None
        suffix = None
        esmtp = self.caps.esmtp
        opts = " ".join(key[0]) if esmtp and key[0] else ""
        ropts = " ".join(key[1]) if esmtp and key[1] else ""
        both = opts + ropts
        upper = opts.upper()
        if "BODY=" not in upper and "SMTPUTF8" not in upper and both.isascii() and "\r" not in both and "\n" not in both:
            suffix = ((" " + opts) if opts else "").encode("ascii"), ((" " + ropts) if ropts else "").encode("ascii")
        if len(self._suffixes) < 16:
            self._suffixes[key] = suffix
        return suffix

    def _fast(self, from_addr: Any, to_list: list[Any], msg: Any, mail_options: Sequence[str], rcpt_options: Sequence[str]) -> Prepared | None:
        if _encode_envelope is None or not isinstance(from_addr, str):
            return None
        if isinstance(msg, str):
            if not msg.isascii():
                return None  # the general path raises the stdlib's UnicodeEncodeError
            msg = msg.encode("ascii")
        elif not isinstance(msg, (bytes, bytearray)):
            return None
        suffix = self._suffix(mail_options, rcpt_options)
        if suffix is None:
            return None
        bdat = self.bdat
        if bdat:
            if self._binarymime and not msg.isascii():
                return None  # BODY=BINARYMIME: general path
            payload = _crlf_normalize(msg)
            size = len(payload)
        else:
            payload, size = _dot_stuff_sized(msg)
        mail_params = suffix[0]
        limit = self._size
        if limit is not None and self._esmtp:
            if limit and size > limit:
                return None  # the general path raises SMTPMessageTooLarge
            mail_params = f" size={size}".encode("ascii") + mail_params
        envelope = _encode_envelope(from_addr, to_list, mail_params, suffix[1])
        if envelope is None:
            return None
        return Prepared(from_addr, to_list, envelope, payload, bdat, False)

    # -- everything else, as the stdlib does it --------------------------------

    def _general(self, from_addr: str, to_list: list[str], msg: str | bytes, mail_options: Sequence[str], rcpt_options: Sequence[str]) -> Prepared:
        caps = self.caps
        if isinstance(msg, str):
            msg = msg.encode("ascii")
        options = list(mail_options)
        body = [o.split("=", 1)[1].upper() for o in options if o.upper().startswith("BODY=")] if options else ()
        bdat = self.bdat
        raw = False
        if body and body[-1] == "BINARYMIME":
            # RFC 3030 §3: BINARYMIME content may only go with BDAT, unaltered.
            if not (bdat and caps.binarymime):
                raise SMTPNotSupportedError("BODY=BINARYMIME needs the server's CHUNKING and BINARYMIME")
            raw = True
        elif bdat and not body and caps.binarymime and not bytes(msg).isascii():
            options.append("BODY=BINARYMIME")
            raw = True
        if raw:
            payload = bytes(msg)
            size = len(payload)
        elif bdat:
            payload = _wire.crlf_normalize(msg)
            size = len(payload)
        else:
            payload, size = _wire.dot_stuff_sized(msg)
        esmtp_opts: list[str] = []
        utf8 = False
        if caps.esmtp:
            if caps.size is not None:
                if caps.size and size > caps.size:
                    raise SMTPMessageTooLarge(size, caps.size, from_addr)
                esmtp_opts.append("size=%d" % size)
            esmtp_opts.extend(options)
            if any(o.lower() == "smtputf8" for o in options):
                if not caps.smtputf8:
                    raise SMTPNotSupportedError("SMTPUTF8 not supported by server")
                utf8 = True
        mail_args = "FROM:%s%s" % (_protocol.quoteaddr(from_addr), (" " + " ".join(esmtp_opts)) if esmtp_opts else "")
        lines = [_protocol.command_line("mail", mail_args)]
        ropts = (" " + " ".join(rcpt_options)) if rcpt_options and caps.esmtp else ""
        lines += [_protocol.command_line("rcpt", "TO:%s%s" % (_protocol.quoteaddr(r), ropts)) for r in to_list]
        envelope = "".join(lines).encode("utf-8" if utf8 else "ascii")
        return Prepared(from_addr, to_list, envelope, payload, bdat, utf8)
