"""Shared fixtures for the conformance suite."""

import jax
import pytest

from pythoncoder.testing.compile_cache import enable_test_compilation_cache
from pythoncoder.testing.precision import apply_test_policy

# NUM-02: reference checks at full fp32 matmul precision, deterministic GPU reductions.
# Before any backend starts (the model import below does not start one).
POLICY = apply_test_policy()
COMPILE_CACHE = enable_test_compilation_cache()

from pythoncoder.model import ModelConfig, build_model  # noqa: E402

pytest_plugins = ["pythoncoder.testing.conformance_plugin"]


def micro_config(**overrides) -> ModelConfig:
    """A very small fp32 config (12/4 sub-heads, GQA 3:1) for fast numeric checks."""
    base = dict(vocab_size=512, hidden_size=96, num_layers=3, head_dim=16,
                intermediate_size=128, compute_dtype="float32", remat_policy="none",
                attn_block_size=8, loss_chunk_size=32, tpu_aligned=False)
    base.update(overrides)
    return ModelConfig(name="micro", **base)


@pytest.fixture(scope="session")
def micro_cfg() -> ModelConfig:
    return micro_config()


@pytest.fixture(scope="session")
def tiny_cfg() -> ModelConfig:
    return ModelConfig.preset("tiny", compute_dtype="float32")


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
    return build_model(tiny_cfg, seed=0)


@pytest.fixture(scope="session")
def key():
    return jax.random.PRNGKey(1234)


@pytest.fixture(scope="session")
def make_micro():
    """Factory for micro configs with overrides."""
    return micro_config


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A few generated Python files, packed at seq_len 16 (train and run tests)."""
    from pythoncoder.data.prepare import prepare

    src = tmp_path_factory.mktemp("src")
    for i in range(40):
        body = "\n".join(f"    x{j} = {i} * {j} + len('{i}{j}')" for j in range(12))
        (src / f"mod_{i}.py").write_text(f"def function_{i}(a, b):\n{body}\n    return a + b\n")
    out = tmp_path_factory.mktemp("data")
    prepare([str(src)], out, seq_len=16, val_fraction=0.1, num_workers=1, progress=False)
    return out
