"""Models for inference: restored from a training run directory, or freshly initialised."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from flax import nnx

from pythoncoder.checkpoint import MODEL_CONFIG_FILE, CheckpointError, restore_model
from pythoncoder.model import ModelConfig, PythonCoder, abstract_model, build_model

FALLBACK_PRESET = "tiny"


class RunDirError(ValueError):
    """The run directory cannot be used for inference; the message says why."""


def _loud(msg: str) -> None:
    banner = "!" * 78
    print(f"{banner}\n{msg}\n{banner}", file=sys.stderr)
    warnings.warn(msg, stacklevel=3)


def with_config(model: PythonCoder, cfg: ModelConfig) -> PythonCoder:
    """The same parameters under another config of identical shapes (e.g. YaRN on)."""
    graphdef, _ = nnx.split(abstract_model(cfg))
    _, state = nnx.split(model)
    return nnx.merge(graphdef, state)


def load_for_inference(run_dir: str | Path | None, *, yarn: bool = False,
                       step: int | None = None, seed: int = 0) -> tuple[PythonCoder, ModelConfig]:
    """``(model, cfg)`` for generation; ``yarn`` switches on the 8192-token RoPE (YARN-01).

    With a run directory that holds a checkpoint, the parameters alone are restored by
    ``pythoncoder.checkpoint.restore_model`` (latest step unless ``step``), verified
    against the step's sha256 manifest and checked finite; a corrupt step is refused
    (``RunDirError`` naming it), never replaced.  Only without a run directory is a freshly
    initialised ``tiny`` model used, with a loud warning: its output is noise.
    """
    if run_dir is None:
        _loud("pythoncoder: no --run directory given: using a FRESHLY INITIALISED "
              f"'{FALLBACK_PRESET}' model (random weights; its output is noise)")
        return _fresh(yarn, seed)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt_dir.is_dir() or not any(p.name.isdigit() for p in ckpt_dir.iterdir()):
        raise RunDirError(f"{run_dir} has no checkpoints (expected {ckpt_dir}/<step>/); "
                          "train first, or omit --run to try a random model")
    cfg_path = run_dir / MODEL_CONFIG_FILE
    try:
        import json

        saved = ModelConfig(**json.loads(cfg_path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise RunDirError(f"{cfg_path} is missing or invalid: {e}") from e
    cfg = saved.with_yarn() if yarn else saved.replace(yarn=False)
    try:
        model = restore_model(run_dir, step, model_cfg=cfg)
    except CheckpointError as e:
        raise RunDirError(str(e)) from e
    return model, cfg


def _fresh(yarn: bool, seed: int) -> tuple[PythonCoder, ModelConfig]:
    cfg = ModelConfig.preset(FALLBACK_PRESET)
    cfg = cfg.with_yarn() if yarn else cfg
    return build_model(cfg, seed), cfg
