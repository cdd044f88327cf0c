"""From an ``email.message.Message`` to an envelope and wire bytes (send_message).

The rules are smtplib's documented ones (RFC 5322 §3.6.2 and §3.6.6):
the sender is Sender, else From; recipients are To, Bcc and Cc; when the
message carries exactly one set of Resent-* fields those are used instead, and
more than one set is an error because the newest cannot be told reliably.
"""

from __future__ import annotations

import copy
import email.generator
import email.utils
import io
from typing import Any, Sequence

__all__ = ["envelope", "needs_smtputf8", "flatten"]


def envelope(
    msg: Any, from_addr: str | None, to_addrs: str | Sequence[str] | None
) -> tuple[str, list[str]]:
    """Return ``(from_addr, to_addrs)``, taking what is missing from the headers.

    Raises:
        ValueError: the message has more than one Resent-* block.
    """
    resent_dates = msg.get_all("Resent-Date")
    if resent_dates is None:
        prefix = ""
    elif len(resent_dates) == 1:
        prefix = "Resent-"
    else:
        raise ValueError("message has more than one 'Resent-' header block")
    if from_addr is None:
        field = msg[prefix + "Sender"] if (prefix + "Sender") in msg else msg[prefix + "From"]
        from_addr = email.utils.getaddresses([field])[0][1]
    if to_addrs is None:
        fields = [msg[prefix + name] for name in ("To", "Bcc", "Cc")]
        to_list = [addr for _name, addr in email.utils.getaddresses([f for f in fields if f is not None])]
    elif isinstance(to_addrs, str):
        to_list = [to_addrs]
    else:
        to_list = list(to_addrs)
    return from_addr, to_list


def needs_smtputf8(from_addr: str, to_addrs: Sequence[str]) -> bool:
    """True when any envelope address is not ASCII (RFC 6531)."""
    return not all(a.isascii() for a in (from_addr, *to_addrs))


def flatten(msg: Any, utf8: bool = False) -> bytes:
    """Serialise ``msg`` with CRLF line ends, without Bcc or Resent-Bcc.

    With ``utf8`` the message's policy is cloned with ``utf8=True`` so that
    internationalised headers go out as UTF-8 (RFC 6532).
    """
    stripped = copy.copy(msg)
    del stripped["Bcc"]
    del stripped["Resent-Bcc"]
    out = io.BytesIO()
    if utf8:
        gen = email.generator.BytesGenerator(out, policy=msg.policy.clone(utf8=True))
    else:
        gen = email.generator.BytesGenerator(out)
    gen.flatten(stripped, linesep="\r\n")
    return out.getvalue()
