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


NOTIFY = 0x7FC00000  # SECCOMP_RET_USER_NOTIF


def _cases(numbers):
    """Every number 0..599 with plain arguments, and the argument checks' cases."""
    for nr in range(600):
        yield nr, (0,) * 6
    for family in (1, 2, 10, 16, 40):
        yield numbers["socket"], (family, 1, 0, 0, 0, 0)
    for cmd in (1, 1026, 1031, 1032):
        yield numbers["fcntl"], (3, cmd, 0, 0, 0, 0)
    for advice in (3, 4, 21):
        yield numbers["madvise"], (0, 4096, advice, 0, 0, 0)
    for flags in (0x11, 0x10000011):
        yield numbers["clone"], (flags, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("machine", ARCHES)
def test_the_notifying_filter_refuses_what_the_plain_one_refuses(machine):
    audit, numbers, _ = _seccomp._ARCHES[machine]
    plain = _seccomp.program(machine)
    outer = _seccomp.program(machine, notify=True)
    sealed = _seccomp.program(machine, notify=True, sealed=True)
    seccomp = numbers["seccomp"]
    for nr, args in _cases(numbers):
        want = run(plain, nr, audit, args)
        got, inner = run(outer, nr, audit, args), run(sealed, nr, audit, args)
        if nr == seccomp:  # loadable under bwrap's filter, never under the sealed one
            assert (want, got, inner) == (ENOSYS, ALLOW, EPERM)
        elif want == ALLOW or nr == numbers["clone3"]:  # clone3: the C library's probe
            assert got == inner == want, (nr, args)
        else:  # every other refusal goes to the listener, which answers ``want``
            assert want & 0xFFFF0000 == ERRNO and got == inner == NOTIFY, (nr, args)
            data = struct.pack("<iIQ6Q", nr, audit, 0, *args)
            assert _seccomp.errno_for(data, machine) == want & 0xFFFF, (nr, args)
    # another architecture's or ABI's call: the kernel answers, no notification
    assert run(outer, numbers["read"], audit ^ 1) == EPERM
    if machine == "x86_64":
        assert run(outer, 0x40000000, audit) == EPERM


@given(st.sampled_from(ARCHES), st.integers(0, 700),
       st.lists(st.integers(0, 2**64 - 1), min_size=6, max_size=6))
def test_the_module_interpreter_agrees_with_this_one(machine, nr, args):
    audit = _seccomp._ARCHES[machine][0]
    data = struct.pack("<iIQ6Q", nr, audit, 0, *args)
    for prog in (_seccomp.program(machine), _seccomp.program(machine, notify=True)):
        assert _seccomp.run_filter(prog, data) == run(prog, nr, audit, args)


def test_refused_calls_are_named():
    audit, numbers, _ = _seccomp._ARCHES["x86_64"]

    def name(call, *args):
        nr = numbers[call] if isinstance(call, str) else call
        args = (*args, *(0,) * (6 - len(args)))
        return _seccomp.refusal(struct.pack("<iIQ6Q", nr, audit, 0, *args), "x86_64")

    assert name("ptrace") == "ptrace" and name("setxattr") == "setxattr"
    assert name("socket", 2) == "socket(AF_INET)" and name("socketpair", 40) \
        == "socketpair(AF_VSOCK)" and name("socket", 77) == "socket(family 77)"
    assert name("fcntl", 3, 1031) == "fcntl(F_SETPIPE_SZ)" and name("fcntl", 3, 1026) \
        == "fcntl(F_NOTIFY)"
    assert name("madvise", 0, 4096, 21) == "madvise(advice 21)"
    assert name("clone", 0x10000011) == "clone(CLONE_NEW*)"
    assert name(599) == "system call 599"


def test_every_number_names_one_call():
    for machine in ARCHES:
        numbers = _seccomp._ARCHES[machine][1]
        assert len(set(numbers.values())) == len(numbers), machine
        assert _seccomp.number("seccomp", machine) == numbers["seccomp"]


def test_the_summary_names_a_few_and_counts_the_rest():
    from pythoncoder.eval.sandbox import notify

    listener = notify.Listener(-1)
    assert listener.summary() == ""
    listener.refused = ["ptrace", "socket(AF_INET)"]
    assert listener.summary() == "the sandbox refused ptrace, socket(AF_INET)"
    listener.refused = [f"c{i}" for i in range(notify.MAX_NAMED + 2)]
    listener.count = notify.MAX_NOTICES
    assert listener.summary() == ("the sandbox refused c0, c1, c2, c3, c4, c5 and 2 other "
                                  f"calls ({notify.MAX_NOTICES}+ refusals; the rest unnamed)")


def test_a_bwrap_host_without_notifications_is_told_once(monkeypatch):
    from pythoncoder.eval.sandbox import SandboxConfig, isolate, notify

    monkeypatch.setattr(notify, "supported", lambda: True)
    named = isolate._missing_mechanisms(SandboxConfig(), "bwrap")
    monkeypatch.setattr(notify, "supported", lambda: False)
    unnamed = isolate._missing_mechanisms(SandboxConfig(), "bwrap")
    if _seccomp.program() is None:
        pytest.skip("no filter for this machine: the no-filter warning covers it")
    assert [t for t in unnamed if t not in named] == [
        "refused system calls are not named in verdicts (the kernel has no seccomp "
        "notifications, Linux 5.0): they are still refused, with the same errno"]
