"""An outside reader of exports: ``examples/numpy_forward.py`` (NumPy only, float64, from
the README's names and layouts) must give pythoncoder's logits (issue 28).

The export round trip (``test_export_unit.py``) cannot see a layout the writer and the
loader agree on but the README does not (say every kernel written ``[out, in]`` and
transposed back on load); a reader that knows nothing but the documented layout can.
The model's parameters are drawn at random with unit-scale norms, lambdas and logits,
so that a wrong norm, lambda, head pairing, RoPE half or row mapping changes the logits
by far more than the tolerance.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numpy.testing import assert_allclose

from pythoncoder.export import export_weights
from pythoncoder.model import ModelConfig, build_model

pytest.importorskip("safetensors")

REPO = Path(__file__).resolve().parents[2]
READER = REPO / "examples" / "numpy_forward.py"


def reader():
    spec = importlib.util.spec_from_file_location("numpy_forward", READER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _NoTokenizer:
    def save(self, path: str) -> None:
        Path(path).write_text("{}")


def randomized(cfg: ModelConfig, seed: int):
    """A model whose every parameter is random at a scale where it matters: kernels with
    unit-variance outputs, norm scales around 1 (not all 1), lambda vectors giving lambda
    across (0, 1), embeddings of unit size."""
    model = build_model(cfg, seed=seed)
    graphdef, state = nnx.split(model)
    keys = iter(jax.random.split(jax.random.key(seed + 1), 1000))

    def draw(path, x):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        name = [n for n in names if n != "value"][-1]
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        z = jax.random.normal(next(keys), x.shape, x.dtype)
        if name == "scale":
            return 1.0 + 0.3 * z
        if name.startswith("lambda_"):
            return 0.4 * z
        if name == "embedding":
            return z
        return z / np.sqrt(x.shape[-2])  # a kernel [.., in, out]

    state = jax.tree_util.tree_map_with_path(draw, state)
    return nnx.merge(graphdef, state)


def project_outputs(model, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pythoncoder's own logits and MTP logits for one sequence."""
    toks = jnp.asarray(tokens)[None]
    h, _ = model.hidden_states(toks)
    logits = model.logits(h)
    mtp = model.mtp_logits(h[:, :-1], toks[:, 1:])
    return np.asarray(logits[0], np.float64), np.asarray(mtp[0], np.float64)


CASES = {
    # full vocabulary, plain RoPE, fp32 file: float64 against fp32, tight
    "float32": (dict(), "float32", dict(rtol=0.0, atol=2e-5)),
    # the demo's kind of model (vocabulary subset), YaRN on, the default bf16 file: the
    # reader runs the bf16-rounded weights, pythoncoder the fp32 ones
    "bfloat16_subset_yarn": (dict(vocab_subset="random", yarn=True, yarn_factor=4.0,
                                  yarn_original_max_position=8),
                             "bfloat16", dict(rtol=0.0, atol=0.08)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_numpy_reader_gives_the_projects_logits(case, tmp_path):
    overrides, dtype, tol = CASES[case]
    vocab = 512
    rng = np.random.default_rng(0)
    if overrides.get("vocab_subset") == "random":
        overrides = {**overrides, "vocab_subset": tuple(int(i) for i in np.sort(
            rng.choice(vocab, 63, replace=False)))}
    cfg = ModelConfig.preset("tiny", num_layers=2, vocab_size=vocab, compute_dtype="float32",
                             attention_impl="reference", **overrides)
    assert cfg.num_diff_heads // cfg.num_kv_groups == 3  # GQA: heads share a KV group
    model = randomized(cfg, seed=3)
    tokens = rng.integers(0, vocab, 12)
    if cfg.vocab_subset:  # ids in and outside the subset
        tokens[::2] = rng.choice(cfg.vocab_subset, len(tokens[::2]))
    export_weights(model, cfg, tmp_path, dtype=dtype, tokenizer=_NoTokenizer())

    np_reader = reader()
    tensors, config = np_reader.load_export(tmp_path)
    out = np_reader.forward(tensors, config, tokens)
    want_logits, want_mtp = project_outputs(model, tokens)
    assert out["logits"].shape == want_logits.shape == (len(tokens), vocab)
    assert_allclose(out["logits"], want_logits, **tol)
    assert_allclose(out["mtp_logits"], want_mtp, **tol)
    # the comparison is not trivial: logits spread over several units, and the
    # tolerance is small against them
    assert np.ptp(want_logits, axis=-1).min() > 3.0 and np.ptp(want_mtp, axis=-1).min() > 3.0
    assert (out["logits"].argmax(-1) == want_logits.argmax(-1)).mean() >= 0.9


def test_numpy_reader_imports_no_jax_and_runs_as_a_script(tmp_path):
    """The reader is NumPy alone: run it in a process where jax/flax/pythoncoder cannot
    be imported; it prints the next-token argmax after each token."""
    cfg = ModelConfig.preset("tiny", num_layers=1, vocab_size=256, compute_dtype="float32",
                             attention_impl="reference")
    model = randomized(cfg, seed=5)
    export_weights(model, cfg, tmp_path, dtype="float32", tokenizer=_NoTokenizer())
    tokens = [3, 17, 250, 9]
    block = ("import sys, importlib.abc\n"
             "class Block(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] in ('jax', 'jaxlib', 'flax', 'pythoncoder',\n"
             "                                  'safetensors', 'ml_dtypes', 'torch'):\n"
             "            raise ImportError('blocked: ' + name)\n"
             "sys.meta_path.insert(0, Block())\n"
             f"sys.argv = ['numpy_forward.py', {str(tmp_path)!r}, *{[str(t) for t in tokens]!r}]\n"
             f"exec(compile(open({str(READER)!r}).read(), 'numpy_forward.py', 'exec'))\n")
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    logits, _ = project_outputs(model, np.asarray(tokens))
    assert out.stdout.split() == [str(int(i)) for i in logits.argmax(-1)]
