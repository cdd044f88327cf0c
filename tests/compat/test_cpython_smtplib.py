"""CPython's own test_smtplib, run with fastsmtplib in place of smtplib.

The interpreter ships ``Lib/test/test_smtplib.py``.  A copy of it, with its
``import smtplib`` line changed to ``import fastsmtplib as smtplib``, is run
with ``python -m unittest -v`` in a subprocess, once with the compiled kernels
and once with ``FASTSMTPLIB_NO_EXTENSIONS=1``.  The same file, unchanged, is
run against the stdlib as the baseline: fastsmtplib must run as many tests,
pass them all, and skip nothing the stdlib run does not skip.

The three subprocesses are started together (module-scoped fixture) so the
whole module costs about as much as one run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastsmtplib._wire import env_flag

#: Tests in test_smtplib for the Python this suite was written against.
EXPECTED_MIN_TESTS = 82
RUN_TIMEOUT = 120

_RUNNER = r"""
import sys, unittest
import {module} as _mod
sys.stderr.write("MODULE=%s HAS_EXTENSIONS=%r\n" % (_mod.__name__, getattr(_mod, "HAS_EXTENSIONS", None)))
sys.stderr.flush()
unittest.main(module=None, argv=["unittest", "-v", "test_smtplib_run"])
"""


def _cpython_test_file() -> Path | None:
    try:
        import test  # the interpreter's regression-test package
    except ImportError:
        return None
    path = Path(os.path.dirname(test.__file__)) / "test_smtplib.py"
    return path if path.is_file() else None


def _compiled_expected() -> bool:
    return not env_flag("FASTSMTPLIB_NO_EXTENSIONS") and not env_flag("FASTSMTPLIB_ALLOW_PURE")


@dataclass
class Run:
    name: str
    returncode: int
    output: str

    @property
    def ran(self) -> int:
        m = re.search(r"^Ran (\d+) tests? in ", self.output, re.M)
        assert m, f"[{self.name}] no 'Ran N tests' line:\n{self.tail()}"
        return int(m.group(1))

    @property
    def ok(self) -> bool:
        return re.search(r"^OK\b", self.output, re.M) is not None

    @property
    def skipped(self) -> set[str]:
        # unittest -v: "test_x (mod.Class.test_x) ... skipped 'why'"
        return {m.group(1) for m in re.finditer(r"^(\S+ \(.*?\)) \.\.\. skipped", self.output, re.M)}

    @property
    def has_extensions(self) -> bool | None:
        m = re.search(r"^MODULE=\S+ HAS_EXTENSIONS=(\w+)", self.output, re.M)
        assert m, f"[{self.name}] runner did not report HAS_EXTENSIONS:\n{self.tail()}"
        return {"True": True, "False": False}.get(m.group(1))

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-n:])


def _prepare(src: Path, workdir: Path, module: str) -> Path:
    text = src.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == "import smtplib"]
    assert len(hits) == 1, f"expected exactly one 'import smtplib' line in {src}, found {len(hits)}"
    if module != "smtplib":
        lines[hits[0]] = f"import {module} as smtplib\n"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "test_smtplib_run.py").write_text("".join(lines), encoding="utf-8")
    return workdir


def _env(no_extensions: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FASTSMTPLIB_NO_EXTENSIONS", None)
    env.pop("PYTHONPATH", None)  # fastsmtplib is installed; the copy is in cwd
    if no_extensions:
        env["FASTSMTPLIB_NO_EXTENSIONS"] = "1"
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    src = _cpython_test_file()
    if src is None:
        pytest.skip("this interpreter has no test package (Lib/test/test_smtplib.py)")
    base = tmp_path_factory.mktemp("cpython_smtplib")
    specs = {
        "stdlib": ("smtplib", False),
        "compiled": ("fastsmtplib", False),
        "pure": ("fastsmtplib", True),
    }
    procs = {}
    for name, (module, no_ext) in specs.items():
        cwd = _prepare(src, base / name, module)
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", _RUNNER.format(module=module)],
            cwd=cwd,
            env=_env(no_ext),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    out: dict[str, Run] = {}
    try:
        for name, proc in procs.items():
            stdout, _ = proc.communicate(timeout=RUN_TIMEOUT)
            out[name] = Run(name, proc.returncode, stdout)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def test_stdlib_baseline(runs):
    base = runs["stdlib"]
    assert base.returncode == 0 and base.ok, base.tail()
    assert base.ran >= EXPECTED_MIN_TESTS, base.tail()


@pytest.mark.parametrize("mode", ["compiled", "pure"])
def test_cpython_suite_passes_with_fastsmtplib(runs, mode):
    run, base = runs[mode], runs["stdlib"]
    assert run.returncode == 0, f"[{mode}] exit {run.returncode}:\n{run.tail()}"
    assert run.ok, run.tail()
    assert not re.search(r"^(FAIL|ERROR):", run.output, re.M), run.tail()
    assert run.ran >= EXPECTED_MIN_TESTS, run.tail()
    assert run.ran == base.ran, f"[{mode}] ran {run.ran} tests, the stdlib run {base.ran}"
    extra_skips = run.skipped - base.skipped
    assert not extra_skips, f"[{mode}] skipped tests the stdlib run does not skip: {sorted(extra_skips)}"


def test_modes_use_the_intended_kernels(runs):
    assert runs["pure"].has_extensions is False, runs["pure"].tail()
    if _compiled_expected():
        assert runs["compiled"].has_extensions is True, (
            "compiled mode ran without the compiled kernels "
            "(set FASTSMTPLIB_ALLOW_PURE=1 if that is intended)\n" + runs["compiled"].tail()
        )
