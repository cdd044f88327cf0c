#!/usr/bin/env bash
# Install everything the tests need and run them: the suite compiled, the suite
# pure Python, then a benchmark smoke run (each benchmark once, no timing asserted).
#
# It works the same on a fresh CI machine and in a person's checkout:
# - Postfix (for smtp-sink and a private smtpd) comes from apt when missing.
# - The package and its test dependencies go into a virtualenv of their own
#   (FASTSMTPLIB_TEST_VENV, default build/test-venv, made fresh on each run), as
#   a normal (not editable) install: whatever Python environment you run this
#   from is left alone, and nothing is written into src/ (the generated C and
#   the build go under build/, which git ignores).
# - The tests run from the repository root against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ ! -x /usr/sbin/smtp-sink ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postfix
fi
VENV=${FASTSMTPLIB_TEST_VENV:-$ROOT/build/test-venv}
PY=${PYTHON:-python3}
rm -rf "$VENV"
"$PY" -m venv "$VENV"
# Not "source activate": that needs an unset-variable-tolerant shell.
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
python -m pip install -q --upgrade pip
# A compile failure must fail the run, not fall back to pure Python silently.
FASTSMTPLIB_REQUIRE_EXTENSIONS=1 python -m pip install -q ".[test]"
cd "$ROOT"
python -c "import fastsmtplib, fastsmtplib._engine as e; assert fastsmtplib.HAS_EXTENSIONS and e.HAS_COMPILED_ENGINE, 'compiled modules did not load'; print('testing', fastsmtplib.__file__)"
python -m pytest tests -q -p no:cacheprovider
FASTSMTPLIB_NO_EXTENSIONS=1 python -m pytest tests -q -p no:cacheprovider
python -m pytest bench --benchmark-disable -q -p no:cacheprovider
# The run must leave the source tree as it found it (no build files in src/).
if [ -n "$(git -C "$ROOT" status --porcelain --ignored -- src 2>/dev/null | grep -v __pycache__ || true)" ]; then
  echo "ci/test.sh: files left in src/:" >&2
  git -C "$ROOT" status --porcelain --ignored -- src >&2
  exit 1
fi
