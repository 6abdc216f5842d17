"""EVAL-04: every sandbox in a memory cgroup of its own, kernel memory included.

Each attack grows memory that no rlimit counts (the directory-entry cache, pipe buffers)
in the real sandbox and asserts that the sample's group was charged for it, capped it, and
that nothing of it stays on the host once the sample ends; its control runs the same
sample with ``memory_cgroup=False`` and shows the memory outside any cap and left behind.
Skipped where the host gives no memory cgroup (``cgroup.mode() == "none"``), except the
fallback's test, which forces that mode.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import warnings
from pathlib import Path

import pytest

from pythoncoder.eval.sandbox import (
    SandboxConfig,
    cgroup,
    isolate,
    run_program,
    run_programs,
)

MODE = cgroup.mode()
needs_cgroup = pytest.mark.skipif(MODE == "none", reason=f"no memory cgroup: {cgroup.why_none()}")
MiB = 1024**2
NAMES = 300_000  # negative dentries: ~200 bytes of kernel memory each, ~60 MiB
# stat() of names that do not exist in a directory of the host's file system (tmpfs and
# /proc do not keep negative dentries): no rlimit counts the dentries this leaves.
# Fresh names every time ({tag}): names an earlier flood left cached would cost nothing.
FLOOD = f"""
import os
for i in range({NAMES}):
    try:
        os.stat(f"/usr/lib/pythoncoder-flood-{{tag}}-{{i}}")
    except FileNotFoundError:
        pass
print("flooded")
"""
# Pipe buffers (28 pipes of 1 MiB within the open-files limit: ~29 MiB), outside RLIMIT_AS.
PIPES = """
import fcntl, os
total = 0
for i in range(28):
    r, w = os.pipe()
    fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
    os.set_blocking(w, False)
    try:
        while True:
            total += os.write(w, b"x" * 65536)
    except BlockingIOError:
        pass
print("pipes", total)
"""


def _dentries() -> int:
    return int(Path("/proc/sys/fs/dentry-state").read_text().split()[0])


def _own_usage() -> int:
    """The kernel memory charged to the harness's own memory cgroup (where a removed
    group's charges would go); kernel memory only, so the harness's own allocations and
    page cache (and anything else in its group) do not blur it."""
    own = Path(cgroup._state(SandboxConfig())[1])
    if MODE == "v1" and (own / "memory.kmem.usage_in_bytes").exists():
        return int((own / "memory.kmem.usage_in_bytes").read_text())
    if MODE == "v2":
        stat = dict(line.split() for line in (own / "memory.stat").read_text().splitlines())
        if "kernel" in stat:
            return int(stat["kernel"])
    name = "memory.usage_in_bytes" if MODE == "v1" else "memory.current"
    return int((own / name).read_text())


@pytest.fixture
def groups(monkeypatch):
    """Every group's counters just before its removal, by group."""
    seen: list[dict[str, int | None]] = []
    remove = cgroup.Group.remove

    def record(self):
        if self.path in cgroup._LIVE:
            seen.append(self.stats())
        return remove(self)

    monkeypatch.setattr(cgroup.Group, "remove", record)
    return seen


def _flood(config: SandboxConfig) -> tuple[int, int]:
    """(dentries, own usage) the flood left on the host."""
    dentries, usage = _dentries(), _own_usage()
    result = run_program(FLOOD.replace("{tag}", secrets.token_hex(8)), config)
    assert result.passed and result.stdout == "flooded\n", (result.result, config.cgroup_bytes)
    return _dentries() - dentries, _own_usage() - usage


