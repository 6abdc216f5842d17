"""Checkpoints and run directories, below both ``train/`` and ``infer/`` (TRAIN-05, RUN-*).

Layout of a run directory::

    RUN_DIR/run.json              model config, train config, plan, data manifest digest
    RUN_DIR/model_config.json     the model config alone (for inference)
    RUN_DIR/run.lock              held (flock) by the one process training into RUN_DIR
    RUN_DIR/metrics.jsonl
    RUN_DIR/checkpoints/<step>/   one Orbax step: items ``params``, ``opt``, ``meta``
    RUN_DIR/checkpoints/<step>/manifest.sha256.json   written last, after Orbax finalises

Parameters are an Orbax item of their own, so inference restores them alone (no
optimizer, no TrainConfig).  Every step's manifest records the sha256 and size of each
file Orbax wrote; a step without a manifest, or whose files do not match it, is not
trusted: training resumes from the newest step that verifies (saying which were
skipped), inference refuses it.  Restored parameters must also be finite.

This module imports neither ``pythoncoder.train`` nor ``pythoncoder.infer``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from pythoncoder.utils.files import atomic_write_text, file_sha256

RUN_FILE = "run.json"
MODEL_CONFIG_FILE = "model_config.json"
LOCK_FILE = "run.lock"
CHECKPOINT_DIR = "checkpoints"
REJECTED_DIR = "rejected_checkpoints"
MANIFEST = "manifest.sha256.json"
MANIFEST_FORMAT = "pythoncoder-checkpoint-manifest-v1"
ITEMS = ("params", "opt", "meta")


class CheckpointError(RuntimeError):
    """A checkpoint or run directory is missing, unreadable or unusable; the message says why."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint step failed verification (manifest, checksums, finiteness)."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"checkpoint step {step} is corrupt or partial: {reason}")
        self.step = step
        self.reason = reason


class RunLockError(CheckpointError):
    """Another live process holds the run directory."""


# ---------------------------------------------------------------- run files
def _as_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def write_run_files(run_dir: str | Path, model_cfg: Any, train_cfg: Any, plan: Any,
                    **extra: Any) -> None:
    """``run.json`` (model, train, plan and ``extra``) and ``model_config.json``, atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"model": _as_dict(model_cfg), "train": _as_dict(train_cfg), "plan": _as_dict(plan),
            **extra}
    for name, payload in ((RUN_FILE, info), (MODEL_CONFIG_FILE, info["model"])):
        atomic_write_text(run_dir / name, json.dumps(payload, indent=2))


def read_run_file(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {run_dir} is not a training run directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from e


# ---------------------------------------------------------------- run lock
class RunLock:
    """One owner per run directory: ``flock`` on ``RUN_DIR/run.lock`` for the run's life.

    The lock file holds the owner's pid and host.  The kernel releases a ``flock`` when
    its process dies (even by ``kill -9``), so a lock file left by a dead process is
    taken over, with a message naming the previous owner.
    """

    def __init__(self, run_dir: str | Path, log: Callable[[str], Any] = print) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.log = log
        self._fd: int | None = None

    @staticmethod
    def _holder(text: str) -> tuple[str, str]:
        try:
            info = json.loads(text)
            return str(info.get("pid", "?")), str(info.get("host", "?"))
        except (ValueError, AttributeError):
            return "?", "?"

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            previous = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise CheckpointError(f"cannot lock {self.path}: {e}") from None
            pid, host = self._holder(previous)
            raise RunLockError(f"run directory {self.path.parent} is in use by pid {pid} on "
                               f"host {host} (lock {self.path}); wait for it, stop it, or "
                               "choose another --out") from None
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        if previous.strip():
            pid, host = self._holder(previous)
            if pid != str(os.getpid()):
                alive = host == socket.gethostname() and _pid_alive(pid)
                why = "no longer running" if not alive else "lock released"
                self.log(f"taking over the stale lock on {self.path.parent} from pid {pid} on "
                         f"host {host} ({why})")
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- manifests
def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(step_dir: str | Path, step: int) -> Path:
    """Record the sha256 and size of every file in ``step_dir``; written last, atomically."""
    step_dir = Path(step_dir)
    files = {str(p.relative_to(step_dir)): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
             for p in _files(step_dir)}
    payload = {"format": MANIFEST_FORMAT, "step": step, "files": files}
    atomic_write_text(step_dir / MANIFEST, json.dumps(payload, indent=1, sort_keys=True),
                      fsync=True)
    return step_dir / MANIFEST


def verify_step(step_dir: str | Path, step: int) -> None:
    """Raise :class:`CorruptCheckpointError` unless every file matches the step's manifest."""
    step_dir = Path(step_dir)
    path = step_dir / MANIFEST
    if not path.is_file():
        raise CorruptCheckpointError(step, f"no {MANIFEST} (the save did not finish)")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("step") != step:
            raise ValueError("wrong format or step")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(step, f"{path} is unreadable ({e})") from None
    present = {str(p.relative_to(step_dir)) for p in _files(step_dir)}
    missing = sorted(set(files) - present)
    if missing:
        raise CorruptCheckpointError(step, f"missing file {missing[0]}")
    for name, entry in files.items():
        p = step_dir / name
        if p.stat().st_size != entry["bytes"]:
            raise CorruptCheckpointError(step, f"{name} has {p.stat().st_size} bytes, "
                                               f"expected {entry['bytes']} (truncated?)")
        if file_sha256(p) != entry["sha256"]:
            raise CorruptCheckpointError(step, f"{name} does not match its sha256")


