"""A run folder as the inspection commands see it, read without torch: config, class names, layers, normalizer
and a hash of the weights; the model is loaded only when something must be computed.

``cnnlab evaluate`` and ``cnnlab patterns`` find the results of their forward passes kept in the run's cache
(``RUN/cache/``, keyed by the weights' hash) and then draw their pictures without importing torch (1-2 s of
start-up on a 2-core machine); ``load`` reads the same files and builds the model.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cnnlab import store
from cnnlab.config import Config, from_toml
from cnnlab.data import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.inspection import cache

if TYPE_CHECKING:
    from cnnlab.numpy_model import NumpyModel

Run = Any  # a cnnlab.run.Run (not imported: run imports this module)


class RunFolder:
    """What a run folder holds, read and checked against its manifest, without the model.

    Attributes:
        path: the run folder.
        config: the resolved ``Config``.
        normalizer: how the run normalizes images.
        classes: the class names, one per label.
        shapes: layer name -> output shape without the batch, in forward order.
        checkpoint: the committed checkpoint's weights, history and ``model.json``, verified (None for the
            folder of a run already loaded).
        weights_name: the weights file the model takes (``best.safetensors`` with ``train.checkpoint = "best"``).
        device: where ``run()`` puts the model (``auto``, ``cpu``, ``cuda`` or a ``torch.device``).
        load: builds the run of a folder (``cnnlab.run.load_folder``; given by the caller, since ``run``
            imports this module).
        memo: what the pictures of this folder computed in this process and share (the test pass, the images).
    """

    def __init__(self, path: Path, config: Config, normalizer: Normalizer, classes: tuple[str, ...],
                 shapes: dict[str, tuple[int, ...]], checkpoint: store.Checkpoint | None = None,
                 device: Any = "auto", load: Callable[[RunFolder], Run] | None = None, run: Run | None = None):
        self.path, self.config, self.normalizer, self.shapes = path, config, normalizer, shapes
        self.classes = classes or tuple(str(k) for k in range(self.num_classes))
        self.checkpoint, self.device, self.load = checkpoint, device, load
        use_best = checkpoint is not None and config.train.checkpoint == "best" and checkpoint.has(store.BEST)
        self.weights_name = store.BEST if use_best else store.WEIGHTS
        self._run: Run | None = None
        self._run_ref = weakref.ref(run) if run is not None else None  # weak: a run may keep its own folder
        self._weights: str | None = None
        self.memo: dict[Any, Any] = {}

    @property
    def num_classes(self) -> int:
        """The model's outputs (the last layer's units)."""
        return int(list(self.shapes.values())[-1][0])

    @property
    def weights(self) -> str:
        """``cache.weights_hash`` of the model: from the weights file without torch where numpy can read it, else
        from the loaded model."""
        if self._weights is None:
            arrays = self._file_arrays()
            self._weights = (cache.named_arrays_hash(arrays) if arrays is not None  # = cache.file_weights_hash
                             else cache.weights_hash(self.run().model))
        return self._weights

    def numpy_model(self) -> NumpyModel | None:
        """The model's torch-free inference (``cnnlab.numpy_model``), built once from the weights file (or the
        loaded run's model); None where it does not serve: a GPU asked for, an activation it lacks, weights numpy
        cannot read (bfloat16) or that do not fit (loading the model then says what is wrong)."""
        if "numpy model" not in self.memo:
            self.memo["numpy model"] = self._numpy_model()
        return self.memo["numpy model"]

    def _numpy_model(self) -> NumpyModel | None:
        from cnnlab import numpy_model

        specs = self.config.model.layers
        if str(self.device).startswith("cuda") or not numpy_model.supports(specs):
            return None
        weights = cache.state_arrays(self.run().model) if self.checkpoint is None else self._file_arrays()
        try:
            return numpy_model.NumpyModel(specs, weights) if weights is not None else None
        except ValueError:
            return None

    def _file_arrays(self) -> dict[str, Any] | None:
        """The committed weights file's arrays, read by numpy once for the weights' hash and the numpy model;
        None without a file, or where numpy cannot read it (bfloat16, not safetensors)."""
        if "file arrays" not in self.memo:
            blob = self.checkpoint.blobs.get(self.weights_name) if self.checkpoint is not None else None
            self.memo["file arrays"] = cache.file_arrays(blob) if blob is not None else None
        return self.memo["file arrays"]

    def run(self) -> Run:
        """The run loaded (model, weights, history) onto ``device``; loaded on the first call."""
        loaded = self._run_ref() if self._run_ref is not None else self._run
        if loaded is None:
            if self.load is None:
                raise CnnlabError(f"{self.path}: no way to load this run was given")
            loaded = self._run = self.load(self)
        return loaded

    @classmethod
    def of_run(cls, run: Run) -> RunFolder:
        """The folder of a loaded run, answering from it: the weights' hash of its model, ``run()`` is ``run``."""
        shapes = {name: tuple(run.model.output_shapes[name]) for name in run.model.layer_names}
        return cls(run.path, run.config, run.normalizer, run.classes, shapes, run=run)


def open_folder(run_dir: str | Path, device: Any = "auto",
                load: Callable[[RunFolder], Run] | None = None) -> RunFolder:
    """Read a run folder's config, ``model.json`` and committed weights (each checked against the manifest);
    ``load`` builds its run when ``RunFolder.run()`` is first called.

    Raises:
        CnnlabError: not a run folder, or a missing, damaged or hand-edited file, in one line.
    """
    run_dir = store.require_run(run_dir)
    config = read_config(run_dir)
    ckpt = store.open_checkpoint(run_dir, names=(store.WEIGHTS, store.BEST, store.HISTORY_JSON, store.MODEL))
    info = ckpt.json(store.MODEL) if ckpt.has(store.MODEL) else store.read_json(run_dir / store.MODEL)
    try:
        normalizer = Normalizer.from_dict(info["normalizer"])
        shapes = {row["name"]: tuple(row["output_shape"]) for row in info["layers"]}
        classes = tuple(info.get("classes") or ())
    except (KeyError, TypeError, ValueError) as exc:
        raise CnnlabError(f"{run_dir / store.MODEL} has no usable normalizer or layer table "
                          f"({type(exc).__name__}: {exc}); the run folder is damaged") from None
    if not shapes:
        raise CnnlabError(f"{run_dir / store.MODEL} lists no layers; the run folder is damaged")
    return RunFolder(run_dir, config, normalizer, classes, shapes, ckpt, device, load)


def read_config(run_dir: Path) -> Config:
    """The run's ``config.toml``; an invalid one is a one-line error naming the file."""
    try:
        return from_toml((run_dir / store.CONFIG).read_text())
    except CnnlabError as exc:
        raise CnnlabError(f"{run_dir / store.CONFIG}: {exc}") from None
