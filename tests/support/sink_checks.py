"""Helpers for tests that talk to the project's ``Sink`` directly.

``read_replies`` reads raw final reply lines off a socket; ``wait_idle`` returns
the sink's counters once every connection has closed, and fails if one leaked.
"""

from __future__ import annotations

import socket
import time


def read_replies(sock: socket.socket, count: int) -> list:
    """Read until ``count`` final reply lines (``NNN `` ) have arrived, or EOF."""
    data = b""
    while True:
        lines = [l for l in data.split(b"\r\n") if len(l) >= 4 and l[3:4] == b" "]
        if len(lines) >= count:
            return lines
        chunk = sock.recv(65536)
        if not chunk:
            return lines
        data += chunk


def wait_idle(sink, timeout: float = 10) -> dict:
    """The sink's counters once every connection is closed (fails if one leaks)."""
    deadline = time.monotonic() + timeout
    while sink.counts["active"] and time.monotonic() < deadline:
        time.sleep(0.01)
    counts = sink.counts
    assert counts["active"] == 0, counts
    return counts
