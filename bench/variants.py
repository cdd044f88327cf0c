"""A second copy of fastsmtplib on the pure-Python twins, beside the compiled one.

The kernels are chosen when the package is imported (``FASTSMTPLIB_NO_EXTENSIONS``),
so one process normally holds one of them.  To put stdlib, pure and compiled side
by side in one pytest-benchmark group (one run, same machine state), this module
imports the installed package a second time under the name ``fastsmtplib_pure``
with the variable set.  Every import inside the package is relative, so the copy
uses its own pure modules throughout.  Benchmarks only: tests run the whole
suite twice instead.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import fastsmtplib

PURE_NAME = "fastsmtplib_pure"


def pure_fastsmtplib() -> ModuleType:
    """The package again, its kernels (and compiled engine, if any) pure Python."""
    if PURE_NAME in sys.modules:
        return sys.modules[PURE_NAME]
    pkgdir = os.path.dirname(fastsmtplib.__file__)
    spec = importlib.util.spec_from_file_location(
        PURE_NAME, os.path.join(pkgdir, "__init__.py"), submodule_search_locations=[pkgdir]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = os.environ.get("FASTSMTPLIB_NO_EXTENSIONS")
    os.environ["FASTSMTPLIB_NO_EXTENSIONS"] = "1"
    sys.modules[PURE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PURE_NAME]
        raise
    finally:
        if saved is None:
            del os.environ["FASTSMTPLIB_NO_EXTENSIONS"]
        else:
            os.environ["FASTSMTPLIB_NO_EXTENSIONS"] = saved
    if module.HAS_EXTENSIONS:
        raise RuntimeError("fastsmtplib_pure loaded compiled kernels")
    return module
