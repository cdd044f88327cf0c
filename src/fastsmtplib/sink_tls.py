"""TLS for the sink: a server context, a generated certificate, and one
non-blocking TLS layer per connection.

The sink's loop never blocks, so each TLS connection is an
:class:`ssl.SSLObject` between two :class:`ssl.MemoryBIO`: bytes read from the
socket go into ``incoming``, the handshake and decrypted text come out of the
object, and whatever OpenSSL wants written (handshake records, encrypted
replies, alerts) is taken from ``outgoing`` and sent by the loop like any
other output.  No ``SSLWantReadError`` ever reaches the socket code.

Memory per connection: the incoming BIO holds at most one ``recv`` plus one
partial TLS record (16 KiB and a header); decrypted text per read is bounded
the same way; encrypted output is the sink's reply cap plus record overhead;
OpenSSL's own state and buffers add a few tens of KiB per TLS connection.

Certificates: :func:`generate_certificate` makes a throw-away CA and a leaf
for ``localhost``, ``127.0.0.1`` and ``::1`` (ECDSA P-256, valid one day
back and 30 days on) with the ``cryptography`` package.  The private keys
never touch the disk for longer than it takes OpenSSL to load them: only
the CA certificate stays, so clients can verify the sink.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import tempfile
from typing import Optional, Tuple

__all__ = ["TLSLayer", "TLSSetupError", "generate_certificate", "server_context", "TLS_NAMES"]

TLS_NAMES = ("localhost", "127.0.0.1", "::1")
READ_SIZE = 64 * 1024


class TLSSetupError(RuntimeError):
    """The sink's TLS could not be set up (no ``cryptography``, bad files)."""


def generate_certificate(names: Tuple[str, ...] = TLS_NAMES) -> Tuple[bytes, bytes, bytes]:
    """A fresh CA and a server certificate it issued; returns PEM bytes
    ``(ca_cert, server_cert_chain, server_key)``.

    Raises :class:`TLSSetupError` naming the extra to install when the
    ``cryptography`` package is missing.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:
        raise TLSSetupError(
            "generating a TLS certificate for the sink needs the 'cryptography' package "
            "(pip install 'fastsmtplib[sink]'); or pass a certificate and key "
            "(--tls-cert/--tls-key, Sink(tls_cert=..., tls_key=...)): %s" % exc
        ) from exc

    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(days=1)
    not_after = now + datetime.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fastsmtplib sink test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    sans = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                          crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca_cert.public_bytes(pem)
    chain_pem = cert.public_bytes(pem) + ca_pem
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca_pem, chain_pem, key_pem


def server_context(cert_file: Optional[str] = None, key_file: Optional[str] = None) -> Tuple[ssl.SSLContext, bytes]:
    """A server context (TLS 1.2 or later) and the PEM clients should trust.

    With ``cert_file`` (and ``key_file``, unless the key is in the same
    file) it presents that certificate and the trust PEM is the file's
    certificates; without, it generates a CA and a localhost certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        try:
            ctx.load_cert_chain(cert_file, key_file)
            with open(cert_file, "rb") as f:
                trust = f.read()
        except (OSError, ssl.SSLError) as exc:
            raise TLSSetupError("cannot load the TLS certificate %r / key %r: %s" % (cert_file, key_file, exc)) from exc
        # Only the certificates, never a key that may share the file.
        trust = b"".join(
            block + b"-----END CERTIFICATE-----\n"
            for block in trust.split(b"-----END CERTIFICATE-----")
            if b"-----BEGIN CERTIFICATE-----" in block
        )
        return ctx, trust
    ca_pem, chain_pem, key_pem = generate_certificate()
    # load_cert_chain only reads files: write them in a private directory and
    # remove them at once (the key exists on disk for a few microseconds).
    tmp = tempfile.mkdtemp(prefix="fastsmtplib-sink-tls-")
    try:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        with open(cert_path, "wb") as f:
            f.write(chain_pem)
        ctx.load_cert_chain(cert_path, key_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ctx, ca_pem


class TLSLayer:
    """One connection's TLS state: feed it what the socket read, get plain
    text back; take :meth:`outgoing` and send it."""

    __slots__ = ("obj", "incoming", "out_bio", "ready", "eof")

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.out_bio = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.out_bio, server_side=True)
        self.ready = False  # the handshake is done
        self.eof = False  # the client sent close_notify

    def feed(self, data: bytes) -> Tuple[bytes, bool]:
        """Take raw bytes; return ``(plain text, whether the handshake just finished)``.

        Raises :class:`ssl.SSLError` when the client's bytes are not TLS or
        the handshake fails; the caller closes the connection.
        """
        if data:
            self.incoming.write(data)
        done = False
        if not self.ready:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                return b"", False
            self.ready = done = True
        parts = []
        while True:
            try:
                chunk = self.obj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            parts.append(chunk)
        return b"".join(parts), done

    def encrypt(self, plain: bytes) -> None:
        """Queue ``plain`` as TLS records (read them with :meth:`outgoing`)."""
        self.obj.write(plain)

    def outgoing(self) -> bytes:
        """Every byte OpenSSL wants sent now (empty if none)."""
        return self.out_bio.read() if self.out_bio.pending else b""

    def close_notify(self) -> bytes:
        """The close_notify alert to send before closing (best effort)."""
        if self.ready:
            try:
                self.obj.unwrap()
            except (ssl.SSLError, ValueError):
                pass
        return self.outgoing()
