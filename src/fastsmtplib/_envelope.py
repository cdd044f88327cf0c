"""Pick the envelope encoder: compiled ``_envelope_c`` when present, else ``_envelope_py``.

The encoder's rules are in ``_envelope_py.py`` (read its docstring); setup.py
compiles that same file with ``_envelope_py.pxd`` into ``_envelope_c``, as it
does the engine (``_engine.py``).  ``FASTSMTPLIB_NO_EXTENSIONS=1`` forces the
pure twin.  Both engine twins import ``Encoder`` from here.
"""

from __future__ import annotations

from ._wire import env_flag

__all__ = ["Encoder", "Prepared", "IMPLEMENTATION"]

_impl = None
if not env_flag("FASTSMTPLIB_NO_EXTENSIONS"):
    try:
        from . import _envelope_c as _impl
    except ImportError:
        _impl = None
if _impl is None:
    from . import _envelope_py as _impl  # type: ignore[no-redef]

#: The module the names below come from: ``_envelope_c`` or ``_envelope_py``.
IMPLEMENTATION = _impl
Encoder = _impl.Encoder
Prepared = _impl.Prepared