@pytest.mark.req("EVAL-04")
@needs_cgroup
def test_a_dentry_flood_is_charged_capped_and_freed(groups):
    config = SandboxConfig(timeout_s=20.0)
    run_program("pass", config)  # the judge and the first sandboxes: not the flood's
    grown, usage = _flood(config)
    flood = max(groups, key=lambda s: s["kernel"] or 0)
    # The flood's kernel memory (~60 MiB) is charged to the sample's group...
    assert flood["kernel"] > 40 * MiB and flood["peak"] <= flood["limit"], flood
    # ... and gone from the host when the sample ends.
    assert grown < NAMES // 6 and usage < 20 * MiB, (grown, usage)
    # Capped: a 64 MiB group keeps the same flood (~90 MiB) within 64 MiB (its dentries
    # reclaimed). Not tighter: the interpreter's own pages (libpython's page cache is
    # charged to whichever group first reads a page) take up to ~35 MiB of it.
    groups.clear()
    _flood(dataclasses.replace(config, cgroup_bytes=64 * MiB))
    capped = max(groups, key=lambda s: s["peak"] or 0)
    assert capped["peak"] <= 64 * MiB == capped["limit"], capped
    # Control: without the group the dentries stay on the host after the sample.
    grown, usage = _flood(dataclasses.replace(config, memory_cgroup=False))
    assert grown > NAMES * 2 // 3 and usage > 40 * MiB, (grown, usage)


@pytest.mark.req("EVAL-04")
@needs_cgroup
def test_pipe_buffers_past_the_limit_stop_the_sample(groups):
    # The seccomp filter refuses F_SETPIPE_SZ (test_eval_sandbox_attacks.py): here the
    # group alone is under test, so the filter is off in every run.
    small = SandboxConfig(timeout_s=10.0, cgroup_bytes=16 * MiB, seccomp=False)
    stopped = run_program(PIPES, small)
    assert not stopped.passed and "pipes" not in stopped.stdout, stopped.result
    assert all(s["peak"] <= 16 * MiB for s in groups), groups
    # Control: with the default group the same pipes fill (~29 MiB, RLIMIT_AS blind)...
    fits = run_program(PIPES, SandboxConfig(timeout_s=10.0, seccomp=False))
    assert fits.passed and int(fits.stdout.split()[1]) > 16 * MiB, fits.result
    # ... and without any group they fill past the small limit too.
    weak = run_program(PIPES, SandboxConfig(timeout_s=10.0, cgroup_bytes=16 * MiB,
                                            memory_cgroup=False, seccomp=False))
    assert weak.passed and int(weak.stdout.split()[1]) > 16 * MiB, weak.result


@pytest.mark.req("EVAL-04")
@needs_cgroup
def test_no_cgroup_directory_is_left_behind():
    own = Path(cgroup._state(SandboxConfig())[1])
    before = sorted(p.name for p in own.iterdir() if p.is_dir())
    results = run_programs(["print(1)", "import os\nos.kill(os.getpid(), 9)\n",
                            "while True: pass\n", "1/0"] * 2,
                           SandboxConfig(timeout_s=1.0), workers=2)
    assert [r.passed for r in results[:4]] == [True, False, False, False], results
    after = sorted(p.name for p in own.iterdir() if p.is_dir())
    assert after == before, (before, after)
    assert not cgroup._LIVE


@pytest.mark.req("EVAL-04")
def test_without_a_memory_cgroup_one_warning_and_samples_still_run(monkeypatch):
    monkeypatch.setattr(cgroup, "_host", lambda: ("none", "", "no memory cgroup mounted"))
    monkeypatch.setattr(isolate, "_WARNED", set())
    config = SandboxConfig(timeout_s=10.0)
    assert cgroup.mode(config) == "none"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = run_programs(["print(1)", "assert 1 + 1 == 2"], config)
        run_program("pass", config)
    assert all(r.passed for r in results), [r.result for r in results]
    lines = [str(w.message) for w in caught if "memory cgroup" in str(w.message)]
    assert len(lines) == 1 and "kernel memory" in lines[0] and "rlimits only" in lines[0], lines


@pytest.mark.req("EVAL-04")
def test_mode_names_the_guarantee():
    assert MODE in ("v2", "v1", "none")
    if os.geteuid() == 0 and Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
        assert MODE in ("v2", "v1"), cgroup.why_none()
