"""``pythoncoder.hlo_cost`` checked against XLA's own ``cost_analysis()`` on the CPU, and
its HBM rules (memory spaces, slices read through nested fusions, in-place updates, async
copies) on a hand-written module with the layouts libtpu writes.

Where XLA's analysis and the counter should agree they must agree (programs without loops:
bytes and FLOPs; scanned programs: what XLA counts once, the counter counts once per trip).
Where they differ on purpose (an update written in place moves its slice, not its buffer;
a buffer in on-chip memory moves no HBM bytes), the test shows the difference and its size.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pythoncoder import hlo_cost

S = jax.ShapeDtypeStruct


def _xla(compiled) -> dict:
    cost = compiled.cost_analysis()
    return cost[0] if isinstance(cost, list) else cost


def _mlp(x, w1, w2):
    return jnp.sum(jnp.tanh(jax.nn.gelu(x @ w1) @ w2) ** 2)


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "forward+backward"])
def test_programs_without_loops_agree_with_xla(grad):
    f = jax.grad(_mlp, argnums=(1, 2)) if grad else _mlp
    args = (S((256, 512), jnp.float32), S((512, 1024), jnp.float32),
            S((1024, 512), jnp.float32))
    compiled = jax.jit(f).lower(*args).compile()
    ours, xla = hlo_cost.analyse(compiled.as_text()), _xla(compiled)
    np.testing.assert_allclose(ours["bytes accessed"], xla["bytes accessed"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(ours["flops"], xla["flops"], rtol=1e-9, atol=0)
    # the rows are the bytes: every instruction's share, once
    np.testing.assert_allclose(sum(r["total_bytes"] for r in ours["rows"]),
                               ours["bytes accessed"], rtol=1e-12, atol=0)


def test_a_gather_reads_the_rows_it_gathers_not_the_table():
    """An embedding lookup of 64 rows from a 5000-row table: XLA's analysis counts the whole
    table as read; the counter counts the 64 rows, and the two differ by exactly the rest of
    the table (FLOPs agree)."""
    rows, n, d = 5000, 64, 256

    def f(table, ids):
        return jnp.sum(jnp.tanh(jnp.take(table, ids, axis=0)))

    compiled = jax.jit(f).lower(S((rows, d), jnp.float32), S((n,), jnp.int32)).compile()
    ours, xla = hlo_cost.analyse(compiled.as_text()), _xla(compiled)
    assert xla["bytes accessed"] - ours["bytes accessed"] == (rows - n) * d * 4
    np.testing.assert_allclose(ours["flops"], xla["flops"], rtol=1e-9, atol=0)


def _layer(h, w):
    return jnp.tanh(h @ w) + h


def _scanned(x, ws):
    return jnp.sum(jax.lax.scan(lambda h, w: (_layer(h, w), None), x, ws)[0])


def _costs(f, layers):
    out = {}
    for n in layers:
        compiled = jax.jit(f).lower(S((64, 128), jnp.float32),
                                    S((n, 128, 128), jnp.float32)).compile()
        out[n] = (hlo_cost.analyse(compiled.as_text()), _xla(compiled))
    return out


def test_loop_bodies_count_once_per_trip_as_xla_counts_them_once():
    """A scan over 3, 5 and 8 layers: the counter's cost grows by one body per layer, and
    taking all but one body away leaves exactly what XLA counts (XLA counts a while body
    once whatever its trip count)."""
    costs = _costs(_scanned, (3, 5, 8))
    for key in ("bytes accessed", "flops"):
        body = (costs[8][0][key] - costs[5][0][key]) / 3
        assert body > 0
        np.testing.assert_allclose(costs[5][0][key] - costs[3][0][key], 2 * body,
                                   rtol=1e-9, atol=0)
        for n, (ours, xla) in costs.items():
            assert xla[key] == costs[3][1][key]  # XLA: the same for every trip count
            np.testing.assert_allclose(ours[key] - (n - 1) * body, xla[key],
                                       rtol=1e-3, atol=0)


def test_an_update_in_place_moves_its_slice_not_its_buffer():
    """The backward of the scan writes each layer's weight gradient into the stacked
    gradient with a dynamic-update-slice in place.  The counter's body is the same for 3, 5
    and 8 layers (the update is one layer's slice); XLA's own count of the body grows with
    the stacked buffer, by at least one whole buffer per layer (the control: the two
    counts really differ, and by what the rule says)."""
    costs = _costs(jax.grad(_scanned, 1), (3, 5, 8))
    body = (costs[8][0]["bytes accessed"] - costs[5][0]["bytes accessed"]) / 3
    np.testing.assert_allclose(costs[5][0]["bytes accessed"] - costs[3][0]["bytes accessed"],
                               2 * body, rtol=1e-9, atol=0)
    once = {n: ours["bytes accessed"] - (n - 1) * body for n, (ours, _) in costs.items()}
    np.testing.assert_allclose(once[3], once[8], rtol=1e-9, atol=0)
    per_layer = 128 * 128 * 4  # one layer's fp32 weight
    xla_growth = (costs[8][1]["bytes accessed"] - costs[3][1]["bytes accessed"]) / 5
    assert xla_growth >= per_layer
    flops_body = (costs[8][0]["flops"] - costs[5][0]["flops"]) / 3
    for n, (ours, xla) in costs.items():  # and the FLOPs agree exactly
        np.testing.assert_allclose(ours["flops"] - (n - 1) * flops_body, xla["flops"],
                                   rtol=1e-9, atol=0)


# A module as libtpu writes them: the weight prefetched into on-chip memory (S(1)) by an
# async copy, a matmul fusion whose operand is sliced inside a nested fusion, a gradient
# written in place into a stacked buffer, and an async slice into on-chip memory; and the
# in-place update again as an asynchronous fusion (fusion-start/-done, jax 0.12 on GPU).
TPU_LIKE = """HloModule tpu_like

%nested (p0: bf16[24,8,128], p1: s32[]) -> bf16[8,128] {
  %p0 = bf16[24,8,128]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %z = s32[] constant(0)
  %ds = bf16[1,8,128]{2,1,0} dynamic-slice(%p0, %p1, %z, %z), dynamic_slice_sizes={1,8,128}
  ROOT %b = bf16[8,128]{1,0} bitcast(%ds)
}

%outer (q0: bf16[24,8,128], q1: s32[], q2: bf16[128,128]) -> f32[8,128] {
  %q0 = bf16[24,8,128]{2,1,0} parameter(0)
  %q1 = s32[] parameter(1)
  %q2 = bf16[128,128]{1,0} parameter(2)
  %x = bf16[8,128]{1,0} fusion(%q0, %q1), kind=kLoop, calls=%nested
  ROOT %d = f32[8,128]{1,0} dot(%x, %q2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%upd (b0: f32[24,8,128], b1: f32[8,128], b2: s32[]) -> f32[24,8,128] {
  %b0 = f32[24,8,128]{2,1,0} parameter(0)
  %b1 = f32[8,128]{1,0} parameter(1)
  %b2 = s32[] parameter(2)
  %z = s32[] constant(0)
  %r = f32[1,8,128]{2,1,0} bitcast(%b1)
  ROOT %u = f32[24,8,128]{2,1,0} dynamic-update-slice(%b0, %r, %b2, %z, %z)
}

ENTRY %main (a: bf16[24,8,128], i: s32[], w: bf16[128,128], acc: f32[24,8,128]) -> (f32[24,8,128], f32[8,128], f32[4,8,128]) {
  %a = bf16[24,8,128]{2,1,0} parameter(0)
  %i = s32[] parameter(1)
  %w = bf16[128,128]{1,0} parameter(2)
  %acc = f32[24,8,128]{2,1,0} parameter(3)
  %ab = f32[24,8,128]{2,1,0} custom-call(), custom_call_target="AllocateBuffer"
  %cs = (bf16[128,128]{1,0}, bf16[128,128]{1,0:SPACE}, u32[]) copy-start(%w)
  %wv = bf16[128,128]{1,0:SPACE} copy-done(%cs)
  %f = f32[8,128]{1,0} fusion(%a, %i, %wv), kind=kOutput, calls=%outer
  %g = f32[24,8,128]{2,1,0} fusion(%acc, %f, %i), kind=kLoop, calls=%upd
  %ss = ((f32[24,8,128]{2,1,0}), f32[4,8,128]{2,1,0:SPACE}, s32[]{:S(2)}) slice-start(%acc), slice={[0:4],[0:8],[0:128]}
  %sd = f32[4,8,128]{2,1,0:SPACE} slice-done(%ss)
  %fs = ((f32[24,8,128]{2,1,0}, f32[8,128]{1,0}, s32[]), f32[24,8,128]{2,1,0}, u32[]) fusion-start(%acc, %f, %i), kind=kLoop, calls=%upd
  %fd = f32[24,8,128]{2,1,0} fusion-done(%fs)
  ROOT %t = (f32[24,8,128]{2,1,0}, f32[8,128]{1,0}, f32[4,8,128]{2,1,0:SPACE}) tuple(%g, %f, %sd)
}
"""


def test_hbm_bytes_of_a_tpu_module_by_hand():
    cost = hlo_cost.analyse(TPU_LIKE.replace("SPACE", "S(1)"))
    rows = {r["instruction"]: r["bytes"] for r in cost["rows"]}
    w, layer_bf16, layer_f32 = 128 * 128 * 2, 8 * 128 * 2, 8 * 128 * 4
    assert rows == {
        "cs": w,  # read from HBM into on-chip memory, once (copy-done moves nothing)
        "f": layer_bf16 + 4 + layer_f32,  # one layer's slice, the index, the product
        "g": layer_f32 + 4 + layer_f32,  # the update read and written in place
        "ss": 4 * layer_f32,  # the slice read from HBM (slice-done moves nothing)
        "ab": 0,  # an uninitialised buffer: nothing written
        "fs": layer_f32 + 4 + layer_f32,  # an asynchronous fusion: its fusion's bytes, once
    }
    assert cost["bytes accessed"] == sum(rows.values())
    np.testing.assert_allclose(cost["flops"], 2 * 8 * 128 * 128, rtol=1e-9, atol=0)
    # control: the same module with every buffer in HBM counts the on-chip ones too
    control = hlo_cost.analyse(TPU_LIKE.replace(":SPACE", ""))
    rows = {r["instruction"]: r["bytes"] for r in control["rows"]}
    assert rows["cs"] == 2 * w and rows["f"] == layer_bf16 + 4 + w + layer_f32
    assert rows["ss"] == 2 * 4 * layer_f32
    # XLA's analysis counts each operand whole, wherever it lives
    assert cost["xla bytes accessed"] > cost["bytes accessed"] + 23 * layer_bf16


def test_tuple_types_split_at_their_top_level():
    text = "((f32[24,8,128]{2,1,0}), f32[4,8,128]{2,1,0:T(8,128)S(1)}, s32[]{:S(2)})"
    assert hlo_cost._elements(text) == ["(f32[24,8,128]{2,1,0})",
                                        "f32[4,8,128]{2,1,0:T(8,128)S(1)}", "s32[]{:S(2)}"]
    assert hlo_cost._hbm_bytes(text) == 24 * 8 * 128 * 4
    assert hlo_cost._nbytes(text) == 28 * 8 * 128 * 4 + 4


def test_rows_of_nested_loops_execute_once_per_trip_of_every_enclosing_loop():
    """A scan of 5 inside a scan of 3: each row of the inner body runs 15 times, of the
    outer body 3 times, of the entry once; a row's total is its bytes times its executions,
    and the inner body's matmul (the only dot) counts 15 dots of FLOPs."""
    n = 32

    def f(x, ws):
        def outer(c, w_outer):
            inner = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), c, w_outer)[0]
            return inner * 2.0, None
        return jax.lax.scan(outer, x, ws)[0]

    compiled = jax.jit(f).lower(S((n, n), jnp.float32), S((3, 5, n, n), jnp.float32)).compile()
    cost = hlo_cost.analyse(compiled.as_text())
    assert sorted(w["trips"] for w in cost["loops"]) == [3, 5]
    executions = {r["executions"] for r in cost["rows"]}
    assert executions <= {1, 3, 15} and {3, 15} <= executions
    for r in cost["rows"]:
        assert r["total_bytes"] == r["bytes"] * r["executions"]
    dots = [r for r in cost["rows"] if "dot" in r["instruction"] or r["op"] == "dot"
            or "dot_general" in r["source"]]
    assert dots and all(r["executions"] == 15 for r in dots)
    np.testing.assert_allclose(cost["flops"], 15 * 2 * n**3, rtol=0.05, atol=0)
    assert cost["bytes accessed"] == sum(r["total_bytes"] for r in cost["rows"])
