"""Which JAX platforms a ``pythoncoder`` command starts on a host with no accelerator.

With the ``targets`` extra installed (the compile-only CUDA plugin and libtpu), every JAX
start on a CPU-only host tries both: the CUDA plugin prints a traceback ("Unable to load
cuDNN") and libtpu a page of warnings, before JAX falls back to the CPU.  Where the host has
no accelerator device node and ``JAX_PLATFORMS`` is unset, the command line sets it to
``cpu`` before JAX is imported; deviceless compiles (``pythoncoder memory --topology``) need
exactly that.  A host with a GPU or TPU, or a ``JAX_PLATFORMS`` the user set, is left alone.

Even on the CPU alone the plugin's libraries log a few lines at start-up ("Could not find
cuda drivers on your machine"), from C++ straight to file descriptor 2; ``start_jax``
imports JAX and starts its backend with those lines dropped (``filtered_stderr``), and the
command line calls it before a command runs.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sys
import tempfile
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


# What the ``targets`` extra's CUDA plugin libraries write straight to file descriptor 2
# (C++ absl/TSL logging, past any Python filter) each time one is loaded on a host without
# an NVIDIA driver, even with ``JAX_PLATFORMS=cpu``: three times at ``import jax``, once at
# the first backend start.  Nothing the user can act on.
DRIVER_NOISE = (
    re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are "
               r"written to STDERR"),
    re.compile(r"[IW]\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on "
               r"your machine, GPU will not be used\."),
)


# What libtpu writes to file descriptor 2 the first time it loads on a host that is not a
# TPU VM (the cloud metadata it looks for is not there), before compiling for a TPU topology
# (`pythoncoder memory --topology v6e-1`) as asked.  Nothing the user can act on.
LIBTPU_NOISE = (
    re.compile(r"Failed to find host bounds for accelerator type: WARNING: could not "
               r"determine TPU accelerator type, please set env var `TPU_ACCELERATOR_TYPE` "
               r"manually, otherwise libtpu\.so may not properly initialize\."),
    re.compile(r"WARNING: Logging before InitGoogle\(\) is written to STDERR"),
    re.compile(r"E\d{4} [\d:.]+ +\d+ common_lib\.cc:\d+\] INVALID_ARGUMENT: Error: "
               r"unexpected worker hostname 'WARNING: could not determine TPU worker "
               r"hostnames or IP addresses' from env var TPU_WORKER_HOSTNAMES\..*"),
    re.compile(r"=== Source Location Trace: === ?"),
    re.compile(r"\S*/tfrc/runtime/libtpu_init_utils\.cc:\d+"),
)


def is_driver_noise(line: str) -> bool:
    """Whether ``line`` (with or without its newline) is one of :data:`DRIVER_NOISE`."""
    text = line.rstrip("\r\n")
    return any(p.fullmatch(text) for p in DRIVER_NOISE)


def is_libtpu_noise(line: str) -> bool:
    """Whether ``line`` is one of :data:`LIBTPU_NOISE` or :data:`DRIVER_NOISE`."""
    text = line.rstrip("\r\n")
    return is_driver_noise(text) or any(p.fullmatch(text) for p in LIBTPU_NOISE)


@contextlib.contextmanager
def filtered_stderr(drop: Callable[[str], bool] = is_driver_noise, fd: int = 2):
    """Run the block with file descriptor ``fd`` (stderr) going to a temporary file, then
    write to the real one every line ``drop`` does not match, in order.

    C++ libraries log to the descriptor directly, so only a redirection catches them.
    Whatever else is written meanwhile (a warning, a real error) still reaches stderr,
    after the block; the descriptor is restored however the block ends.  A process killed
    inside the block loses what it wrote there: keep the block to library start-up.
    """
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), fd)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, fd)
                tmp.seek(0)
                kept = [line for line in tmp.read().splitlines(keepends=True)
                        if not drop(line.decode("utf-8", "replace"))]
                if kept:
                    os.write(fd, b"".join(kept))
    finally:
        os.close(saved)


def start_jax(before_backend: Callable[[], object] | None = None) -> None:
    """Import JAX and start its backends without the CUDA plugin's driver messages;
    ``before_backend`` runs in between (``jax.distributed.initialize`` must come before
    any backend starts).

    Only where JAX runs on the CPU alone (``JAX_PLATFORMS=cpu``, as
    :func:`default_to_cpu` sets it on a host without an accelerator) and JAX is not
    imported yet; elsewhere JAX starts as it would anyway, its output untouched.
    """
    if "jax" in sys.modules or os.environ.get("JAX_PLATFORMS", "").strip() != "cpu":
        return
    with filtered_stderr():
        import jax

        if before_backend is not None:
            before_backend()
        jax.devices()
