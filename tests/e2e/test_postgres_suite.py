"""The end-to-end API suite a second time, on PostgreSQL.

The modules below drive live servers (tests/fixtures/server.py) through the whole API: actors, messages,
executions, logs, results, recovery after SIGKILL, sharing, nonces, aliases, events, cron, tapipy.
Here they run again in a pytest subprocess with LIGHTABACO_TEST_DATABASE=postgres, so every server of
that run keeps its state in its own database of an initdb cluster instead of a SQLite file. Modules
that poke at SQLite's files themselves (test_security_availability) or test only the sandbox stay out.

Run the pass alone: `LIGHTABACO_TEST_DATABASE=postgres .venv/bin/python -m pytest <modules>`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.postgres import database_choice, postgres_missing

ROOT = Path(__file__).resolve().parents[2]

API_MODULES = [
    "tests/e2e/test_service_api.py",
    "tests/e2e/test_service_recovery.py",
    "tests/e2e/test_sharing_events_cron.py",
    "tests/e2e/test_sharing_multiuser.py",
    "tests/e2e/test_security_messages.py",
    "tests/e2e/test_security_sharing.py",
    "tests/e2e/test_tapipy_client.py",
]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_api_suite_passes_on_postgres() -> None:
    if database_choice() == "postgres":
        pytest.skip("this run is already the PostgreSQL pass")
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, LIGHTABACO_TEST_DATABASE="postgres")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
                           *API_MODULES], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=1800)
    took = time.monotonic() - start
    out = proc.stdout.decode(errors="replace")
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    print(f"PostgreSQL pass: {summary[-1] if summary else 'no summary'} in {took:.0f} s")
    assert proc.returncode == 0, f"the API suite failed on PostgreSQL:\n{out[-12000:]}"
    assert summary and " passed" in summary[-1] and "failed" not in summary[-1]
