"""Listeners of the training loop: progress bar, epoch lines, live curves, saving, early stopping, NaN guard."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnnlab import store
from cnnlab.files import write_bytes
from cnnlab.loop import BatchLogs, Callback
from cnnlab.metrics import predict_logits

Echo = Callable[[str], None]

_BLOCKS = "▁▂▃▄▅▆▇█"


def improved(monitor: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Return True when ``value`` beats ``best`` for ``monitor`` (losses go down, accuracies up)."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    if "loss" in monitor:
        return value < best - min_delta
    return value > best + min_delta


class ProgressBar(Callback):
    """A tqdm bar per epoch with the running loss and accuracy (updated every few batches)."""

    def __init__(self, every: int = 20):
        self.every = every
        self.bar = None

    def on_epoch_begin(self, epoch: int) -> None:  # noqa: D102
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.trainer.batches_per_epoch, desc=f"epoch {epoch}", unit="batch",
                        leave=False, dynamic_ncols=True, disable=None)  # None: no bar when not a terminal

    def on_batch_end(self, batch: int, logs: BatchLogs) -> None:  # noqa: D102
        if self.bar is not None and (batch % self.every == 0 or batch == logs.batches_per_epoch):
            loss, acc = logs.running()
            self.bar.set_postfix_str(f"loss {loss:.4f} acc {acc:.4f}", refresh=False)
            self.bar.update(batch - self.bar.n)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:  # noqa: D102
        self._close()

    def on_train_end(self) -> None:  # noqa: D102
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochLine(Callback):
    """One line per epoch: metrics, the learning rate reached, the optimizer step, seconds; a sparkline of val_accuracy."""

    def __init__(self, echo: Echo, total_epochs: int, val_is_test: bool):
        self.echo = echo
        self.total = total_epochs
        self.val_name = "test set" if val_is_test else "held-out"
        self.val_is_test = val_is_test

    def on_train_begin(self) -> None:  # noqa: D102
        if self.val_is_test:
            self.echo("note: data.validation = 0, so val_* figures are measured on the test set (as the articles did)")

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:  # noqa: D102
        history = self.trainer.state.history
        spark = sparkline([row["val_accuracy"] for row in history][-30:])
        self.echo(f"epoch {epoch:>3}/{self.total}  loss {logs['loss']:.4f}  accuracy {logs['accuracy']:.4f}  "
                  f"val_loss {logs['val_loss']:.4f}  val_accuracy {logs['val_accuracy']:.4f} ({self.val_name})  "
                  f"lr {logs['lr']:.6g}  step {logs['step']}  {logs['seconds']:.1f}s  {spark}")


def sparkline(values: list[float]) -> str:
    """Return a compact text chart of ``values`` (one block character each)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    return "".join(" " if math.isnan(v) else _BLOCKS[min(int((v - lo) / span * 7.999), 7)] for v in values)


class CurvesPNG(Callback):
    """Rewrites ``curves.png`` (atomically) after each epoch; optionally shows it live in a notebook.

    The live view displays the PNG itself (an ``IPython.display.Image`` updated in place), so it works with
    whatever matplotlib backend the notebook uses and leaves that backend alone.
    """

    def __init__(self, path: Path, log_loss: bool = False, live: bool = False):
        self.path = Path(path)
        self.log_loss = log_loss
        self.live = live
        self.handle = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:  # noqa: D102
        from cnnlab import plots  # matplotlib only once curves are drawn: run.load and inspection never need it

        png = plots.png_bytes(plots.curves_figure(self.trainer.state.history, log_loss=self.log_loss))
        write_bytes(self.path, png, durable=False)  # a picture, redrawn every epoch: not part of the checkpoint
        if self.live:
            self._show(png)

    def _show(self, png: bytes) -> None:
        try:
            from IPython import get_ipython
            from IPython.display import Image, display
        except ImportError:
            return
        if get_ipython() is None:  # plain Python: display() would only print the object's repr
            return
        if self.handle is None:
            self.handle = display(Image(data=png, format="png"), display_id=True)
        else:
            self.handle.update(Image(data=png, format="png"))


