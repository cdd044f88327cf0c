"""``LMTP`` (RFC 2033): SMTP's client with LHLO, Unix sockets and per-recipient replies.

After the end of the data an LMTP server sends one reply for every recipient it
accepted, in RCPT order (RFC 2033 §4.2).  The stdlib reads only the first
(CPython gh-76984), which leaves the rest to be mistaken for the replies of
later commands; here every one is read and every recipient's outcome reported.
"""

from __future__ import annotations

import socket as _stdlib_socket
from typing import Any, Sequence

from .errors import SMTPDataError
from .smtp import SMTP, _socket_module

__all__ = ["LMTP", "LMTP_PORT"]

LMTP_PORT = 2003


class LMTP(SMTP):
    """An LMTP client session, API-compatible with ``smtplib.LMTP``.

    ``host`` starting with ``/`` is a Unix socket path.  ``sendmail()``
    returns (in the refused dict) or raises every recipient's failure, at RCPT
    time or after the data.  ``data_replies`` holds, after each message, the
    ``(recipient, (code, msg))`` replies to its end, one per accepted recipient.
    """

    ehlo_msg = "lhlo"

    def __init__(
        self,
        host: str = "",
        port: int = LMTP_PORT,
        local_hostname: str | None = None,
        source_address: tuple[str, int] | None = None,
        timeout: float | None = _stdlib_socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
    ) -> None:
        self._accepted: list[str] = []
        self.data_replies: list[tuple[str, tuple[int, bytes]]] = []
        super().__init__(host, port, local_hostname=local_hostname, source_address=source_address, timeout=timeout)

    def connect(self, host: str = "localhost", port: int = 0, source_address: Any = None) -> tuple[int, bytes]:
        """Connect to an LMTP server on a TCP port or a Unix socket path."""
        if host[:1] != "/":
            return super().connect(host, port, source_address=source_address)
        if self.timeout is not None and not self.timeout:
            raise ValueError("Non-blocking socket (timeout=0) is not supported")
        sockmod = _socket_module()
        try:
            self.sock = sockmod.socket(sockmod.AF_UNIX, sockmod.SOCK_STREAM)
            if self.timeout is not _stdlib_socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                self.sock.settimeout(self.timeout)
            self.file = None
            self.sock.connect(host)
        except OSError:
            if self.debuglevel > 0:
                self._print_debug("connect fail:", host)
            if self.sock:
                self.sock.close()
            self.sock = None
            raise
        self._host = "localhost"
        self._reset_reader()
        code, msg = self.getreply()
        if self.debuglevel > 0:
            self._print_debug("connect:", msg)
        return code, msg

    # Low-level API: remember which recipients were accepted since MAIL, so
    # that data() can read one reply for each of them.

    def mail(self, sender: str, options: Sequence[str] = ()) -> tuple[int, bytes]:
        self._accepted = []
        return super().mail(sender, options)

    def rcpt(self, recip: str, options: Sequence[str] = ()) -> tuple[int, bytes]:
        code, msg = super().rcpt(recip, options)
        if code in (250, 251):
            self._accepted.append(recip)
        return code, msg

    def data(self, msg: str | bytes) -> tuple[int, bytes]:
        """DATA, then one reply per accepted recipient (in ``data_replies``).

        Returns the first failure among them, else the last success; with no
        recipient accepted it reads the single reply a server gives then.
        """
        self.putcmd("data")
        code, repl = self.getreply()
        if code != 354:
            raise SMTPDataError(code, repl)
        self.send(self._encode_for_data(msg))
        replies = self._read_recipient_replies(self._accepted or ["<none>"])
        self._accepted = []
        for _rcpt, reply in replies:
            if reply[0] != 250:
                return reply
        return replies[-1][1]

    def _read_recipient_replies(self, rcpts: list[str]) -> list[tuple[str, tuple[int, bytes]]]:
        out: list[tuple[str, tuple[int, bytes]]] = []
        self.data_replies = out
        for rcpt in rcpts:
            reply = self.getreply()
            out.append((rcpt, reply))
            if reply[0] == 421:  # the server is closing: no more replies come
                self.close()
                break
        return out

    _lmtp = True

    def _sent(self, result: Any) -> None:
        # RFC 2033 §4.2: the replies after the data, one per accepted recipient.
        self.data_replies = list(result.data_replies)
