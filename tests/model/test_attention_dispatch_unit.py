"""One attention dispatch (``pythoncoder.model.attention``): a registry of implementations
chosen in one place by ``attention_impl``, the platform and the call's shape, and a package
import graph without cycles (function-level imports included)."""

from __future__ import annotations

import ast
import pathlib
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import pythoncoder
from pythoncoder.model import ModelConfig, config
from pythoncoder.model import attention as attention_mod
from pythoncoder.model.attention import (
    ATTENTION_KERNELS,
    ATTENTION_REGISTRY,
    AttentionImpl,
    differential_attention,
)
from pythoncoder.model.kernels.diff_attention import KernelDoesNotFit

PACKAGE = pathlib.Path(pythoncoder.__file__).parent


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file (top level, in
    functions, in branches)."""
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = ("pythoncoder",) + f.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = f

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[m] |= {t for t in map(owner, names) if t and t != m}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_import_graph_has_no_cycle():
    graph = _import_graph()
    assert "pythoncoder.model.live_attention" in graph["pythoncoder.model.attention"]
    assert _cycles(graph) == []


@pytest.mark.parametrize("module", [attention_mod.__file__,
                                    attention_mod.live_differential_map.__code__.co_filename])
def test_the_dispatch_modules_import_only_at_the_top(module):
    tree = ast.parse(pathlib.Path(module).read_text())
    top = {id(n) for n in tree.body}
    inner = [n.lineno for n in ast.walk(tree)
             if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in top]
    assert inner == []


def test_every_registered_implementation_is_a_config_choice():
    assert set(config.ATTENTION_IMPLS) == {"auto", *ATTENTION_REGISTRY}
    assert ATTENTION_KERNELS == {n: i.self_attention for n, i in ATTENTION_REGISTRY.items()}


def _cfg(**kw) -> ModelConfig:
    base = dict(name="test", vocab_size=512, hidden_size=96, num_layers=1, head_dim=16,
                intermediate_size=128, compute_dtype="float32", attn_block_size=8,
                loss_chunk_size=256, tpu_aligned=False)
    base.update(kw)
    return ModelConfig(**base)


def _inputs(cfg: ModelConfig, T: int, S: int | None = None):
    B, G, D = 2, cfg.num_kv_groups, cfg.head_dim
    S = S or T
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(B, T, cfg.num_q_subheads, D)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, S, cfg.num_kv_subheads, D)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(B, S, G, cfg.value_head_dim)), jnp.float32)
    return q, k, v, jnp.float32(0.3)


MARK_SELF, MARK_DECODE = 7.0, 5.0


def _fake(reason=None):
    """A kernel entry whose outputs say which path ran."""
    def self_attention(q, k, v, lam, seg, *, gqa_ratio, block):
        return jnp.full((*q.shape[:2], q.shape[2] // 2, v.shape[-1]), MARK_SELF, v.dtype)

    def decode(q, k, v, lam, q_slots, k_seg, q_seg, live, *, gqa_ratio):
        return jnp.full((*q.shape[:2], q.shape[2] // 2, v.shape[-1]), MARK_DECODE, v.dtype)

    return AttentionImpl(self_attention, fits=lambda cfg, dtype: reason, decode=decode,
                         decode_max_queries=2, no_decode_on=("tpu",))


def _register(monkeypatch, entry):
    monkeypatch.setitem(ATTENTION_REGISTRY, "pallas", entry)
    monkeypatch.setitem(ATTENTION_KERNELS, "pallas", entry.self_attention)


def _self(cfg, T=16):
    q, k, v, lam = _inputs(cfg, T)
    slots = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (2, T))
    seg = jnp.ones((2, T), jnp.int32)
    return np.asarray(differential_attention(q, k, v, lam, slots, slots[0], seg, seg, cfg=cfg,
                                             self_attention=True))


def test_self_attention_takes_the_named_entry_and_refuses_one_that_does_not_fit(monkeypatch):
    _register(monkeypatch, _fake())
    assert (_self(_cfg(attention_impl="pallas")) == MARK_SELF).all()
    assert not (_self(_cfg(attention_impl="reference")) == MARK_SELF).any()
    _register(monkeypatch, _fake(reason="no tiling fits 1 byte"))
    with pytest.raises(KernelDoesNotFit, match="attention_impl='pallas' cannot run here: no"):
        _self(_cfg(attention_impl="pallas"))


def test_auto_falls_back_to_the_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(ModelConfig, "resolved_attention_impl",  # auto as on a GPU
                        lambda self, backend=None: ("pallas" if self.attention_impl == "auto"
                                                    else self.attention_impl))
    _register(monkeypatch, _fake())
    assert (_self(_cfg()) == MARK_SELF).all()
    _register(monkeypatch, _fake(reason="no tiling fits 1 byte"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _self(_cfg())
    assert [str(w.message) for w in caught] == [
        "attention_impl='auto': no tiling fits 1 byte; using the reference attention"]
    want = _self(_cfg(attention_impl="reference"))
    np.testing.assert_allclose(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("impl,queries,platform,decoded", [
    ("pallas", 1, "cpu", True), ("pallas", 2, "gpu", True), ("pallas", 3, "gpu", False),
    ("pallas", 1, "tpu", False), ("auto", 1, "gpu", False), ("reference", 1, "gpu", False)])
def test_cached_calls_take_the_decode_kernel_only_when_named_and_short(
        monkeypatch, impl, queries, platform, decoded):
    _register(monkeypatch, _fake())
    monkeypatch.setattr(attention_mod, "target_platform", lambda: platform)
    cfg = _cfg(attention_impl=impl)
    S = 32
    q, k, v, lam = _inputs(cfg, queries, S)
    q_slots = jnp.broadcast_to(jnp.arange(4, 4 + queries, dtype=jnp.int32), (2, queries))
    k_seg = jnp.ones((2, S), jnp.int32)
    out = np.asarray(differential_attention(
        q, k, v, lam, q_slots, jnp.arange(S, dtype=jnp.int32), jnp.ones((2, queries), jnp.int32),
        k_seg, cfg=cfg, self_attention=False, live_len=4 + queries))
    assert (out == MARK_DECODE).all() == decoded
    assert np.isfinite(out).all() and (decoded or not (out == MARK_DECODE).any())


def test_the_kernels_declared_once_drive_config_auto_and_their_call_names():
    """``model/kernels/registry.py`` is where a kernel is declared: the config's choices
    are its attention entries (and the reference), ``auto`` takes an entry on the platforms
    it names, the kernels' pallas_calls carry the entry's names, and the memory report's
    "which attention ran" reads them from a program."""
    from pythoncoder.model.kernels import ce_stats, diff_attention, registry

    assert set(config.ATTENTION_IMPLS) == {"auto", "reference",
                                           *(k.name for k in registry.entries("attention"))}
    cfg = _cfg(attention_impl="auto")
    for platform in ("cpu", "gpu", "cuda", "tpu"):
        want = registry.auto_choice("attention", platform) or "reference"
        assert cfg.resolved_attention_impl(platform) == want
    assert cfg.resolved_attention_impl("cpu") == "reference"
    assert cfg.resolved_attention_impl("tpu") == "pallas"
    assert set(diff_attention.CALLS.values()) == set(registry.entry("attention", "pallas").calls)
    assert ce_stats.NAME in registry.entry("loss", "pallas").calls
    assert registry.found_in_program("attention", 'custom-call(...), name="diff_attention_fwd"') \
        == "pallas"
    assert registry.found_in_program("attention", "fusion(...)") is None
    with pytest.raises(KeyError, match="no attention kernel named 'cudnn'"):
        registry.entry("attention", "cudnn")


def test_a_substituted_self_attention_is_traced_inside_the_block_only():
    """``substituted`` puts a stand-in (the device check's cuDNN speed probe) in an entry's
    place for what is traced inside the block, and restores the entry after, also when the
    block raises."""
    from pythoncoder.model import build_model

    cfg = _cfg(attention_impl="reference")
    model = build_model(cfg, seed=0)
    tokens = jnp.arange(16, dtype=jnp.int32)[None] % cfg.vocab_size
    honest = np.asarray(model(tokens))
    original = attention_mod.ATTENTION_KERNELS["reference"]
    calls = []

    def zeros(q, k, v, lam, segment_ids_BT, *, gqa_ratio, block):
        calls.append(q.shape)
        return jnp.zeros((*q.shape[:2], q.shape[2] // 2, v.shape[-1]), v.dtype)

    with attention_mod.substituted("reference", zeros):
        probed = np.asarray(model(tokens))
    assert calls and not np.allclose(probed, honest, rtol=0, atol=1e-3)
    assert attention_mod.ATTENTION_KERNELS["reference"] is original
    np.testing.assert_allclose(np.asarray(model(tokens)), honest, rtol=0, atol=0)
    with pytest.raises(RuntimeError), attention_mod.substituted("reference", zeros):
        raise RuntimeError("inside")
    assert attention_mod.ATTENTION_KERNELS["reference"] is original
