"""Issue 14's table in one run: raw bubblewrap next to the server, as root and as an ordinary user.

    sudo python bench/execution_speed.py [--user lightabaco-test] [--messages 1000] [--samples 100]

As root it runs `python -m lightabaco.bench` (sandboxes as the sandbox user), then the same again as
the ordinary user through runuser, and prints one row per user with the load before and after each.
As an ordinary user it prints that user's row only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightabaco import bench  # noqa: E402


def main() -> int:
    argv = sys.argv[1:]
    user = "lightabaco-test"
    if "--user" in argv:
        i = argv.index("--user")
        user = argv[i + 1]
        del argv[i:i + 2]
    if os.getuid() == 0:
        argv = [*argv, "--also-as", user]
    return bench.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
