"""DKIM signing (RFC 6376) for bulk mail: rsa-sha256 and ed25519-sha256 (RFC 8463), relaxed/relaxed.

Built on ``dkimpy`` (the ``campaign`` extra): its header canonicalisation,
header selection (``hash_headers``, which also handles over-signing), tag
folding and body canonicalisation are used as they are, so a signature made
here is what ``dkim.sign`` would make and ``dkim.verify`` checks it.  Two
things differ, both for speed in a campaign of one body to many recipients:

* The body hash (``bh=``) is computed once per distinct body: ``dkim.sign``
  canonicalises and hashes the body on every call (about 1 ms for 20 KB), while
  :class:`DkimSigner` keeps the hashes of recent bodies keyed by the body
  bytes.  A newsletter without placeholders in its body hashes it once.
* The private-key operation is done by ``cryptography`` (OpenSSL) rather than
  dkimpy's pure-Python RSA: about 0.4 ms instead of 9 ms per 2048-bit
  signature here.  The signed data is the same (the SHA-256 digest of the
  canonical headers, PKCS#1 v1.5 for RSA; Ed25519 over that digest for
  ed25519-sha256, RFC 8463 §3).

``List-Unsubscribe`` and ``List-Unsubscribe-Post`` are signed by default, as
RFC 8058 §4 requires for one-click unsubscribe; single-instance headers are
over-signed (named once more in ``h=`` than they occur, RFC 6376 §8.15) so
that nobody can add a second From, Subject or List-Unsubscribe after signing.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Sequence

__all__ = ["DkimSigner", "DkimError", "generate_key", "DEFAULT_SIGNED_HEADERS"]

try:
    import dkim as _dkim
    from dkim.canonicalization import CanonicalizationPolicy as _Policy
    from dkim.canonicalization import Relaxed as _Relaxed
    from cryptography.hazmat.primitives import hashes as _hashes
    from cryptography.hazmat.primitives import serialization as _serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519 as _ed25519
    from cryptography.hazmat.primitives.asymmetric import padding as _padding
    from cryptography.hazmat.primitives.asymmetric import rsa as _rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed as _Prehashed
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None


class DkimError(ValueError):
    """A key, a parameter or a message that cannot be signed."""


#: Header fields signed when present (RFC 6376 §5.4.1's list, trimmed to what
#: a newsletter carries, plus the RFC 8058 pair).
DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding",
    "in-reply-to", "references", "list-id", "list-unsubscribe",
    "list-unsubscribe-post",
)
#: Signed once more than they occur, so none can be added later (RFC 6376 §8.15).
_OVERSIGNED = frozenset(
    {"from", "subject", "to", "date", "message-id", "reply-to", "list-unsubscribe",
     "list-unsubscribe-post", "content-type", "mime-version"}
)
_SHOULD_NOT = frozenset({"return-path", "received", "comments", "keywords", "bcc", "resent-bcc", "dkim-signature"})
_NAME = b"DKIM-Signature"


def _need_extra() -> None:
    if _IMPORT_ERROR is not None:
        raise ImportError(
            "DKIM signing needs dkimpy and cryptography: pip install 'fastsmtplib[campaign]'"
        ) from _IMPORT_ERROR


def _as_bytes(x: str | bytes, what: str) -> bytes:
    b = x.encode("ascii") if isinstance(x, str) else bytes(x)
    if not b or any(c <= 0x20 or c >= 0x7F or c in b";=" for c in b):
        raise DkimError(f"invalid DKIM {what}: {x!r}")
    return b


def body_hash(body: bytes) -> bytes:
    """``bh=``: base64 SHA-256 of the relaxed-canonical body (RFC 6376 §3.4.4, §3.7)."""
    _need_extra()
    return base64.b64encode(hashlib.sha256(_Relaxed.canonicalize_body(body)).digest())


class DkimSigner:
    """Signs messages for one domain/selector/key; reusable and thread-compatible.

    Args:
        key_pem: the private key, PEM (PKCS#1 or PKCS#8; RSA or Ed25519, told
            apart by the key itself), or dkimpy's raw base64 Ed25519 seed.
        selector, domain: the ``s=`` and ``d=`` tags; the public key is
            published at ``<selector>._domainkey.<domain>``.
        headers: names of the header fields to sign when present ("from" must be among them).
        body_cache_size: how many distinct body hashes to keep.
    Raises:
        DkimError: unusable key or parameters.  ImportError: the extra is missing.
    """

    def __init__(
        self,
        key_pem: bytes,
        selector: str | bytes,
        domain: str | bytes,
        *,
        headers: Sequence[str] = DEFAULT_SIGNED_HEADERS,
        body_cache_size: int = 64,
    ) -> None:
        _need_extra()
        self.selector = _as_bytes(selector, "selector")
        self.domain = _as_bytes(domain, "domain")
        names = [h.lower() for h in headers]
        if "from" not in names:
            raise DkimError("the From header field must be signed (RFC 6376 §5.4)")
        bad = _SHOULD_NOT.intersection(names)
        if bad:
            raise DkimError(f"these header fields should not be signed: {sorted(bad)}")
        self._names = frozenset(n.encode("ascii") for n in names)
        self._key = _load_key(key_pem)
        if isinstance(self._key, _ed25519.Ed25519PrivateKey):
            self.algorithm = b"ed25519-sha256"
        else:
            if self._key.key_size < 1024:
                raise DkimError("RSA keys under 1024 bits are refused by verifiers (RFC 8301 §3.2)")
            self.algorithm = b"rsa-sha256"
        self._policy = _Policy.from_c_value(b"relaxed/relaxed")
        self._cache: dict[bytes, bytes] = {}
        self._cache_size = body_cache_size
        self.body_hashes_computed = 0  # how often a body was canonicalised and hashed

    # -- body hash, once per distinct body

    def body_hash(self, body: bytes) -> bytes:
        """The ``bh=`` value for *body*, from the cache when this body was seen."""
        bh = self._cache.get(body)
        if bh is None:
            bh = body_hash(body)
            self.body_hashes_computed += 1
            if len(self._cache) >= self._cache_size:
                self._cache.clear()  # a campaign's bodies rarely repeat after a miss
            self._cache[body] = bh
        return bh

    # -- signing

    def signature(self, message: bytes, *, bh: bytes | None = None, timestamp: int | None = None) -> bytes:
        """The ``DKIM-Signature`` header field (CRLF-terminated) for *message*.

        *bh*: the body hash, when the caller already has it (see :meth:`body_hash`).
        """
        head, sep, body = message.partition(b"\r\n\r\n")
        if not sep:
            if message.endswith(b"\r\n"):
                head, body = message[:-2], b""
            else:
                raise DkimError("message has no header/body separator (CRLF CRLF)")
        return self._sign_headers(head + b"\r\n", bh if bh is not None else self.body_hash(body), timestamp)

    def sign(self, message: bytes, *, timestamp: int | None = None) -> bytes:
        """*message* with its DKIM-Signature header prepended."""
        return self.signature(message, timestamp=timestamp) + message

    def sign_split(self, head: bytes, body: bytes, *, bh: bytes | None = None) -> bytes:
        """The signature for a message given as its header block (with its last CRLF) and body."""
        return self._sign_headers(head, bh if bh is not None else self.body_hash(body), None)

    def _sign_headers(self, head: bytes, bh: bytes, timestamp: int | None) -> bytes:
        try:
            headers, _ = _dkim.rfc822_parse(head + b"\r\n")
        except _dkim.MessageFormatError as exc:
            raise DkimError(str(exc)) from None
        include = [x.lower() for x, _ in headers if x.lower() in self._names]
        if b"from" not in include:
            raise DkimError("message has no From header field")
        include += sorted(n for n in set(include) if n.decode() in _OVERSIGNED)
        fields = [
            (b"v", b"1"),
            (b"a", self.algorithm),
            (b"c", b"relaxed/relaxed"),
            (b"d", self.domain),
            (b"q", b"dns/txt"),
            (b"s", self.selector),
            (b"t", str(int(time.time()) if timestamp is None else timestamp).encode("ascii")),
            (b"h", b" : ".join(include)),
            (b"bh", bh),
            # A placeholder b= forces b= onto its own folded line, so adding the
            # real value later changes no whitespace before it (as dkimpy does).
            (b"b", b"0" * 60),
        ]
        value = _dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_NAME))
        value = _dkim.RE_BTAG.sub(b"\\1", value)
        h = hashlib.sha256()
        canon = self._policy.canonicalize_headers(headers)
        # RFC 6376 §3.7: the selected headers, then this header with b= empty
        # and no trailing CRLF.
        _dkim.hash_headers(h, self._policy, canon, include, (_NAME, b" " + value), dict(fields))
        digest = h.digest()
        if self.algorithm == b"rsa-sha256":
            sig = self._key.sign(digest, _padding.PKCS1v15(), _Prehashed(_hashes.SHA256()))
        else:
            sig = self._key.sign(digest)  # RFC 8463 §3: Ed25519 over the SHA-256 digest
        fields[-1] = (b"b", base64.b64encode(sig))
        value = _dkim.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(_NAME))
        return _NAME + b": " + value


def _load_key(key_pem: bytes):
    if isinstance(key_pem, str):
        key_pem = key_pem.encode("ascii")
    data = key_pem.strip()
    if data.startswith(b"-----BEGIN"):
        try:
            key = _serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise DkimError(f"cannot load the DKIM private key: {exc}") from None
        if not isinstance(key, (_rsa.RSAPrivateKey, _ed25519.Ed25519PrivateKey)):
            raise DkimError(f"DKIM keys are RSA or Ed25519, not {type(key).__name__}")
        return key
    try:  # dkimpy's own Ed25519 format: the base64 32-byte seed
        seed = base64.b64decode(data, validate=True)
    except ValueError:
        seed = b""
    if len(seed) == 32:
        return _ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    raise DkimError("DKIM private key is neither PEM nor a base64 Ed25519 seed")


def generate_key(kind: str = "rsa", *, bits: int = 2048) -> tuple[bytes, str]:
    """A new key pair: ``(private_pem, dns_txt_record)``.

    The TXT record goes at ``<selector>._domainkey.<domain>``: ``v=DKIM1; k=rsa;
    p=<SubjectPublicKeyInfo, base64>`` (RFC 6376 §3.6.1) or ``v=DKIM1;
    k=ed25519; p=<raw 32-byte key, base64>`` (RFC 8463 §4).
    """
    _need_extra()
    if kind == "rsa":
        if bits < 1024:
            raise DkimError("RSA keys under 1024 bits are refused by verifiers (RFC 8301 §3.2)")
        key = _rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pub = key.public_key().public_bytes(
            _serialization.Encoding.DER, _serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif kind == "ed25519":
        key = _ed25519.Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(
            _serialization.Encoding.Raw, _serialization.PublicFormat.Raw
        )
    else:
        raise DkimError(f"key kind must be 'rsa' or 'ed25519', not {kind!r}")
    pem = key.private_bytes(
        _serialization.Encoding.PEM, _serialization.PrivateFormat.PKCS8, _serialization.NoEncryption()
    )
    return pem, f"v=DKIM1; k={kind}; p={base64.b64encode(pub).decode('ascii')}"
