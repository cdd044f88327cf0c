"""fastsmtplib: a drop-in, faster and safer replacement for ``smtplib``.

``import fastsmtplib as smtplib`` gives smtplib's documented API; the exception
classes are smtplib's own.  ``HAS_EXTENSIONS`` tells whether the compiled byte
kernels are in use.
"""

from __future__ import annotations

import socket  # looked up as fastsmtplib.socket at call time (tests patch it)

from ._protocol import CRLF, bCRLF, quoteaddr, quotedata
from ._wire import HAS_EXTENSIONS, MAXLINE as _MAXLINE
from . import errors
from .errors import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPMessageTooLarge,
    SMTPNotSupportedError,
    SMTPPipelineError,
    SMTPRecipientsRefused,
    SMTPReplyTimeout,
    SMTPReplyTooLong,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)
from .smtp import _MAXCHALLENGE, SMTP, SMTP_PORT, SMTP_SSL, SMTP_SSL_PORT
from .lmtp import LMTP, LMTP_PORT
from .retry import Retry
from .pool import ConnectInfo, PoolClosed, SendCancelled, SendManyRun, SMTPPool
from ._engine import SendResult, Status

try:
    import ssl as _ssl  # noqa: F401
    _have_ssl = True
except ImportError:  # pragma: no cover
    _have_ssl = False

from ._protocol import _OLD_AUTH as OLDSTYLE_AUTH  # same pattern, one definition

__version__ = "0.1.0"

__all__ = [
    *errors.__all__,
    "quoteaddr",
    "quotedata",
    "SMTP",
    "SMTP_SSL",
    "LMTP",
    "SMTP_PORT",
    "SMTP_SSL_PORT",
    "LMTP_PORT",
    "CRLF",
    "bCRLF",
    "HAS_EXTENSIONS",
    "SMTPPool",
    "SendManyRun",
    "SendCancelled",
    "PoolClosed",
    "ConnectInfo",
    "SendResult",
    "Status",
    "Retry",
]
