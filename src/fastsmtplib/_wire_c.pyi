"""Typed contract of the byte kernels (``_wire_c`` and its pure twin ``_wire_py``).

Both modules expose exactly these names with exactly this behaviour; the
docstrings of ``fastsmtplib._wire_py`` are the reference.  ``__all__`` here
repeats ``_wire_py.__all__`` for type checkers (tests/unit/test_twins.py checks
that it and the signatures below match).
"""

from typing import Final

from _typeshed import ReadableBuffer

from fastsmtplib._wire_py import ReplyLimitError as ReplyLimitError

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

MAXLINE: Final[int]
MAX_REPLY_LINES: Final[int]
MAX_REPLY_BYTES: Final[int]

class ReplyParser:
    """Incremental SMTP reply parser (RFC 5321 §4.2)."""

    max_line: int
    max_lines: int
    max_bytes: int
    def __init__(
        self,
        max_line: int = ...,
        max_lines: int = ...,
        max_bytes: int = ...,
    ) -> None: ...
    def reset(self) -> None:
        """Forget everything buffered (used after STARTTLS, RFC 3207 §4.2)."""
    @property
    def pending(self) -> int:
        """Bytes received that belong to a reply not yet complete."""
    @property
    def in_reply(self) -> bool:
        """True when part of a reply has been received but not all of it."""
    def feed(self, data: ReadableBuffer) -> list[tuple[int, bytes]]:
        """Consume ``data``; return every reply it completes, in order.

        Raises:
            ReplyLimitError: a line, line-count or byte limit was broken.
        """

def dot_stuff(data: ReadableBuffer) -> bytes:
    """Encode a message for DATA: CRLF line ends, dots doubled, ``.\\r\\n`` appended."""

def dot_stuff_sized(data: ReadableBuffer) -> tuple[bytes, int]:
    """``(dot_stuff(data), RFC 1870 size)``: normalised octets, no added dots, no terminator."""

def crlf_normalize(data: ReadableBuffer) -> bytes:
    """Encode a message for BDAT: CRLF line ends, final CRLF ensured."""

def encode_envelope(
    from_addr: str,
    to_addrs: list[str] | tuple[str, ...],
    mail_params: ReadableBuffer,
    rcpt_params: ReadableBuffer,
) -> bytes | None:
    """The MAIL line and every RCPT line of an envelope of plain addresses, else None."""

def sink_scan(
    buf: bytes | bytearray,
    pos: int,
    st: list[int],
    size: int,
    max_recipients: int,
    max_line: int,
    lmtp: bool,
    room: int,
) -> tuple[int, bytes, bytes | None, int]:
    """The sink's common commands, DATA and BDAT content in ``buf[pos:]``: ``(pos, replies, mail, stop)``."""
