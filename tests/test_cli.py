"""The command line: exit codes, one-line errors, nothing on disk changed by a mistake, Ctrl-C."""

import gc
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab import __version__, store
from cnnlab.cli import main

CNNLAB = [sys.executable, "-m", "cnnlab"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    # From a checkout the commit follows (tests/test_version.py checks which one).
    assert re.fullmatch(rf"cnnlab {re.escape(__version__)}( \(git [0-9a-f]{{12}}(\+dirty)?\))?",
                        capsys.readouterr().out.strip())


def test_config_prints_toml_that_loads_back(capsys, tmp_path):
    from cnnlab.config import load_config

    code, out, _ = run_cli(capsys, "config", "--preset", "seed")
    assert code == 0
    path = tmp_path / "seed.toml"
    path.write_text(out)
    assert load_config(path=path) == load_config(preset="seed")


def test_summary_prints_the_layer_table(capsys):
    code, out, _ = run_cli(capsys, "summary", "--preset", "seed")
    assert code == 0
    assert "total parameters 208,982" in out
    assert "Dense_1" in out and "(1152, 100)" in out


@pytest.mark.parametrize("argv, message", [
    (["summary", "--set", "optimizer.name=rmsporp"], "did you mean 'rmsprop'"),
    (["train", "--preset", "tiny", "--epochs", "-1"], "train.epochs: -1 is out of range"),
    (["train", "--preset", "nope"], "preset 'nope' does not exist"),
    (["resume", "no/such/run", "--epochs", "1"], "is not a cnnlab run folder"),
    (["reset", "no/such/run"], "is not a cnnlab run folder"),
    (["frobnicate"], "invalid choice"),
    (["summary", "--config", "missing.toml"], "does not exist"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, in_tmp, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_out_that_is_a_file_is_refused(capsys, in_tmp):
    target = in_tmp / "taken"
    target.write_text("mine")
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--out", str(target))
    assert code == 2 and "is a file" in err
    assert target.read_text() == "mine"


def test_existing_run_is_never_overwritten_and_corrupt_weights_are_reported(capsys, real_mnist, in_tmp):
    assert run_cli(capsys, "train", "--preset", "tiny", "--epochs", "1", "--out", "r", "--no-progress")[0] == 0
    before = snapshot(in_tmp / "r")
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--out", "r")
    assert code == 2 and "never overwritten" in err
    assert snapshot(in_tmp / "r") == before
    store.checkpoint_path(in_tmp / "r", store.WEIGHTS).write_bytes(b"garbage")
    before = snapshot(in_tmp / "r")
    code, _, err = run_cli(capsys, "resume", "r", "--epochs", "1")
    assert code == 2 and "weights.safetensors does not match its sha256 in checkpoint.json" in err
    assert snapshot(in_tmp / "r") == before


def test_train_prints_epoch_lines_with_lr_and_step(capsys, real_mnist, in_tmp):
    code, out, _ = run_cli(capsys, "train", "--preset", "tiny", "--epochs", "2", "--out", "t", "--no-progress")
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2
    assert "step 32" in lines[1] and "lr 0.000968992 " in lines[1] and "(test set)" in lines[1]
    assert "val_accuracy" in lines[0]


def test_ctrl_c_keeps_the_last_completed_epoch_and_exits_130(real_mnist, tmp_path):
    out = tmp_path / "long"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*CNNLAB, "train", "--preset", "tiny", "--epochs", "500", "--out", str(out),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 600  # generous: on a loaded machine the tiny epochs can take a minute each
    while time.time() < deadline and len(store.read_history(out) if (out / store.MANIFEST).exists() else []) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"cnnlab resume {out} --epochs N" in err
    import cnnlab

    run = cnnlab.load(out)  # consistent: state, history and optimizer agree
    assert store.load_state(out).epoch == len(run.history) >= 2
    assert run.history[-1]["step"] == len(run.history) * 16


def test_demo_trains_and_ends_with_the_report(capsys, real_mnist, in_tmp, monkeypatch):
    import cnnlab.cli as cli

    monkeypatch.setattr(cli, "DEMO_PRESET", "tiny")  # the same steps as the fast preset, in seconds
    code, out, _ = run_cli(capsys, "demo", "--out", "d", "--epochs", "1")
    assert code == 0
    assert "MNIST verified" in out and "Training the tiny preset for 1 epoch:" in out
    report, last = out.strip().splitlines()[-2:]
    assert report.startswith("report: d/report.html (")
    assert last.endswith("cnnlab lab --root . --run d --open")  # the demo ends with the command to open it
    assert (in_tmp / "d" / "report.html").stat().st_size > 10_000
    assert len(store.read_history(in_tmp / "d")) == 1


# A module-level object whose finalizer prints: it runs in the interpreter's teardown, which an inspection
# command skips; an exit handler runs either way.
_EXIT_PROBE = ("import atexit, sys; from cnnlab import cli\n"
               "class Probe:\n    def __del__(self): print('teardown ran', flush=True)\n"
               "probe = Probe()\natexit.register(lambda: print('exit handler ran', flush=True))\n"
               "sys.argv = ['cnnlab', *sys.argv[1:]]\ncli.run()\n")


def _exit_probe(*argv):
    return subprocess.run([sys.executable, "-c", _EXIT_PROBE, *argv], capture_output=True, text=True, timeout=120)


def test_inspection_commands_end_without_the_teardown_but_with_exit_handlers_and_all_output(tmp_path):
    done = _exit_probe("summary", "--preset", "tiny")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("layer ") and "Conv2D_1" in done.stdout and lines[-1] == "exit handler ran"
    assert "teardown ran" not in done.stdout
    failed = _exit_probe("evaluate", str(tmp_path / "none"))
    assert failed.returncode == 2 and failed.stderr.startswith("cnnlab: error: ") and "Traceback" not in failed.stderr
    assert failed.stdout.splitlines() == ["exit handler ran"]


# What numpy's OpenBLAS runs on in a command's process: the variable and the threads of its pool
_BLAS_PROBE = ("import atexit, os, sys; from cnnlab import cli\n"
               "def report():\n    import numpy\n    from threadpoolctl import threadpool_info\n"
               "    pools = [i['num_threads'] for i in threadpool_info() if i['internal_api'] == 'openblas']\n"
               "    print(os.environ.get('OPENBLAS_NUM_THREADS'), pools, flush=True)\n"
               "atexit.register(report)\nsys.argv = ['cnnlab', 'summary', '--preset', 'tiny']\ncli.run()\n")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="one BLAS thread is set on x86 only")
@pytest.mark.parametrize("users, expected", [(None, "1 [1]"), ("2", "2 [2]")])
def test_the_command_line_runs_numpys_blas_on_one_thread_unless_the_user_set_a_number(users, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    if users is not None:
        env["OPENBLAS_NUM_THREADS"] = users
    done = subprocess.run([sys.executable, "-c", _BLAS_PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == expected


# The cycle collector's thresholds in a command's process, read as it exits
_GC_PROBE = ("import atexit, gc, sys; from cnnlab import cli\n"
             "atexit.register(lambda: print(gc.get_threshold(), flush=True))\nsys.argv = ['cnnlab', *sys.argv[1:]]\n"
             "cli.run()\n")


@pytest.mark.parametrize("argv, expected", [(["summary", "--preset", "tiny"], "(50000, 20, 10)"),
                                            (["train", "--preset", "nosuch"], str(gc.get_threshold()))])
def test_short_commands_collect_cycles_less_often_and_training_keeps_pythons_defaults(argv, expected, capsys):
    done = subprocess.run([sys.executable, "-c", _GC_PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == expected, done.stderr
    before = gc.get_threshold()
    assert main(["summary", "--preset", "tiny"]) == 0 and gc.get_threshold() == before  # main() from Python


def test_other_commands_end_with_the_interpreters_teardown(tmp_path):
    done = _exit_probe("train", "--preset", "nosuch", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and done.stderr.startswith("cnnlab: error: ")
    assert done.stdout.splitlines() == ["exit handler ran", "teardown ran"]
    assert not (tmp_path / "run").exists()


def test_a_profiled_inspection_command_ends_normally_so_the_profile_is_written(tmp_path):
    out = tmp_path / "summary.prof"
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "cnnlab", "summary", "--preset",
                           "tiny"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Conv2D_1" in done.stdout and out.stat().st_size > 0
