"""The Python face: ``train``, ``resume``, ``reset`` and ``load`` a run; the ``Run`` object for notebooks.

The CLI calls these same functions.
"""

from __future__ import annotations

import datetime as _dt
import platform
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from cnnlab import __version__, native, runlock, store
from cnnlab import callbacks as cb
from cnnlab.config import RUN_LENGTH_KEYS, Config, apply_override, from_dict, load_config, run_steps
from cnnlab.data import load_data, prepare, prepare_test
from cnnlab.device import describe, model_device, resolve_device, uses_native_kernels
from cnnlab.errors import CnnlabError
from cnnlab.files import write_json
from cnnlab.inspection.activations import check_layer, layer_activations
from cnnlab.inspection.cache import arrays_hash
from cnnlab.inspection.images import ImageSets
from cnnlab.loop import Trainer
from cnnlab.metrics import evaluate, predict_logits
from cnnlab.model import CnnModel, build_model, layer_table
from cnnlab.optim import get_optimizer, get_regularizer, get_schedule, regularization_loss
from cnnlab.runfolder import RunFolder, open_folder, read_config
from cnnlab.cpu import cpu_name, keep_freed_memory
from cnnlab.speed import resolve_precision, threads
from cnnlab.version import git_commit

Echo = Callable[[str], None]


class TrainingInterrupted(Exception):
    """Ctrl-C during training: the run folder holds the last completed epoch."""

    def __init__(self, run_dir: Path, epoch: int):
        super().__init__(f"interrupted; {run_dir} keeps epoch {epoch}. "
                         f"Continue with: cnnlab resume {run_dir} --epochs N")
        self.run_dir, self.epoch = run_dir, epoch


