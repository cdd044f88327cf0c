"""Argument types shared by the command-line modules.

argparse turns an ``ArgumentTypeError`` into its usage message and exit code 2,
so each type says exactly what was wrong with the value it was given.
"""

from __future__ import annotations

import argparse
from typing import Callable

__all__ = ["positive_int", "bounded_int", "positive_float", "nonneg_float", "port"]


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
