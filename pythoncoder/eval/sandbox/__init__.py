"""Run untrusted Python in a kernel-enforced sandbox; decide the verdict outside it.

Isolation (EVAL-04). Each sample gets a fresh bubblewrap (``bwrap``) sandbox:

* new mount, PID, IPC, UTS, network (and, where the kernel allows, cgroup) namespaces; when
  the harness is not root, also a user namespace (``--unshare-user --disable-userns``);
* it runs as uid/gid 65534 with no capabilities and ``no_new_privs`` (bwrap sets it; when
  the harness is root, the child drops from root to 65534 before reading any candidate
  code, which clears every capability);
* the file-system view is the shared libraries (``/usr/lib``, ``/usr/lib64``), the base
  Python installation read-only (never a virtualenv; its ``site-packages`` and any
  ``dist-packages`` under the library dirs masked by empty root-owned tmpfs), the three
  sandbox scripts read-only (``/sbx``, a compiled private copy, with ``/sbx/python``
  linking to the interpreter), a private ``/proc`` (``/proc/keys`` and
  ``/proc/key-users``, host-wide, unreadable) and bwrap's minimal ``/dev``, and one
  writable directory, ``/work``: a tmpfs that vanishes with the namespace, capped in
  bytes and, when the harness is root, in inodes (the child mounts it with
  ``nr_inodes`` before dropping root; bwrap's own ``--size`` tmpfs cannot cap inodes).
  No host ``/tmp``, home, ``/etc``, ``/run`` or socket is visible;
* bwrap's options come through ``--args FD`` and the child's set-up through stdin, so no
  command line in the sandbox (``/proc/1/cmdline`` is bwrap's) names a host path;
* a seccomp filter (``_seccomp.py``, loaded by ``bwrap --seccomp FD``) denies the kernel
  keyring, new namespaces (so no user namespace in any mode, root harness included),
  memory outside ``RLIMIT_AS`` (SysV/POSIX shared memory, ``memfd``), ``mincore`` and
  the kernel's other attack surface (its docstring lists every call and why); the
  verdict names each refused call: the child reloads the filter, sealed, with a seccomp
  listener that the harness serves (``notify.py``);
* ``--die-with-parent``, ``--new-session``; the sandbox's PID 1 takes every process of
  the sample with it when the harness kills the sandbox, so no daemon survives;
* a memory cgroup per sandbox, kernel memory included (``cgroup.py``: v2 ``memory.max``
  where the harness's cgroup is delegated, v1 ``memory.limit_in_bytes`` as root, else
  none, with a warning): the dentry cache, pipe buffers and the like that no rlimit counts
  are charged to the sample, capped, and reclaimed when it ends (``cgroup.mode()``);
* rlimits: CPU seconds, address space, file size, processes (0: no fork), open files;
  set by the harness with ``prlimit`` on the waiting interpreter where the kernel allows
  (it must still be root, or the harness must hold ``CAP_SYS_RESOURCE``), else by the
  child itself, in both cases before any candidate code runs.

Without bwrap, ``unshare`` gives the namespaces (no file-system view, host work dir, no
seccomp filter), and with neither the sample only has the uid drop (when root) and the
rlimits; the harness warns once, saying which protection remains, and once per mechanism
a bwrap host lacks (the filter on an unknown architecture, the inode cap without root).
Before any sample, :func:`check_usable` runs a trivial correct program (it imports
``typing``, ``json``, ``math``) through the judge: a sandbox that cannot (an interpreter
unreadable after the uid drop, a broken bwrap) raises :class:`SandboxUnusable` instead of
scoring every sample as failed.

Verdict (EVAL-05). For a :class:`Job` with a judge spec the candidate never sees the
test: it runs the problem prompt plus completion and then serves calls. A trusted judge
(``_judge.py``; one long-lived process per worker, itself in a sandbox) runs the test
and calls the candidate over pipes, with only plain data crossing (``_wire``). With a
reference solution in the spec the calls are the test's calls traced against that
reference, all sent whatever the candidate answers and compared afterwards, so no
answer is revealed by being called again; the sample's clock restarts after the trace.
Samples start in a random order. A plain
source string (or a problem whose test passes non-plain values, reported by the judge as
``unsupported``) runs in the *weak* mode: the whole program in the sandbox, verdict
``PASS <nonce>`` from inside, labelled ``verdict == "in-sandbox"``.

Speed. Sandboxes are started one ahead per worker (the next one boots while the current
sample runs) and the judge is reused across samples, so a sample costs one bwrap and one
bare interpreter (``python -sP -S -B``: ``-I`` less ``-E``, for the shared hash seed).

Robustness (EVAL-06). Nothing a sample does reaches the harness (separate PID namespace
and uid); every sample's outcome is caught and recorded; reasons are capped and
sanitized; candidate output is kept only in :class:`SandboxResult`, never in results rows.

Files (each module imports only from those above it):

* ``config.py``: :class:`SandboxConfig`, :class:`Job`, :class:`SandboxResult`, the verdict
  names, :func:`sanitize` and the paths of the sandbox-side scripts;
* ``cgroup.py``: the memory cgroups (mode detection, one group per sandbox, joined
  before bwrap starts, emptied and removed after it);
* ``notify.py``: the harness's end of the candidate's seccomp listener (each refused call
  named and answered);
* ``isolate.py``: bwrap / unshare / none, the file-system view and the script copy, the
  seccomp program, the probes, :func:`isolation` and the missing-mechanism warnings;
* ``judge.py``: the harness side of the judge (its process and its verdict);
* ``process.py``: the candidate sandboxes, the worker slots, ``prlimit``, the supervision
  of one sample and the in-sandbox verdict;
* ``run.py``: :func:`check_usable` (:class:`SandboxUnusable`), :func:`run_program`,
  :func:`run_programs`, :func:`default_workers`.

Sandbox side, next to these: ``_sandbox_child.py`` (the candidate) and ``_judge.py`` (the
judge), run as scripts inside the sandbox (from ``/sbx``, a compiled copy), and
``_wire.py``, the plain-data codec they load by file path; ``_seccomp.py`` builds the
filter bwrap loads (its docstring lists every denied call and why).
"""

from pythoncoder.eval.sandbox.config import (
    CHILD_SCRIPT,
    FAILED,
    IN_SANDBOX,
    JUDGE,
    JUDGE_SCRIPT,
    PASSED,
    REASON_CAP,
    SANDBOX_GID,
    SANDBOX_UID,
    TIMED_OUT,
    WIRE_SCRIPT,
    Job,
    SandboxConfig,
    SandboxResult,
    sanitize,
)
from pythoncoder.eval.sandbox.isolate import isolation
from pythoncoder.eval.sandbox.run import (
    SandboxUnusable,
    check_usable,
    default_workers,
    run_program,
    run_programs,
)

__all__ = [
    "CHILD_SCRIPT",
    "FAILED",
    "IN_SANDBOX",
    "JUDGE",
    "JUDGE_SCRIPT",
    "PASSED",
    "REASON_CAP",
    "SANDBOX_GID",
    "SANDBOX_UID",
    "TIMED_OUT",
    "WIRE_SCRIPT",
    "Job",
    "SandboxConfig",
    "SandboxResult",
    "SandboxUnusable",
    "check_usable",
    "default_workers",
    "isolation",
    "run_program",
    "run_programs",
    "sanitize",
]
