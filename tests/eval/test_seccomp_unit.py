"""The seccomp allow-list as a program: run by a small classic-BPF interpreter written
here over every syscall number, for both architectures, and its numbers against the
kernel headers where they are installed."""

import errno
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pythoncoder.eval.sandbox import _seccomp

ALLOW, ERRNO = 0x7FFF0000, 0x00050000
EPERM, ENOSYS, EAFNOSUPPORT = (ERRNO | e for e in (errno.EPERM, errno.ENOSYS,
                                                   errno.EAFNOSUPPORT))


def run(program: bytes, nr: int, arch: int, args=(0,) * 6) -> int:
    """Classic BPF over ``struct seccomp_data`` (nr, arch, ip, args; little-endian)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args)
    code = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    for _ in range(10_000):
        op, jt, jf, k = code[pc]
        if op == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif op == 0x15:  # JEQ
            pc += 1 + (jt if acc == k else jf)
        elif op == 0x35:  # JGE
            pc += 1 + (jt if acc >= k else jf)
        elif op == 0x45:  # JSET
            pc += 1 + (jt if acc & k else jf)
        elif op == 0x06:  # RET
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
    raise AssertionError("no return")


ARCHES = sorted(_seccomp._ARCHES)


@pytest.mark.parametrize("machine", ARCHES)
def test_every_listed_call_gets_its_answer(machine):
    audit, numbers, _ = _seccomp._ARCHES[machine]
    prog = _seccomp.program(machine)
    assert len(prog) // 8 < 4096  # BPF_MAXINSNS
    allowed = {n for group in _seccomp.ALLOWED.values() for n in group}
    assert not allowed & set(_seccomp.DENIED)
    for name, nr in numbers.items():
        got = run(prog, nr, audit)
        if name in _seccomp.DENIED:
            assert got == EPERM, name
        elif name in allowed:
            assert got == ALLOW, name
        elif name == "clone3":
            assert got == ENOSYS
    known = set(numbers.values())
    for nr in range(0, 600):  # a number on neither list: ENOSYS, whatever it is
        if nr not in known:
            assert run(prog, nr, audit) == ENOSYS, nr
    assert run(prog, numbers["read"], audit ^ 1) == EPERM  # another architecture


@pytest.mark.parametrize("machine", ARCHES)
def test_argument_checks(machine):
    audit, numbers, _ = _seccomp._ARCHES[machine]
    prog = _seccomp.program(machine)
    for call in ("socket", "socketpair"):
        assert run(prog, numbers[call], audit, (1, 1, 0, 0, 0, 0)) == ALLOW  # AF_UNIX
        for family in (2, 10, 16, 17, 38, 40):  # inet, inet6, netlink, packet, alg, vsock
            assert run(prog, numbers[call], audit, (family, 1, 0, 0, 0, 0)) == EAFNOSUPPORT
    for advice in range(0, 120):
        expected = ALLOW if advice in _seccomp.MADVISE_ALLOWED else EPERM
        assert run(prog, numbers["madvise"], audit, (0, 4096, advice, 0, 0, 0)) == expected
    for cmd in range(0, 2000):  # F_SETPIPE_SZ and F_NOTIFY only
        expected = EPERM if cmd in (1031, 1026) else ALLOW
        assert run(prog, numbers["fcntl"], audit, (3, cmd, 0, 0, 0, 0)) == expected
    assert run(prog, numbers["clone"], audit, (0x11, 0, 0, 0, 0, 0)) == ALLOW  # SIGCHLD
    for flag in (0x10000000, 0x20000000, 0x40000000, 0x00020000, 0x80):  # NEW*
        assert run(prog, numbers["clone"], audit, (flag | 0x11, 0, 0, 0, 0, 0)) == EPERM


@given(st.integers(min_value=0x40000000, max_value=0x7FFFFFFF))
def test_x32_calls_are_refused_whole(nr):
    audit, _, _ = _seccomp._ARCHES["x86_64"]
    assert run(_seccomp.program("x86_64"), nr, audit) == EPERM


HEADERS = {"x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
           "aarch64": Path("/usr/include/asm-generic/unistd.h")}
# asm-generic's 64-bit names for its __NR3264_* calls
GENERIC_64 = {"fstatat": "newfstatat"}


@pytest.mark.parametrize("machine", ARCHES)
def test_numbers_match_the_kernel_headers(machine):
    header = HEADERS[machine]
    if not header.exists():
        pytest.skip(f"{header} not installed")
    text = header.read_text()
    defined = {m[0]: int(m[1]) for m in re.findall(r"#define __NR_(\w+) (\d+)\b", text)}
    defined.update({GENERIC_64.get(m[0], m[0]): int(m[1])
                    for m in re.findall(r"#define __NR3264_(\w+) (\d+)\b", text)})
    numbers = _seccomp._ARCHES[machine][1]
    checked = {n for n in numbers if n in defined}
    assert len(checked) > 0.8 * len(numbers)  # calls newer than the headers are not
    wrong = {n: (numbers[n], defined[n]) for n in checked if numbers[n] != defined[n]}
    assert not wrong, wrong
