#!/usr/bin/env bash
# Set up a virtualenv in .venv, build d7y with its C extensions, and run the main job:
# `d7y pieces` cuts a file into pieces, hashes them with the CRC-32 kernel (against
# zlib as the anchor) and sends them over loopback with sendfile, verifying each piece.
# Arguments go to `d7y pieces` (a FILE, --generate SIZE, --piece-length SIZE).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/d7y pieces "$@"
