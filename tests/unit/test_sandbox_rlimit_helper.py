"""The root-only helper that prlimit()s sandboxes as the sandbox user."""

from __future__ import annotations

import os
import resource
import subprocess

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the helper exists for root only")


def test_helper_limits_another_users_process_and_reports_errors():
    from lightabaco.sandbox.rlimit_helper import RlimitHelper
    from lightabaco.sandbox.users import sandbox_host_user

    user = sandbox_host_user()
    helper = RlimitHelper(user)
    target = subprocess.Popen(["sleep", "30"], user=user.uid, group=user.gid, extra_groups=[])
    try:
        helper.prlimit(target.pid, [(resource.RLIMIT_NOFILE, (33, 33)),
                                    (resource.RLIMIT_CORE, (0, 0))])
        # (Reading it back with prlimit() would itself need CAP_SYS_RESOURCE: use /proc.)
        limits = open(f"/proc/{target.pid}/limits").read()
        assert [line.split()[3:5] for line in limits.splitlines()
                if line.startswith("Max open files")] == [["33", "33"]]
        with pytest.raises(ProcessLookupError):
            helper.prlimit(2 ** 22 + 12345, [(resource.RLIMIT_NOFILE, (10, 10))])
        with pytest.raises(PermissionError):  # not the sandbox user's process: refused
            helper.prlimit(os.getpid(), [(resource.RLIMIT_NOFILE, (10, 10))])
    finally:
        target.kill()
        target.wait()
        helper.close()
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 10
