"""Reusable test servers and helpers for fastsmtplib's tests.

Modules:
    target      -- the module under test (``fastsmtplib`` or stdlib ``smtplib``)
    certs       -- a trustme CA and TLS contexts for servers and clients
    ports       -- free loopback ports, waiting for a port to accept
    aiosmtpd_server -- in-process aiosmtpd servers that record what they received
    sink        -- Postfix's ``smtp-sink`` as a subprocess
    postfix     -- a private Postfix ``smtpd`` instance with a readable queue
    scripted    -- a scripted socket server for faults and exact wire checks

The pytest fixtures wrapping these live in ``tests/conftest.py``.
"""
