"""Where a run's metrics go: ``metrics.jsonl``, TensorBoard (optional), the progress bar,
and the loss / LR plot drawn from the file at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class MetricsSink:
    """Where a run's metrics go: ``metrics.jsonl`` (one JSON object per line, non-finite
    numbers as null), TensorBoard when ``tensorboardX`` is installed, and the progress bar;
    it keeps the loss history the run's summary returns."""

    TRAIN_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu")

    def __init__(self, run_dir: Path, *, total: int, initial: int, progress: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.history: dict[str, list] = {"loss": [], "val_loss": []}
        self.bar = tqdm(total=total, initial=initial, disable=not progress, unit="step",
                        dynamic_ncols=True)
        self.tb = _tensorboard(run_dir)

    def train(self, record: dict[str, Any]) -> None:
        """One logged training step: ``step``, ``loss``, ``lr``, ``grad_norm``,
        ``tokens_per_s``, ``mfu`` (None without a peak) and any other fields."""
        _append(self.path, record)
        if self.tb:
            for k in self.TRAIN_SCALARS:
                if record.get(k) is not None:
                    self.tb.add_scalar(f"train/{k}", record[k], record["step"])
        mfu = record.get("mfu")
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                             tok_s=f"{record['tokens_per_s']:,.0f}",
                             mfu="n/a" if mfu is None else f"{mfu:.1%}")

    def step_loss(self, step: int, loss: float) -> None:
        """Every step's loss (the summary's history; the file gets the logged steps)."""
        self.history["loss"].append((step, loss))

    def val_loss(self, step: int, value: float) -> None:
        self.history["val_loss"].append((step, value))
        _append(self.path, {"step": step, "val_loss": value})
        if self.tb:
            self.tb.add_scalar("val/loss", value, step)

    def tick(self) -> None:
        self.bar.update(1)

    def close_bar(self) -> None:
        self.bar.close()

    def close(self) -> None:
        self.bar.close()
        if self.tb:
            self.tb.close()


def _append(path: Path, record: dict[str, Any]) -> None:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in record.items()}
    with path.open("a") as f:
        f.write(json.dumps(clean) + "\n")


def _tensorboard(run_dir: Path):
    try:
        from tensorboardX import SummaryWriter  # optional
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def plot_curves(metrics_path: Path, out_path: Path) -> Path | None:
    """Loss (train and validation) and LR against step, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    if not train:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=0.8)
    if val:
        ax1.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss (main CE + 0.1 MTP CE; validation: main CE)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax2.set_xlabel("step")
    ax2.set_ylabel("learning rate (WSD)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
