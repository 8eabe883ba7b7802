"""The run folder on disk: checkpoints committed atomically through one manifest, read back verified, reset.

Layout of ``runs/NAME/``:

| file | what |
|---|---|
| ``config.toml`` | the resolved config the run was made with |
| ``model.json`` | the layer table and the normalizer (everything a later command needs besides weights) |
| ``initial.safetensors`` | the weights before the first optimizer step |
| ``checkpoint.json`` | the manifest: epoch, step, and every checkpoint file's path, size and sha256 |
| ``checkpoints/NNNNNN/`` | the files of one checkpoint (generation NNNNNN), named below |
| ``  weights.safetensors`` | the weights after the last completed epoch |
| ``  best.safetensors`` | the weights of the best epoch (``train.checkpoint = "best"`` or ``restore_best``) |
| ``  optimizer.safetensors`` + ``optimizer.json`` | the optimizer's tensors and its plain values (step counter) |
| ``  rng.safetensors`` | the shuffle generator's and torch's RNG states (and the GPU's, for a run trained on one) |
| ``  state.json`` | epochs done, optimizer step, callback states |
| ``  history.csv`` / ``history.json`` | one row per epoch |
| ``curves.png`` | accuracy and loss curves (a picture, not part of the checkpoint) |
| ``provenance.json`` | versions, seed, threads, data checksums, start and end times |
| ``.lock`` | while a writer (train, resume, reset) runs: its pid and action (see ``runlock``) |
| ``progress.json`` | while training: status, epoch, batch, running loss and accuracy (at most once a second) |

The commit protocol (as a database journal or a git ref update):

1. Write every file of the new checkpoint into a new folder ``checkpoints/G+1/`` (each file fsynced); files
   that did not change (``best.safetensors`` after an epoch that was not the best) are hard-linked from the
   current checkpoint.
2. Write ``checkpoint.json`` naming those files with their sha256 (and the sha256 of ``model.json`` and
   ``initial.safetensors``) to a temporary name, fsync it, rename it over the old one and fsync the folder.
   That rename is the commit: before it the old checkpoint is the run's state, after it the new one.
3. Only then remove the checkpoint folders other than the new one and the one just replaced (readers that
   read the old manifest a moment ago can still finish), unfinished folders and temporary files of killed
   writers and, in a folder written before manifests existed, the old top-level checkpoint files.

Only one process writes a run folder at a time (``runlock``). ``config.toml`` is not pinned by the manifest:
it may be edited by hand (data limits, epochs); an edit that no longer fits the weights is a one-line error.

Loaders read only what the manifest names and check every byte against its sha256; a reader that finds its
files gone (the writer moved on twice while it read) reads the manifest again. A crash at any instant
therefore leaves a folder that resumes from the last committed epoch, bit for bit. Run folders without
``checkpoint.json`` but with a top-level ``weights.safetensors`` (written by cnnlab before manifests) still
load and resume; their first new checkpoint moves them to this layout.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from cnnlab.errors import CnnlabError
from cnnlab.files import fsync_dir, write_bytes, write_json
from cnnlab.lazy import lazy_module

if TYPE_CHECKING:
    from cnnlab.loop import Trainer, TrainState

# Reading a run folder's manifest and files needs no torch (the inspection commands answer from the run's cache
# without it); tensors need it, on first use.
torch = lazy_module("torch")
safetensors_torch = lazy_module("safetensors.torch")

CONFIG = "config.toml"
MODEL = "model.json"
INITIAL = "initial.safetensors"
MANIFEST = "checkpoint.json"
CHECKPOINTS = "checkpoints"
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

MANIFEST_FORMAT = 1
FIXED_FILES = (MODEL, INITIAL)  # written once when the run is made; the manifest pins their sha256
CHECKPOINT_FILES = (WEIGHTS, BEST, OPTIMIZER, OPTIMIZER_JSON, RNG, STATE, HISTORY_CSV, HISTORY_JSON)
HISTORY_COLUMNS = ("epoch", "step", "lr", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
_READ_TRIES = 5


def new_run_dir(path: str | Path) -> Path:
    """Create an empty run folder; refuse a path that is a file or a folder that already holds files."""
    path = check_out(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_out(path: str | Path, locked: bool = False) -> Path:
    """Refuse a path for a new run that is a file or a folder holding files (its writer lock aside).

    ``locked``: this process holds the folder's writer lock (so no other writer can be named).
    """
    from cnnlab import runlock

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CnnlabError(f"--out {path}: is a file; give a folder name for the run")
    if path.is_dir() and any(p.name != runlock.LOCK for p in path.iterdir()):
        other = None if locked else runlock.holder(path)
        if other:
            raise runlock.RunLocked(f"--out {path}: pid {other.get('pid')} is running '{other.get('action')}' "
                                    "into this folder; choose another name")
        raise CnnlabError(f"--out {path}: the folder already holds a run or other files and is never overwritten; "
                          f"choose another name, or continue it with: cnnlab resume {path} --epochs N")
    return path


def require_run(path: str | Path) -> Path:
    """Return ``path`` if it is a run folder with a checkpoint, else raise a one-line error."""
    from cnnlab import runlock

    path = Path(path)
    if not (path / CONFIG).is_file() and (path / runlock.LOCK).is_file():
        raise CnnlabError(f"{path} holds no checkpoint: the process that made it stopped before it wrote "
                          f"{CONFIG}; nothing to resume: remove the folder (rm -r {path}) and train again with "
                          f"cnnlab train --out {path}")
    if not (path / CONFIG).is_file():
        raise CnnlabError(f"{path} is not a cnnlab run folder (it needs {CONFIG}); "
                          "make one with: cnnlab train --out PATH")
    if (path / MANIFEST).is_file() or (path / WEIGHTS).is_file():
        return path
    if (path / CHECKPOINTS).is_dir() and any(p.name != "000001" for p in (path / CHECKPOINTS).iterdir()):
        raise CnnlabError(f"{path / MANIFEST} is missing, so none of the files in {path / CHECKPOINTS} can be "
                          "trusted; restore it from a backup, or remove the folder and train again")
    raise CnnlabError(f"{path} holds no checkpoint: the process that made it stopped before its first one; "
                      f"nothing to resume: remove the folder (rm -r {path}) and train again with "
                      f"cnnlab train --out {path}")


# ---------------------------------------------------------------------------------------------------------
# Reading a checkpoint


@dataclass
class Checkpoint:
    """The files of one committed checkpoint, read into memory and verified.

    Attributes:
        run_dir: the run folder.
        epoch: epochs done.
        step: optimizer steps done.
        generation: the checkpoint's number (0 for a folder written before manifests).
        blobs: file name -> its verified bytes, for the names asked for that the checkpoint has.
    """

    run_dir: Path
    epoch: int
    step: int
    generation: int
    blobs: dict[str, bytes] = field(default_factory=dict)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def has(self, name: str) -> bool:
        """Whether the checkpoint holds ``name`` (e.g. ``BEST`` only with a kept best epoch)."""
        return name in self.blobs

    def where(self, name: str) -> Path:
        """The path of ``name`` on disk (for messages; read with ``tensors``/``json``)."""
        entry = self.entries.get(name)
        return self.run_dir / (entry["path"] if entry else name)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The safetensors file ``name`` as tensors."""
        try:
            return safetensors_torch.load(self._blob(name))
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise CnnlabError(f"{self.where(name)} is corrupt or not a safetensors file ({exc}); "
                              "restore it or train the run again") from None

    def json(self, name: str) -> Any:
        """The JSON file ``name``, parsed."""
        return parse_json(self._blob(name), self.where(name))

    def _blob(self, name: str) -> bytes:
        if name not in self.blobs:
            raise CnnlabError(f"{self.where(name)} is missing; the run folder is incomplete")
        return self.blobs[name]


