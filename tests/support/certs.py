"""Test certificates: one trustme CA per process, a server cert for localhost.

Usage::

    from tests.support.certs import tls

    server_ctx = tls().server_context()     # for aiosmtpd / the scripted server
    client_ctx = tls().client_context()     # trusts the CA, verifies the hostname
    tls().write_files(dir)                  # PEM files, e.g. for Postfix

The server certificate is valid for ``localhost``, ``127.0.0.1`` and ``::1``.
Generating a CA and a leaf costs a few milliseconds (ECDSA keys), but the
pair is cached for the whole test process anyway.
"""

from __future__ import annotations

import functools
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TLSMaterial", "tls", "SERVER_NAMES"]

SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TLSMaterial:
    """A CA and one server certificate issued by it."""

    ca: "trustme.CA"  # noqa: F821 - imported lazily
    server_cert: "trustme.LeafCert"  # noqa: F821

    def server_context(self, *names: str) -> ssl.SSLContext:
        """A fresh server-side context presenting the localhost certificate.

        With ``names``, present a new certificate (same CA) valid only for
        those names instead, e.g. to check that clients verify host names.
        """
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # aiosmtpd warns unless the server does not ask for client certs.
        ctx.verify_mode = ssl.CERT_NONE
        cert = self.ca.issue_cert(*names) if names else self.server_cert
        cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A fresh client context that trusts the test CA (hostname checked)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(ctx)
        return ctx

    def write_files(self, directory: os.PathLike | str) -> tuple[Path, Path, Path]:
        """Write ``ca.pem``, ``cert.pem`` (leaf + chain), ``key.pem``; return their paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        ca, cert, key = d / "ca.pem", d / "cert.pem", d / "key.pem"
        self.ca.cert_pem.write_to_path(str(ca))
        with open(cert, "wb") as f:
            for blob in self.server_cert.cert_chain_pems:
                f.write(blob.bytes())
        self.server_cert.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        return ca, cert, key


@functools.lru_cache(maxsize=None)
def tls() -> TLSMaterial:
    """The process-wide CA and localhost server certificate."""
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise RuntimeError(
            "the tests need 'trustme' (pip install -e '.[test]')"
        ) from exc
    ca = trustme.CA()
    return TLSMaterial(ca=ca, server_cert=ca.issue_cert(*SERVER_NAMES))
