"""A seccomp deny-list for sandboxes, as a classic BPF program built here (no libseccomp needed).

Namespaces, no capabilities and no_new_privs already stop most of these calls; the filter removes
the kernel attack surface that stays reachable without privileges (sandbox-notes §9): tracing other
processes of the sandbox, keyrings, eBPF, perf, userfaultfd, io_uring, the mount API, and kernel
module or kexec calls. Denied calls fail with EPERM instead of killing the actor, so a program that
merely probes for a feature keeps running.

Only x86-64 is covered. On that architecture, system calls made through another ABI (i386 via
int 0x80, x32) are denied too, so the list cannot be bypassed by switching ABIs.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

# x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
DENIED_X86_64 = {
    "ptrace": 101, "syslog": 103, "uselib": 134, "pivot_root": 155, "acct": 163,
    "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
    "init_module": 175, "delete_module": 176, "quotactl": 179, "kexec_load": 246,
    "add_key": 248, "request_key": 249, "keyctl": 250, "perf_event_open": 298,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308,
    "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
    "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433,
}

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def supported() -> bool:
    return platform.machine() in ("x86_64", "amd64")


def deny_list_program(denied: dict[str, int] | None = None) -> bytes:
    """The BPF program (struct sock_filter[]) that bwrap --seccomp loads."""
    numbers = sorted(set((denied or DENIED_X86_64).values()))
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    prog = [
        _insn(_LD_W_ABS, 0, 0, 4),  # A = seccomp_data.arch
        _insn(_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),  # native: skip the next instruction
        _insn(_RET_K, 0, 0, deny),  # i386 or any other ABI: denied
        _insn(_LD_W_ABS, 0, 0, 0),  # A = seccomp_data.nr
        _insn(_JGE_K, 0, 1, X32_SYSCALL_BIT),  # x32 ABI: denied
        _insn(_RET_K, 0, 0, deny),
    ]
    for i, nr in enumerate(numbers):
        # Equal: jump to the final "deny" (past the remaining tests and the "allow").
        remaining = len(numbers) - i - 1
        prog.append(_insn(_JEQ_K, remaining + 1, 0, nr))
    prog.append(_insn(_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append(_insn(_RET_K, 0, 0, deny))
    return b"".join(prog)


def program_fd() -> int:
    """A memfd holding the program, positioned at 0, for bwrap --seccomp FD (caller closes it)."""
    fd = os.memfd_create("lightabaco-seccomp", os.MFD_CLOEXEC)
    os.write(fd, deny_list_program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
