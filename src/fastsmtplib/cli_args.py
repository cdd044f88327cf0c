"""Argument types shared by the command-line modules.

argparse turns an ``ArgumentTypeError`` into its usage message and exit code 2,
so each type says exactly what was wrong with the value it was given.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Optional

__all__ = ["positive_int", "bounded_int", "positive_float", "nonneg_float", "port", "read_password"]


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1: %r" % text)
    return value


def bounded_int(limit: int) -> Callable[[str], int]:
    """An integer from 1 to ``limit``."""
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError("must be at most %d: %r" % (limit, text))
        return value

    return parse


def positive_float(text: str) -> float:
    """A finite number above 0 (NaN fails the comparison, so it is refused too)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number: %r" % text)
    return value


def nonneg_float(text: str) -> float:
    """A finite number of 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be zero or more: %r" % text)
    return value


def port(text: str) -> int:
    """A TCP port, 0 (a free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a port number: %r" % text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("not a port number (0-65535): %r" % text)
    return value


def read_password(env_var: Optional[str], path: Optional[str]) -> Optional[str]:
    """The AUTH password from ``--password-env VAR`` or ``--password-file FILE``.

    Passwords never come from the command line itself (other users can read a
    process's arguments).  The file's first line is the password, without its
    line end.  None when neither is given; ``ValueError`` with a message that
    names the option, never the password, when it cannot be read.
    """
    if env_var:
        value = os.environ.get(env_var)
        if value is None:
            raise ValueError("--password-env: environment variable %s is not set" % env_var)
        return value
    if path:
        try:
            with open(path, "rb") as f:
                raw = f.readline()
        except OSError as exc:
            raise ValueError("--password-file: cannot read %s: %s" % (path, exc.strerror or exc)) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("--password-file: %s is not UTF-8" % path) from None
        return text.rstrip("\r\n")
    return None
