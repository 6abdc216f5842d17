"""TRAIN-05: Orbax checkpoints of the full training state.

Layout: ``RUN_DIR/run.json`` (model config, train config, plan) and
``RUN_DIR/checkpoints/<global_step>/`` written by an ``ocp.CheckpointManager`` (async
saves, atomic finalisation by rename, ``max_to_keep``).  Each step holds two items:
``state`` (params, optimizer state, counters) and ``meta`` (epoch, global_step,
data_epoch, loader position, RNG seed/key).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from pythoncoder.model import ModelConfig, PythonCoder, abstract_model
from pythoncoder.train.config import TrainConfig

RUN_FILE = "run.json"
MODEL_CONFIG_FILE = "model_config.json"


class CheckpointError(RuntimeError):
    """A checkpoint or run directory is missing or unreadable; the message names it."""


def write_run_files(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                    plan: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg),
            "plan": dataclasses.asdict(plan)}
    for name, payload in ((RUN_FILE, info), (MODEL_CONFIG_FILE, info["model"])):
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(run_dir / name)


def read_run_file(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {run_dir} is not a training run directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from e


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` with clear errors."""

    def __init__(self, run_dir: str | Path, *, keep: int = 3, async_save: bool = True) -> None:
        self.directory = (Path(run_dir) / "checkpoints").absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = True) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        if step not in self.all_steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory} "
                                  f"(have {self.all_steps()})")
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for damaged files
            raise CheckpointError(f"checkpoint {self.directory / str(step)} could not be "
                                  f"restored ({type(e).__name__}: {e})") from e
        return out["state"], dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_model(run_dir: str | Path, step: int | None = None, *,
                  model_cfg: ModelConfig | None = None) -> PythonCoder:
    """The model of a training run at ``step`` (latest by default), for inference."""
    from flax import nnx

    from pythoncoder.train.memory import abstract_train_state
    from pythoncoder.train.optimizer import make_optimizer

    info = read_run_file(run_dir)
    saved_cfg = ModelConfig(**info["model"])
    model_cfg = saved_cfg if model_cfg is None else model_cfg
    train_cfg = TrainConfig(**info["train"])
    plan = info["plan"]
    tx, _ = make_optimizer(train_cfg, plan["total_steps"], plan["warmup_steps"])
    model = abstract_model(saved_cfg)
    abstract = abstract_train_state(model, tx)
    ckpt = Checkpointer(run_dir, keep=train_cfg.keep_checkpoints, async_save=False)
    try:
        state, _ = ckpt.restore(abstract, step)
    finally:
        ckpt.close()
    graphdef, _ = nnx.split(abstract_model(model_cfg), nnx.Param)
    return nnx.merge(graphdef, state.params)
