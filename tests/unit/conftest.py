"""Byte-kernel fixtures: every kernel test runs against both twins.

``wire`` is parametrised over ``fastsmtplib._wire_py`` and ``fastsmtplib._wire_c``.
The compiled param is skipped only when the extension legitimately is not built
(``FASTSMTPLIB_NO_EXTENSIONS`` or ``FASTSMTPLIB_ALLOW_PURE`` set, and the module
absent); otherwise a missing or broken extension is an error, never a skip.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from fastsmtplib._wire import env_flag

__all__ = ["compiled_expected", "load_compiled"]


def compiled_expected() -> bool:
    """True when this run must have the compiled kernels."""
    return not env_flag("FASTSMTPLIB_NO_EXTENSIONS") and not env_flag("FASTSMTPLIB_ALLOW_PURE")


def load_compiled() -> ModuleType:
    """Import ``fastsmtplib._wire_c``; skip only when its absence is allowed."""
    try:
        return importlib.import_module("fastsmtplib._wire_c")
    except ModuleNotFoundError as exc:
        if exc.name != "fastsmtplib._wire_c" or compiled_expected():
            pytest.fail(f"compiled kernels should be built but do not import: {exc}")
        pytest.skip("compiled kernels not built (FASTSMTPLIB_NO_EXTENSIONS / _ALLOW_PURE)")


# Session scope: hypothesis tests use these fixtures, and the modules are stateless.
@pytest.fixture(scope="session")
def wire_py() -> ModuleType:
    return importlib.import_module("fastsmtplib._wire_py")


@pytest.fixture(scope="session")
def wire_c() -> ModuleType:
    return load_compiled()


@pytest.fixture(scope="session", params=["py", "c"])
def wire(request: pytest.FixtureRequest) -> ModuleType:
    """The byte-kernel module under test: the pure twin, then the compiled one."""
    if request.param == "py":
        return importlib.import_module("fastsmtplib._wire_py")
    return load_compiled()
