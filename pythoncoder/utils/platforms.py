"""Which JAX platforms a ``pythoncoder`` command starts on a host with no accelerator.

With the ``targets`` extra installed (the compile-only CUDA plugin and libtpu), every JAX
start on a CPU-only host tries both: the CUDA plugin prints a traceback ("Unable to load
cuDNN") and libtpu a page of warnings, before JAX falls back to the CPU.  Where the host has
no accelerator device node and ``JAX_PLATFORMS`` is unset, the command line sets it to
``cpu`` before JAX is imported; deviceless compiles (``pythoncoder memory --topology``) need
exactly that.  A host with a GPU or TPU, or a ``JAX_PLATFORMS`` the user set, is left alone.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable, Container, MutableMapping

# NVIDIA (driver control node, first GPU), TPU VMs (accel nodes up to v4; VFIO groups from
# v5e on), AMD ROCm.
_DEVICE_PATTERNS = ("/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/accel[0-9]*",
                    "/dev/vfio/[0-9]*", "/dev/kfd")


def accelerator_nodes(find: Callable[[str], list[str]] = glob.glob) -> list[str]:
    """The accelerator device nodes this host has (empty on a CPU-only host)."""
    return [path for pattern in _DEVICE_PATTERNS for path in find(pattern)]


def default_to_cpu(environ: MutableMapping[str, str] | None = None,
                   find: Callable[[str], list[str]] = glob.glob,
                   modules: Container[str] | None = None) -> bool:
    """Set ``JAX_PLATFORMS=cpu`` when it is unset, JAX is not imported yet and the host has
    no accelerator; returns whether it did."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if "JAX_PLATFORMS" in environ or "jax" in modules or accelerator_nodes(find):
        return False
    environ["JAX_PLATFORMS"] = "cpu"
    return True
