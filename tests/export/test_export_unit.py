"""Portable weights: safetensors export and load give the same logits."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numpy.testing import assert_allclose

from pythoncoder.export import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ExportError,
    export_weights,
    load_weights,
    tensor_names,
)
from pythoncoder.model import ModelConfig, build_model

pytest.importorskip("safetensors")


class _NoTokenizer:
    def save(self, path: str) -> None:
        with open(path, "w") as f:
            f.write("{}")


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig.preset("tiny", num_layers=2, vocab_size=512)
    return build_model(cfg, 3), cfg


def _tokens():
    return jax.random.randint(jax.random.key(0), (2, 24), 0, 512)


def test_tensor_names_are_the_documented_layout():
    cfg = ModelConfig.preset("tiny", num_layers=2, vocab_size=512)
    d, h, i, v = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_q_subheads * h, cfg.num_kv_subheads * h
    expected = {"embed.embedding": (v, d), "final_norm.scale": (d,), "lm_head.kernel": (d, v),
                "mtp.emb_norm.scale": (d,), "mtp.hidden_norm.scale": (d,),
                "mtp.out_norm.scale": (d,), "mtp.proj.kernel": (2 * d, d)}
    for n in range(cfg.num_layers):
        b = f"blocks.{n}."
        expected |= {b + "attn_norm.scale": (d,), b + "mlp_norm.scale": (d,),
                     b + "attn.q_proj.kernel": (d, q), b + "attn.k_proj.kernel": (d, kv),
                     b + "attn.v_proj.kernel": (d, kv), b + "attn.o_proj.kernel": (q, d),
                     b + "attn.subln.scale": (2 * h,), b + "mlp.gate.kernel": (d, i),
                     b + "mlp.up.kernel": (d, i), b + "mlp.down.kernel": (i, d)}
        expected |= {b + f"attn.lambda_{s}": (h,) for s in ("q1", "k1", "q2", "k2")}
    assert tensor_names(cfg) == expected
    assert tensor_names(cfg.replace(scan_layers=False)) == expected


def test_float32_round_trip_gives_identical_logits(tiny, tmp_path):
    model, cfg = tiny
    export_weights(model, cfg, tmp_path, dtype="float32", tokenizer=_NoTokenizer())
    loaded, loaded_cfg = load_weights(tmp_path)
    assert loaded_cfg == cfg
    assert_allclose(np.asarray(loaded(_tokens())), np.asarray(model(_tokens())), rtol=0, atol=0)


def test_bfloat16_export_is_the_bf16_rounded_model(tiny, tmp_path):
    model, cfg = tiny
    export_weights(model, cfg, tmp_path, dtype="bfloat16", tokenizer=_NoTokenizer())
    loaded, _ = load_weights(tmp_path)
    graphdef, state = nnx.split(model)
    rounded = nnx.merge(graphdef, jax.tree_util.tree_map(
        lambda x: x.astype(jnp.bfloat16).astype(x.dtype), state))
    assert_allclose(np.asarray(loaded(_tokens())), np.asarray(rounded(_tokens())),
                    rtol=0, atol=0)
    # and it is not the unrounded model: the round trip really went through bf16
    assert not np.array_equal(np.asarray(loaded(_tokens())), np.asarray(model(_tokens())))


def test_unscanned_model_loads_the_same_file(tiny, tmp_path):
    model, cfg = tiny
    export_weights(model, cfg, tmp_path, dtype="float32", tokenizer=_NoTokenizer())
    loaded, _ = load_weights(tmp_path, cfg.replace(scan_layers=False))
    assert_allclose(np.asarray(loaded(_tokens())), np.asarray(model(_tokens())),
                    rtol=1e-6, atol=1e-6)


def test_a_file_that_does_not_match_the_config_is_refused(tiny, tmp_path):
    from safetensors.numpy import load_file, save_file

    model, cfg = tiny
    export_weights(model, cfg, tmp_path, dtype="float32", tokenizer=_NoTokenizer())
    tensors = load_file(tmp_path / WEIGHTS_FILE)
    del tensors["blocks.1.mlp.up.kernel"]
    save_file(tensors, tmp_path / WEIGHTS_FILE)
    with pytest.raises(ExportError, match="missing.*blocks.1.mlp.up.kernel"):
        load_weights(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["format"] = "something-else"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ExportError, match="not a pythoncoder-safetensors config"):
        load_weights(tmp_path)


def test_non_finite_parameters_are_not_exported(tiny, tmp_path):
    model, cfg = tiny
    graphdef, state = nnx.split(model)
    bad = nnx.merge(graphdef, jax.tree_util.tree_map(lambda x: x.at[0].set(jnp.nan), state))
    with pytest.raises(ExportError, match="non-finite"):
        export_weights(bad, cfg, tmp_path, tokenizer=_NoTokenizer())
    assert not (tmp_path / WEIGHTS_FILE).exists()


def test_cli_export_then_generate_from_the_weights(tmp_path, capsys):
    """`pythoncoder export --run` then `generate --weights` = `generate --run`, token for token."""
    from pythoncoder.checkpoint import Checkpointer, write_run_files
    from pythoncoder.cli import main
    from pythoncoder.infer.loading import load_for_inference
    from pythoncoder.train.step import TrainState

    cfg = ModelConfig.preset("tiny", num_layers=2)
    model = build_model(cfg, 5)
    run = tmp_path / "run"
    write_run_files(run, cfg, {}, {})
    ckpt = Checkpointer(run, async_save=False)
    state = TrainState(params=nnx.state(model, nnx.Param), opt_state={},
                       step=jnp.asarray(7, jnp.int32), skipped=jnp.zeros((), jnp.int32))
    ckpt.save(7, state, {"global_step": 7})
    ckpt.finish()
    ckpt.manager.close()

    out = tmp_path / "export"
    assert main(["export", "--run", str(run), "--out", str(out), "--dtype", "float32"]) == 0
    restored, _ = load_for_inference(run)
    loaded, _ = load_weights(out)
    assert_allclose(np.asarray(loaded(_tokens())), np.asarray(restored(_tokens())),
                    rtol=0, atol=0)

    args = ["--prompt", "def fibonacci(n):", "--max-new-tokens", "6", "--json"]
    capsys.readouterr()
    assert main(["generate", "--run", str(run), *args]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert main(["generate", "--weights", str(out), *args]) == 0
    from_weights = json.loads(capsys.readouterr().out)
    assert from_weights["tokens"] == from_run["tokens"]
    assert len(from_run["tokens"][0]) == 6

    assert main(["generate", "--weights", str(tmp_path / "nope"), *args]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert main(["generate", "--weights", str(out), "--step", "7", *args]) == 2
    assert "--step applies to a run" in capsys.readouterr().err
    (out / "tokenizer.json").write_text("not a tokenizer")
    from pythoncoder.infer import api

    api.load_generator.cache_clear()  # the loaded generator is cached per directory
    assert main(["generate", "--weights", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a usable tokenizer" in err[0]

    # a bit-flipped checkpoint is refused, not exported
    files = [p for p in (run / "checkpoints" / "7").rglob("*") if p.is_file()
             and p.name != "manifest.sha256.json"]
    biggest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and not (tmp_path / "bad" / WEIGHTS_FILE).exists()


def test_a_file_with_an_extra_tensor_is_refused_by_name(tiny, tmp_path):
    """Every expected tensor present with its shape, plus one the config does not have:
    refused, naming it (a loader that only checks for missing names would take the file)."""
    from safetensors.numpy import load_file, save_file

    model, cfg = tiny
    export_weights(model, cfg, tmp_path, dtype="float32", tokenizer=_NoTokenizer())
    tensors = load_file(tmp_path / WEIGHTS_FILE)
    tensors["blocks.7.attn.extra_proj.kernel"] = np.zeros((4, 4), np.float32)
    save_file(tensors, tmp_path / WEIGHTS_FILE)
    with pytest.raises(ExportError, match=r"unexpected \['blocks.7.attn.extra_proj.kernel'\]"):
        load_weights(tmp_path)
    del tensors["blocks.7.attn.extra_proj.kernel"]  # the control: the same file without it
    save_file(tensors, tmp_path / WEIGHTS_FILE)
    load_weights(tmp_path)
