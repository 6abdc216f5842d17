"""Engine plumbing: padding, validation, cache sizing, streaming callbacks."""

import numpy as np
import pytest

from pythoncoder.infer.engine import Engine, left_pad, round_up
from pythoncoder.infer.sampling import NUM_REAL_TOKENS, SamplingConfig, num_sampleable
from pythoncoder.model import ModelConfig, build_model

CFG = ModelConfig(name="micro", vocab_size=512, hidden_size=32, num_layers=1, head_dim=8,
                  num_q_subheads=4, num_kv_subheads=2, intermediate_size=32,
                  compute_dtype="float32", remat_policy="none", tpu_aligned=False,
                  attn_block_size=8, max_position_embeddings=64)


@pytest.fixture(scope="module")
def engine():
    return Engine(build_model(CFG, seed=0))


def test_left_pad_right_aligns():
    toks, pads = left_pad([[5, 6], [7, 8, 9, 10]], 6)
    np.testing.assert_array_equal(toks, [[0, 0, 0, 0, 5, 6], [0, 0, 7, 8, 9, 10]])
    np.testing.assert_array_equal(pads, [4, 2])
    with pytest.raises(ValueError):
        left_pad([[1, 2, 3]], 2)


def test_round_up_and_sampleable():
    assert (round_up(1, 16), round_up(16, 16), round_up(17, 16)) == (16, 16, 32)
    assert num_sampleable(512) == 512
    assert num_sampleable(151_808) == NUM_REAL_TOKENS


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0),
                                 dict(top_p=1.5)])
def test_sampling_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SamplingConfig(**bad)


def test_generate_validates_its_inputs(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[1], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="outside"):
        engine.generate([[1, 600]], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate([[1]], max_new_tokens=0)
    with pytest.raises(ValueError, match="64-token context"):
        engine.generate([[1] * 60], max_new_tokens=5)
    assert engine.generate([], max_new_tokens=3).tokens == []


def test_cache_sizing(engine):
    assert engine.cache_len_for(16, 10, 1, False) == 128
    assert engine.cache_len_for(120, 8, 1, False) == 128
    assert engine.cache_len_for(120, 8, 1, True) == 256  # one spare slot for the verify
    assert engine.cache_len_for(100, 20, 4, True) == 256  # holes: up to two slots a token


def test_streaming_callback_sees_every_token_once(engine):
    seen: dict[int, list[int]] = {0: [], 1: []}
    res = engine.generate([[3, 4], [5]], max_new_tokens=9, eos_id=None,
                          on_tokens=lambda row, new: seen[row].extend(new), speculative=True)
    assert seen[0] == res.tokens[0] and seen[1] == res.tokens[1]
    assert res.stats["generated_tokens"] == 18
    assert res.stats["prompt_tokens"] == 3


def test_stop_callback_ends_only_its_row(engine):
    res = engine.generate([[3, 4], [5]], max_new_tokens=6, eos_id=None,
                          stop=lambda row, gen: row == 0 and len(gen) == 2)
    assert [len(t) for t in res.tokens] == [2, 6]
    assert res.finish_reasons == ["stop", "length"]


def test_small_cache_ends_with_length(engine):
    res = engine.generate([[3] * 10], max_new_tokens=20, eos_id=None, cache_len=16,
                          prompt_len=10)
    # slots 0..15: the 10-token prompt and 6 fed tokens -> 7 generated
    assert res.finish_reasons == ["length"] and len(res.tokens[0]) == 7


def test_casting_the_matrices_leaves_bf16_logits_bitwise_unchanged():
    """The model casts kernels and the embedding to the compute dtype at every use anyway."""
    import jax
    import jax.numpy as jnp

    model = build_model(CFG.replace(compute_dtype="bfloat16"), seed=3)
    cast, raw = Engine(model), Engine(model, cast_params=False)
    leaves = jax.tree.leaves(cast.params)
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)}
    toks, pads = left_pad([[1, 2, 3], [4, 5]])
    out = []
    for e in (cast, raw):
        _, _, logits = e.prefill(toks, pads, cache_len=16, key=jax.random.PRNGKey(0),
                                 all_logits=True)
        out.append(np.asarray(logits))
    np.testing.assert_array_equal(out[0], out[1])
