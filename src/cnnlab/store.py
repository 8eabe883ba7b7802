"""The run folder on disk: write it atomically, read it back without pickle, reset it.

Layout of ``runs/NAME/``:

| file | what |
|---|---|
| ``config.toml`` | the resolved config the run was made with |
| ``model.json`` | the layer table and the normalizer (everything a later command needs besides weights) |
| ``initial.safetensors`` | the weights before the first optimizer step |
| ``weights.safetensors`` | the weights after the last completed epoch |
| ``best.safetensors`` | the weights of the best epoch (``train.checkpoint = "best"`` or ``restore_best``) |
| ``optimizer.safetensors`` + ``optimizer.json`` | the optimizer's tensors and its plain values (step counter) |
| ``rng.safetensors`` | the shuffle generator's and torch's RNG states |
| ``state.json`` | epochs done, optimizer step, callback states; written last, it marks a complete checkpoint |
| ``history.csv`` / ``history.json`` | one row per epoch |
| ``curves.png`` | accuracy and loss curves |
| ``provenance.json`` | versions, seed, threads, data checksums, start and end times |
| ``progress.json`` | while training: status, epoch, batch, running loss and accuracy (at most once a second) |
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write, write_json, write_text
from cnnlab.loop import TrainState, Trainer

CONFIG = "config.toml"
MODEL = "model.json"
INITIAL = "initial.safetensors"
WEIGHTS = "weights.safetensors"
BEST = "best.safetensors"
OPTIMIZER = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
RNG = "rng.safetensors"
STATE = "state.json"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
PROVENANCE = "provenance.json"
CURVES = "curves.png"
PROGRESS = "progress.json"

HISTORY_COLUMNS = ("epoch", "step", "lr", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")


def new_run_dir(path: str | Path) -> Path:
    """Create an empty run folder; refuse a path that is a file or a folder that already holds files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CnnlabError(f"--out {path}: is a file; give a folder name for the run")
    if path.is_dir() and any(path.iterdir()):
        raise CnnlabError(f"--out {path}: the folder already holds a run or other files and is never overwritten; "
                          f"choose another name, or continue it with: cnnlab resume {path} --epochs N")
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_run(path: str | Path) -> Path:
    """Return ``path`` if it is a run folder, else raise a one-line error."""
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise CnnlabError(f"{path} is not a cnnlab run folder (it needs {CONFIG} and {WEIGHTS}); "
                          "make one with: cnnlab train --out PATH")
    return path


# ---------------------------------------------------------------------------------------------------------
# Tensors


def save_weights(path: str | Path, model: torch.nn.Module) -> Path:
    """Write the model's state dict (parameters and buffers) as safetensors, atomically."""
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"{path} is missing; the run folder is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CnnlabError(f"{path} is corrupt or not a safetensors file ({exc}); "
                          "restore it or train the run again") from None


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Load weights from a safetensors file into ``model``; names and shapes must match exactly."""
    tensors = read_tensors(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CnnlabError(f"{path} does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CnnlabError(f"{path}: {key} has shape {tuple(value.shape)}, the model needs "
                              f"{tuple(expected[key].shape)}")
    model.load_state_dict(tensors)


def save_optimizer(run_dir: Path, optimizer: torch.optim.Optimizer) -> None:
    """Write the optimizer state: tensors to safetensors, everything else (step counter, groups) to JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        plain["state"][str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().clone()
            else:
                plain["state"][str(idx)][key] = value
    extra = {k: v for k, v in state.items() if k not in ("state", "param_groups")}
    plain["extra"] = extra
    atomic_write(run_dir / OPTIMIZER, lambda p: save_file(tensors, str(p)))
    write_json(run_dir / OPTIMIZER_JSON, plain)


def load_optimizer(run_dir: Path, optimizer: torch.optim.Optimizer) -> None:
    """Load what ``save_optimizer`` wrote into a freshly built optimizer of the same kind."""
    tensors = read_tensors(run_dir / OPTIMIZER)
    plain = read_json(run_dir / OPTIMIZER_JSON)
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"], **plain.get("extra", {})})
    except (ValueError, KeyError) as exc:
        raise CnnlabError(f"{run_dir / OPTIMIZER_JSON} does not fit the optimizer of this config ({exc})") from None


# ---------------------------------------------------------------------------------------------------------
# Training state and history


def save_checkpoint(run_dir: Path, trainer: Trainer) -> None:
    """Write everything needed to continue after the epoch just completed; ``state.json`` goes last."""
    save_weights(run_dir / WEIGHTS, trainer.model)
    save_optimizer(run_dir, trainer.optimizer)
    state = trainer.state
    atomic_write(run_dir / RNG, lambda p: save_file(
        {"shuffle": state.shuffle_rng.contiguous(), "torch": state.torch_rng.contiguous()}, str(p)))
    save_history(run_dir, state.history)
    write_json(run_dir / STATE, {"epoch": state.epoch, "step": trainer.step, "callbacks": trainer.callback_states()})


def load_state(run_dir: Path) -> TrainState | None:
    """Read the training state, or None for a run that has not completed an epoch (or was reset)."""
    info = read_json(run_dir / STATE) if (run_dir / STATE).exists() else {"epoch": 0}
    if info.get("epoch", 0) == 0:
        return None
    rng = read_tensors(run_dir / RNG)
    history = read_json(run_dir / HISTORY_JSON)
    if len(history) != info["epoch"] or history[-1]["step"] != info["step"]:
        raise CnnlabError(f"{run_dir}: {STATE} (epoch {info['epoch']}) and {HISTORY_JSON} ({len(history)} rows) "
                          "disagree; the run folder was changed by hand or not written completely")
    return TrainState(epoch=info["epoch"], history=history, shuffle_rng=rng["shuffle"], torch_rng=rng["torch"],
                      callbacks=info.get("callbacks", {}))


def saved_step(run_dir: Path) -> int:
    """Return the optimizer step recorded in ``state.json`` (0 when none)."""
    return int(read_json(run_dir / STATE).get("step", 0)) if (run_dir / STATE).exists() else 0


def save_history(run_dir: Path, history: list[dict[str, float]]) -> None:
    """Write the history as CSV (columns ``HISTORY_COLUMNS``) and as JSON."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    write_text(run_dir / HISTORY_CSV, buf.getvalue())
    write_json(run_dir / HISTORY_JSON, history)


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """Return the history rows (empty before the first epoch)."""
    path = Path(run_dir) / HISTORY_JSON
    return read_json(path) if path.exists() else []


def reset_run(run_dir: Path) -> None:
    """Put a run back to its start: initial weights, no optimizer state, step 0, empty history.

    Training it again then equals a fresh run with the same seed, bit for bit.
    """
    tensors = read_tensors(run_dir / INITIAL)
    atomic_write(run_dir / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    write_json(run_dir / STATE, {"epoch": 0, "step": 0, "callbacks": {}})
    save_history(run_dir, [])
    for name in (OPTIMIZER, OPTIMIZER_JSON, RNG, BEST, CURVES, PROGRESS):
        (run_dir / name).unlink(missing_ok=True)


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or broken file is a one-line error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CnnlabError(f"{path} is missing; the run folder is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CnnlabError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from None
