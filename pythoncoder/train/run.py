"""Setting up a training run: ``build_run`` turns the configs into a ``Run`` once, and
``loop.run_steps`` only runs it.

In order: the mesh (``resolve_mesh``), the training data (``open_train_data``), the plan
(``config.plan_run``), the optimizer and the LR of every update (``lr_per_update``), the
run directory's checkpoints (``check_run_dir``: a fresh run refuses old ones, a resume is
checked against ``run.json``), the state (``restore_state`` or ``fresh_state``), the
remat policy (``resolve_remat``), ``run.json`` / ``model_config.json``, the compiled step
(``step_function``), the validation data (``open_val_data``), the MFU peak
(``mesh_peak_flops``) and the metrics sink.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pythoncoder.checkpoint import Checkpointer, CheckpointError, read_run_file, write_run_files
from pythoncoder.data.loader import make_loader
from pythoncoder.data.shards import ShardError
from pythoncoder.model import ModelConfig, abstract_model, build_model
from pythoncoder.train.accounting import model_flops_per_token
from pythoncoder.train.config import RunPlan, TrainConfig, TrainConfigError, plan_run
from pythoncoder.train.host import Evaluation
from pythoncoder.train.memory import abstract_train_state
from pythoncoder.train.metrics import MetricsSink
from pythoncoder.train.optimizer import make_optimizer
from pythoncoder.train.remat import choose_remat
from pythoncoder.train.sharding import (
    make_mesh,
    maybe_initialize_distributed,
    replicated,
    state_shardings,
)
from pythoncoder.train.step import init_train_state, make_eval_step, make_train_step
from pythoncoder.utils.files import atomic_write_text


@dataclasses.dataclass
class Run:
    """A built training run. ``state`` is the current train state: the loop replaces it
    with each step's output (the step donates the old one)."""

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    run_dir: Path
    mesh: Any
    loader: Any  # the training data, at the position the run continues from
    plan: RunPlan
    lr_table: np.ndarray  # the LR after n applied updates, n = 0 .. total_steps
    state: Any
    start: int  # the global step the loop starts from (0, or the restored checkpoint's)
    skipped: int  # updates skipped before ``start`` (TRAIN-08)
    step_fn: Any  # (state, batch, key) -> (state, metrics)
    evaluation: Evaluation
    ckpt: Checkpointer
    sink: MetricsSink
    base_key: Any  # the run's PRNG key; step n uses fold_in(base_key, n)
    flops_per_token: float
    peak_flops: float | None  # the whole mesh's, for MFU; None: not reported
    remat: dict[str, Any] | None  # remat auto's choice (as in run.json), else None


def build_run(model_cfg: ModelConfig, train_cfg: TrainConfig, data_dir: str | Path,
              run_dir: Path, *, total_steps: int | None, resume: bool, mesh, progress: bool,
              log, peak_flops: float | None) -> Run:
    """Everything the loop needs, checked before the first step (one-line errors)."""
    maybe_initialize_distributed()
    mesh = resolve_mesh(mesh, train_cfg)
    loader = open_train_data(data_dir, train_cfg)
    plan = plan_run(loader.steps_per_epoch * train_cfg.tokens_per_step, train_cfg,
                    total_steps=total_steps)
    log(plan.describe())
    tx, schedule = make_optimizer(train_cfg, plan.total_steps, plan.warmup_steps)
    lr_table = lr_per_update(schedule, plan.total_steps)
    model = build_model(model_cfg, seed=train_cfg.seed)
    graphdef, _ = nnx.split(model, nnx.Param)
    abstract = abstract_train_state(model, tx)
    shardings = state_shardings(abstract, mesh)
    fingerprint = data_fingerprint(data_dir)
    check_run_dir(run_dir, model_cfg, train_cfg, fingerprint, resume=resume)
    ckpt = Checkpointer(run_dir, keep=train_cfg.keep_checkpoints)
    try:
        # Orbax temporaries of a killed save are never a finalised step: a resume drops
        # them, and so does a fresh start (a first save killed leaves nothing but them).
        ckpt.remove_partial_saves()
        if resume:
            state, meta = restore_state(ckpt, abstract, shardings, plan, loader, run_dir, log)
        else:
            state, meta = fresh_state(model, tx, shardings, run_dir), {}
        del model
        graphdef, remat, compiled = resolve_remat(graphdef, model_cfg, train_cfg, tx, abstract,
                                                  shardings, mesh, log)
        write_run_files(run_dir, model_cfg, train_cfg, plan,
                        data=str(Path(data_dir).absolute()), data_manifest_sha256=fingerprint,
                        **({"remat": remat} if remat else {}))
        step_fn = step_function(graphdef, tx, model_cfg, shardings, mesh, compiled)
        evaluation = Evaluation(jax.jit(make_eval_step(graphdef, model_cfg.mtp_weight)),
                                open_val_data(data_dir, train_cfg, log), train_cfg.eval_batches)
    except BaseException:
        ckpt.release()
        raise
    start = int(meta.get("global_step", 0))
    return Run(model_cfg=model_cfg, train_cfg=train_cfg, run_dir=run_dir, mesh=mesh,
               loader=loader, plan=plan, lr_table=lr_table, state=state, start=start,
               skipped=int(meta.get("skipped", 0)), step_fn=step_fn, evaluation=evaluation,
               ckpt=ckpt,
               sink=MetricsSink(run_dir, total=plan.total_steps, initial=start,
                                progress=progress),
               base_key=jax.random.PRNGKey(train_cfg.seed),
               flops_per_token=model_flops_per_token(model_cfg, train_cfg.seq_len),
               peak_flops=mesh_peak_flops(mesh, peak_flops), remat=remat)


