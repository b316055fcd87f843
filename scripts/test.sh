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
# schemathesis 4 (the API fuzzing test) needs a newer jsonschema/openapi stack than tapipy allows, so it
# gets a virtualenv of its own; if it cannot be installed, only that test skips (and says why).
ST_VENV="${VENV}-schemathesis"
if [ ! -x "$ST_VENV/bin/schemathesis" ]; then
  echo "creating $ST_VENV for the API fuzzing test" >&2
  { "${PYTHON:-python3}" -m venv "$ST_VENV" && "$ST_VENV/bin/python" -m pip install -q 'schemathesis>=4,<5'; } >&2 \
    || echo "schemathesis could not be installed; tests/e2e/test_web_schemathesis.py will skip" >&2
fi
if [ -x "$ST_VENV/bin/schemathesis" ]; then
  export LIGHTABACO_SCHEMATHESIS="${LIGHTABACO_SCHEMATHESIS:-$ST_VENV/bin/schemathesis}"
fi
exec "$VENV/bin/python" -m pytest "$@"
