"""Figures only: arrays in, matplotlib figures out. The one module that imports matplotlib (Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # never open a window or block; the saved PNG is the figure shown  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from cnnlab.files import write_bytes  # noqa: E402

TRAIN_COLOUR, VAL_COLOUR = "tab:green", "tab:red"


def curves_figure(history: list[dict[str, float]], log_loss: bool = False) -> Any:
    """Return a figure with accuracy (left) and loss (right) per epoch, training and validation."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for ax, key, title in ((ax_acc, "accuracy", "accuracy"), (ax_loss, "loss", "loss")):
        ax.plot(epochs, [row[key] for row in history], "o-", color=TRAIN_COLOUR, ms=3, label="training")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], "o-", color=VAL_COLOUR, ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if key == "accuracy" else "upper right")
    if log_loss:
        ax_loss.set_yscale("log")
    if history:
        last = history[-1]
        fig.suptitle(f"epoch {last['epoch']}  step {last['step']}  lr {last['lr']:.3g}  "
                     f"val_accuracy {last['val_accuracy']:.4f}", fontsize=10)
    return fig


def save_figure(fig: Any, path: str | Path, close: bool = True, dpi: int = 100) -> Path:
    """Render ``fig`` to PNG and write it to ``path`` atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if close:
        plt.close(fig)
    return write_bytes(path, buf.getvalue())


def close(fig: Any) -> None:
    """Free a figure's memory."""
    plt.close(fig)
