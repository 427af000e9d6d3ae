#!/usr/bin/env bash
# Set up a virtualenv in .venv, build d7y with its C extensions, lint, and run the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k crc32); without arguments the
# daemons' end-to-end tests run a second time on the pure-Python kernel twins
# (D7Y_NO_EXTENSIONS=1), since the kernel tests alone cannot show the daemons work there.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests run for real: the OCI registry the oci source is tested
# against (tests/registry_server.py). Installed only when missing, and only as root.
if ! command -v docker-registry >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q docker-registry >/dev/null
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
# The fuzzing test throws this many generated inputs at every port (issue 13: 20,000 in CI).
export D7Y_FUZZ_INPUTS="${D7Y_FUZZ_INPUTS:-20000}"
.venv/bin/python -m pytest
echo "--- end-to-end again on the pure-Python twins (D7Y_NO_EXTENSIONS=1) ---"
D7Y_NO_EXTENSIONS=1 .venv/bin/python -m pytest tests/test_dfdaemon_e2e.py \
    tests/test_piece_server_e2e.py tests/test_p2p_e2e.py::test_swarm_serves_the_origin_once