class NanGuard(Callback):
    """Stops training when the loss is no longer finite; the last completed epoch stays the saved state."""

    def __init__(self, every: int = 25):
        self.every = every
        self.message = ""

    def on_batch_end(self, batch: int, logs: BatchLogs) -> None:  # noqa: D102
        if batch % self.every and batch != logs.batches_per_epoch:
            return
        if not math.isfinite(float(logs.loss_sum)):
            epoch = self.trainer.state.epoch + 1
            self.message = (f"the loss became {float(logs.last_loss)} in epoch {epoch} near optimizer step "
                            f"{self.trainer.step}; training stopped and the run keeps epoch {epoch - 1}; "
                            "try a lower learning rate (schedule) or a smaller regularizer factor")
            self.trainer.stop()


class EarlyStopping(Callback):
    """Stops when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    state_fields = {"best": None, "wait": 0}
    best: float | None
    wait: int

    def __init__(self, monitor: str, patience: int, min_delta: float = 0.0, echo: Echo | None = None):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.echo = echo
        self.load_state_dict({})  # every state field at its start value

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:  # noqa: D102
        value = logs[self.monitor]
        if improved(self.monitor, value, self.best, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            reason = (f"early stopping: {self.monitor} has not improved on {self.best:.6g} "
                      f"for {self.patience} epochs")
            if self.echo:
                self.echo(reason)
            self.trainer.stop()

    @property
    def state_key(self) -> str:  # noqa: D102 - two early stoppers on different figures keep their own state
        return f"EarlyStopping[monitor={self.monitor}, patience={self.patience}, min_delta={self.min_delta}]"


class RunSaver(Callback):
    """Saves the run folder after every completed epoch; keeps ``best.safetensors`` when asked.

    It runs last (``runs_last``: the trainer moves it to the end), so the states of the other callbacks it
    saves are final.
    """

    runs_last = True
    state_fields = {"best": None, "best_epoch": 0}
    best: float | None
    best_epoch: int

    def __init__(self, run_dir: Path, monitor: str, keep_best: bool, restore_best: bool = False,
                 echo: Echo | None = None):
        self.run_dir = Path(run_dir)
        self.monitor = monitor
        self.keep_best = keep_best or restore_best
        self.restore_best = restore_best
        self.echo = echo
        self.load_state_dict({})  # every state field at its start value

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:  # noqa: D102
        better = improved(self.monitor, logs[self.monitor], self.best)
        if better:
            self.best, self.best_epoch = logs[self.monitor], epoch
        store.save_checkpoint(self.run_dir, self.trainer, best=better and self.keep_best, keep_best=self.keep_best)

    def on_train_end(self) -> None:  # noqa: D102
        if not self.restore_best or self.best_epoch in (0, self.trainer.state.epoch):
            return
        ckpt = store.open_checkpoint(self.run_dir, names=(store.BEST,))
        if ckpt.has(store.BEST):
            store.load_checkpoint_weights(ckpt, self.trainer.model, store.BEST)
            store.replace_weights(self.run_dir, self.trainer.model)
            if self.echo:
                self.echo(f"restored the best weights: epoch {self.best_epoch}, {self.monitor} {self.best:.6g}")


class KeepTestLogits(Callback):
    """When training ends, keeps the test set's logits as the run's test pass keeps them (``RUN/cache/testpass/``,
    see ``cnnlab.inspection.shared``), so that ``cnnlab evaluate`` right after training reads them instead of
    loading torch and the model.

    They come from one pass of the torch-free inference (``cnnlab.numpy_model``) over the test images, the pass
    the inspection runs when nothing is kept: a kept result and one computed afresh are the same bits (tested).
    Where that inference does not serve the model (a gelu layer), the inspection's pass is torch's: then the
    last validation's logits are kept where that pass is the test pass (``validation_is_test``: ``data.validation
    = 0``, float32, the same images, batches and layout), else one float32 torch pass over ``test_x`` gives them.
    Logits of weights changed since (an epoch stopped half-way) are not kept; where the best weights are restored
    after, the kept logits belong to weights the run no longer has and are never read.
    """

    def __init__(self, run_dir: Path, images: str, normalizer: dict, test_x: Any, validation_is_test: bool):
        self.run_dir = Path(run_dir)
        self.images = images  # cache.arrays_hash of the raw test images and labels
        self.normalizer = normalizer
        self.test_x = test_x  # the normalized test images
        self.validation_is_test = validation_is_test  # the last validation is the torch test pass

    def on_train_end(self) -> None:  # noqa: D102
        from cnnlab.inspection.cache import named_arrays_hash, state_arrays
        from cnnlab.inspection.shared import test_keep

        trainer = self.trainer
        if trainer.validation_logits is None:  # stopped half-way: the weights changed since any pass
            return
        weights = state_arrays(trainer.model)
        logits = self._numpy_logits(weights)
        if logits is None and self.validation_is_test:
            logits = trainer.validation_logits.float().cpu().numpy()
        elif logits is None:  # (float32: outside the loop's autocast, as the inspection runs)
            logits = predict_logits(trainer.model, self.test_x, memory_format=trainer.memory_format).float().cpu()
            logits = logits.numpy()
        keep = test_keep(self.run_dir, named_arrays_hash(weights), self.images, self.normalizer)  # = weights_hash
        keep.put("logits", "model", logits)

    def _numpy_logits(self, weights: dict) -> Any:
        """The logits of the torch-free inference over the test images, or None where it does not serve."""
        from cnnlab import numpy_model
        from cnnlab.inspection import CHUNK

        specs = [layer.spec for layer in self.trainer.model.layers.values()]
        if not numpy_model.supports(specs):
            return None
        engine = numpy_model.NumpyModel(specs, weights)
        parts = [got.logits for _, got in engine.chunked_outputs(self.test_x.cpu().numpy(), chunk=CHUNK)]
        return np.concatenate(parts) if parts else None


class ProgressFile(Callback):
    """Keeps ``progress.json`` in the run folder current, for a watcher such as ``cnnlab lab``.

    Rewritten atomically at most once every ``every`` seconds during an epoch (the running loss and accuracy
    are read then, so the loop syncs with them once a second, not per batch), and after every epoch (which
    writes a checkpoint anyway) and at the end. Fields: ``status`` (training, done, stopped), ``pid``, ``epoch`` (the one in progress, or the last
    completed one), ``epochs`` (planned), ``batch``, ``batches``, ``loss``, ``accuracy``, ``completed`` (epochs
    done), ``updated`` (Unix time).
    """

    def __init__(self, path: Path, total_epochs: int, every: float = 1.0):
        self.path = Path(path)
        self.total = total_epochs
        self.every = every
        self.last = 0.0
        self.epoch = self.batch = 0
        self.running = (math.nan, math.nan)

    def on_train_begin(self) -> None:  # noqa: D102
        self.epoch = self.trainer.state.epoch
        self._write("training", batch=0, running=(math.nan, math.nan))

    def on_epoch_begin(self, epoch: int) -> None:  # noqa: D102
        self.epoch = epoch
        if time.monotonic() - self.last >= self.every:
            self._write("training", batch=0, running=(math.nan, math.nan))

    def on_batch_end(self, batch: int, logs: BatchLogs) -> None:  # noqa: D102
        if time.monotonic() - self.last >= self.every:
            self._write("training", batch=batch, running=logs.running())

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:  # noqa: D102
        self._write("training", batch=self.trainer.batches_per_epoch, running=(logs["loss"], logs["accuracy"]))

    def on_train_end(self) -> None:  # noqa: D102
        done = self.trainer.state.epoch >= self.total
        self.epoch = self.trainer.state.epoch
        self._write("done" if done else "stopped", batch=self.batch, running=self.running)

    def _write(self, status: str, batch: int, running: tuple[float, float]) -> None:
        from cnnlab.files import write_json

        self.last, self.batch, self.running = time.monotonic(), batch, running
        loss, acc = running
        write_json(self.path, {
            "status": status, "pid": os.getpid(), "epoch": self.epoch, "epochs": self.total,
            "completed": self.trainer.state.epoch, "batch": batch, "batches": self.trainer.batches_per_epoch,
            "loss": None if math.isnan(loss) else loss, "accuracy": None if math.isnan(acc) else acc,
            "updated": time.time()})
