"""load_for_inference: fresh fallback, clear errors, YaRN switch, real checkpoints."""

import jax.numpy as jnp
import numpy as np
import pytest

from pythoncoder.infer.loading import RunDirError, load_for_inference, with_config
from pythoncoder.model import ModelConfig, build_model


def test_no_run_dir_gives_a_fresh_tiny_model_loudly(capsys):
    with pytest.warns(UserWarning, match="FRESHLY INITIALISED"):
        model, cfg = load_for_inference(None, yarn=True)
    assert cfg.name == "tiny" and cfg.yarn and model.cfg is cfg
    assert "FRESHLY INITIALISED" in capsys.readouterr().err


def test_missing_or_empty_run_dirs_are_errors(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        load_for_inference(tmp_path / "nope")
    with pytest.raises(RunDirError, match="no checkpoints"):
        load_for_inference(tmp_path)


def test_with_config_keeps_the_parameters():
    cfg = ModelConfig(name="m", vocab_size=64, hidden_size=32, num_layers=1, head_dim=8,
                      num_q_subheads=4, num_kv_subheads=2, intermediate_size=32,
                      compute_dtype="float32", remat_policy="none", tpu_aligned=False)
    model = build_model(cfg, seed=2)
    yarn = with_config(model, cfg.with_yarn())
    assert yarn.cfg.yarn and not model.cfg.yarn
    np.testing.assert_array_equal(np.asarray(yarn.lm_head.kernel[...]),
                                  np.asarray(model.lm_head.kernel[...]))
    short = jnp.asarray([[1, 2, 3]], jnp.int32)
    assert yarn(short).shape == model(short).shape


@pytest.mark.slow
def test_restores_a_trained_run(tmp_path):
    """Two training steps with the real trainer, then generation from the checkpoint."""
    from pythoncoder.data.prepare import prepare
    from pythoncoder.infer.engine import Engine
    from pythoncoder.train.config import TrainConfig
    from pythoncoder.train.loop import train

    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"m{i}.py").write_text(f"def f{i}(a):\n    return a * {i} + {i}\n" * 4)
    prepare([str(src)], tmp_path / "data", seq_len=16, val_fraction=0.1, num_workers=1,
            progress=False)
    mcfg = ModelConfig(name="t", vocab_size=151_808, hidden_size=32, num_layers=2, head_dim=8,
                       intermediate_size=64, compute_dtype="float32", remat_policy="none",
                       attn_block_size=16, loss_chunk_size=64, tpu_aligned=False)
    tcfg = TrainConfig(seq_len=16, micro_batch=4, accum_steps=1, epochs=1, peak_lr=1e-2,
                       warmup_steps=1, steps_per_checkpoint=2, keep_checkpoints=2,
                       eval_batches=1)
    out = train(mcfg, tcfg, tmp_path / "data", tmp_path / "run", total_steps=2,
                progress=False, log=lambda *_: None)
    model, cfg = load_for_inference(tmp_path / "run", yarn=True)
    assert cfg.yarn and cfg.hidden_size == 32
    np.testing.assert_array_equal(np.asarray(model.lm_head.kernel[...]),
                                  np.asarray(out["final_params"]["lm_head"]["kernel"][...]))
    res = Engine(model).generate([[1, 2, 3]], max_new_tokens=4, eos_id=None)
    assert len(res.tokens[0]) == 4
