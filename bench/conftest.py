"""Collect ``bench_*.py`` so that ``pytest bench/`` finds the benchmarks.

The project's pytest configuration keeps the default ``test_*.py`` pattern for
the test-suite; benchmark modules are named ``bench_*.py`` and their functions
``test_*`` (pytest-benchmark's ``benchmark`` fixture does the timing).
"""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself.
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
