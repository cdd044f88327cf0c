#!/usr/bin/env bash
# Install everything the tests need, build the extension, run the suite compiled
# and pure, then a benchmark smoke run (no timing asserted).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/sbin/smtp-sink ]; then
  apt-get update -qq
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix
fi
python3 -m pip install -q "Cython>=3.0" setuptools wheel
FASTSMTPLIB_REQUIRE_EXTENSIONS=1 python3 -m pip install -q --no-build-isolation -e ".[test]"
python3 setup.py -q build_ext --inplace
python3 -m pytest tests -q -p no:cacheprovider
FASTSMTPLIB_NO_EXTENSIONS=1 python3 -m pytest tests -q -p no:cacheprovider
python3 -m pytest bench --benchmark-disable -q -p no:cacheprovider
