"""``python -m fastsmtplib <command>``: the command line lives in ``cli.py``.

``main`` is also the ``fastsmtplib`` console script (pyproject.toml).
"""

from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