def resolve_mesh(mesh, train_cfg: TrainConfig):
    """The given mesh, else one fsdp axis over as many devices as evenly split a
    micro-batch's rows."""
    if mesh is not None:
        return mesh
    usable = math.gcd(jax.device_count(), train_cfg.micro_batch)
    return make_mesh(1, usable, jax.devices()[:usable])


def open_train_data(data_dir: str | Path, train_cfg: TrainConfig):
    """This process's loader of the train split (each host reads its share of a step's
    rows); the data must be packed at the run's ``seq_len``."""
    procs = jax.process_count()
    rows_per_step = train_cfg.micro_batch * train_cfg.accum_steps
    if rows_per_step % procs:
        raise TrainConfigError(f"micro_batch*accum_steps={rows_per_step} rows per step do not "
                               f"split over {procs} hosts")
    loader = make_loader(data_dir, split="train", batch_size=rows_per_step // procs,
                         seed=train_cfg.seed)
    if loader.seq_len != train_cfg.seq_len:
        raise TrainConfigError(f"data in {data_dir} is packed at seq_len={loader.seq_len}, "
                               f"but seq_len={train_cfg.seq_len} was requested")
    return loader


def open_val_data(data_dir: str | Path, train_cfg: TrainConfig, log):
    """The validation split's loader, or ``None`` (logged) when the data has none."""
    try:
        return make_loader(data_dir, split="val", batch_size=train_cfg.micro_batch,
                           seed=train_cfg.seed)
    except (ShardError, FileNotFoundError, ValueError) as e:
        log(f"no validation split ({e}); validation loss disabled")
        return None


def lr_per_update(schedule, total_steps: int) -> np.ndarray:
    """The LR of every update count, fetched once: reading it per step from a device
    computation would queue behind the step just dispatched and make the host wait."""
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(total_steps + 1)))


def data_fingerprint(data_dir: str | Path) -> str | None:
    """sha256 of the prepared data's ``manifest.json`` (it lists every shard's sha256)."""
    path = Path(data_dir) / "manifest.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def check_run_dir(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  fingerprint: str | None, *, resume: bool) -> None:
    """A fresh run refuses a directory that holds checkpoints; a resume needs one, and
    must continue ``run.json``'s run (``check_resume``)."""
    ckpt_dir = run_dir / "checkpoints"
    existing = checkpoint_steps(run_dir)
    if resume:
        if not existing:
            raise CheckpointError(f"--resume: no checkpoint in {ckpt_dir.absolute()}")
        check_resume(run_dir, model_cfg, train_cfg, fingerprint)
    elif existing:
        raise CheckpointError(f"{run_dir} already holds checkpoints (steps {existing}); pass "
                              "--resume to continue that run, or choose another --out")


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps ``run_dir`` holds checkpoint directories for (verified or not), sorted."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) \
        if ckpt_dir.is_dir() else []


