"""Loopback port helpers for servers that cannot bind port 0 themselves."""

from __future__ import annotations

import os
import socket
import time

__all__ = ["free_port", "wait_for_port", "require_binary"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind port 0, read it, release it).

    There is a small race with other processes; callers that start an external
    server should retry on "address in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0, *, alive=None) -> None:
    """Poll until ``host:port`` accepts a TCP connection.

    ``alive`` is an optional callable returning False once the server process
    has died, so a crashed server fails fast instead of timing out.
    Raises TimeoutError or RuntimeError.
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            pass
        if alive is not None and not alive():
            raise RuntimeError(f"server for {host}:{port} exited before accepting")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host}:{port} did not accept within {timeout}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def require_binary(path: str, what: str) -> None:
    """Skip the test if ``path`` is not executable; fail instead when ``CI`` is set.

    CI must install what its tests need (Debian package ``postfix``), so a
    missing binary there is an error, not a reason to skip quietly.
    """
    import pytest

    if os.access(path, os.X_OK):
        return
    msg = (
        f"{what} needs {path} (Debian package 'postfix': "
        "apt-get install -y postfix)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI is set, so this is an error", pytrace=False)
    pytest.skip(msg)
