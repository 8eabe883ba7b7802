"""The run folders under the lab's root: find them, resolve a name safely, summarize one without loading torch.

A run name is the folder's path relative to the root with ``/`` separators (``seed``, ``sweep-a/trial-0003``).
``resolve`` is the only way from a name to a folder: it refuses absolute names, ``..``, backslashes, empty
parts and anything whose real path (symlinks followed) leaves the root, so no request can read outside it.

Everything here reads files another process may be writing: a file that is missing or half-written raises
``RunChanging`` (the API answers 409), never anything else.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from cnnlab import store
from cnnlab.errors import CnnlabError

TRIAL_PREFIX = "trial-"
MAX_DEPTH = 4  # folders below the root searched for runs (a sweep's trials sit at depth 2)
STALE_SECONDS = 120  # a progress file not rewritten for this long belongs to a process that is gone
STATUSES = ("training", "done", "stopped", "pruned")


class NotFound(CnnlabError):
    """A run name that does not name a run folder under the root (or tries to leave it)."""


class RunChanging(CnnlabError):
    """A file of the run was missing or half-written while being read; asking again will do."""


def resolve(root: Path, name: str) -> Path:
    """Return the run folder called ``name`` under ``root``, or raise ``NotFound`` (one message for every refusal).

    Args:
        root: the lab's root, already resolved (``Path.resolve``).
        name: the run's path relative to the root, ``/``-separated.
    """
    parts = name.split("/")
    bad = (not name or "\\" in name or "\x00" in name or name.startswith("/") or ":" in parts[0]
           or any(p in ("", ".", "..") for p in parts))
    if not bad:
        folder = (root / Path(*parts)).resolve()
        if folder.is_relative_to(root) and folder != root and is_run(folder):
            return folder
    raise NotFound(f"no run named {name!r} under the lab's root; GET /api/runs lists them")


def is_run(folder: Path) -> bool:
    """True when ``folder`` holds a run's config (its weights may not be written yet)."""
    return (folder / store.CONFIG).is_file()


def find_runs(root: Path) -> list[Path]:
    """Every run folder under ``root`` (symlinks leading outside it skipped), sorted by name."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            path = Path(entry.path)
            if not path.resolve().is_relative_to(root):
                continue
            if is_run(path):
                found.append(path)
            elif depth < MAX_DEPTH:
                walk(path, depth + 1)

    walk(root, 1)
    return found


def run_name(root: Path, folder: Path) -> str:
    """The name of ``folder`` as the API uses it: its path under ``root`` with ``/``."""
    return folder.relative_to(root).as_posix()


def summary(root: Path, folder: Path) -> dict[str, Any]:
    """One row of ``GET /api/runs``: name, group (the sweep folder of a trial), epochs, accuracies, status."""
    history = read_history(folder)
    accuracies = [row["val_accuracy"] for row in history if row.get("val_accuracy") == row.get("val_accuracy")]
    name = run_name(root, folder)
    progress = read_progress(folder)
    return {"name": name, "group": group_of(name), "epochs": len(history),
            "planned_epochs": planned_epochs(folder, progress),
            "val_accuracy": history[-1]["val_accuracy"] if history else None,
            "best_val_accuracy": max(accuracies) if accuracies else None,
            "status": status(folder, lambda: history, progress), "updated": _mtime(folder)}


def group_of(name: str) -> str | None:
    """The sweep a trial belongs to: the folder above ``trial-NNNN``; None for a run on its own."""
    parent, _, leaf = name.rpartition("/")
    return parent if parent and leaf.startswith(TRIAL_PREFIX) else None


def status(folder: Path, history: Callable[[], list[dict[str, Any]]], progress: dict[str, Any] | None) -> str:
    """``training`` (a live process is writing it), ``done``, ``stopped`` (ended early or killed) or ``pruned``.

    ``history`` is a function that gives the run's history: it is only needed where the progress file does not
    tell (the Live view asks once a second while a run trains).
    """
    if _pruned(folder):
        return "pruned"
    if progress is not None:
        if progress.get("status") == "training":
            return "training" if _alive(progress) else "stopped"
        if progress.get("status") in STATUSES:
            return progress["status"]
    planned = planned_epochs(folder, progress)
    return "done" if planned is not None and len(history()) >= planned else "stopped"


def planned_epochs(folder: Path, progress: dict[str, Any] | None) -> int | None:
    """The epochs the run was last asked to reach: from the progress file, else ``train.epochs`` of its config."""
    if progress is not None and isinstance(progress.get("epochs"), int):
        return progress["epochs"]
    try:
        text = (folder / store.CONFIG).read_text()
    except OSError:
        return None
    for line in text.splitlines():  # the [train] table's epochs, without parsing (and validating) the config
        key, _, value = line.partition("=")
        if key.strip() == "epochs" and value.strip().isdigit():
            return int(value.strip())
    return None


def read_history(folder: Path) -> list[dict[str, Any]]:
    """The run's history rows (none before its first checkpoint); ``RunChanging`` if it cannot be read now."""
    if not store.commit_marker(folder).exists() and not (folder / store.HISTORY_JSON).exists():
        return []
    try:
        return store.read_history(folder)
    except CnnlabError as exc:
        raise RunChanging(f"the history of this run could not be read ({exc}); it is probably being written: "
                          "try again") from None


def read_progress(folder: Path) -> dict[str, Any] | None:
    """The training process's ``progress.json`` (see ``callbacks.ProgressFile``), or None."""
    try:
        data = _read_json(folder / store.PROGRESS, default=None)
    except RunChanging:
        return None
    return data if isinstance(data, dict) else None


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise RunChanging(f"{path.name} of this run could not be read ({exc.__class__.__name__}); "
                          "it is probably being written: try again") from None


def _alive(progress: dict[str, Any]) -> bool:
    if time.time() - float(progress.get("updated", 0)) > STALE_SECONDS:
        return False
    try:
        os.kill(int(progress.get("pid", 0)), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return int(progress.get("pid", 0)) > 0


def _pruned(folder: Path) -> bool:
    try:
        info = json.loads((folder / "trial.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and str(info.get("state", "")).lower() == "pruned"


def _mtime(folder: Path) -> float | None:
    try:
        return max(p.stat().st_mtime for p in (folder / store.CONFIG, store.commit_marker(folder)) if p.exists())
    except (OSError, ValueError):
        return None