class Run:
    """A run folder loaded into memory: config, model, history and the normalizer the run used.

    Attributes:
        path: the run folder.
        config: the resolved ``Config``.
        model: the ``nn.Module`` (weights of the last epoch, or the best with ``train.checkpoint = "best"``).
        history: one dict per epoch (``epoch, step, lr, loss, accuracy, val_loss, val_accuracy, seconds``).
        classes: the class names, one per label (``"0"`` .. ``"9"`` for MNIST, ``"T-shirt/top"``, ... for
            Fashion-MNIST), as the run was trained with.
        device: where the model's weights are (``load``'s ``device``); ``prepare`` puts images there, and
            ``predict``, ``evaluate`` and ``activations`` take and give CPU arrays whatever it is.
    """

    def __init__(self, path: Path, config: Config, model: CnnModel, normalizer: Any,
                 history: list[dict[str, float]], classes: tuple[str, ...] | None = None):
        self.path, self.config, self.model, self.normalizer, self.history = path, config, model, normalizer, history
        self.classes = tuple(classes) if classes else tuple(str(k) for k in range(model.num_classes))
        self._data = None

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        return (f"Run({str(self.path)!r}, epochs={len(self.history)}, "
                f"val_accuracy={last.get('val_accuracy', float('nan')):.4f})")

    @property
    def device(self) -> torch.device:
        """The device of the model's weights."""
        return model_device(self.model)

    def prepare(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Turn uint8 images (N, 28, 28) into the normalized float tensor (N, 1, 28, 28) the model expects, on
        the model's device."""
        # numpy arrays stay numpy (read-only ones too: the normalizer copies what it must)
        images = images if isinstance(images, torch.Tensor) else np.asarray(images)
        uint8 = torch.uint8 if isinstance(images, torch.Tensor) else np.uint8
        if images.dtype != uint8 or images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
            raise CnnlabError(f"images must be uint8 of shape (N, 28, 28), got {images.dtype} {tuple(images.shape)}")
        return self.normalizer.apply(images).to(self.device)

    def predict(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Return class probabilities (N, classes) for uint8 images (N, 28, 28)."""
        return torch.softmax(predict_logits(self.model, self.prepare(images)), dim=1).cpu().numpy()

    def data(self):
        """Return the run's prepared data (same split, normalization and seed as in training); cached."""
        if self._data is None:
            self._data = _prepare_data(self.config, load_data(self.config.data), self.normalizer)
        return self._data

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the run's test images as its model sees them and their labels: ``data()``'s ``test_x`` and
        ``test_y``, normalized by the run's stored normalizer, without preparing the training set."""
        if self._data is not None:
            return self._data.test_x, self._data.test_y
        d = self.config.data
        return prepare_test(load_data(d), self.normalizer, split=d.split, validation=d.validation,
                            seed=self.config.train.seed, limit_train=d.limit_train, limit_test=d.limit_test)

    def evaluate(self) -> dict[str, float]:
        """Return test loss and accuracy of the model on the run's test set."""
        test_x, test_y = self.test_data()
        loss, acc = evaluate(self.model, test_x, test_y)
        return {"loss": loss, "accuracy": acc, "images": len(test_y)}

    def activations(self, layer: str, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Return what ``layer``'s activation function produced for uint8 images (N, 28, 28).

        Args:
            layer: a layer name of the model (``self.model.layer_names``).
            images: uint8 (N, 28, 28), normalized here as the run was, a chunk at a time.

        Returns:
            float32 (N, maps, H, W) for conv and pooling layers, (N, units) for flat layers.
        """
        check_layer(self.model, layer)
        self.prepare(np.asarray(images)[:0])  # the shape and dtype check, before any work
        return layer_activations(self.model, images, layer, prepare=self.prepare)


# ---------------------------------------------------------------------------------------------------------


def train(config: str | Path | Config = "seed", out: str | Path | None = None, epochs: int | None = None,
          overrides: list[str] | None = None, live: bool = False, echo: Echo | None = print,
          progress: bool = True, callbacks: list[Any] | None = None) -> Run:
    """Train a new run and return it.

    Args:
        config: a preset name, a TOML file path or a ``Config``.
        out: the run folder to create (must not hold files); default ``runs/<preset>`` with a free suffix.
        epochs: overrides ``train.epochs``.
        overrides: ``"dotted.key=value"`` strings, as ``--set``.
        live: also show the curves in a Jupyter notebook, updated in place after each epoch.
        echo: where progress lines go (None = silent).
        progress: show a progress bar per epoch.
        callbacks: more ``cnnlab.loop.Callback`` listeners (e.g. a sweep's pruning); they see each epoch before
            it is saved.

    The run trains on ``train.device`` (``auto``: CUDA where torch sees a GPU, else the CPU) and is returned
    loaded there; its folder holds CPU tensors only, so it loads anywhere.

    Process state: torch's thread count is ``train.threads`` while training and the caller's again after;
    the global RNG states (the CPU's, and a GPU's where it trains on one) are the caller's before and after
    (the run keeps its own); the model's weights are channels-last only inside the loop. One setting stays
    process-wide: glibc's allocator keeps freed memory for reuse (``cnnlab.cpu.keep_freed_memory``; it cannot
    be read back, and changes no result).
    """
    cfg = _resolve_config(config, overrides)
    if epochs is not None:
        cfg = _with_epochs(cfg, epochs)
    device = resolve_device(cfg.train.device)  # refused before the run folder exists, as precision
    precision = resolve_precision(cfg.train.precision, device)
    out = Path(out if out is not None else default_out(config))
    store.check_out(out)
    model = _build(cfg, seed=cfg.train.seed)  # the initial weights depend on the run's seed and nothing else
    data, tested = _training_data(cfg, echo, model)
    run_dir = store.new_run_dir(out)
    with runlock.writer_lock(run_dir, _action("train", run_dir), echo):
        store.check_out(run_dir, locked=True)  # another process may have made a run here since the first look
        _say(echo, f"run folder: {run_dir}")
        start_run(run_dir, cfg, model, data.normalizer, data.classes)
        _fit(run_dir, cfg, (device, precision), model, data, None, cfg.train.epochs, live, echo, progress,
             extra=[*(callbacks or []), *_keep_test_pass(run_dir, data, tested, precision)])
    return load(run_dir, device)


def resume(run_dir: str | Path, epochs: int, live: bool = False, echo: Echo | None = print,
           progress: bool = True, device: str | None = None) -> Run:
    """Train an existing run ``epochs`` more epochs, continuing exactly where it stopped.

    ``device`` (``auto``, ``cpu`` or ``cuda``) overrides the run's ``train.device`` for this session (its
    config stays as it is). A run continues bit for bit on the same kind of device it was trained on.
    """
    if epochs < 1:
        raise CnnlabError(f"--epochs {epochs}: give at least 1 more epoch")
    run_dir = store.require_run(run_dir)
    with runlock.writer_lock(run_dir, _action(f"resume --epochs {epochs}", run_dir), echo):
        cfg = read_config(run_dir)
        where = (device, "--device") if device is not None else (cfg.train.device, "train.device")
        on = resolve_device(*where)
        precision = resolve_precision(cfg.train.precision, on)
        ckpt = store.open_checkpoint(run_dir)
        state = store.load_state(run_dir, ckpt)
        model = _build(cfg)
        store.load_checkpoint_weights(ckpt, model)
        data, tested = _training_data(cfg, echo, model)
        done = state.epoch if state else 0
        _say(echo, f"resuming {run_dir} after epoch {done} (step {ckpt.step}) for {epochs} more")
        _fit(run_dir, cfg, (on, precision), model, data, state, epochs, live, echo, progress, total=done + epochs,
             checkpoint=ckpt, extra=_keep_test_pass(run_dir, data, tested, precision))
    return load(run_dir, on)


def reset(run_dir: str | Path) -> Run:
    """Reset a run to its initial weights, an empty optimizer state and step 0 (see ``store.reset_run``)."""
    run_dir = store.require_run(run_dir)
    with runlock.writer_lock(run_dir, _action("reset", run_dir)):
        cfg = read_config(run_dir)
        store.reset_run(run_dir, _build(cfg))
    return load(run_dir)


def load(run_dir: str | Path, device: str | torch.device = "auto") -> Run:
    """Load a run folder: config, model with weights, history, normalizer.

    ``device``: where the model goes: ``auto`` (CUDA where torch sees a GPU, else the CPU), ``cpu``, ``cuda``
    or a ``torch.device``. The folder's tensors are CPU tensors, whatever device trained the run.
    """
    on = device if isinstance(device, torch.device) else resolve_device(device, "device")
    return load_folder(open_folder(run_dir, device=on, load=load_folder))


def load_folder(folder: RunFolder) -> Run:
    """The run of a folder read by ``open_folder``: its model built, given the committed weights and put on the
    folder's device."""
    device = folder.device
    on = device if isinstance(device, torch.device) else resolve_device(device, "device")
    keep_freed_memory()  # inspection runs many large forward passes: class patterns 13.8 -> 10.3 s
    cfg, ckpt = folder.config, folder.checkpoint
    model = _build(cfg)
    store.load_checkpoint_weights(ckpt, model, folder.weights_name)
    model.to(on)
    if cfg.train.channels_last:  # as in training: the layout the fast path (native kernels, oneDNN) wants
        model.to(memory_format=torch.channels_last)
    model.eval()
    history = ckpt.json(store.HISTORY_JSON) if ckpt.has(store.HISTORY_JSON) else []
    return Run(folder.path, cfg, model, folder.normalizer, history, classes=folder.classes)


# ---------------------------------------------------------------------------------------------------------


def _fit(run_dir: Path, cfg: Config, where: tuple[torch.device, str], model: CnnModel, data: Any, state: Any,
         epochs: int, live: bool, echo: Echo | None, progress: bool, total: int | None = None,
         checkpoint: store.Checkpoint | None = None, extra: list[Any] | None = None) -> None:
    device, precision = where
    if uses_native_kernels(device):
        _prepare_kernels(echo)
    else:
        _say(echo, f"  device: {describe(device)}")
    model.to(device)  # before the optimizer: its state (a resumed run's too) is made or loaded there
    optimizer = get_optimizer(cfg.optimizer, model.parameters(), schedule=get_schedule(cfg.schedule))
    if state is not None:
        store.load_optimizer(checkpoint, optimizer)
    regularizer = get_regularizer(cfg.regularizer)
    penalty = None
    if regularizer is not None:
        kernels = model.kernels(regularizer.applies_to)
        penalty = lambda: regularization_loss(regularizer, kernels)  # noqa: E731
    stopper = cb.NanGuard()
    listeners: list[Any] = [stopper]
    if cfg.train.early_stopping.patience:
        listeners.append(cb.EarlyStopping(cfg.train.monitor, cfg.train.early_stopping.patience,
                                          cfg.train.early_stopping.min_delta, echo))
    if echo is not None:
        if progress:
            listeners.append(cb.ProgressBar())
        listeners.append(cb.EpochLine(echo, total or epochs, data.val_is_test))
    listeners.append(cb.CurvesPNG(run_dir / store.CURVES, log_loss=cfg.train.log_loss, live=live))
    listeners.append(cb.ProgressFile(run_dir / store.PROGRESS, total or epochs))
    listeners.extend(extra or [])
    listeners.append(cb.RunSaver(run_dir, cfg.train.monitor, keep_best=cfg.train.checkpoint == "best",
                                 restore_best=cfg.train.early_stopping.restore_best, echo=echo))
    trainer = Trainer(model, optimizer, data, cfg.train.batch_size, seed=cfg.train.seed, penalty=penalty,
                      label_smoothing=cfg.train.label_smoothing, callbacks=listeners, state=state,
                      channels_last=cfg.train.channels_last, precision=precision,
                      shift=cfg.train.shift, flip=cfg.train.flip, device=device)
    started = _now()
    with _sigint_stops(trainer) as interrupted, threads(cfg.train.threads):
        trainer.fit(epochs)
        _write_provenance(run_dir, cfg, (device, precision), data, started)  # records the threads it used
    if interrupted():
        raise TrainingInterrupted(run_dir, trainer.state.epoch)
    if stopper.message:
        raise CnnlabError(stopper.message)
    _say(echo, f"done: {run_dir} (curves: {run_dir / store.CURVES})")


def _prepare_kernels(echo: Echo | None) -> None:
    """Load (or compile, saying so) the native kernels before the first batch; tell of a failed build."""
    told: list[str] = []

    def tell(line: str) -> None:
        told.append(line)
        _say(echo, f"  {line}")

    if native.prepare(tell) is None and not told and native.status().startswith("could not"):
        _say(echo, f"  native kernels: {native.status()}")


@contextmanager
def _sigint_stops(trainer: Any) -> Iterator[Callable[[], bool]]:
    """While training, Ctrl-C asks the loop to stop after the current batch instead of raising mid-write."""
    hit = {"flag": False}

    def handler(signum: int, frame: Any) -> None:
        hit["flag"] = True
        trainer.stop()

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C as it is
        yield lambda: False
        return
    try:
        yield lambda: hit["flag"]
    finally:
        signal.signal(signal.SIGINT, previous)


def _prepare_data(cfg: Config, mnist: Any, normalizer: Any = None) -> Any:
    return prepare(mnist, normalize=cfg.data.normalize, split=cfg.data.split, validation=cfg.data.validation,
                   seed=cfg.train.seed, limit_train=cfg.data.limit_train, limit_test=cfg.data.limit_test,
                   normalizer=normalizer)


def _training_data(cfg: Config, echo: Echo | None, model: CnnModel) -> tuple[Any, str]:
    """The run's prepared data and the ``cache.arrays_hash`` of its raw test images and labels (a key of the test
    pass's cache)."""
    mnist = load_data(cfg.data, log=(lambda m: echo(f"  data: {m}")) if echo else None)
    check_classes(model, mnist)
    data = _prepare_data(cfg, mnist)
    sets = ImageSets(cfg, mnist)
    return data, arrays_hash(sets.images("test"), sets.labels("test"))


def _keep_test_pass(run_dir: Path, data: Any, tested: str, precision: str) -> list[Any]:
    """The listener that keeps the test set's logits when training ends (``cb.KeepTestLogits``): a pass of the
    torch-free inference over the test images; where it does not serve, the last validation's where that pass is
    the test pass (validation on the test set, in float32), else a torch pass of its own (``tested``: see
    ``_training_data``)."""
    return [cb.KeepTestLogits(run_dir, tested, data.normalizer.to_dict(), data.test_x,
                              validation_is_test=data.val_is_test and precision == "fp32")]


def check_classes(model: CnnModel, mnist: Any) -> None:
    """Refuse a model whose output has another size than the data's number of classes (one line, exit 2)."""
    names = getattr(mnist, "classes", None)
    classes = len(names) if names else int(max(mnist.train_labels.max(), mnist.test_labels.max())) + 1
    if model.num_classes == classes:
        return
    dense = [name for name, layer in model.layers.items() if getattr(layer, "kind", "") == "dense"]
    where = f"model.layers.{dense[-1]}.units" if dense else "the last layer's output size"
    fix = f"; set --set {where}={classes}" if dense else ""
    raise CnnlabError(f"{where} = {model.num_classes}, but the data has {classes} classes "
                      f"(labels 0..{classes - 1}): the last layer needs one unit per class{fix}")


def _action(what: str, run_dir: Path) -> str:
    return f"cnnlab {what}" if what.startswith("resume") or what == "reset" else f"cnnlab {what} --out {run_dir}"


def _resolve_config(config: str | Path | Config, overrides: list[str] | None) -> Config:
    if isinstance(config, Config):
        if overrides:
            raw = config.to_dict()
            for item in overrides:
                apply_override(raw, item)
            return from_dict(raw)
        return config
    if isinstance(config, Path) or str(config).endswith(".toml"):
        return load_config(path=config, overrides=overrides)
    return load_config(preset=str(config), overrides=overrides)


def _with_epochs(cfg: Config, epochs: int) -> Config:
    """Return ``cfg`` with ``train.epochs`` set; a schedule length that was filled in from the run length follows."""
    raw = cfg.to_dict()
    key = RUN_LENGTH_KEYS.get(cfg.schedule["name"])
    if key and raw["schedule"].get(key) == run_steps(cfg):
        del raw["schedule"][key]
    raw["train"]["epochs"] = epochs
    return from_dict(raw)


def default_out(config: Any) -> Path:
    """Return ``runs/<name>`` for a preset or config file name, with ``-2``, ``-3``, ... if that folder holds files."""
    stem = Path(str(config)).stem if not isinstance(config, Config) else "run"
    base = Path("runs") / stem
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = Path(f"{base}-{n}")
    return candidate


def _build(cfg: Config, seed: int | None = None) -> CnnModel:
    """Build the run's model without touching the caller's global RNG; ``seed`` fixes its initial weights."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return build_model(cfg.model.layers, init=cfg.model.init)


def write_model_json(run_dir: Path, model: CnnModel, normalizer: Any, classes: tuple[str, ...] | None = None) -> None:
    """Write ``model.json``: the cnnlab version, the input shape, the layer table, the normalizer and the class
    names (one per output; default ``"0"``, ``"1"``, ...)."""
    rows = [{"name": r.name, "type": r.type, "output_shape": list(r.output_shape),
             "torch_weight_shape": list(r.torch_weight_shape) if r.torch_weight_shape else None,
             "keras_weight_shape": list(r.keras_weight_shape) if r.keras_weight_shape else None,
             "params": r.params, "macs": r.macs, "trainable": r.trainable} for r in layer_table(model)]
    names = list(classes) if classes else [str(k) for k in range(model.num_classes)]
    write_json(run_dir / store.MODEL, {"cnnlab": __version__, "input_shape": list(model.input_shape),
                                       "layers": rows, "normalizer": normalizer.to_dict(), "classes": names})


def start_run(run_dir: Path, cfg: Config, model: CnnModel, normalizer: Any,
              classes: tuple[str, ...] | None = None) -> None:
    """Write what every new run folder starts with (``cnnlab train`` and the Keras import alike): the config,
    ``model.json``, the initial weights, and the first checkpoint (epoch 0: the initial weights)."""
    cfg.save(run_dir / store.CONFIG)
    write_model_json(run_dir, model, normalizer, classes)
    store.save_weights(run_dir / store.INITIAL, model)
    store.commit_initial(run_dir)


def software() -> dict[str, str]:
    """The versions behind a run's figures and the command that made them, for ``provenance.json``."""
    return {"cnnlab": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "numpy": np.__version__, "cnnlab_commit": git_commit(), "command": " ".join(sys.argv)}


def record_provenance(run_dir: Path, session: dict[str, Any] | None = None, **fields: Any) -> None:
    """Add to ``provenance.json``: top-level ``fields`` (an import's record) and/or one training session."""
    path = run_dir / store.PROVENANCE
    try:
        record = store.read_json(path) if path.exists() else {"sessions": []}
    except CnnlabError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("sessions"), list):
        record = {"sessions": [], "note": "the previous provenance.json was unreadable and was replaced"}
    record.update(fields)
    if session is not None:
        record["sessions"].append(session)
    write_json(path, record)


def _write_provenance(run_dir: Path, cfg: Config, where: tuple[torch.device, str], data: Any, started: str) -> None:
    device, precision = where
    record_provenance(run_dir, {
        **software(), "platform": platform.platform(), "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "device": describe(device), "seed": cfg.train.seed, "precision": precision, "dataset": data.dataset,
        "data_origin": data.origin, "data_md5": data.md5, "start": started, "end": _now()})


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _say(echo: Echo | None, line: str) -> None:
    if echo is not None:
        echo(line)