def _check_finite(params: Any, step: int) -> None:
    """Reduce each leaf on its device; only one flag per leaf comes back to the host."""
    flags = jax.device_get(jax.tree.map(lambda x: jnp.isfinite(x).all(), params))
    for path, ok in jax.tree_util.tree_leaves_with_path(flags):
        if not bool(ok):
            raise CorruptCheckpointError(
                step, f"non-finite parameter values in {jax.tree_util.keystr(path)}")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = next((t for t in text if t.strip()), "")
    if "No space left" in str(e):
        first = "No space left on device"
    return f"{type(e).__name__}: {first[:300]}"


# ---------------------------------------------------------------- the manager
class _OrbaxSaveErrors(logging.Filter):
    """Drop Orbax's own error logs (a traceback per failed write thread): a failed save is
    reported once, as one line, by :class:`Checkpointer`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


class _OrbaxReadOnlyNotice(logging.Filter):
    """Drop Orbax's "Given directory is read only" warning: every inference restore opens
    the run read-only on purpose, and there is nothing for the user to do about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and "orbax" in record.pathname
                    and str(record.msg).startswith("Given directory is read only"))


_FILTERS = (_OrbaxSaveErrors(), _OrbaxReadOnlyNotice())


def _quiet_orbax_errors() -> None:
    logger = logging.getLogger("absl")
    for f in _FILTERS:
        if f not in logger.filters:
            logger.addFilter(f)


