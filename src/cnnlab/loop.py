"""The training loop. It fires named events to callbacks and knows nothing about printing, plotting or files.

Data are in-memory tensors: each epoch draws a permutation from the run's own seeded generator and slices
it into batches. The loop's whole state (epoch, optimizer step, generator states, callback states) is plain
data, so a run can be saved after any epoch and resumed bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from cnnlab import native
from cnnlab.augment import pad_images, random_flip, random_shift
from cnnlab.device import get_cuda_rng, model_device, reproducible, set_cuda_rng
from cnnlab.errors import CnnlabError
from cnnlab.metrics import predict_logits, scores
from cnnlab.cpu import keep_freed_memory
from cnnlab.speed import autocast

EVENTS = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end", "on_train_end")


class Callback:
    """Base class: override the events you need. ``trainer`` is set before ``on_train_begin``.

    A callback that must survive a resume (a best value, a patience counter) returns its state from
    ``state_dict`` as plain data and takes it back in ``load_state_dict``; naming its attributes in
    ``state_fields`` (with the value a saved state that lacks one gives) does both. The run saves it under
    ``state_key``, which must differ between two such callbacks of one trainer. A callback with ``runs_last``
    hears every event after all the others (the trainer puts it at the end; only one may ask).
    """

    trainer: "Trainer"
    runs_last: bool = False
    state_fields: ClassVar[dict[str, Any]] = {}

    @property
    def state_key(self) -> str:
        """The key of this callback's saved state: the class name, plus what tells two instances apart."""
        return type(self).__name__

    def on_train_begin(self) -> None:
        """Called once before the first epoch of this call to ``fit``."""

    def on_epoch_begin(self, epoch: int) -> None:
        """Called before epoch ``epoch`` (1-based) starts."""

    def on_batch_end(self, batch: int, logs: "BatchLogs") -> None:
        """Called after each optimizer step."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Called after epoch ``epoch`` with its metrics (the history row)."""

    def on_train_end(self) -> None:
        """Called once when ``fit`` ends, normally or by a stop."""

    def state_dict(self) -> dict[str, Any]:
        """Return the state to keep across a resume (plain data): the ``state_fields`` attributes."""
        return {name: getattr(self, name) for name in self.state_fields}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; a field missing from ``state`` takes its ``state_fields`` value."""
        for name, default in self.state_fields.items():
            setattr(self, name, state.get(name, default))


@dataclass
class BatchLogs:
    """Running figures of the current epoch, as tensors so the loop does not force a host sync per batch."""

    batches: int
    batches_per_epoch: int
    seen: int
    loss_sum: torch.Tensor
    correct: torch.Tensor
    last_loss: torch.Tensor

    def running(self) -> tuple[float, float]:
        """Return the epoch's running (loss, accuracy) so far."""
        return float(self.loss_sum) / max(self.seen, 1), float(self.correct) / max(self.seen, 1)


