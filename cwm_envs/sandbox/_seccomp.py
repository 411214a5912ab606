"""The seccomp filter of the `local` sandbox: a classic-BPF program that bubblewrap loads (`--seccomp FD`)
into the fork-server, so every process of the jail inherits it.

What it refuses, and why (each is kernel attack surface that no sandboxed program needs):
- new namespaces: `unshare` and `clone` with any CLONE_NEW* flag, and `setns`. A new user namespace gives
  its creator every capability inside it, which opens mount, netfilter and other code paths of the kernel
  to unprivileged code.
- io_uring (`io_uring_setup/enter/register`), `userfaultfd`, the key store (`keyctl`, `add_key`,
  `request_key`: a uid's keyring would also outlive the jail and leak into the next episode), `bpf`, and
  `perf_event_open`.
Refused calls fail with EPERM; the calling process goes on (nothing is killed). `clone3` passes its flags in
memory a filter cannot read, so it fails with ENOSYS, which makes the C library fall back to `clone` (whose
flags are checked). Calls through another ABI (i386 `int 0x80` on x86_64, the x32 ABI, 32-bit ARM) use other
syscall numbers, so the filter checks the architecture first and refuses them all.

Built here rather than with libseccomp: the program is some thirty instructions, and the Python bindings of
libseccomp on PyPI either compile against its headers or are an unmaintained ctypes wrapper.
"""
from __future__ import annotations

import errno
import platform
import struct

# Classic BPF (linux/bpf_common.h): the accumulator A, absolute loads from struct seccomp_data.
LD_W_ABS = 0x20    # A = 32-bit word at offset k of seccomp_data
JEQ = 0x15         # if A == k: skip jt instructions, else skip jf
JGE = 0x35         # if A >= k: ...
JSET = 0x45        # if A & k: ...
RET = 0x06         # return k: the verdict

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000   # | errno: the call fails with that errno, the process lives on

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]. Both supported machines are
# little-endian, so the low half of args[0] (all the flags of clone/unshare) sits at offset 16.
NR, ARCH, ARG0_LOW = 0, 4, 16

CLONE_NEWTIME = 0x00000080     # unshare only: in clone() these bits are the exit signal
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NS_FLAGS_CLONE = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID \
    | CLONE_NEWNET
NS_FLAGS_UNSHARE = NS_FLAGS_CLONE | CLONE_NEWTIME

X32_SYSCALL_BIT = 0x40000000   # x86_64: numbers at or above it are the x32 ABI

REFUSED = ("setns", "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd", "keyctl", "add_key",
           "request_key", "bpf", "perf_event_open")

# machine -> (AUDIT_ARCH_*, syscall numbers): asm/unistd_64.h on x86_64, asm-generic/unistd.h on aarch64.
SYSCALLS = {
    "x86_64": (0xC000003E, {"clone": 56, "unshare": 272, "clone3": 435, "setns": 308, "io_uring_setup": 425,
                            "io_uring_enter": 426, "io_uring_register": 427, "userfaultfd": 323, "keyctl": 250,
                            "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298}),
    "aarch64": (0xC00000B7, {"clone": 220, "unshare": 97, "clone3": 435, "setns": 268, "io_uring_setup": 425,
                             "io_uring_enter": 426, "io_uring_register": 427, "userfaultfd": 282, "keyctl": 219,
                             "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241}),
}
SYSCALLS["arm64"] = SYSCALLS["aarch64"]
SYSCALLS["amd64"] = SYSCALLS["x86_64"]


def assemble(lines: list) -> bytes:
    """Encode a program as struct sock_filter[]: each line is a label (str) or (code, k, jt, jf), where jt and jf
    name the label to jump to (None: the next instruction). BPF jumps go forward only, by at most 255."""
    labels, insns = {}, []
    for line in lines:
        if isinstance(line, str):
            labels[line] = len(insns)
        else:
            insns.append(line)

    def offset(pc: int, target: str | None) -> int:
        if target is None:
            return 0
        skip = labels[target] - pc - 1
        if not 0 <= skip <= 255:
            raise ValueError(f"jump from {pc} to {target!r} is out of reach")
        return skip

    return b"".join(struct.pack("=HBBI", code, offset(pc, jt), offset(pc, jf), k)
                    for pc, (code, k, jt, jf) in enumerate(insns))


def program(machine: str | None = None) -> bytes | None:
    """The filter for `machine` (default: this one), or None where its syscall numbers are not known here."""
    machine = machine or platform.machine()
    if machine not in SYSCALLS:
        return None
    arch, nr = SYSCALLS[machine]
    lines = [
        (LD_W_ABS, ARCH, None, None),
        (JEQ, arch, None, "refuse"),                      # another ABI: other numbers, refuse everything
        (LD_W_ABS, NR, None, None),
    ]
    if machine in ("x86_64", "amd64"):
        lines.append((JGE, X32_SYSCALL_BIT, "refuse", None))
    lines += [(JEQ, nr[name], "refuse", None) for name in REFUSED]
    lines += [
        (JEQ, nr["clone"], "clone_flags", None),
        (JEQ, nr["unshare"], "unshare_flags", None),
        (JEQ, nr["clone3"], "no_such_call", None),
        (RET, RET_ALLOW, None, None),
        "clone_flags",
        (LD_W_ABS, ARG0_LOW, None, None),
        (JSET, NS_FLAGS_CLONE, "refuse", "allow"),
        "unshare_flags",
        (LD_W_ABS, ARG0_LOW, None, None),
        (JSET, NS_FLAGS_UNSHARE, "refuse", "allow"),
        "allow",
        (RET, RET_ALLOW, None, None),
        "no_such_call",
        (RET, RET_ERRNO | errno.ENOSYS, None, None),
        "refuse",
        (RET, RET_ERRNO | errno.EPERM, None, None),
    ]
    return assemble(lines)
