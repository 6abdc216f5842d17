"""``pythoncoder.utils.files``: the one sha256 and the one atomic write."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythoncoder.utils.files import atomic_write, atomic_write_text, file_sha256


@settings(max_examples=20, deadline=None)
@given(st.binary(max_size=3 * (1 << 22) // 2))
def test_file_sha256_is_hashlib_over_the_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("h") / "f.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "run.json"
    atomic_write_text(path, "old")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_the_new_file_is_whole_readable_and_made_in_new_dirs(tmp_path):
    path = tmp_path / "a" / "b" / "m.json"
    atomic_write_text(path, "x" * 10_000, fsync=True)
    assert path.read_text() == "x" * 10_000
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # not mkstemp's private 0600
    atomic_write(path, lambda tmp: open(tmp, "wb").close(), mode=0o600)
    assert path.read_bytes() == b"" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]
