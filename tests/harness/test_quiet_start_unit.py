"""The stderr filter around JAX's start: the CUDA plugin's driver lines are dropped, every
other line comes through in order, and file descriptor 2 is restored however the block
ends (``pythoncoder/utils/platforms.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pythoncoder.utils.platforms import (
    filtered_stderr,
    is_driver_noise,
    is_libtpu_noise,
    start_jax,
)

# Written by the targets extra's CUDA plugin (jax 0.10.2, CUDA plugin 0.10.2) on a host
# without an NVIDIA driver, with JAX_PLATFORMS=cpu: four such pairs per `jax.devices()`.
ABSL = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
CUDART = ("I0000 00:00:1796638579.318762   28073 cudart_stub.cc:31] Could not find cuda "
          "drivers on your machine, GPU will not be used.")


def test_the_driver_lines_are_noise_and_nothing_else_is():
    assert is_driver_noise(ABSL) and is_driver_noise(ABSL + "\n")
    assert is_driver_noise(CUDART + "\n")
    assert is_driver_noise(CUDART.replace("I0000", "W1207").replace("   28073", " 7"))
    for line in ("", "ERROR: something failed",
                 ABSL + " and more",  # not the exact notice
                 CUDART.replace("I0000", "E0000"),  # an error from the same place
                 CUDART.replace("Could not find", "Found"),
                 "F0000 00:00:1.0 1 cuda_executor.cc:1] Check failed: driver",
                 "Traceback (most recent call last):"):
        assert not is_driver_noise(line), line


# libtpu 0.0.42.1's first load on a host that is not a TPU VM (`memory --topology v6e-1`)
LIBTPU = [
    "Failed to find host bounds for accelerator type: WARNING: could not determine TPU "
    "accelerator type, please set env var `TPU_ACCELERATOR_TYPE` manually, otherwise "
    "libtpu.so may not properly initialize.",
    "WARNING: Logging before InitGoogle() is written to STDERR",
    "E0000 00:00:1796640328.962650   18906 common_lib.cc:554] INVALID_ARGUMENT: Error: "
    "unexpected worker hostname 'WARNING: could not determine TPU worker hostnames or IP "
    "addresses' from env var TPU_WORKER_HOSTNAMES. Expecting a valid hostname or IP address "
    "without port number, or hostname:port:address triple. (Full TPU workers' addr string: "
    "WARNING: could not determine TPU worker hostnames or IP addresses, please set env var "
    "`TPU_WORKER_HOSTNAMES` manually, otherwise libtpu.so may not properly initialize.)",
    "=== Source Location Trace: === ",
    "learning/45eac/tfrc/runtime/libtpu_init_utils.cc:327",
]


def test_libtpus_start_lines_are_noise_for_the_tpu_compile_only():
    assert all(is_libtpu_noise(line) for line in LIBTPU + [ABSL, CUDART])
    assert not any(is_driver_noise(line) for line in LIBTPU)
    for line in ("E0000 00:00:1.0 1 common_lib.cc:554] INVALID_ARGUMENT: out of memory",
                 "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error",
                 "learning/45eac/tfrc/runtime/tpu_compiler.cc:12"):
        assert not is_libtpu_noise(line), line


def _fd2():
    st = os.fstat(2)
    return st.st_dev, st.st_ino


def test_noise_is_dropped_and_the_rest_kept_in_order(capfd, monkeypatch):
    # sys.stderr: line-buffered on descriptor 2, as outside pytest (capfd replaces it)
    monkeypatch.setattr(sys, "stderr", open(2, "w", buffering=1, closefd=False))  # noqa: SIM115
    before = _fd2()
    with filtered_stderr():
        os.write(2, f"{ABSL}\nfirst real line\n{CUDART}\n".encode())
        print("a Python warning", file=sys.stderr)
        os.write(2, b"E0000 a real C++ error\n" + f"{ABSL}\n{CUDART}\n".encode()
                 + b"last, without a newline")
    assert _fd2() == before
    err = capfd.readouterr().err
    assert err == ("first real line\na Python warning\nE0000 a real C++ error\n"
                   "last, without a newline")


def test_the_descriptor_is_restored_and_the_lines_kept_after_an_exception(capfd):
    before = _fd2()
    with pytest.raises(RuntimeError, match="backend failed"), filtered_stderr():
        os.write(2, f"{CUDART}\nwhy it failed\n".encode())
        raise RuntimeError("backend failed")
    assert _fd2() == before
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "why it failed\nafter\n"


def test_nothing_written_means_nothing_replayed(capfd):
    with filtered_stderr():
        os.write(2, f"{ABSL}\n{CUDART}\n".encode())
    assert capfd.readouterr().err == ""


def test_start_jax_leaves_a_started_jax_and_other_platforms_alone(monkeypatch):
    import jax  # noqa: F401 - already imported: start_jax must not redirect anything

    calls = []
    monkeypatch.setattr("pythoncoder.utils.platforms.filtered_stderr",
                        lambda *a, **k: calls.append(1))
    start_jax()
    monkeypatch.delitem(sys.modules, "jax")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")  # an accelerator host: JAX starts as usual
    start_jax()
    assert calls == []


def test_start_jax_runs_the_hook_after_the_import_and_before_any_backend(tmp_path):
    """``train`` starts ``jax.distributed`` there: it must come before the first backend."""
    script = (
        "import json, sys\n"
        "from pythoncoder.utils.platforms import start_jax\n"
        "seen = []\n"
        "def hook():\n"
        "    from jax._src import xla_bridge\n"
        "    seen.append(['jax' in sys.modules, xla_bridge.backends_are_initialized()])\n"
        "start_jax(before_backend=hook)\n"
        "from jax._src import xla_bridge\n"
        "print(json.dumps([seen, xla_bridge.backends_are_initialized()]))\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [[[True, False]], True]
