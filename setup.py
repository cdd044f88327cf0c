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


def engine_extensions(cythonize):
    """The compiled twins of the engine and its encoder, from their pure sources.

    One set of rules: ``_engine_py.py`` and ``_envelope_py.py`` are compiled in
    Cython's pure-Python mode with their augmenting ``.pxd`` (C-typed state)
    as ``fastsmtplib._engine_c`` and ``_envelope_c``.  Cython takes a module's
    name and its ``.pxd`` from the file name, so each pair is copied under
    build/cython/fastsmtplib/ as ``_engine_c.py``/``.pxd`` (...), and the C is
    generated there.  If this fails the byte kernels are still built.
    """
    import shutil

    out = os.path.join("build", "cython", "fastsmtplib")
    exts = []
    try:
        os.makedirs(out, exist_ok=True)
        for pure, compiled in (("_envelope_py", "_envelope_c"), ("_engine_py", "_engine_c")):
            for ext in ("py", "pxd"):
                src = os.path.join("src", "fastsmtplib", pure + "." + ext)
                dst = os.path.join(out, compiled + "." + ext)
                # Copy only when changed, so an unchanged source is not recompiled.
                if not os.path.exists(dst) or open(src, "rb").read() != open(dst, "rb").read():
                    shutil.copyfile(src, dst)
            exts.append(Extension("fastsmtplib." + compiled, [os.path.join(out, compiled + ".py")]))
        return cythonize(exts, compiler_directives={"language_level": "3"}, quiet=True,
                         include_path=[os.path.join("build", "cython")])
    except Exception as exc:
        if REQUIRE_EXT:
            raise
        sys.stderr.write("fastsmtplib: compiled engine not built (%s); its pure twin is used\n" % exc)
        return []


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
    try:
        # The generated C goes under build/, never into src/: an install or a test
        # run must not leave files in the source tree.
        exts = cythonize(exts, compiler_directives={"language_level": "3"}, quiet=True,
                         build_dir="build/cython")
    except Exception as exc:
        if REQUIRE_EXT:
            raise
        sys.stderr.write("fastsmtplib: cythonize failed (%s); pure Python only\n" % exc)
        return []
    return exts + engine_extensions(cythonize)


# Metadata (egg-info) also goes under build/ rather than next to the package in src/.
os.makedirs("build", exist_ok=True)
setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    options={"egg_info": {"egg_base": "build"}},
)
