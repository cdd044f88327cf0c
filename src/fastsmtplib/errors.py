"""Exceptions: smtplib's own classes, re-exported, and a few subclasses of them.

The stdlib classes are used as they are (not copied), so ``except
smtplib.SMTPException`` catches everything fastsmtplib raises and code written
for the stdlib keeps working.  The new classes only narrow existing ones.
"""

from __future__ import annotations

from smtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupportedError,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)

__all__ = [
    "SMTPException",
    "SMTPNotSupportedError",
    "SMTPServerDisconnected",
    "SMTPResponseException",
    "SMTPSenderRefused",
    "SMTPRecipientsRefused",
    "SMTPDataError",
    "SMTPConnectError",
    "SMTPHeloError",
    "SMTPAuthenticationError",
    "SMTPReplyTimeout",
    "SMTPReplyTooLong",
    "SMTPMessageTooLarge",
    "SMTPPipelineError",
]


class SMTPReplyTimeout(SMTPServerDisconnected, TimeoutError):
    """A whole reply did not arrive within the connection's ``timeout``.

    The deadline covers the reply, not each ``recv``: a server that drips a
    byte a second cannot hold the client.  The connection is closed.  It is an
    ``SMTPServerDisconnected`` (what the stdlib raises when a read times out)
    and a ``TimeoutError``.
    """


class SMTPReplyTooLong(SMTPResponseException):
    """A reply broke the line, line-count or byte limit; the connection is closed.

    For an over-long line the stdlib raises ``SMTPResponseException(500,
    "Line too long.")``; this is that exception, made specific.
    """

    @classmethod
    def from_limit(cls, exc: Exception) -> "SMTPReplyTooLong":
        """The exception for the parser's ``ReplyLimitError`` ``exc``."""
        if getattr(exc, "kind", None) == "line":
            return cls(500, "Line too long.")  # the stdlib's code and text
        return cls(500, str(exc))


class SMTPMessageTooLarge(SMTPSenderRefused):
    """The message exceeds the SIZE the server advertised (RFC 1870 §4).

    Raised before any byte of the transaction is sent.  It subclasses
    ``SMTPSenderRefused`` because that is what the stdlib raises when the
    server refuses ``MAIL FROM ... SIZE=`` with 552.
    """

    def __init__(self, size: int, limit: int, sender: str) -> None:
        msg = (
            "5.3.4 message of %d bytes exceeds the server's SIZE limit of %d "
            "(checked by the client; nothing was sent)" % (size, limit)
        ).encode("ascii")
        super().__init__(552, msg, sender)
        self.size = size
        self.limit = limit


class SMTPPipelineError(SMTPResponseException):
    """The server's replies did not match the pipelined commands (RFC 2920 §3.1).

    Raised when a server answers a pipelined group with too few or unexpected
    replies; the connection is closed because it can no longer be trusted to
    be in step.
    """
