"""Pick the byte kernels: compiled ``_wire_c`` when present, else ``_wire_py``.

``FASTSMTPLIB_NO_EXTENSIONS=1`` (any value but empty, ``0``, ``false``, ``no``,
``off``) forces the pure-Python twin at import time, as it does at build time.
Both twins expose the same names with the same behaviour (see ``_wire_py``);
this module exports those names (``_wire_py.__all__``) plus its own two.
"""

from __future__ import annotations

import os

from . import _wire_py

__all__ = ["HAS_EXTENSIONS", "env_flag", *_wire_py.__all__]


def env_flag(name: str) -> bool:
    """True when environment variable ``name`` is set to a true-ish value."""
    value = os.environ.get(name, "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


HAS_EXTENSIONS = False
if not env_flag("FASTSMTPLIB_NO_EXTENSIONS"):
    try:
        from ._wire_c import (
            ReplyParser,
            crlf_normalize,
            dot_stuff,
            dot_stuff_sized,
            encode_envelope,
            sink_scan,
        )
    except ImportError:
        pass
    else:
        HAS_EXTENSIONS = True

if not HAS_EXTENSIONS:
    from ._wire_py import (  # noqa: F811
        ReplyParser,
        crlf_normalize,
        dot_stuff,
        dot_stuff_sized,
        encode_envelope,
        sink_scan,
    )

# Limits and the error class are plain Python in both modes (policy, not bytes).
from ._wire_py import MAX_REPLY_BYTES, MAX_REPLY_LINES, MAXLINE, ReplyLimitError  # noqa: E402
