#!/usr/bin/env bash
# Set up a virtualenv in .venv, build d7y with its C extensions, lint, and run the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k crc32); without arguments the
# daemons' end-to-end tests run a second time on the pure-Python kernel twins
# (D7Y_NO_EXTENSIONS=1), since the kernel tests alone cannot show the daemons work there.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests run for real: docker-registry (the oci source's tests,
# tests/registry_server.py, and the registry mirror's), the proxy's real clients (curl,
# skopeo, aria2, containerd), nginx (the proxy's plain and HTTPS test origins,
# tests/nginx_origin.py), PostgreSQL (the manager's tests run on SQLite and on a
# PostgreSQL server they start themselves), redis-server (the manager's Redis job queue,
# started by the tests on a private port) and Chromium (the manager console's tests drive
# it headless over the DevTools protocol, tests/cdp.py). Installed only when missing, and
# only as root.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    missing=""
    for pkg in docker-registry:docker-registry curl:curl skopeo:skopeo aria2c:aria2 \
        containerd:containerd nginx:nginx-light redis-server:redis-server chromium:chromium; do
        command -v "${pkg%%:*}" >/dev/null 2>&1 || missing="$missing ${pkg##*:}"
    done
    if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
    then
        missing="$missing postgresql"
    fi
    if [ -n "$missing" ]; then
        apt-get update -q >/dev/null
        # shellcheck disable=SC2086  # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null
    fi
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
# The simulator's tests again on the network model's Python twin (d7y.sim._network_py):
# the first pass ran them on the compiled one. (test_sim_network_twins.py compares the two
# in one process; test_sim_sweep.py and test_sim_cli.py do not reach the model's code
# paths any differently.)
# The piece picker's, the download loop's and the simulator driver's tests likewise on
# their Python source (the first pass ran their pure-mode builds, setup.py PURE_MODE).
echo "--- the simulator's, picker's and download loop's tests on the Python twins ---"
D7Y_NO_EXTENSIONS=1 .venv/bin/python -m pytest tests/test_sim_network.py \
    tests/test_sim_correctness.py tests/test_sim_unchanged.py tests/test_sim_determinism.py \
    tests/test_sim_scenario.py tests/test_sim_gc.py tests/test_sim_cut_through.py \
    tests/test_scheduling_picker.py tests/test_download_loop.py tests/test_core_compiled_twins.py
