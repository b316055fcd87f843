#!/usr/bin/env bash
# Sets up everything lightabaco needs on a fresh Debian/Ubuntu machine, then starts the server on
# http://127.0.0.1:8000 (SQLite, bubblewrap, the sample images built on first run) and prints
# `export BASE=... TOKEN=...` lines to paste into another shell. Safe to run twice.
# Extra arguments go to `lightabaco serve` (--port, --home, --workers, --auth none, --no-samples ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-env.sh
exec "$VENV/bin/lightabaco" serve "$@"