class Checkpointer:
    """``ocp.CheckpointManager`` with verified steps, clear errors and one pending save.

    ``save`` starts an (async) save; ``poll`` never waits: once Orbax is done it starts
    hashing the step's files for the manifest on a background thread (gigabytes at 1b, so
    not on the training loop's thread) and returns the step when that is written;
    ``finish`` waits for both.  Both raise :class:`CheckpointError` with one line if the
    save failed.  They return the step they finished, else ``None``.  In a multi-process
    run only process 0 writes the manifest (the directory is shared).
    """

    def __init__(self, run_dir: str | Path, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.directory = (self.run_dir / CHECKPOINT_DIR).absolute()
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        # read-only: the values Orbax would otherwise set itself, with a warning each
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, create=not read_only, read_only=read_only,
            save_interval_steps=0 if read_only else 1, enable_async_checkpointing=async_save)
        _quiet_orbax_errors()
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                 item_names=ITEMS)
        except Exception as e:  # noqa: BLE001 - orbax raises many types for a bad directory
            raise CheckpointError(f"cannot open {self.directory}: {_one_line(e)}") from None
        self._pending: int | None = None  # Orbax still writing this step
        self._manifest: tuple[int, concurrent.futures.Future] | None = None  # hashing it
        self._hasher: concurrent.futures.ThreadPoolExecutor | None = None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    # saving
    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Start saving ``state`` (a TrainState: params, opt_state, step, skipped) at ``step``."""
        self.finish()
        if step in self.all_steps():
            raise CheckpointError(f"checkpoint step {step} already exists in {self.directory}")
        opt = {"opt_state": state.opt_state, "step": state.step, "skipped": state.skipped}
        try:
            self.manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params), opt=ocp.args.StandardSave(opt),
                meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as e:  # noqa: BLE001 - disk full, read-only, ...
            self._pending = None
            raise CheckpointError(f"saving checkpoint step {step} in {self.directory} failed: "
                                  f"{_one_line(e)}; earlier checkpoints are untouched") from None
        self._pending = step

    def poll(self) -> int | None:
        if self._manifest is not None:
            return self._collect_manifest() if self._manifest[1].done() else None
        if self._pending is None or self.manager.is_saving_in_progress():
            return None
        step = self._orbax_done()
        if self._hasher is None:
            self._hasher = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="checkpoint-manifest")
        self._manifest = (step, self._hasher.submit(self._write_manifest, step))
        return None

    def finish(self) -> int | None:
        if self._manifest is not None:
            return self._collect_manifest()
        if self._pending is None:
            return None
        step = self._orbax_done()
        self._write_manifest(step)
        return step

    def _orbax_done(self) -> int:
        """Wait for Orbax's save of the pending step; raise if it failed."""
        step, self._pending = self._pending, None
        assert step is not None
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001 - background save failures arrive here
            raise CheckpointError(f"saving checkpoint step {step} in {self.directory} failed: "
                                  f"{_one_line(e)}; earlier checkpoints are untouched") from None
        if not self.step_dir(step).is_dir():
            raise CheckpointError(f"saving checkpoint step {step} in {self.directory} failed: "
                                  "the step directory is missing after the save")
        return step

    def _write_manifest(self, step: int) -> None:
        if jax.process_index() != 0:
            return
        try:
            write_manifest(self.step_dir(step), step)
        except OSError as e:
            raise CheckpointError(f"writing the manifest of checkpoint step {step} failed: "
                                  f"{_one_line(e)}; earlier checkpoints are untouched") from None

    def _collect_manifest(self) -> int:
        assert self._manifest is not None
        (step, future), self._manifest = self._manifest, None
        future.result()  # re-raises the CheckpointError of a failed manifest write
        return step

    # verifying
    def verify(self, step: int) -> None:
        if step not in self.all_steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory} "
                                  f"(have {self.all_steps()})")
        verify_step(self.step_dir(step), step)

    def newest_verified(self, log: Callable[[str], Any] | None = None) -> int | None:
        """The newest step whose files match its manifest; each rejected one is logged."""
        for step in reversed(self.all_steps()):
            try:
                verify_step(self.step_dir(step), step)
                return step
            except CorruptCheckpointError as e:
                if log is not None:
                    log(f"{e}; trying an older one")
        return None

    def set_aside(self, steps: list[int], log: Callable[[str], Any] | None = None) -> None:
        """Move rejected steps to ``RUN_DIR/rejected_checkpoints/`` (kept for inspection)."""
        if not steps:
            return
        self.finish()
        dest = self.run_dir / REJECTED_DIR
        dest.mkdir(exist_ok=True)
        for step in steps:
            target = dest / f"{step}-{int(time.time())}"
            shutil.move(str(self.step_dir(step)), target)
            if log is not None:
                log(f"moved rejected checkpoint step {step} to {target}")
        self.manager.reload()

    def remove_partial_saves(self) -> None:
        """Delete Orbax temporaries left by a killed save (never a finalised step)."""
        if not self.directory.is_dir():
            return
        for p in self.directory.iterdir():
            if p.is_dir() and ".orbax-checkpoint-tmp" in p.name:
                shutil.rmtree(p, ignore_errors=True)

    # restoring
    def _restore(self, step: int, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
            raise CorruptCheckpointError(step, f"Orbax could not restore it ({_one_line(e)})"
                                         ) from None

    def restore(self, abstract_state: Any, step: int | None = None, *,
                log: Callable[[str], Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """``(state, meta)`` of ``step``, or of the newest step that verifies (``None``).

        ``abstract_state`` is a TrainState of ``jax.ShapeDtypeStruct`` leaves; the result
        is ``abstract_state.replace(...)`` with the restored arrays.  Raises
        :class:`CorruptCheckpointError` if ``step`` is given and fails verification.
        """
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        if not steps:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        abstract_opt = {"opt_state": abstract_state.opt_state, "step": abstract_state.step,
                        "skipped": abstract_state.skipped}
        last: CorruptCheckpointError | None = None
        for s in steps:
            try:
                self.verify(s)
                out = self._restore(s, {"params": ocp.args.StandardRestore(abstract_state.params),
                                        "opt": ocp.args.StandardRestore(abstract_opt),
                                        "meta": ocp.args.JsonRestore()})
                _check_finite(out["params"], s)
            except CorruptCheckpointError as e:
                if step is not None:
                    raise
                last = e
                if log is not None:
                    log(f"{e}; trying an older one")
                continue
            opt = out["opt"]
            state = abstract_state.replace(params=out["params"], opt_state=opt["opt_state"],
                                           step=opt["step"], skipped=opt["skipped"])
            return state, dict(out["meta"])
        raise CheckpointError(f"no checkpoint in {self.directory} verifies (last problem: "
                              f"{last})")

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
        """``(params, step)``: the parameters alone, verified; ``step`` defaults to the latest.

        Never falls back silently: a corrupt requested/latest step raises
        :class:`CorruptCheckpointError` naming it.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        self.verify(step)
        out = self._restore(step, {"params": ocp.args.StandardRestore(abstract_params)})
        _check_finite(out["params"], step)
        return out["params"], step

    def close(self) -> None:
        try:
            self.finish()
        finally:
            self.release()

    def release(self) -> None:
        """Close without finishing a pending save (after ``finish`` has failed)."""
        if self._hasher is not None:
            self._hasher.shutdown()
            self._hasher = None
        self.manager.close()


def restore_model(run_dir: str | Path, step: int | None = None, *, model_cfg: Any = None):
    """The model of a training run at ``step`` (latest by default), for inference.

    Restores the ``params`` item only (no optimizer, no train config), verified against
    the step's manifest and checked finite.
    """
    from flax import nnx

    from pythoncoder.model import ModelConfig, abstract_model

    if model_cfg is None:  # else a config of the same shapes (e.g. YaRN switched on)
        model_cfg = ModelConfig(**read_run_file(run_dir)["model"])
    graphdef, abstract_params = nnx.split(abstract_model(model_cfg), nnx.Param)
    # on the default device, as an export loads (Orbax would otherwise read the training
    # mesh's shardings from the checkpoint, with a warning that it is unsafe elsewhere)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract_params = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_params)
    ckpt = Checkpointer(run_dir, async_save=False, read_only=True)
    try:
        params, _ = ckpt.restore_params(abstract_params, step)
    finally:
        ckpt.manager.close()
    return nnx.merge(graphdef, params)
