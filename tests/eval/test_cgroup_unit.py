"""The pure parts of ``sandbox/cgroup.py``: /proc/self/cgroup and mountinfo parsing, mode
detection against a fake /sys/fs/cgroup tree, the limit, the join prefix."""

from __future__ import annotations

import subprocess

from pythoncoder.eval.sandbox import SandboxConfig, cgroup

V1_CGROUP = """9:name=systemd:/
4:memory:/process_api/abc
2:cpu,cpuacct:/
0::/
"""
V2_CGROUP = "0::/user.slice/run-1.scope\n"


def _mountinfo(root, v2=True, v1=True, v2_root="/"):
    lines = [f"31 23 0:28 / {root} rw,relatime - tmpfs tmpfs rw,mode=755"]
    if v1:
        lines.append(f"35 31 0:31 / {root}/memory rw,relatime - cgroup cgroup rw,memory")
        lines.append(f"36 31 0:32 / {root}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct")
    if v2:
        lines.append(f"40 31 0:35 {v2_root} {root}/unified rw - cgroup2 cgroup2 rw")
    return "\n".join(lines) + "\n"


def test_parse_proc_cgroup():
    groups = cgroup.parse_proc_cgroup(V1_CGROUP)
    assert groups["memory"] == "/process_api/abc"
    assert groups["systemd"] == "/" and groups["cpuacct"] == "/" and groups[""] == "/"
    assert cgroup.parse_proc_cgroup(V2_CGROUP) == {"": "/user.slice/run-1.scope"}
    assert cgroup.parse_proc_cgroup("garbage\n") == {}


def test_parse_mountinfo_keeps_cgroup_mounts_only():
    mounts = cgroup.parse_mountinfo(_mountinfo("/sys/fs/cgroup"))
    assert [(m[1], m[2]) for m in mounts] == [
        ("/sys/fs/cgroup/memory", "cgroup"), ("/sys/fs/cgroup/cpu,cpuacct", "cgroup"),
        ("/sys/fs/cgroup/unified", "cgroup2")]
    assert "memory" in mounts[0][3]


def _tree(tmp_path, v2_controllers="hugetlb"):
    own_v1 = tmp_path / "memory" / "process_api" / "abc"
    own_v1.mkdir(parents=True)
    (own_v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text(v2_controllers + "\n")
    return own_v1


def test_v1_when_only_v1_has_the_memory_controller(tmp_path):
    own = _tree(tmp_path)  # v2 mounted but without memory (this project's CI machine)
    mode, path, why = cgroup.detect(V1_CGROUP, _mountinfo(tmp_path))
    assert (mode, path, why) == ("v1", str(own), "")


def test_v2_preferred_when_it_offers_memory(tmp_path):
    _tree(tmp_path, v2_controllers="cpu io memory pids")
    mode, path, _ = cgroup.detect(V1_CGROUP, _mountinfo(tmp_path))
    assert (mode, path) == ("v2", str(tmp_path / "unified"))


def test_v2_own_directory_under_a_delegated_subtree(tmp_path):
    own = tmp_path / "unified" / "user.slice" / "run-1.scope"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("memory pids\n")
    mode, path, _ = cgroup.detect(V2_CGROUP, _mountinfo(tmp_path, v1=False))
    assert (mode, path) == ("v2", str(own))
    # A container's mount of a sub-tree: the path is taken relative to the mount's root.
    inner = tmp_path / "unified" / "run-1.scope"
    inner.mkdir()
    (inner / "cgroup.controllers").write_text("memory\n")
    mode, path, _ = cgroup.detect(V2_CGROUP, _mountinfo(tmp_path, v1=False,
                                                        v2_root="/user.slice"))
    assert (mode, path) == ("v2", str(inner))


def test_none_without_write_access_and_the_reason(tmp_path):
    _tree(tmp_path, v2_controllers="memory")
    mode, path, why = cgroup.detect(V1_CGROUP, _mountinfo(tmp_path), writable=lambda p: False)
    assert (mode, path) == ("none", "")
    assert "not writable (no delegation)" in why and "not writable (not root)" in why


def test_none_without_any_memory_cgroup(tmp_path):
    _tree(tmp_path)
    assert cgroup.detect(V1_CGROUP, _mountinfo(tmp_path, v1=False))[0] == "none"
    assert cgroup.detect("", "")[2] == "no memory cgroup mounted"


def test_config_can_ask_for_none():
    config = SandboxConfig(memory_cgroup=False)
    assert cgroup.mode(config) == "none" and "disabled" in cgroup.why_none(config)
    assert cgroup.create(config) is None


def test_limit_default_and_override():
    config = SandboxConfig(memory_bytes=1 << 30, work_bytes=1 << 26)
    assert cgroup.limit_bytes(config) == (1 << 30) + (1 << 26) + cgroup.HEADROOM
    assert cgroup.limit_bytes(SandboxConfig(cgroup_bytes=123 << 20)) == 123 << 20


def test_prefix_joins_then_execs(tmp_path):
    group = cgroup.Group.__new__(cgroup.Group)
    group.path = str(tmp_path)
    out = subprocess.run([*group.prefix(), "sh", "-c", "echo $$"], capture_output=True,
                         text=True, check=True)
    assert (tmp_path / "cgroup.procs").read_text().strip() == out.stdout.strip()  # one pid
    # A group it cannot join: the command never runs (exit 125).
    group.path = str(tmp_path / "missing")
    failed = subprocess.run([*group.prefix(), "echo", "ran"], capture_output=True, text=True)
    assert failed.returncode == 125 and "ran" not in failed.stdout
