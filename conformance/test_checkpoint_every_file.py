"""RUN-02: one flipped bit in any file of a checkpoint step is caught by its manifest.

Orbax rejects most damage by itself, which hides a verification that skips the sha256
comparison; a one-bit flip in some files (``_METADATA``, for one) restores silently.  So
every file of a saved step, the manifest and Orbax's metadata included, gets a one-bit
flip in turn (size unchanged, so only the digest can see it): verification must reject
the step naming it, and a restore must fall back to the step before with that step's
values.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pythoncoder.checkpoint import (
    MANIFEST,
    Checkpointer,
    CorruptCheckpointError,
    verify_step,
)
from pythoncoder.train.step import TrainState


def state(value: float, step: int) -> TrainState:
    params = {"w": jnp.full((16, 16), value, jnp.float32), "b": jnp.arange(4, dtype=jnp.float32)}
    return TrainState(params=params, opt_state={"mu": jax.tree.map(jnp.zeros_like, params)},
                      step=jnp.asarray(step, jnp.int32), skipped=jnp.zeros((), jnp.int32))


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.mark.req("RUN-02")
def test_a_one_bit_flip_in_any_file_of_a_step_is_rejected(tmp_path):
    saved = tmp_path / "saved"
    ckpt = Checkpointer(saved, keep=5)
    for s in (1, 2):
        ckpt.save(s, state(float(s), s), {"global_step": s})
    ckpt.close()
    step2 = saved / "checkpoints" / "2"
    files = sorted(p.relative_to(step2) for p in step2.rglob("*") if p.is_file())
    names = {p.name for p in files}
    assert MANIFEST in names and "_METADATA" in names, names  # metadata is among them
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state(0.0, 0))
    for rel in files:
        size = (step2 / rel).stat().st_size
        if size == 0:
            continue
        run = tmp_path / f"flip-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(saved, run)
        flip_bit(run / "checkpoints" / "2" / rel, size // 2)
        with pytest.raises(CorruptCheckpointError, match="step 2") as e:
            verify_step(run / "checkpoints" / "2", 2)
        if rel.name != MANIFEST:
            assert str(rel) in str(e.value)  # the digest names the damaged file
        logs: list[str] = []
        ckpt = Checkpointer(run, read_only=True)
        restored, meta = ckpt.restore(abstract, log=logs.append)
        ckpt.close()
        assert meta["global_step"] == 1, rel  # the step before, never the damaged one
        np.testing.assert_array_equal(np.asarray(restored.params["w"]),
                                      np.full((16, 16), 1.0, np.float32))
        assert len(logs) == 1 and "checkpoint step 2 is corrupt or partial" in logs[0], logs
        shutil.rmtree(run)
