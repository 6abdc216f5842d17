"""Running samples: :func:`check_usable` (the self-test a sandbox must pass before any
scoring, else :class:`SandboxUnusable`), :func:`run_program` and :func:`run_programs`
(samples in a random order over worker slots, results in input order)."""

from __future__ import annotations

import os
import queue
import random
import sysconfig
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from pythoncoder.eval.sandbox.config import (
    FAILED,
    SANDBOX_UID,
    Job,
    SandboxConfig,
    SandboxResult,
    sanitize,
)
from pythoncoder.eval.sandbox.isolate import _others_can_read, _warn_missing, isolation
from pythoncoder.eval.sandbox.process import _Slot


class SandboxUnusable(RuntimeError):
    """The sandbox cannot run a trivial correct program here: scoring would misjudge."""


# A correct program that imports what HumanEval solutions import, judged both ways.
_SELF_TEST = "from typing import List\nimport json\nimport math\n\n\n" \
             "def f(x):\n    return math.floor(x) + len(json.dumps([1]))\n"
_SELF_TEST_JUDGE = {"prelude": "", "test": "assert f(1.5) == 4\n", "names": ["f"],
                    "entry": None, "reference": _SELF_TEST}
_CHECKED: dict[tuple[SandboxConfig, str], str | None] = {}
_CHECK_LOCK = threading.Lock()


def check_usable(config: SandboxConfig | None = None, slot: _Slot | None = None) -> None:
    """Raise :class:`SandboxUnusable` (one line: what is missing, how to fix it) unless
    the sandbox passes a trivial correct program (the judge's verdict). Once per
    configuration and process; :func:`run_programs` calls it before any sample, on one
    of its own workers (whose judge then stays up for the samples)."""
    config = config or SandboxConfig()
    kind = isolation(config)
    with _CHECK_LOCK:
        if (config, kind) not in _CHECKED:
            _CHECKED[(config, kind)] = _self_test(config, kind, slot)
        message = _CHECKED[(config, kind)]
    if message is not None:
        raise SandboxUnusable(message)


def _self_test(config: SandboxConfig, kind: str, slot: _Slot | None) -> str | None:
    own = slot is None
    if own:
        slot = _Slot(config, prestart=False)
    try:
        result = slot.run(Job(_SELF_TEST, _SELF_TEST_JUDGE), timeout_s=max(config.timeout_s, 30))
    except Exception as e:  # noqa: BLE001 - reported as the reason it is unusable
        return sanitize(f"the evaluation sandbox ({kind}) cannot start: {type(e).__name__}: "
                        f"{e}; install bubblewrap (apt-get install bubblewrap)", 400)
    finally:
        if own:
            slot.close()
    if result.passed:
        return None
    stdlib = sysconfig.get_paths()["stdlib"]
    if kind != "bwrap" and os.geteuid() == 0 and not _others_can_read(stdlib):
        return (f"the evaluation sandbox cannot run Python: without bubblewrap samples run "
                f"as uid {SANDBOX_UID}, which cannot read the Python installation ({stdlib}: a "
                f"parent directory is not world-readable); install bubblewrap (apt-get install "
                f"bubblewrap) or use a Python installed outside that directory")
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    detail = result.result + (f"; {errors[-1]}" if errors else "")
    fix = ("install bubblewrap (apt-get install bubblewrap)" if kind != "bwrap" else
           "see the README's 'Evaluation sandbox' section")
    return sanitize(f"the evaluation sandbox ({kind}) fails a trivial correct program "
                    f"({detail}); {fix}", 400)


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def run_program(source: str | Job, config: SandboxConfig | None = None) -> SandboxResult:
    """Run one program (or :class:`Job`) in a fresh sandbox; never raises for what it does."""
    return run_programs([source], config, workers=1)[0]


def run_programs(
    sources: Sequence[str | Job],
    config: SandboxConfig | None = None,
    *,
    workers: int | None = None,
    on_result: Callable[[int, SandboxResult], None] | None = None,
) -> list[SandboxResult]:
    """Run many programs or :class:`Job`\\ s in parallel, one sandbox each.

    Results come back in input order; ``on_result(index, result)`` is called as each one
    finishes (from worker threads). A failure of the harness around one sample is that
    sample's ``failed: harness error`` result, never a lost result.
    """
    config = config or SandboxConfig()
    _warn_missing(config, isolation(config))  # probe (and warn) once, before the threads
    jobs = [s if isinstance(s, Job) else Job(s) for s in sources]
    workers = max(1, min(workers or default_workers(), len(jobs) or 1))
    results: list[SandboxResult | None] = [None] * len(jobs)
    slots: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
    for _ in range(workers):
        slots.put(_Slot(config, prestart=len(jobs) > workers))
    first = slots.get()
    slots.put(first)
    try:  # a sandbox that cannot run a correct program refuses to score anything
        check_usable(config, first)
    except BaseException:
        while True:
            try:
                slots.get_nowait().close()
            except queue.Empty:
                break
        raise

    def one(index: int) -> None:
        slot = slots.get()
        start = time.monotonic()
        try:
            result = slot.run(jobs[index])
        except Exception as e:  # noqa: BLE001 - recorded as this sample's result
            result = SandboxResult(
                status=FAILED, reason=sanitize(f"harness error: {type(e).__name__}"),
                returncode=None, stdout="", stderr="", stdout_truncated=False,
                stderr_truncated=False, duration_s=time.monotonic() - start, pid=0)
        finally:
            slots.put(slot)
        results[index] = result
        if on_result is not None:
            on_result(index, result)

    try:
        # Samples start in a random order (results stay in input order): which copy of a
        # completion runs first, or next to which, is nothing a sample can count on.
        order = list(range(len(jobs)))
        random.SystemRandom().shuffle(order)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(one, i) for i in order]:
                future.result()
    finally:
        while True:
            try:
                slots.get_nowait().close()
            except queue.Empty:
                break
    return results  # type: ignore[return-value]
