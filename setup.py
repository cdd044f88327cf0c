"""Build the optional Cython kernels; fall back to pure Python when they cannot be built.

FASTSMTPLIB_NO_EXTENSIONS=1 skips the extension; FASTSMTPLIB_REQUIRE_EXTENSIONS=1
turns a failed compile into a failed install.  Everything else is in pyproject.toml.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


NO_EXT = env_flag("FASTSMTPLIB_NO_EXTENSIONS")
REQUIRE_EXT = env_flag("FASTSMTPLIB_REQUIRE_EXTENSIONS")


class OptionalBuildExt(build_ext):
    """build_ext that warns and goes on without the extension if compiling fails."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers, ...
            self._fallback(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc):
        if REQUIRE_EXT:
            raise
        sys.stderr.write(
            "\n*** fastsmtplib: could not compile the Cython extension (%s);\n"
            "*** installing the pure-Python implementation instead.\n"
            "*** Set FASTSMTPLIB_REQUIRE_EXTENSIONS=1 to make this an error.\n\n" % exc
        )


def engine_extension():
    """The compiled twins of the engine and its encoder, from their pure sources.

    One set of rules: ``_engine_py.py`` and ``_envelope_py.py`` are compiled in
    Cython's pure-Python mode with their augmenting ``.pxd`` (C-typed state)
    as ``fastsmtplib._engine_c`` and ``_envelope_c``.  Cython takes a module's
    name and its ``.pxd`` from the file name, so both are copied under build/
    as ``_engine_c.py``/``.pxd`` (...); the generated C stays there too.
    """
    import shutil

    out = os.path.join("build", "cython", "fastsmtplib")
    os.makedirs(out, exist_ok=True)
    exts = []
    for pure, compiled in (("_envelope_py", "_envelope_c"), ("_engine_py", "_engine_c")):
        for ext in ("py", "pxd"):
            src = os.path.join("src", "fastsmtplib", pure + "." + ext)
            dst = os.path.join(out, compiled + "." + ext)
            # Copy only when changed, so an unchanged source is not recompiled.
            if not os.path.exists(dst) or open(src, "rb").read() != open(dst, "rb").read():
                shutil.copyfile(src, dst)
        exts.append(Extension("fastsmtplib." + compiled, [os.path.join(out, compiled + ".py")]))
    return exts


def extensions():
    if NO_EXT:
        sys.stderr.write("fastsmtplib: FASTSMTPLIB_NO_EXTENSIONS set; building pure Python only\n")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        if REQUIRE_EXT:
            raise
        sys.stderr.write("fastsmtplib: Cython unavailable (%s); pure Python only\n" % exc)
        return []
    exts = [Extension("fastsmtplib._wire_c", ["src/fastsmtplib/_wire_c.pyx"])]
    exts += engine_extension()
    try:
        return cythonize(exts, compiler_directives={"language_level": "3"}, quiet=True,
                         include_path=[os.path.join("build", "cython")])
    except Exception as exc:
        if REQUIRE_EXT:
            raise
        sys.stderr.write("fastsmtplib: cythonize failed (%s); pure Python only\n" % exc)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
