"""AUTH PLAIN and LOGIN for the sink (RFC 4954, RFC 4616): decoding and checking.

No sockets and no session state here: :class:`Credentials` holds the
configured users and answers "is this user/password pair right?" in constant
time per comparison; :func:`decode_plain` and :func:`decode_b64` turn the
client's base64 into text or say why it is malformed.  Nothing in this module
logs or formats a password, and ``repr(Credentials)`` shows only user names.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Mapping, Optional, Tuple

__all__ = ["AuthSyntaxError", "Credentials", "decode_b64", "decode_plain", "parse_user_password"]

# RFC 4954 §4: the server challenge for LOGIN is not standardised; these are
# what every client expects ("Username:", "Password:" in base64).
LOGIN_USER_CHALLENGE = b"334 VXNlcm5hbWU6\r\n"
LOGIN_PASS_CHALLENGE = b"334 UGFzc3dvcmQ6\r\n"


class AuthSyntaxError(ValueError):
    """The client's AUTH data is not valid base64 / PLAIN syntax."""


class Credentials:
    """Users and passwords the sink accepts (``{"user": "password"}``)."""

    __slots__ = ("_users",)

    def __init__(self, users: Mapping[str, str]) -> None:
        if not users:
            raise ValueError("auth needs at least one user")
        table = {}
        for user, password in users.items():
            if not isinstance(user, str) or not isinstance(password, str):
                raise TypeError("auth users and passwords must be str")
            if not user or "\0" in user or "\0" in password:
                raise ValueError("auth: a user name must be non-empty and neither may contain NUL")
            table[user.encode("utf-8")] = password.encode("utf-8")
        self._users = table

    def check(self, user: bytes, password: bytes) -> bool:
        expected = self._users.get(user)
        if expected is None:
            hmac.compare_digest(password, password)  # same work either way
            return False
        return hmac.compare_digest(expected, password)

    @property
    def users(self) -> list:
        return [u.decode("utf-8") for u in self._users]

    def __repr__(self) -> str:
        return "Credentials(users=%r)" % self.users


def decode_b64(data: bytes) -> bytes:
    """Strict base64 (RFC 4954 §4: a client's response is base64, ``=`` alone means empty)."""
    data = data.strip()
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise AuthSyntaxError("invalid base64")


def decode_plain(data: bytes) -> Tuple[bytes, bytes, bytes]:
    """RFC 4616 §2: ``[authzid] NUL authcid NUL passwd``; returns the three parts."""
    raw = decode_b64(data)
    parts = raw.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise AuthSyntaxError("PLAIN needs authzid NUL authcid NUL passwd")
    return parts[0], parts[1], parts[2]


def parse_user_password(text: str) -> Optional[Tuple[str, str]]:
    """``USER:PASSWORD`` -> (user, password), or None if malformed (the
    caller words the error without echoing the text: it holds a secret)."""
    user, sep, password = text.partition(":")
    if not sep or not user or "\0" in text:
        return None
    return user, password
