"""train.device / --device: auto, cpu or cuda; the run folder stays device-independent.

On a machine without CUDA these tests exercise the device code path on the CPU (resolution, refusals, what a
run records, CPU tensors in the folder, the inspection commands' --device); the ones marked ``gpu`` run where
torch sees a CUDA device (train there, load and inspect on the CPU, resume bit for bit on the GPU).
"""

import json

import pytest
import torch
from safetensors.torch import load_file

import cnnlab
from cnnlab import device as dev
from cnnlab import store
from cnnlab.cli import main
from cnnlab.config import load_config
from cnnlab.errors import CnnlabError

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="torch sees no CUDA device here")
no_gpu = pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")


def train_tiny(out, epochs=1, overrides=()):
    return cnnlab.train("tiny", out=out, epochs=epochs, overrides=list(overrides), echo=None)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def checkpoint_tensors(run_path):
    """Every safetensors file of the run folder: the initial weights and the committed checkpoint's files."""
    files = [run_path / store.INITIAL] + [store.checkpoint_path(run_path, name)
                                          for name in (store.WEIGHTS, store.OPTIMIZER, store.RNG)]
    return {f.name: load_file(str(f)) for f in files}


# ---------------------------------------------------------------------------------------------------------
# Resolution


def test_auto_is_cuda_where_torch_sees_it_else_the_cpu():
    assert dev.resolve_device("cpu") == torch.device("cpu")
    assert dev.resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")


def test_resolution_logic_when_torch_reports_cuda(monkeypatch):
    # Only the resolution is tested this way; nothing runs on a faked GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("cuda")
    assert dev.resolve_device("cuda") == torch.device("cuda")
    assert dev.resolve_device("cpu") == torch.device("cpu")


@no_gpu
def test_cuda_without_a_gpu_is_one_line_naming_what_torch_sees():
    seen = dev.cuda_seen()
    assert seen.startswith(f"torch {torch.__version__} ")
    with pytest.raises(CnnlabError) as info:
        dev.resolve_device("cuda")
    assert str(info.value) == (f'train.device = "cuda": torch sees no CUDA device ({seen}); '
                               'use train.device = "cpu" or "auto"')
    with pytest.raises(CnnlabError) as info:
        dev.resolve_device("cuda", "--device")
    assert str(info.value) == f"--device cuda: torch sees no CUDA device ({seen}); use --device cpu or auto"


def test_cuda_seen_names_a_build_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert dev.cuda_seen() == f"torch {torch.__version__} is a build without CUDA"


@pytest.mark.parametrize("value, hint", [("gpu", "did you mean 'cpu'"), ("cdua", "did you mean 'cuda'")])
def test_a_wrong_device_name_gets_did_you_mean(value, hint):
    with pytest.raises(CnnlabError) as info:
        load_config(preset="tiny", overrides=[f"train.device={value}"])
    assert str(info.value).startswith(f"train.device: {value!r} is not one of auto, cpu, cuda")
    assert hint in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CnnlabError, match=f"--device: {value!r} is not one of auto, cpu, cuda.*{hint}"):
        dev.resolve_device(value, "--device")


def test_config_default_is_auto_and_round_trips():
    cfg = load_config(preset="tiny")
    assert cfg.train.device == "auto"
    assert 'device = "cpu"' in load_config(preset="tiny", overrides=["train.device=cpu"]).to_toml()


