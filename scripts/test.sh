#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian/Ubuntu machine, then runs it.
# Safe to run twice. Extra arguments go to pytest (e.g. `scripts/test.sh tests/unit -q`).
# The first run builds the sample images' Debian base (about 30 s) into $LIGHTABACO_TEST_CACHE
# (default /var/tmp/lightabaco-test-<uid>); later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
# The podman backend and the podman-built image tests run when podman is there (they skip otherwise);
# postgresql gives the PostgreSQL store tests and the e2e suite's PostgreSQL pass their initdb cluster;
# passt/slirp4netns the outbound network mode; chromium the dashboard's browser tests.
EXTRA_APT_PACKAGES="podman runc uidmap passt slirp4netns chromium postgresql slurm-wlm munge"
source scripts/setup-env.sh
exec "$VENV/bin/python" -m pytest "$@"
