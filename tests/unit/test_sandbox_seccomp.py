"""The hand-built BPF deny-list, checked by interpreting it."""

from __future__ import annotations

import errno
import struct

from lightabaco.sandbox.seccomp import (AUDIT_ARCH_X86_64, DENIED_X86_64, SECCOMP_RET_ALLOW,
                                        SECCOMP_RET_ERRNO, deny_list_program)


def run_bpf(prog: bytes, nr: int, arch: int = AUDIT_ARCH_X86_64) -> int:
    """A tiny interpreter for the four instructions the program uses."""
    insns = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    data = {0: nr, 4: arch}
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = data[k]
            pc += 1
        elif code == 0x15:
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x35:
            pc += 1 + (jt if acc >= k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected BPF code {code:#x}")


def test_denied_calls_get_eperm_others_pass():
    prog = deny_list_program()
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    for name, nr in DENIED_X86_64.items():
        assert run_bpf(prog, nr) == deny, name
    for nr in (0, 1, 2, 39, 56, 57, 59, 60, 231, 435):  # read, write, open, getpid, clone, ...
        assert run_bpf(prog, nr) == SECCOMP_RET_ALLOW, nr


def test_other_abis_are_denied():
    prog = deny_list_program()
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    assert run_bpf(prog, 20, arch=0x40000003) == deny  # i386
    assert run_bpf(prog, 0x40000000 + 1) == deny  # x32 write