def test_precision_stays_cpu_appropriate_and_cuda_auto_is_fp32(monkeypatch):
    from cnnlab import speed

    monkeypatch.setattr(speed, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    assert speed.resolve_precision("auto", torch.device("cpu")) == "bf16"  # AMX: bf16 pays off on this CPU
    assert speed.resolve_precision("auto", torch.device("cuda")) == "fp32"  # not carried over to a GPU
    assert speed.resolve_precision("fp32", torch.device("cuda")) == "fp32"


# ---------------------------------------------------------------------------------------------------------
# Training on the CPU path: what the run records and holds


def test_a_cpu_run_records_its_device_and_holds_cpu_tensors_only(real_mnist, tmp_path):
    run = train_tiny(tmp_path / "r", overrides=["train.device=cpu"])
    session = json.loads((run.path / store.PROVENANCE).read_text())["sessions"][0]
    assert session["device"] == "cpu"
    tensors = checkpoint_tensors(run.path)
    assert all(t.device.type == "cpu" for f in tensors.values() for t in f.values())
    assert set(tensors[store.RNG]) == {"shuffle", "torch"}  # no GPU generator state on the CPU
    assert run.device == torch.device("cpu") and run.config.train.device == "cpu"


def test_trainer_takes_a_device_and_keeps_the_data_there(real_mnist, tmp_path):
    from cnnlab.loop import Trainer

    run = train_tiny(tmp_path / "r", epochs=0)
    data = run.data()
    optimizer = cnnlab.get_optimizer("sgd", run.model.parameters())
    trainer = Trainer(run.model, optimizer, data, batch_size=64, device="cpu")
    assert trainer.device == torch.device("cpu")
    assert {t.device.type for t in (trainer.train_x, trainer.train_y, trainer.val_x, trainer.val_y)} == {"cpu"}
    trainer.fit(1)
    assert trainer.state.cuda_rng is None and trainer.step == len(trainer.train_x) // 64


@no_gpu
def test_cuda_is_refused_before_the_run_folder_is_made(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--set", "train.device=cuda", "--out", tmp_path / "c")
    assert code == 2 and err.startswith('cnnlab: error: train.device = "cuda": torch sees no CUDA device')
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "c").exists()


@no_gpu
def test_resume_takes_a_device_and_cuda_changes_nothing_here(capsys, real_mnist, tmp_path):
    run = train_tiny(tmp_path / "r")
    before = (run.path / store.MANIFEST).read_bytes()
    code, _, err = run_cli(capsys, "resume", run.path, "--epochs", "1", "--device", "cuda")
    assert code == 2 and "--device cuda: torch sees no CUDA device" in err and err.count("\n") == 1
    assert (run.path / store.MANIFEST).read_bytes() == before
    assert run_cli(capsys, "resume", run.path, "--epochs", "1", "--device", "cpu", "--no-progress")[0] == 0
    sessions = json.loads((run.path / store.PROVENANCE).read_text())["sessions"]
    assert [s["device"] for s in sessions] == ["cpu", "cpu"]


# ---------------------------------------------------------------------------------------------------------
# Inference and inspection


def test_load_takes_a_device_and_the_inspection_commands_take_device(capsys, real_mnist, tmp_path):
    run = train_tiny(tmp_path / "r")
    assert cnnlab.load(run.path, device="cpu").device == torch.device("cpu")
    code, out_auto, _ = run_cli(capsys, "evaluate", run.path)
    assert code == 0
    code, out_cpu, _ = run_cli(capsys, "evaluate", run.path, "--device", "cpu")
    assert code == 0
    first = lambda out: out.splitlines()[0]  # noqa: E731
    assert first(out_cpu).startswith("test: accuracy ") and first(out_cpu) == first(out_auto)
    code, out, _ = run_cli(capsys, "saliency", run.path, "--image", "3", "--device", "cpu")
    assert code == 0 and "test image 3" in out
    code, _, err = run_cli(capsys, "activations", run.path, "--layer", "Conv2D_1", "--image", "0", "--device", "gpu")
    assert code == 2 and err == ("cnnlab: error: --device: 'gpu' is not one of auto, cpu, cuda (did you mean 'cpu'?)\n")


@no_gpu
def test_inspection_with_cuda_is_one_line(capsys, real_mnist, tmp_path):
    run = train_tiny(tmp_path / "r")
    for argv in (["evaluate"], ["patterns", "--layer", "Conv2D_2"], ["report"]):
        code, _, err = run_cli(capsys, argv[0], run.path, *argv[1:], "--device", "cuda")
        assert code == 2 and err.startswith("cnnlab: error: --device cuda: torch sees no CUDA device")
        assert err.count("\n") == 1


# ---------------------------------------------------------------------------------------------------------
# On a GPU


@gpu
def test_a_gpu_run_loads_and_inspects_on_the_cpu(capsys, real_mnist, tmp_path):
    run = train_tiny(tmp_path / "g", epochs=2, overrides=["train.device=cuda"])
    session = json.loads((run.path / store.PROVENANCE).read_text())["sessions"][0]
    assert session["device"].startswith("cuda (")
    tensors = checkpoint_tensors(run.path)
    assert all(t.device.type == "cpu" for f in tensors.values() for t in f.values())
    assert set(tensors[store.RNG]) == {"shuffle", "torch", "cuda"}
    on_cpu = cnnlab.load(run.path, device="cpu")
    assert on_cpu.device.type == "cpu"
    # the GPU's own validation figure, recomputed on the CPU: at most one of the 256 images may flip
    assert abs(on_cpu.evaluate()["accuracy"] - run.history[-1]["val_accuracy"]) <= 1 / 256
    code, out, _ = run_cli(capsys, "evaluate", run.path, "--device", "cpu")
    assert code == 0 and out.startswith("test: accuracy ")


@gpu
def test_two_plus_two_epochs_equal_four_on_the_gpu(real_mnist, tmp_path):
    overrides = ["train.device=cuda", "train.shift=1"]
    four = train_tiny(tmp_path / "four", epochs=4, overrides=overrides)
    two = train_tiny(tmp_path / "two", epochs=2, overrides=overrides)
    resumed = cnnlab.resume(two.path, 2, echo=None)
    a = load_file(str(store.checkpoint_path(four.path, store.WEIGHTS)))
    b = load_file(str(store.checkpoint_path(resumed.path, store.WEIGHTS)))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
