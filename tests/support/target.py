"""The module under test, chosen through one indirection.

``FASTSMTPLIB_TEST_TARGET`` names the module to import (default
``fastsmtplib``); ``FASTSMTPLIB_TEST_TARGET=smtplib`` runs the same tests
against the standard library, which shows the tests themselves are right.

Tests import ``smtplib`` from here rather than importing a module directly::

    from tests.support.target import smtplib, fastsmtplib_only
"""

from __future__ import annotations

import importlib
import os

import pytest

__all__ = ["TARGET_NAME", "IS_STDLIB", "smtplib", "fastsmtplib_only", "stdlib_only"]

TARGET_NAME: str = os.environ.get("FASTSMTPLIB_TEST_TARGET", "fastsmtplib").strip() or "fastsmtplib"
IS_STDLIB: bool = TARGET_NAME == "smtplib"

smtplib = importlib.import_module(TARGET_NAME)
if not hasattr(smtplib, "SMTP"):
    # e.g. a namespace package left by an editable install before
    # src/fastsmtplib/__init__.py existed: fail collection once, clearly.
    raise ImportError(
        f"{TARGET_NAME!r} ({getattr(smtplib, '__path__', smtplib)}) has no SMTP class; "
        "is fastsmtplib built and installed (pip install -e '.[test]')? "
        "FASTSMTPLIB_TEST_TARGET=smtplib runs the tests against the stdlib."
    )

#: Behaviour where fastsmtplib deliberately differs from the stdlib
#: (DESIGN.md §4); such tests do not run against the stdlib.
fastsmtplib_only = pytest.mark.skipif(
    IS_STDLIB, reason="deliberate fastsmtplib difference from stdlib smtplib"
)

#: Documents stdlib behaviour that fastsmtplib deliberately changes.
stdlib_only = pytest.mark.skipif(
    not IS_STDLIB, reason="stdlib behaviour that fastsmtplib deliberately changes"
)
