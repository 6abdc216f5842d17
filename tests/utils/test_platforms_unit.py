"""On a host with no accelerator, ``pythoncoder`` starts JAX on the CPU only, so the
``targets`` extra's CUDA plugin and libtpu print no tracebacks; a GPU/TPU host and a
``JAX_PLATFORMS`` the user set are left alone."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import subprocess
import sys

import pytest

from pythoncoder.utils.platforms import accelerator_nodes, default_to_cpu


def _host(*nodes):
    return lambda pattern: [n for n in nodes if fnmatch.fnmatch(n, pattern)]


@pytest.mark.parametrize("nodes", [("/dev/nvidiactl", "/dev/nvidia0"), ("/dev/accel0",),
                                   ("/dev/vfio/0", "/dev/vfio/vfio"), ("/dev/kfd",)])
def test_an_accelerator_host_is_left_alone(nodes):
    env = {}
    assert accelerator_nodes(_host(*nodes))
    assert not default_to_cpu(env, _host(*nodes), modules=())
    assert env == {}


def test_a_cpu_host_starts_jax_on_the_cpu_unless_told_otherwise():
    cpu_host = _host("/dev/null", "/dev/vfio/vfio", "/dev/kvm")  # no accelerator node
    assert accelerator_nodes(cpu_host) == []
    env = {}
    assert default_to_cpu(env, cpu_host, modules=()) and env == {"JAX_PLATFORMS": "cpu"}
    env = {"JAX_PLATFORMS": "cuda"}  # the user's choice stands
    assert not default_to_cpu(env, cpu_host, modules=()) and env == {"JAX_PLATFORMS": "cuda"}
    env = {}  # too late once jax is imported: nothing is changed
    assert not default_to_cpu(env, cpu_host, modules=("jax",)) and env == {}


NOISE = ("Unable to load cuDNN", "Jax plugin configuration error")


@pytest.mark.skipif(importlib.util.find_spec("jax_plugins") is None
                    or bool(accelerator_nodes()), reason="needs the CUDA plugin on a CPU host")
def test_the_command_line_prints_no_plugin_traceback_on_a_cpu_host():
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    control = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                             capture_output=True, text=True, timeout=300)
    if not any(n in control.stderr for n in NOISE):
        pytest.skip("this jax prints no plugin traceback on a CPU host")
    run = subprocess.run([sys.executable, "-m", "pythoncoder", "info", "--preset", "tiny"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert not any(n in run.stderr for n in NOISE), run.stderr
