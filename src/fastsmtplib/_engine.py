"""Pick the transaction engine: compiled ``_engine_c`` when present, else ``_engine_py``.

There is one set of rules, ``_engine_py.py`` (read its docstring).  At build
time ``setup.py`` compiles that same file with Cython's pure-Python mode and
the declarations in ``_engine_py.pxd`` (C-typed state, cdef classes) into
``_engine_c``, so both twins run the same code; the compiled one only runs it
faster.  ``FASTSMTPLIB_NO_EXTENSIONS=1`` forces the pure twin at import time,
as it does for the byte kernels (``_wire.py``).

Every name comes from one twin: a compiled ``Engine`` returns compiled
``SendResult``s and ``Status`` members, so nothing mixes the two.  Import the
engine from here (``smtp.py``, ``batch.py``, ``pool.py``, the tests), never
from a twin, except to test a twin as such.
"""

from __future__ import annotations

from ._wire import env_flag

# One list of names for both twins: the pure twin's __all__ plus the statuses.
_NAMES = (
    "Engine", "SendResult", "Status", "Connection", "RFC5321_TIMEOUTS",
    "DELIVERED", "PARTIAL", "REFUSED", "DEFERRED", "FAILED", "UNCERTAIN", "NOT_ATTEMPTED",
)
__all__ = ["HAS_COMPILED_ENGINE", "IMPLEMENTATION", *_NAMES]

#: True when the compiled twin ``_engine_c`` is in use.
HAS_COMPILED_ENGINE = False
if not env_flag("FASTSMTPLIB_NO_EXTENSIONS"):
    try:
        from . import _engine_c as _impl
    except ImportError:
        pass
    else:
        HAS_COMPILED_ENGINE = True
if not HAS_COMPILED_ENGINE:
    from . import _engine_py as _impl  # type: ignore[no-redef]  # noqa: F811

#: The module the names below come from: ``_engine_c`` or ``_engine_py``.
IMPLEMENTATION = _impl

Engine = _impl.Engine
SendResult = _impl.SendResult
Status = _impl.Status
Connection = _impl.Connection
RFC5321_TIMEOUTS = _impl.RFC5321_TIMEOUTS
DELIVERED = _impl.DELIVERED
PARTIAL = _impl.PARTIAL
REFUSED = _impl.REFUSED
DEFERRED = _impl.DEFERRED
FAILED = _impl.FAILED
UNCERTAIN = _impl.UNCERTAIN
NOT_ATTEMPTED = _impl.NOT_ATTEMPTED
