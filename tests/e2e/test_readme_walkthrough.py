"""The README cannot rot: its walkthrough (every ```bash block, in order) runs against a live server.

Blocks fenced as ```sh are the set-up commands and examples that need other context; they are not run
here (the set-up path has its own test in test_readme_setup.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def walkthrough_script(readme: Path = ROOT / "README.md") -> str:
    blocks = re.findall(r"^```bash\n(.*?)^```", readme.read_text(), re.S | re.M)
    assert len(blocks) >= 8, "the README walkthrough lost its bash blocks"
    return "set -euo pipefail\n" + "\n".join(blocks)


def test_walkthrough_runs_verbatim(sample_server):
    env = {**os.environ, "BASE": sample_server.url, "TOKEN": sample_server.token,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.startswith("LIGHTABACO_")}
    proc = subprocess.run(["bash", "-c", walkthrough_script()], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    out = proc.stdout
    assert proc.returncode == 0, f"walkthrough failed ({proc.returncode}):\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    # What each section promises the reader:
    assert '"execution_id"' in out                       # send a message
    assert "Number of words: 4" in out                   # logs of "count these four words"
    assert re.search(r"^4$", out, re.M)                  # its result
    assert '"total_executions": 2' in out                # list executions
    assert re.search(r"^3$", out, re.M)                  # the synchronous answer to "one two three"
    assert '"brightness": "medium"' in out               # the binary message's JSON result
    assert '"cron_on": true' in out and '"cron_on": false' in out
    assert "wc" in out and "READY" in out                # lightabaco actors list
    assert re.search(r"^5$", out, re.M)                  # lightabaco send --sync
    assert "Number of words: 3" in out                   # lightabaco logs
    assert "deleted" in out
    assert "Contents of MSG: hello from tapipy" in out    # tapipy, unmodified


def test_readme_promises_the_two_commands():
    text = (ROOT / "README.md").read_text()
    setup = re.search(r"^```sh\n(.*?)^```", text, re.S | re.M).group(1)
    assert [line.split()[0] for line in setup.strip().splitlines()] == ["scripts/serve.sh", "scripts/test.sh"]
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