def open_checkpoint(run_dir: str | Path, names: tuple[str, ...] = CHECKPOINT_FILES) -> Checkpoint:
    """Read the files ``names`` of the run's committed checkpoint, each checked against the manifest.

    A writer may commit a newer checkpoint meanwhile; then the manifest is read again, so the result is always
    one complete checkpoint. A folder without a manifest (written before manifests) is read as it is.

    Raises:
        CnnlabError: a missing, truncated, replaced or hand-edited file, named, in one line.
    """
    run_dir = require_run(run_dir)
    for _ in range(_READ_TRIES):
        raw = _read_manifest_bytes(run_dir)
        if raw is None:
            return _open_legacy(run_dir, names)
        manifest = _parse_manifest(raw, run_dir)
        try:
            return _open_committed(run_dir, manifest, names)
        except CnnlabError:
            if _read_manifest_bytes(run_dir) == raw:  # nothing moved: the damage is real
                raise
    raise CnnlabError(f"{run_dir}: the checkpoint kept changing while it was read; try again")


def _read_manifest_bytes(run_dir: Path) -> bytes | None:
    try:
        return (run_dir / MANIFEST).read_bytes()
    except FileNotFoundError:
        return None


def _parse_manifest(raw: bytes, run_dir: Path) -> dict[str, Any]:
    where = run_dir / MANIFEST
    manifest = parse_json(raw, where)
    try:
        ok = (manifest["format"] == MANIFEST_FORMAT and isinstance(manifest["epoch"], int)
              and isinstance(manifest["step"], int) and isinstance(manifest["generation"], int)
              and all(isinstance(e["path"], str) and isinstance(e["sha256"], str)
                      for e in manifest["files"].values()))
    except (KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise CnnlabError(f"{where} is not a checkpoint manifest of format {MANIFEST_FORMAT} (edited by hand or "
                          "written by another program); restore it, or remove the folder and train again")
    return manifest


def _open_committed(run_dir: Path, manifest: dict[str, Any], names: tuple[str, ...]) -> Checkpoint:
    entries = manifest["files"]
    blobs = {}
    for name in (*FIXED_FILES, *names):
        if name in entries:
            data = _verified(run_dir, entries[name], manifest["epoch"])
            if name in names:
                blobs[name] = data
    return Checkpoint(run_dir, manifest["epoch"], manifest["step"], manifest["generation"], blobs, dict(entries))


def _verified(run_dir: Path, entry: dict[str, Any], epoch: int) -> bytes:
    path = run_dir / entry["path"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CnnlabError(f"{path} is missing (named by {MANIFEST}, epoch {epoch}); restore it, "
                          "or remove the folder and train again") from None
    except IsADirectoryError:
        raise CnnlabError(f"{path} is a folder, not the file {MANIFEST} names; the run folder is damaged") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CnnlabError(f"{path} does not match its sha256 in {MANIFEST}: it was truncated, edited or replaced "
                          f"after epoch {epoch} was saved; restore it, or remove the folder and train again")
    return data


def _open_legacy(run_dir: Path, names: tuple[str, ...]) -> Checkpoint:
    blobs = {name: (run_dir / name).read_bytes() for name in {*names, STATE} if (run_dir / name).is_file()}
    state = parse_json(blobs[STATE], run_dir / STATE) if STATE in blobs else {"epoch": 0, "step": 0}
    if not isinstance(state, dict):
        raise CnnlabError(f"{run_dir / STATE} is not a JSON object; the run folder is damaged")
    return Checkpoint(run_dir, int(state.get("epoch", 0)), int(state.get("step", 0)), 0, blobs)


# ---------------------------------------------------------------------------------------------------------
# Committing a checkpoint


def commit(run_dir: Path, files: dict[str, bytes], carry: tuple[str, ...] = ()) -> Path:
    """Make ``files`` (name -> bytes) plus ``carry`` (names kept from the current checkpoint) the checkpoint.

    Follows the protocol in this module's docstring; ``state.json`` must be among ``files``.

    Returns:
        The new checkpoint's folder.
    """
    run_dir = Path(run_dir)
    state = json.loads(files[STATE])
    old_raw = _read_manifest_bytes(run_dir)
    old = _parse_manifest(old_raw, run_dir) if old_raw is not None else None
    generation = _next_generation(run_dir, old)
    folder = run_dir / CHECKPOINTS / f"{generation:06d}"
    entries: dict[str, dict[str, Any]] = {}
    try:
        folder.mkdir(parents=True)
        fsync_dir(folder.parent)
        for name, data in files.items():
            write_bytes(folder / name, data)
            entries[name] = _entry(run_dir, folder / name, data)
        for name in carry:
            source = _current_path(run_dir, old, name)
            if source is not None and name not in files:
                _link_or_copy(source, folder / name)
                entries[name] = _entry(run_dir, folder / name, (folder / name).read_bytes())
        fsync_dir(folder)
        for name in FIXED_FILES:  # checked, so that no checkpoint is ever committed on top of a damaged one
            if old and name in old["files"]:
                _verified(run_dir, old["files"][name], old["epoch"])
                entries[name] = old["files"][name]
            else:
                entries[name] = _entry(run_dir, run_dir / name, (run_dir / name).read_bytes())
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # never named by a manifest: safe to drop
        raise
    write_json(run_dir / MANIFEST, {"format": MANIFEST_FORMAT, "generation": generation,
                                    "epoch": int(state["epoch"]), "step": int(state["step"]), "files": entries})
    _collect_garbage(run_dir, keep={folder.name, f"{old['generation']:06d}" if old else ""}, legacy=old is None)
    return folder


def _entry(run_dir: Path, path: Path, data: bytes) -> dict[str, Any]:
    return {"path": path.relative_to(run_dir).as_posix(), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def _next_generation(run_dir: Path, old: dict[str, Any] | None) -> int:
    numbers = [int(p.name) for p in (run_dir / CHECKPOINTS).glob("[0-9]*") if p.name.isdigit()]
    return max([old["generation"] if old else 0, *numbers]) + 1


def _current_path(run_dir: Path, old: dict[str, Any] | None, name: str) -> Path | None:
    if old is None:
        path = run_dir / name  # a folder from before manifests: its files sit at the top
        return path if path.is_file() else None
    entry = old["files"].get(name)
    return run_dir / entry["path"] if entry else None


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _collect_garbage(run_dir: Path, keep: set[str], legacy: bool) -> None:
    for path in (run_dir / CHECKPOINTS).iterdir():
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if legacy:
        for name in CHECKPOINT_FILES:
            (run_dir / name).unlink(missing_ok=True)
    for name in (CONFIG, MODEL, INITIAL, MANIFEST, CURVES, PROVENANCE, PROGRESS):  # temp files of a killed writer
        for path in run_dir.glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)
    fsync_dir(run_dir / CHECKPOINTS)
    fsync_dir(run_dir)


# ---------------------------------------------------------------------------------------------------------
# Tensors


def tensors_bytes(tensors: dict[str, torch.Tensor], format_pt: bool = True) -> bytes:
    """Serialize tensors as safetensors bytes, as CPU tensors whatever device they are on (a run folder loads
    on any machine; reading gives CPU tensors, which ``load_state_dict`` copies to the model's device)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return safetensors_torch.save(tensors, metadata={"format": "pt"} if format_pt else None)


def save_weights(path: str | Path, model: torch.nn.Module) -> Path:
    """Write the model's state dict (parameters and buffers) as safetensors, atomically."""
    return write_bytes(path, tensors_bytes(model.state_dict()))


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"{path} is missing; the run folder is incomplete")
    try:
        return safetensors_torch.load(path.read_bytes())
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CnnlabError(f"{path} is corrupt or not a safetensors file ({exc}); "
                          "restore it or train the run again") from None


def fit_weights(tensors: dict[str, torch.Tensor], model: torch.nn.Module, where: str | Path) -> None:
    """Load ``tensors`` into ``model``; names and shapes must match exactly (else one line naming ``where``)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CnnlabError(f"{where} does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, want in expected.items():  # in the model's order, so the message names the first layer that differs
        if tensors[key].shape != want.shape:
            raise CnnlabError(f"{where}: {key} has shape {tuple(tensors[key].shape)}, the model needs "
                              f"{tuple(want.shape)}")
    model.load_state_dict(tensors)


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Load weights from a safetensors file into ``model``; names and shapes must match exactly."""
    fit_weights(read_tensors(path), model, path)


def load_checkpoint_weights(ckpt: Checkpoint, model: torch.nn.Module, name: str = WEIGHTS) -> None:
    """Load the checkpoint's weights file ``name`` (``WEIGHTS`` or ``BEST``) into ``model``."""
    fit_weights(ckpt.tensors(name), model, ckpt.where(name))


def read_initial(run_dir: str | Path) -> tuple[bytes, dict[str, torch.Tensor]]:
    """The run's initial weights (bytes and tensors), checked against the manifest's sha256 where there is one."""
    run_dir = Path(run_dir)
    raw = _read_manifest_bytes(run_dir)
    entry = _parse_manifest(raw, run_dir)["files"].get(INITIAL) if raw is not None else None
    if entry is None:
        return (run_dir / INITIAL).read_bytes(), read_tensors(run_dir / INITIAL)
    data = _verified(run_dir, entry, 0)
    try:
        return data, safetensors_torch.load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CnnlabError(f"{run_dir / INITIAL} is corrupt ({exc}); the run folder is damaged") from None


def optimizer_files(optimizer: torch.optim.Optimizer) -> dict[str, bytes]:
    """The optimizer state as checkpoint files: tensors to safetensors, the rest (step counter, groups) to JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        plain["state"][str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                plain["state"][str(idx)][key] = value
    plain["extra"] = {k: v for k, v in state.items() if k not in ("state", "param_groups")}
    return {OPTIMIZER: tensors_bytes(tensors, format_pt=False), OPTIMIZER_JSON: _json_bytes(plain)}


def load_optimizer(ckpt: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    """Load what ``optimizer_files`` wrote into a freshly built optimizer of the same kind."""
    tensors = ckpt.tensors(OPTIMIZER)
    plain = ckpt.json(OPTIMIZER_JSON)
    try:
        state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
        for key, value in tensors.items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"],
                                   **plain.get("extra", {})})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CnnlabError(f"{ckpt.where(OPTIMIZER_JSON)} does not fit the optimizer of this config "
                          f"({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------------------------
# Training state and history


def save_checkpoint(run_dir: Path, trainer: Trainer, best: bool = False, keep_best: bool = False) -> Path:
    """Commit everything needed to continue after the epoch just completed.

    Args:
        run_dir: the run folder.
        trainer: the trainer whose model, optimizer and state are saved.
        best: this epoch is the best so far; its weights become ``best.safetensors``.
        keep_best: keep the current ``best.safetensors`` when this epoch is not the best.
    """
    state = trainer.state
    weights = tensors_bytes(trainer.model.state_dict())
    files = {WEIGHTS: weights, **optimizer_files(trainer.optimizer),
             RNG: tensors_bytes(_rng_tensors(state), format_pt=False),
             **history_files(state.history),
             STATE: _json_bytes({"epoch": state.epoch, "step": trainer.step, "callbacks": trainer.callback_states()})}
    if best:
        files[BEST] = weights
    return commit(run_dir, files, carry=(BEST,) if keep_best else ())


def replace_weights(run_dir: Path, model: torch.nn.Module) -> Path:
    """Commit the current checkpoint again with ``model``'s weights as ``weights.safetensors`` (restore best)."""
    ckpt = open_checkpoint(run_dir, names=(STATE,))
    carry = tuple(n for n in CHECKPOINT_FILES if n not in (WEIGHTS, STATE))
    return commit(run_dir, {WEIGHTS: tensors_bytes(model.state_dict()), STATE: ckpt.blobs[STATE]}, carry=carry)


def commit_initial(run_dir: Path, initial: bytes | None = None) -> Path:
    """Commit the first checkpoint of a new run (or the one after a reset): epoch 0, the initial weights."""
    initial = initial if initial is not None else (Path(run_dir) / INITIAL).read_bytes()
    return commit(run_dir, {WEIGHTS: initial, **history_files([]),
                            STATE: _json_bytes({"epoch": 0, "step": 0, "callbacks": {}})})


def load_state(run_dir: Path, ckpt: Checkpoint | None = None) -> TrainState | None:
    """Read the training state, or None for a run that has not completed an epoch (or was reset)."""
    ckpt = ckpt or open_checkpoint(run_dir, names=(STATE, RNG, HISTORY_JSON))
    info = ckpt.json(STATE) if ckpt.has(STATE) else {"epoch": 0}
    if not isinstance(info, dict) or not isinstance(info.get("epoch", 0), int):
        raise CnnlabError(f"{ckpt.where(STATE)} is not a training state; the run folder is damaged")
    if info.get("epoch", 0) == 0:
        return None
    rng = ckpt.tensors(RNG)
    history = ckpt.json(HISTORY_JSON)
    if (not isinstance(history, list) or len(history) != info["epoch"] or not isinstance(history[-1], dict)
            or history[-1].get("step") != info.get("step")):
        raise CnnlabError(f"{ckpt.run_dir}: {STATE} (epoch {info['epoch']}) and {HISTORY_JSON} "
                          f"({len(history) if isinstance(history, list) else '?'} rows) disagree; the run folder "
                          "was changed by hand or not written completely")
    if not {"shuffle", "torch"} <= set(rng) <= {"shuffle", "torch", "cuda"}:
        raise CnnlabError(f"{ckpt.where(RNG)} does not hold the generator states; the run folder is damaged")
    from cnnlab.loop import TrainState

    return TrainState(epoch=info["epoch"], history=history, shuffle_rng=rng["shuffle"], torch_rng=rng["torch"],
                      cuda_rng=rng.get("cuda"), callbacks=info.get("callbacks", {}))


def _rng_tensors(state: TrainState) -> dict[str, torch.Tensor]:
    """The generator states to save: the shuffle generator's, torch's CPU one and, after a GPU epoch, the GPU's."""
    tensors = {"shuffle": state.shuffle_rng, "torch": state.torch_rng}
    if state.cuda_rng is not None:
        tensors["cuda"] = state.cuda_rng
    return tensors


def saved_step(run_dir: Path) -> int:
    """Return the optimizer step of the committed checkpoint (0 when none)."""
    return open_checkpoint(run_dir, names=()).step


def history_files(history: list[dict[str, float]]) -> dict[str, bytes]:
    """The history as checkpoint files: CSV (columns ``HISTORY_COLUMNS``) and JSON."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return {HISTORY_CSV: buf.getvalue().encode("utf-8"), HISTORY_JSON: _json_bytes(history)}


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """Return the history rows of the committed checkpoint (empty before the first epoch)."""
    ckpt = open_checkpoint(run_dir, names=(HISTORY_JSON,))
    history = ckpt.json(HISTORY_JSON) if ckpt.has(HISTORY_JSON) else []
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        raise CnnlabError(f"{ckpt.where(HISTORY_JSON)} is not a list of epochs; the run folder is damaged")
    return history


def commit_marker(run_dir: str | Path) -> Path:
    """The file whose change marks a new checkpoint (the manifest; the weights in a pre-manifest folder)."""
    manifest = Path(run_dir) / MANIFEST
    return manifest if manifest.exists() else Path(run_dir) / WEIGHTS


def checkpoint_path(run_dir: str | Path, name: str) -> Path:
    """Where the committed checkpoint keeps ``name`` (e.g. ``WEIGHTS``), for tools outside cnnlab."""
    return open_checkpoint(run_dir, names=(name,)).where(name)


def reset_run(run_dir: Path, model: torch.nn.Module) -> None:
    """Put a run back to its start: initial weights, no optimizer state, step 0, empty history.

    ``model`` (built from the run's config) checks that the initial weights fit. Training the run again then
    equals a fresh run with the same seed, bit for bit.
    """
    data, tensors = read_initial(run_dir)
    fit_weights(tensors, model, run_dir / INITIAL)
    commit_initial(run_dir, data)
    for name in (CURVES, PROGRESS):
        (run_dir / name).unlink(missing_ok=True)


def parse_json(data: bytes, where: str | Path) -> Any:
    """Parse JSON bytes; broken JSON is a one-line error naming ``where``."""
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CnnlabError(f"{where} is not valid JSON ({exc}); the run folder is damaged") from None


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or broken file is a one-line error naming it."""
    path = Path(path)
    try:
        return parse_json(path.read_bytes(), path)
    except FileNotFoundError:
        raise CnnlabError(f"{path} is missing; the run folder is incomplete") from None


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")
