"""cnnlab sweep on Optuna: the space checked before any trial, trials as run folders, pruning, best.toml, the
default journal storage with --jobs 2, a resume after SIGKILL, and two processes sharing a real PostgreSQL."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from cnnlab import store  # noqa: E402
from cnnlab.cli import main  # noqa: E402
from cnnlab.compare import compare  # noqa: E402
from cnnlab.config import load_config  # noqa: E402
from cnnlab.sweep import load_sweep, run_sweep  # noqa: E402

CNNLAB = [sys.executable, "-m", "cnnlab"]

SWEEP = """extends = "tiny"

[data]
limit_train = 256
limit_test = 128

[train]
epochs = {epochs}

[sweep]
metric = "val_accuracy"
trials = {trials}
pruner = "median"
seed = 0

[sweep.space]
{space}
"""
SPACE = """"optimizer.momentum" = { low = 0.0, high = 0.9 }
"schedule.initial" = { low = 1e-4, high = 1e-2, log = true }
"model.layers.Dense_1.units" = { choices = [8, 16] }"""


def sweep_file(folder: Path, name: str = "s", epochs: int = 1, trials: int = 3, space: str = SPACE) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(SWEEP.format(epochs=epochs, trials=trials, space=space))
    return path


def study(out: Path, name: str = "s"):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def trial_folders(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("trial-*"))


@pytest.mark.parametrize("space, message", [
    ('"optimizer.momentun" = { low = 0.0, high = 0.9 }',
     "sweep.space.'optimizer.momentun': low 0.0: optimizer.momentun: not a parameter of rmsprop; valid keys: "),
    ('"optimizer.momentum" = { low = 0.5, high = 1.5 }',
     "sweep.space.'optimizer.momentum': high 1.5: optimizer.momentum: 1.5 is out of range"),
    ('"train.batch_size" = { choices = [32, "big"] }',
     "sweep.space.'train.batch_size': choice 'big': train.batch_size: expected an integer, got str 'big'"),
    ('"model.layers.Dense_9.units" = { low = 8, high = 16 }',
     "sweep.space.'model.layers.Dense_9.units': low 8: --set model.layers.Dense_9: no layer named 'Dense_9'"),
    ('"schedule.initial" = { low = 0.0, high = 0.1, log = true }', "a log range needs low > 0"),
    ('"schedule.initial" = { low = 0.1, hihg = 0.2 }', "unknown setting 'hihg'; valid: low, high, log, step, "
                                                      "choices (did you mean 'high'?)"),
])
def test_space_is_checked_before_anything_runs(tmp_path, capsys, space, message):
    path = sweep_file(tmp_path, space=space)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_did_you_mean_on_a_misspelt_optimizer_key(tmp_path):
    from cnnlab.errors import CnnlabError

    with pytest.raises(CnnlabError, match=r"did you mean 'momentum'\?"):
        load_sweep(sweep_file(tmp_path, space='"optimizer.momentun" = { low = 0.0, high = 0.9 }'))


def test_int_and_float_ranges_follow_the_schema(tmp_path):
    s = load_sweep(sweep_file(tmp_path, space='"train.early_stopping.min_delta" = { low = 0, high = 1 }\n'
                                              '"model.layers.Dense_1.units" = { low = 8, high = 32, step = 8 }'))
    assert [(p.kind, p.low, p.high) for p in s.space] == [("float", 0.0, 1.0), ("int", 8, 32)]


def test_sweep_in_process_trials_are_runs_and_best_toml_trains(tmp_path, real_mnist, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = []
    result = run_sweep(sweep_file(tmp_path, trials=3), out=tmp_path / "out", echo=lines.append)
    out = tmp_path / "out"
    st = study(out)
    assert trial_folders(out) == [0, 1, 2] == [t.number for t in st.trials]
    for t in st.trials:
        folder = out / f"trial-{t.number:04d}"
        cfg = load_config(path=folder / store.CONFIG)
        assert cfg.optimizer["momentum"] == pytest.approx(t.params["optimizer.momentum"])
        assert cfg.schedule["initial"] == pytest.approx(t.params["schedule.initial"])
        assert cfg.model.layers[-2]["units"] == t.params["model.layers.Dense_1.units"]
        record = json.loads((folder / "trial.json").read_text())
        history = store.read_history(folder)
        assert record["state"] == "complete" and t.value == record["value"] == history[-1]["val_accuracy"]
    best = max(st.trials, key=lambda t: t.value)
    assert result.best["trial"] == best.number == st.best_trial.number
    best_cfg = load_config(path=out / "best.toml")
    assert best_cfg.optimizer["momentum"] == pytest.approx(best.params["optimizer.momentum"])
    assert best_cfg.train.threads == 0  # the base config's, not the per-job share
    assert len(compare(out)) == 3  # every other command works on the trial folders
    assert (out / "history.png").stat().st_size > 5000 and (out / "params.png").stat().st_size > 5000
    assert (out / "trials.csv").read_text().count("\n") == 4
    assert any(line.startswith(f"best: trial {best.number} ") for line in lines)
    # The same command again continues the study: --trials counts the total.
    run_sweep(sweep_file(tmp_path, trials=3), trials=4, out=out, echo=None)
    assert trial_folders(out) == [0, 1, 2, 3]


def test_a_pruned_trial_stops_after_its_epoch_and_its_folder_stays_valid(tmp_path, real_mnist, monkeypatch):
    from cnnlab.run import load

    # A real Optuna pruner that rejects every trial below 99% after the first epoch stands in for the median one.
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda: optuna.pruners.ThresholdPruner(lower=0.99))
    out = tmp_path / "out"
    run_sweep(sweep_file(tmp_path, epochs=3, trials=2), out=out, echo=None)
    st = study(out)
    assert [t.state.name for t in st.trials] == ["PRUNED", "PRUNED"]
    for t in st.trials:
        folder = out / f"trial-{t.number:04d}"
        assert json.loads((folder / "trial.json").read_text())["state"] == "pruned"
        assert len(load(folder).history) == 1 and store.load_state(folder).epoch == 1
        assert t.intermediate_values == {1: load(folder).history[0]["val_accuracy"]}
    assert not (out / "best.toml").exists()  # no complete trial, no best


def _env():
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_default_storage_with_two_jobs(tmp_path, real_mnist):
    path = sweep_file(tmp_path, trials=4)
    out = tmp_path / "out"
    proc = subprocess.run([*CNNLAB, "sweep", str(path), "--out", str(out), "--jobs", "2"], capture_output=True,
                          text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "2 jobs x 1 thread" in proc.stdout
    st = study(out)
    done = [t for t in st.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 4
    assert trial_folders(out) == sorted(t.number for t in done)
    owners = {t.user_attrs["owner"].rsplit(":", 2)[1] for t in done}
    assert len(owners) == 2  # two worker processes shared the work
    for number in trial_folders(out):  # cores // jobs threads each
        assert json.loads((out / f"trial-{number:04d}" / store.PROVENANCE).read_text())["sessions"][0]["threads"] == 1


def _epochs_done(folder):
    """Epochs the committed checkpoint of ``folder`` holds (0 while it has none)."""
    try:
        return json.loads((folder / store.MANIFEST).read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def test_resume_after_sigkill_fails_and_retries_the_running_trial(tmp_path, real_mnist):
    path = sweep_file(tmp_path, epochs=2, trials=2)
    out = tmp_path / "out"
    cmd = [*CNNLAB, "sweep", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    deadline = time.time() + 300
    while _epochs_done(out / "trial-0000") < 1 and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [t.state.name for t in study(out).trials] == ["RUNNING"]
    again = subprocess.run(cmd + ["--trials", "2"], capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr
    assert "failed the dead trials [0] (queued again)" in again.stdout
    trials = study(out).trials
    assert trials[0].state.name == "FAIL"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].params == trials[0].params and retried[0].state.name == "COMPLETE"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    assert json.loads((out / "trial-0000" / "trial.json").read_text())["state"] == "failed"


# ---------------------------------------------------------------------------------------------------------
# A real PostgreSQL server: a throwaway cluster in a temp folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres(tmp_path):
    """Start a PostgreSQL cluster (initdb into a temp folder, a free port on 127.0.0.1); stop it at the end."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'cnnlab[sweep]')")
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    bindir = bins[-1].parent
    root = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    init = subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "cnnlab", "--auth=trust"],
                          capture_output=True, text=True)
    if init.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    start = subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"],
                           capture_output=True, text=True)
    try:
        if start.returncode:
            pytest.skip(f"PostgreSQL did not start: {(root / 'log').read_text()[-300:]}")
        subprocess.run([*prefix, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "cnnlab",
                        "sweeps"], check=True)
        yield f"postgresql://cnnlab@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_processes_share_one_study_in_postgresql(tmp_path, real_mnist, postgres):
    path = sweep_file(tmp_path, name="pg", trials=4)
    procs = [subprocess.Popen([*CNNLAB, "sweep", str(path), "--storage", postgres, "--out", str(tmp_path / f"m{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) for i in (1, 2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-800:] for o in outputs]
    st = optuna.load_study(study_name="pg", storage=postgres)
    done = [t for t in st.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 4
    numbers = trial_folders(tmp_path / "m1") + trial_folders(tmp_path / "m2")
    assert sorted(numbers) == sorted(t.number for t in done)  # every trial ran once, on one of the two
    assert len(set(numbers)) == len(numbers)
    assert trial_folders(tmp_path / "m1") and trial_folders(tmp_path / "m2")  # both took part
    assert "postgresql://cnnlab@127.0.0.1" in outputs[0][0]


def test_a_storage_that_cannot_be_opened_is_one_line_and_leaves_nothing(tmp_path, capsys):
    url = f"postgresql://someone:secret@127.0.0.1:{_free_port()}/nothing"
    assert main(["sweep", str(sweep_file(tmp_path)), "--storage", url, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot open it" in err and "secret" not in err and "someone:***@" in err
    assert not (tmp_path / "out").exists()