def check_resume(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 data: str | None) -> None:
    """One clear ``CheckpointError`` line if this run does not continue ``run.json``'s."""
    info = read_run_file(run_dir)
    saved_model, saved_train = info.get("model", {}), info.get("train", {})
    now_train = dataclasses.asdict(train_cfg)
    now_model = json.loads(json.dumps(dataclasses.asdict(model_cfg)))  # tuples as in JSON
    checks = [("preset", saved_model.get("name"), model_cfg.name)]
    checks += [(f"train.{k}", saved_train.get(k), now_train[k])
               for k in ("seq_len", "micro_batch", "accum_steps")]
    # a run from before a field existed has that field's default (vocab_subset: none)
    absent = {"vocab_subset": []}
    checks += [(f"model.{k}", saved_model.get(k, absent.get(k)), v)
               for k, v in now_model.items() if k != "name"]
    if "data_manifest_sha256" in info:
        checks.append(("data manifest sha256", info["data_manifest_sha256"], data))
    for field, was, now in checks:
        if was != now and field == "model.vocab_subset":
            raise CheckpointError(
                f"--resume: model.vocab_subset differs: the run in {run_dir} keeps "
                f"{len(was or [])} token ids, this command {len(now)} (or other ids); "
                f"pass the run's --vocab-rows and data")
        if was != now:
            raise CheckpointError(f"--resume: {field} differs: the run in {run_dir} has "
                                  f"{was!r}, this command has {now!r}")


def restore_state(ckpt: Checkpointer, abstract, shardings, plan: RunPlan, loader,
                  run_dir: Path, log) -> tuple[Any, dict[str, Any]]:
    """``(state, meta)`` of the newest checkpoint that verifies, with the loader at its
    position; newer (rejected) steps are set aside and metric rows after it dropped."""
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    state, meta = ckpt.restore(target, log=log)
    restored = int(meta["global_step"])
    if plan.total_steps < restored:
        raise CheckpointError(f"--steps {plan.total_steps} is below the restored step "
                              f"{restored}; pass --steps {restored} or more")
    newer = [s for s in ckpt.all_steps() if s > restored]
    if newer:
        log(f"resuming from step {restored}, the newest checkpoint that verifies "
            f"(rejected: {newer})")
        ckpt.set_aside(newer, log=log)
    loader.set_state(meta["loader"])
    _truncate_metrics(run_dir / "metrics.jsonl", restored)
    log(f"resumed from {ckpt.directory}/{restored} (epoch {meta['epoch']}, "
        f"data_epoch {meta['data_epoch']})")
    return state, meta


def fresh_state(model, tx, shardings, run_dir: Path):
    """The initial train state on the mesh; an old ``metrics.jsonl`` is removed."""
    state = jax.device_put(init_train_state(model, tx), shardings)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return state


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows after ``step`` (written by a run that died after its checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a torn last line from a kill
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def resolve_remat(graphdef, model_cfg: ModelConfig, train_cfg: TrainConfig, tx, abstract,
                  shardings, mesh, log):
    """``(graphdef, remat, compiled)``: the model graph the step runs (``graphdef``
    unless ``remat_policy="auto"``, then the chosen policy's), the choice
    (``choose_remat``, as run.json records it) and its compiled step."""
    if model_cfg.remat_policy != "auto":
        return graphdef, None, None
    remat = choose_remat(model_cfg, train_cfg, tx, abstract, shardings, mesh, log=log)
    compiled = remat.pop("compiled")
    graphdef, _ = nnx.split(abstract_model(model_cfg.replace(remat_policy=remat["policy"])),
                            nnx.Param)
    return graphdef, remat, compiled


def step_function(graphdef, tx, model_cfg: ModelConfig, shardings, mesh, compiled=None):
    """The train step, state donated: the executable remat auto compiled already, else
    ``make_train_step`` jitted with the state's shardings."""
    if compiled is not None:
        key_sharding = replicated(mesh)

        def step_fn(state, batch, key):
            return compiled(state, batch, jax.device_put(key, key_sharding))

        return step_fn
    return jax.jit(make_train_step(graphdef, tx, mtp_weight=model_cfg.mtp_weight),
                   in_shardings=(shardings, None, replicated(mesh)),
                   out_shardings=(shardings, replicated(mesh)), donate_argnums=0)


def mesh_peak_flops(mesh, per_device: float | None) -> float | None:
    """The mesh's peak FLOP/s: ``per_device`` (else the datasheet peak of a known
    accelerator) times its devices; ``None`` when unknown (a CPU)."""
    from pythoncoder.targets import device_datasheet

    sheet = None if per_device else device_datasheet(mesh.devices.flat[0])
    per_device = per_device or (sheet["peak_bf16_flops"] if sheet else None)
    return per_device * mesh.devices.size if per_device else None
