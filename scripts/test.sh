#!/usr/bin/env bash
# Set up a virtualenv in .venv, build d7y with its C extensions, and run the test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k crc32).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
