"""The Pallas kernels as the device runs them, against the float64 reference (issue 25).

On a GPU or TPU the kernels are compiled for the device (Triton / Mosaic) with the tiles
they pick for it, at the 1b head layout (head_dim 128, values 256, GQA 3:1, two groups),
bf16 inputs as in training, T off the block grid, packed segments; the float64 reference
(DIFF-03, from the conformance suites) runs on the host CPU on the same bf16-rounded
values.  On CPU the same checks run in interpret mode at small fp32 shapes, so the test
itself is exercised by the CPU test command.  Each check has a negative control: the
kernel without the floor fails it.  ``pythoncoder device-check`` runs this file first.
"""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pythoncoder.model.kernels.diff_attention import diff_attention
from pythoncoder.model.kernels.diff_decode import decode_diff_attention

BACKEND = jax.default_backend()
ON_DEVICE = BACKEND in ("gpu", "tpu")
CONFORMANCE = Path(__file__).resolve().parents[2] / "conformance"


def _conformance(name: str):
    """A conformance test module by path (the suites are not a package)."""
    spec = importlib.util.spec_from_file_location(f"_devicecheck_{name}",
                                                  CONFORMANCE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _conformance("test_diff_kernel")
REF_DECODE = _conformance("test_diff_decode_kernel")

if ON_DEVICE:  # the 1b layout, bf16 as trained, the device's own tiling
    B, T, G, R, D, DTYPE = 2, 300, 2, 3, 128, jnp.bfloat16
    # bf16 inputs and bf16 probabilities into the value matmul, fp32 accumulation:
    # relative errors of a few 1e-3; the kernel without the floor must still fail it.
    TOL = 3e-2
    KW: dict = {}
else:  # interpret mode: small fp32 shapes, tiles of 8 so T = 13 crosses them (and is
    # off their grid); the conformance suites cover more shapes on CPU
    B, T, G, R, D, DTYPE = 1, 13, 1, 3, 16, jnp.float32
    TOL = 1e-4
    KW = dict(block_q=8, block_k=8)
LAMBDAS = [0.2, 0.8] if ON_DEVICE else [0.8]
CPU = jax.devices("cpu")[0]


def _data(seed: int):
    rng = np.random.default_rng(seed)

    def cast(x):  # the values the kernel sees, as float64
        return np.asarray(jnp.asarray(x, DTYPE).astype(jnp.float32), np.float64)

    q = cast(rng.normal(size=(B, T, 2 * G * R, D)) * 1.5)
    k = cast(rng.normal(size=(B, T, 2 * G, D)))
    v = cast(rng.normal(size=(B, T, G, 2 * D)))
    seg = np.sort(rng.integers(1, 4, size=(B, T)), axis=1)  # packed documents
    w = rng.normal(size=(B, T, G * R, 2 * D))
    return q, k, v, seg, w


def _close(got, want, what):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=TOL, atol=TOL * scale,
                               err_msg=what)


def _reference(q, k, v, lam, seg, w):
    with jax.enable_x64(True), jax.default_device(CPU):
        def loss(q, k, v, lam):
            out = REF.ref_attention64(q, k, v, lam, jnp.asarray(seg))
            return jnp.sum(out * w), out

        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(
            *(jnp.asarray(x, jnp.float64) for x in (q, k, v, lam)))
        return np.asarray(out), [np.asarray(g) for g in grads]


def _kernel(q, k, v, lam, seg, w, **variant):
    def loss(q, k, v, lam):
        out = diff_attention(q, k, v, lam, seg, gqa_ratio=R, **KW, **variant)
        return jnp.sum(out.astype(jnp.float32) * w), out

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
    (_, out), grads = f(*(jnp.asarray(x, DTYPE) for x in (q, k, v)), jnp.float32(lam))
    return np.asarray(out.astype(jnp.float32)), [np.asarray(g.astype(jnp.float32))
                                                 for g in grads]


@pytest.mark.parametrize("lam", LAMBDAS)
def test_training_kernel_forward_and_backward_equal_the_float64_reference(lam):
    q, k, v, seg, w = _data(int(lam * 10))
    want_out, want_grads = _reference(q, k, v, lam, seg, w)
    got_out, got_grads = _kernel(q, k, v, lam, jnp.asarray(seg, jnp.int32),
                                 jnp.asarray(w, jnp.float32))
    _close(got_out, want_out, f"out on {BACKEND}")
    for name, got, want in zip(("dq", "dk", "dv", "dlambda"), got_grads, want_grads,
                               strict=True):
        _close(got, want, f"{name} on {BACKEND}")


def test_the_training_check_rejects_the_kernel_without_the_floor():
    q, k, v, seg, w = _data(7)
    want_out, _ = _reference(q, k, v, 0.8, seg, w)
    got_out, _ = _kernel(q, k, v, 0.8, jnp.asarray(seg, jnp.int32),
                         jnp.asarray(w, jnp.float32), floor=False)
    with pytest.raises(AssertionError):
        _close(got_out, want_out, "unfloored kernel")


def _decode_data(seed: int, S: int, Tq: int, index: int):
    rng = np.random.default_rng(seed)
    cast = lambda x: np.asarray(jnp.asarray(x, DTYPE).astype(jnp.float32))  # noqa: E731
    q = cast(rng.normal(size=(B, Tq, 2 * G * R, D)) * 1.5)
    k = cast(rng.normal(size=(B, S, 2 * G, D)))
    v = cast(rng.normal(size=(B, S, G, 2 * D)))
    seg = (rng.uniform(size=(B, S)) > 0.25).astype(np.int32) * 2
    seg[:, index:index + Tq] = 2  # a query sees its own slot
    q_slots = np.broadcast_to(index + np.arange(Tq, dtype=np.int32), (B, Tq))
    q_seg = np.full((B, Tq), 2, np.int32)
    return q, k, v, seg, q_slots, q_seg


@pytest.mark.parametrize("floor", [True, False])
def test_decode_kernel_equals_the_float64_reference(floor):
    if BACKEND == "tpu":
        pytest.skip("TPU decodes through the XLA live-prefix path, not the decode kernel")
    S, Tq, index = (512, 2, 333) if ON_DEVICE else (24, 2, 13)
    q, k, v, seg, q_slots, q_seg = _decode_data(11, S, Tq, index)
    want = REF_DECODE.ref_decode64(q, k, v, 0.8, q_slots, seg, q_seg)
    got = decode_diff_attention(*(jnp.asarray(x, DTYPE) for x in (q, k, v)), jnp.float32(0.8),
                                jnp.asarray(q_slots), jnp.asarray(seg), jnp.asarray(q_seg),
                                index + Tq, gqa_ratio=R, floor=floor,
                                **({} if ON_DEVICE else dict(block_k=8)))
    if floor:
        _close(got.astype(jnp.float32), want, f"decode kernel on {BACKEND}")
    else:  # negative control
        with pytest.raises(AssertionError):
            _close(got.astype(jnp.float32), want, "unfloored decode kernel")
