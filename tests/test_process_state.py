"""cnnlab leaves the process as it found it: threads, global RNG, the caller's model, callback states."""

import json

import pytest
import torch

import cnnlab
from cnnlab import store
from cnnlab.callbacks import EarlyStopping, RunSaver
from cnnlab.loop import Callback, TrainState, Trainer


class Data:
    """Eight random 28x28 images of two classes, validated on themselves."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.train_x = torch.randn(8, 1, 28, 28, generator=g)
        self.train_y = torch.arange(8) % 2
        self.val_x, self.val_y = self.train_x, self.train_y


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Conv2d(3, 4, 3),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 24 * 24, 2))


def small_trainer(model, callbacks, state=None, **kwargs):
    return Trainer(model, cnnlab.get_optimizer("sgd", model.parameters()), Data(), batch_size=4,
                   callbacks=callbacks, state=state, **kwargs)


class Record(Callback):
    """Writes down the events it hears, and the memory format of the second conv's weight during training."""

    def __init__(self, log, name="record"):
        self.log, self.name = log, name
        self.channels_last = []

    def on_epoch_end(self, epoch, logs):
        self.log.append(self.name)
        weight = self.trainer.model[2].weight  # (4, 3, 3, 3): its two orders differ
        self.channels_last.append(weight.is_contiguous(memory_format=torch.channels_last)
                                  and not weight.is_contiguous())


class LastOne(Record):
    runs_last = True


def test_training_restores_threads_and_the_global_rng(real_mnist, tmp_path):
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(123)
        before = torch.get_rng_state()
        run = cnnlab.train("tiny", out=tmp_path / "run", epochs=1, overrides=["train.threads=2"], echo=None)
        assert torch.get_num_threads() == 1
        assert torch.equal(torch.get_rng_state(), before)
        sessions = json.loads((run.path / store.PROVENANCE).read_text())["sessions"]
        assert sessions[-1]["threads"] == 2  # what the run trained with
        cnnlab.resume(run.path, 1, echo=None)
        assert torch.get_num_threads() == 1 and torch.equal(torch.get_rng_state(), before)
    finally:
        torch.set_num_threads(previous)


def test_trainer_gives_the_callers_model_back_in_its_memory_format():
    model = small_model()
    record = Record([])
    small_trainer(model, [record], channels_last=True).fit(2)
    assert record.channels_last == [True, True]  # channels-last inside the loop
    assert all(p.is_contiguous() for p in model.parameters())  # the caller's standard order after
    kept = small_model().to(memory_format=torch.channels_last)
    small_trainer(kept, [], channels_last=True).fit(1)
    assert not kept[2].weight.is_contiguous()  # a model that came in channels-last stays so


def test_the_run_rng_continues_across_fits_while_the_callers_rng_is_untouched():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(784, 2))
    torch.manual_seed(7)
    callers = torch.get_rng_state()
    trainer = small_trainer(model, [], seed=3)
    trainer.fit(1)
    assert torch.equal(torch.get_rng_state(), callers)
    assert torch.equal(trainer.state.torch_rng, trainer._torch_rng)  # saved with the epoch: resume continues it
    manual = torch.Generator().manual_seed(3)
    assert not torch.equal(trainer.state.torch_rng, manual.get_state())  # dropout drew from the run's RNG


def test_two_early_stoppers_keep_their_own_state_across_a_resume():
    stoppers = [EarlyStopping("val_loss", patience=9), EarlyStopping("accuracy", patience=9)]
    trainer = small_trainer(small_model(), stoppers)
    history = trainer.fit(2)
    states = trainer.callback_states()
    assert states["EarlyStopping[monitor=val_loss, patience=9, min_delta=0.0]"]["best"] == \
        min(r["val_loss"] for r in history)
    assert states["EarlyStopping[monitor=accuracy, patience=9, min_delta=0.0]"]["best"] == \
        max(r["accuracy"] for r in history)
    again = [EarlyStopping("accuracy", patience=9), EarlyStopping("val_loss", patience=9)]
    saved = TrainState(epoch=2, callbacks=states, shuffle_rng=trainer.state.shuffle_rng,
                       torch_rng=trainer.state.torch_rng)
    small_trainer(small_model(), again, state=saved)
    assert [s.best for s in again] == [max(r["accuracy"] for r in history), min(r["val_loss"] for r in history)]


def test_a_run_saved_before_state_keys_still_restores_its_early_stopper():
    old = {"EarlyStopping": {"best": 0.5, "wait": 2}}
    stopper = EarlyStopping("val_loss", patience=3)
    g = torch.Generator().manual_seed(0)
    small_trainer(small_model(), [stopper], state=TrainState(epoch=1, callbacks=old, shuffle_rng=g.get_state(),
                                                             torch_rng=g.get_state()))
    assert (stopper.best, stopper.wait) == (0.5, 2)


def test_the_callback_that_runs_last_is_moved_to_the_end_and_keys_must_differ(tmp_path):
    log = []
    first, last = LastOne(log, "saver"), Record(log, "other")
    trainer = small_trainer(small_model(), [first, last])
    trainer.fit(1)
    assert log == ["other", "saver"] and trainer.callbacks == [last, first]
    saver = RunSaver(tmp_path, "val_loss", keep_best=False)
    assert small_trainer(small_model(), [saver, last]).callbacks[-1] is saver
    with pytest.raises(ValueError, match="only one callback may run last"):
        small_trainer(small_model(), [LastOne(log), saver])
    with pytest.raises(ValueError, match=r"two callbacks save their state under 'EarlyStopping\[monitor=loss"):
        small_trainer(small_model(), [EarlyStopping("loss", 2), EarlyStopping("loss", 2)])