@dataclass
class TrainState:
    """Where a run stands: epochs done, the shuffle generator's and torch's RNG states, the history."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    shuffle_rng: torch.Tensor | None = None  # torch.Generator state (uint8 tensor)
    torch_rng: torch.Tensor | None = None  # torch's global RNG state, used by dropout
    cuda_rng: torch.Tensor | None = None  # the CUDA generator's state (dropout on a GPU); None on the CPU
    callbacks: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Runs epochs over in-memory tensors and fires events to callbacks.

    Args:
        model: the network; ``model(x)`` returns logits.
        optimizer: a ``cnnlab.get_optimizer`` optimizer (it applies its schedule and counts ``iterations``).
        data: a ``cnnlab.data.Prepared`` with train/val tensors.
        batch_size: images per optimizer step.
        seed: seeds the shuffle generator and torch's RNG (dropout) for a fresh run. The run's torch RNG is
            swapped in only while ``fit`` runs; the caller's global RNG state is restored after.
        penalty: returns the regularization term (0-dim tensor) added to the loss, or None.
        label_smoothing: cross-entropy label smoothing.
        callbacks: listeners for the events in ``EVENTS``.
        state: a saved ``TrainState`` to continue from; None for a fresh run.
        channels_last: keep images and conv weights in NHWC memory order (faster convolutions on CPU) while
            ``fit`` runs; weights that were in the standard order go back to it after.
        precision: ``fp32`` or ``bf16`` (autocast of the forward pass; weights and optimizer stay fp32).
        shift: shift each training image by up to this many pixels (0 = no augmentation).
        device: where to train (a ``torch.device`` or ``"cpu"``/``"cuda"``); None = where the model's weights
            are. The model (and any optimizer state) moves there; the data go there once, and every batch is a
            slice of them there. The shuffle order and the shifts are drawn on the CPU (so a run draws the same
            ones on every device); dropout draws from the device's generator, kept with the run's state.
        flip: mirror each training image left to right with probability 1/2 (after any shift).

    Process-wide, on purpose: the trainer asks glibc's allocator to keep freed blocks for reuse
    (``cnnlab.cpu.keep_freed_memory``), which cannot be read back or undone; it changes no result.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Any, batch_size: int,
                 seed: int = 0, penalty: Callable[[], torch.Tensor] | None = None, label_smoothing: float = 0.0,
                 callbacks: list[Callback] | None = None, state: TrainState | None = None,
                 channels_last: bool = False, precision: str = "fp32", shift: int = 0,
                 flip: bool = False, device: torch.device | str | None = None):
        keep_freed_memory()
        self.device = model_device(model) if device is None else torch.device(device)
        native.prepare_for(self.device)
        _move(model, optimizer, self.device)
        self.model = model
        self.optimizer = optimizer
        self.data = data
        self.batch_size = batch_size
        self.penalty = penalty
        self.label_smoothing = label_smoothing
        self.callbacks = _ordered(callbacks or [])
        self.should_stop = False
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.state = state or TrainState()
        self._cuda_rng: torch.Tensor | None = None  # None: seeded with ``seed`` when ``fit`` starts
        if state is None:
            self._torch_rng = torch.Generator().manual_seed(seed).get_state()  # = torch.manual_seed(seed)'s
        else:
            self._restore_rng(state)
        self.precision = precision
        self.shift = shift
        self.flip = flip
        train_x = data.train_x.to(self.device)  # one copy to the device, whatever the layouts made from it
        self.train_x = train_x.contiguous(memory_format=self.memory_format)
        self.train_y = data.train_y.to(self.device)
        self.val_x, self.val_y = data.val_x.to(self.device), data.val_y.to(self.device)
        self.validation_logits: torch.Tensor | None = None  # of the last validation, while the weights are its
        self.padded_x = pad_images(train_x, shift) if shift else None
        for cb in self.callbacks:
            cb.trainer = self
            saved = _saved_state(self.state.callbacks, cb, self.callbacks)
            if saved:
                cb.load_state_dict(saved)

    @property
    def step(self) -> int:
        """Optimizer steps done so far."""
        return int(self.optimizer.iterations)

    @property
    def batches_per_epoch(self) -> int:
        """Mini-batches per epoch (the last one may be smaller)."""
        return math.ceil(len(self.train_x) / self.batch_size)

    def fit(self, epochs: int) -> list[dict[str, float]]:
        """Train ``epochs`` more epochs (or until a callback stops) and return the whole history."""
        self.should_stop = False
        with self._run_rng(), reproducible(self.device), _memory_format(self.model, self.memory_format):
            self._fit(epochs)
        return self.state.history

    def _fit(self, epochs: int) -> None:
        self._fire("on_train_begin")
        try:
            for _ in range(epochs):
                epoch = self.state.epoch + 1
                self._fire("on_epoch_begin", epoch)
                row = self._run_epoch(epoch)
                if row is None:  # stopped inside the epoch: the epoch does not count
                    break
                self.state.epoch = epoch
                self.state.history.append(row)
                self._capture_rng()
                self._fire("on_epoch_end", epoch, row)
                if self.should_stop:
                    break
        finally:
            self._fire("on_train_end")

    @contextlib.contextmanager
    def _run_rng(self) -> Iterator[None]:
        """Swap the run's torch RNG states (the CPU's; on a GPU also the device's) in for the caller's, and back
        (keeping where the run got to)."""
        callers, callers_cuda = torch.get_rng_state(), get_cuda_rng(self.device)
        torch.set_rng_state(self._torch_rng)
        set_cuda_rng(self.device, self._cuda_rng, self.seed)
        try:
            yield
        finally:
            self._torch_rng, self._cuda_rng = torch.get_rng_state(), get_cuda_rng(self.device)
            torch.set_rng_state(callers)
            if callers_cuda is not None:
                set_cuda_rng(self.device, callers_cuda, self.seed)

    def _run_epoch(self, epoch: int) -> dict[str, float] | None:
        start = time.perf_counter()
        self.validation_logits = None  # the first step changes the weights it was computed with
        self.model.train()
        n = len(self.train_x)
        order = torch.randperm(n, generator=self.generator).to(self.device)  # drawn on the CPU: the same everywhere
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        logs = BatchLogs(0, self.batches_per_epoch, 0, loss_sum, correct, loss_sum)
        for b, lo in enumerate(range(0, n, self.batch_size)):
            idx = order[lo:lo + self.batch_size]
            x, y = self._batch(idx), self.train_y[idx]
            loss, logits = self._train_step(x, y)
            with torch.no_grad():
                loss_sum += loss.detach() * len(idx)
                correct += (logits.argmax(1) == y).sum()
            logs.batches, logs.seen, logs.last_loss = b + 1, lo + len(idx), loss.detach()
            self._fire("on_batch_end", b + 1, logs)
            if self.should_stop:
                return None
        loss, acc = logs.running()
        val_loss, val_acc = self.validate()
        lr = float(self.optimizer.current_lr())  # the schedule's value at the step reached ("present lr")
        return {"epoch": epoch, "step": self.step, "lr": lr, "loss": loss, "accuracy": acc,
                "val_loss": val_loss, "val_accuracy": val_acc, "seconds": time.perf_counter() - start}

    def _batch(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.shift and not self.flip:
            return self.train_x[idx]
        x = random_shift(self.padded_x, idx, self.shift, self.generator) if self.shift else self.train_x[idx]
        if self.flip:
            x = random_flip(x, self.generator)
        return x.contiguous(memory_format=self.memory_format)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.precision, self.device):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        if self.penalty is not None:
            loss = loss + self.penalty()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, logits

    def validate(self) -> tuple[float, float]:
        """Return (loss, accuracy) on the validation set; the loss includes the regularization term. The
        logits stay in ``validation_logits`` until the weights change."""
        with autocast(self.precision, self.device):
            self.validation_logits = predict_logits(self.model, self.val_x, memory_format=self.memory_format)
            loss, acc = scores(self.validation_logits, self.val_y, self.label_smoothing)
        if self.penalty is not None:
            with torch.no_grad():
                loss += float(self.penalty())
        return loss, acc

    def stop(self) -> None:
        """Ask the loop to stop after the current batch (inside an epoch) or epoch (at its end)."""
        self.should_stop = True

    def _fire(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(*args)

    def callback_states(self) -> dict[str, Any]:
        """Return the callbacks' states to save with the run, keyed by each callback's ``state_key``."""
        return {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_dict()}

    def _capture_rng(self) -> None:
        self.state.shuffle_rng = self.generator.get_state()
        self.state.torch_rng = torch.get_rng_state()
        self.state.cuda_rng = get_cuda_rng(self.device)

    def _restore_rng(self, state: TrainState) -> None:
        if state.shuffle_rng is None or state.torch_rng is None:
            raise CnnlabError("the saved training state has no RNG state; the run folder is incomplete")
        self.generator.set_state(state.shuffle_rng)
        self._torch_rng = state.torch_rng
        self._cuda_rng = state.cuda_rng if self.device.type == "cuda" else None


def _ordered(callbacks: list[Callback]) -> list[Callback]:
    """The callbacks in the given order, the one that ``runs_last`` moved to the end; check the state keys."""
    last = [cb for cb in callbacks if cb.runs_last]
    if len(last) > 1:
        raise ValueError(f"only one callback may run last, not {', '.join(type(cb).__name__ for cb in last)}")
    keys = [cb.state_key for cb in callbacks if cb.state_fields or type(cb).state_dict is not Callback.state_dict]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"two callbacks save their state under {twice[0]!r}; each needs its own state_key")
    return [cb for cb in callbacks if not cb.runs_last] + last


def _saved_state(states: dict[str, Any], cb: Callback, callbacks: list[Callback]) -> Any:
    """The saved state of ``cb``; a run saved before state keys existed has it under the class name."""
    if cb.state_key in states:
        return states[cb.state_key]
    name = type(cb).__name__
    only_one = sum(type(other) is type(cb) for other in callbacks) == 1
    return states.get(name) if only_one else None


def _move(model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Put the model's weights and the optimizer's state tensors on ``device`` (nothing moves that is there)."""
    model.to(device)
    for entry in optimizer.state.values():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and key != "step":  # torch's step counters stay on the CPU
                entry[key] = value.to(device)


@contextlib.contextmanager
def _memory_format(model: torch.nn.Module, memory_format: torch.memory_format) -> Iterator[None]:
    """Put the model's 4-D weights in ``memory_format`` for the block; those in the standard order go back."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.dim() == 4]
    standard = [t.is_contiguous() for t in tensors]
    model.to(memory_format=memory_format)
    try:
        yield
    finally:
        with torch.no_grad():
            for t, was_standard in zip(tensors, standard):
                if was_standard and not t.is_contiguous():
                    t.data = t.data.contiguous()
