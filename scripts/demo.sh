#!/usr/bin/env bash
# Set up a virtualenv in .venv, build d7y with its C extensions, and run the main job:
# `d7y cluster demo` starts an origin serving a generated file, a scheduler, a seed peer
# and 4 peers on loopback, downloads the file on every peer at once, checks every
# output's SHA-256 and prints who got what from where and the origin's egress.
# Arguments go to `d7y cluster demo` (--peers N, --size SIZE, --url URL, --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/d7y cluster demo "$@"
