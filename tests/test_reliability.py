"""What survives what: a kill at every write, two writers, a full disk, with real child processes."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from cnnlab import runlock, store
from cnnlab.errors import CnnlabError
from cnnlab.files import FAULT_ENV

import fault_helpers as fh  # noqa: E402
QUICK = fh.QUICK
EPOCHS = 2


def final_state(run_dir: Path) -> dict:
    """Everything a resumed run must reproduce: weights, optimizer state, RNG states, history without times."""
    ckpt = store.open_checkpoint(run_dir)
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in ckpt.json(store.HISTORY_JSON)]
    return {"epoch": ckpt.epoch, "step": ckpt.step, "weights": ckpt.tensors(store.WEIGHTS),
            "optimizer": ckpt.tensors(store.OPTIMIZER), "optimizer_json": ckpt.json(store.OPTIMIZER_JSON),
            "rng": ckpt.tensors(store.RNG), "history": history}


def same_state(a: dict, b: dict) -> bool:
    """Bit for bit: every tensor equal, every plain value equal."""
    for key in a:
        if isinstance(a[key], dict) and a[key] and isinstance(next(iter(a[key].values())), torch.Tensor):
            if a[key].keys() != b[key].keys() or not all(torch.equal(a[key][k], b[key][k]) for k in a[key]):
                return False
        elif a[key] != b[key]:
            return False
    return True


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files and checkpoint folders no manifest names any more (none after a commit).

    A commit keeps its own folder and the one of the checkpoint it replaced (readers may still be reading it).
    """
    current = f"{json.loads((run_dir / store.MANIFEST).read_text())['generation']:06d}"
    older = sorted(p.name for p in (run_dir / store.CHECKPOINTS).iterdir() if p.name < current)
    stale = older[:-1] + sorted(p.name for p in (run_dir / store.CHECKPOINTS).iterdir() if p.name > current)
    return stale + [str(p.relative_to(run_dir)) for p in run_dir.rglob("*.tmp")]


# ---------------------------------------------------------------------------------------------------------
# A kill at every write


def _kill_then_resume(tmp_path: Path, k: int) -> dict:
    out = tmp_path / f"k{k:03d}"
    code, log = fh.cli(["train", *QUICK, "--epochs", str(EPOCHS), "--out", str(out)], tmp_path / f"k{k}.log",
                       env={FAULT_ENV: str(k)})
    result = {"k": k, "killed": code == -signal.SIGKILL, "epoch": None}
    if not (out / store.MANIFEST).exists():
        code, log = fh.cli(["resume", str(out), "--epochs", str(EPOCHS)], tmp_path / f"r{k}.log")
        result.update(resume_code=code, resume_log=log)
        return result
    result["epoch"] = store.open_checkpoint(out).epoch  # a reader: the folder must hold a complete checkpoint
    if result["epoch"] < EPOCHS:
        code, log = fh.cli(["resume", str(out), "--epochs", str(EPOCHS - result["epoch"])], tmp_path / f"r{k}.log")
        result.update(resume_code=code, resume_log=log)
    result["state"] = final_state(out)
    # garbage of the killed writer is removed by the next commit; a run killed after its last one keeps it
    result["leftovers"] = leftovers(out) if "resume_code" in result else []
    return result


def test_a_kill_at_every_write_resumes_bit_for_bit(real_mnist, tmp_path):
    trace = tmp_path / "trace.txt"
    code, log = fh.cli(["train", *QUICK, "--epochs", str(EPOCHS), "--out", str(tmp_path / "ref")],
                       tmp_path / "ref.log", env={FAULT_ENV: "1000000", "CNNLAB_FAULT_TRACE": str(trace)})
    assert code == 0, log
    events = [line.split(" ", 2) for line in trace.read_text().splitlines()]
    assert len(events) == int(re.search(r"write events: (\d+)", log).group(1)) >= 50
    # Every write event (temporary file complete, renamed) of making the run, of epoch 2's curves and checkpoint
    # (whose commit also removes epoch 0's folder) and of the provenance; epoch 1's checkpoint is the same
    # sequence of writes, so of it only the manifest's two events.
    curves = [int(k) for k, _, path in events if path.endswith(store.CURVES)]
    epoch1 = range(curves[0], curves[2])  # epoch 1 ends where epoch 2's curves picture is written
    points = [int(k) for k, _, path in events if int(k) not in epoch1 or path.endswith(store.MANIFEST)]
    reference = final_state(tmp_path / "ref")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda k: _kill_then_resume(tmp_path, k), points))
    assert all(r["killed"] for r in results)
    before_first = [r for r in results if r["epoch"] is None]
    # only a kill before the first checkpoint's manifest leaves nothing to resume, and then says how to start again
    assert before_first == results[:len(before_first)] and 1 <= len(before_first) < len(points) // 2
    for r in before_first:
        assert r["resume_code"] == 2 and "holds no checkpoint" in r["resume_log"] and "rm -r" in r["resume_log"]
    for r in results[len(before_first):]:
        assert r.get("resume_code", 0) == 0, (r["k"], r.get("resume_log"))
        assert same_state(r["state"], reference), f"kill after write event {r['k']} (epoch {r['epoch']})"
        assert r["leftovers"] == [], (r["k"], r["leftovers"])
    epochs_seen = {r["epoch"] for r in results if r["epoch"] is not None}
    assert epochs_seen == {0, 1, 2}


# ---------------------------------------------------------------------------------------------------------
# Two writers; readers during training; a stale lock


def _wait_for_epochs(run_dir: Path, epochs: int, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.is_alive():
        if (run_dir / store.MANIFEST).exists() and store.open_checkpoint(run_dir, names=()).epoch >= epochs:
            return
        time.sleep(0.02)
    raise AssertionError(f"{run_dir} did not reach epoch {epochs}")


def test_second_writer_refused_readers_see_complete_checkpoints_stale_lock_taken_over(real_mnist, tmp_path):
    run = tmp_path / "run"
    trainer = fh.start(["train", *QUICK, "--epochs", "100000", "--out", str(run)], tmp_path / "train.log")
    try:
        _wait_for_epochs(run, 1, trainer)
        for args in (["resume", str(run), "--epochs", "1"], ["reset", str(run)],
                     ["train", *QUICK, "--out", str(run)]):
            code, log = fh.cli(args, tmp_path / "second.log")
            lines = log.strip().splitlines()
            assert code == 2 and len(lines) == 1, (args, log)
            assert f"pid {trainer.pid} is running 'cnnlab train --out {run}'" in lines[0], lines[0]
        # readers while the writer commits epoch after epoch: always one complete, verified checkpoint
        seen, reads, deadline = set(), 0, time.time() + 120
        while (reads < 60 or len(seen) < 2) and time.time() < deadline:
            reads += 1
            ckpt = store.open_checkpoint(run)
            state = store.load_state(run, ckpt)
            assert state.epoch == ckpt.epoch == len(state.history) and state.history[-1]["step"] == ckpt.step
            seen.add(ckpt.epoch)
        code, log = fh.cli(["evaluate", str(run), "--out", str(tmp_path / "eval")], tmp_path / "eval.log")
        assert code == 0 and "test: accuracy" in log, log
        assert len(seen) >= 2  # the readers did overlap with commits
    finally:
        trainer.kill()  # SIGKILL, mid-epoch or mid-commit: its lock file stays behind, stale
        trainer.join()
    assert runlock.holder(run) is None and json.loads((run / runlock.LOCK).read_text())["pid"] == trainer.pid
    done = store.open_checkpoint(run).epoch
    code, log = fh.cli(["resume", str(run), "--epochs", "1"], tmp_path / "resume.log")
    assert code == 0, log
    assert f"took over the lock of pid {trainer.pid} (cnnlab train --out {run}), which is no longer running" in log
    assert store.open_checkpoint(run).epoch == done + 1 and not (run / runlock.LOCK).exists()
    assert leftovers(run) == []


def test_two_trains_into_one_new_folder_make_one_run(real_mnist, tmp_path):
    run = tmp_path / "same"
    procs = [fh.start(["train", *QUICK, "--epochs", "1", "--out", str(run)], tmp_path / f"t{i}.log")
             for i in range(2)]
    for proc in procs:
        proc.join(300)
    logs = [(tmp_path / f"t{i}.log").read_text() for i in range(2)]
    codes = sorted(p.exitcode for p in procs)
    assert codes == [0, 2], logs
    refused = [line for line in next(log for p, log in zip(procs, logs) if p.exitcode == 2).splitlines()
               if line.startswith("cnnlab:")]
    assert len(refused) == 1 and ("is running 'cnnlab train" in refused[0] or "never overwritten" in refused[0])
    assert store.open_checkpoint(run).epoch == 1 and leftovers(run) == []


def test_a_writer_refused_while_the_holder_writes_its_record_still_names_it(tmp_path):
    """The holder takes the flock, then writes who it is: a second writer in between waits for the record."""
    import fcntl
    import threading

    fd = os.open(tmp_path / runlock.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held, the record not yet written
    late = threading.Timer(0.1, lambda: os.pwrite(fd, b'{"pid": 4242, "action": "cnnlab train", '
                                                      b'"since": "now"}\n', 0))
    try:
        late.start()
        with pytest.raises(runlock.RunLocked, match="pid 4242 is running 'cnnlab train'"):
            with runlock.writer_lock(tmp_path, "cnnlab second"):
                pass
        late.join()
        os.ftruncate(fd, 0)  # a holder that never says who it is: the message that names no one
        with pytest.raises(runlock.RunLocked, match="is being written by another process"):
            with runlock.writer_lock(tmp_path, "cnnlab second"):
                pass
    finally:
        late.cancel()
        late.join()
        os.close(fd)


def test_lock_refuses_in_process_and_frees_on_exit(tmp_path):
    with runlock.writer_lock(tmp_path, "cnnlab first"):
        assert runlock.holder(tmp_path)["pid"] == os.getpid()
        with pytest.raises(runlock.RunLocked, match=rf"pid {os.getpid()} is running 'cnnlab first'"):
            with runlock.writer_lock(tmp_path, "cnnlab second"):
                pass
    assert runlock.holder(tmp_path) is None and not (tmp_path / runlock.LOCK).exists()
    assert issubclass(runlock.RunLocked, CnnlabError)


# ---------------------------------------------------------------------------------------------------------
# A full disk, or a file-size limit (RLIMIT_FSIZE in the child), during any write


def _one_line_no_space(log: str, what: str) -> str:
    lines = [line for line in log.strip().splitlines() if line.startswith("cnnlab: error:")]
    assert len(lines) == 1, log
    assert re.fullmatch(rf"cnnlab: error: no space left writing \S*{re.escape(what)}; "
                        "nothing of the last checkpoint was lost", lines[0]), lines[0]
    return lines[0]


def test_full_disk_inside_a_checkpoint_keeps_the_last_one_and_resumes_bit_for_bit(real_mnist, tmp_path):
    wide = [*QUICK, "--set", "model.layers.Dense_1.units=64"]  # an optimizer file larger than the curves picture
    assert fh.cli(["train", *wide, "--epochs", "2", "--out", str(tmp_path / "ref")], tmp_path / "ref.log")[0] == 0
    ref = tmp_path / "ref"
    optimizer = store.checkpoint_path(ref, store.OPTIMIZER).stat().st_size
    before = max(p.stat().st_size for p in ref.rglob("*") if p.is_file() and p.name != store.OPTIMIZER)
    assert before < optimizer
    limit = (before + optimizer) // 2  # every file fits but the optimizer state, written inside the commit
    run = tmp_path / "run"
    assert fh.cli(["train", *wide, "--epochs", "1", "--out", str(run)], tmp_path / "one.log")[0] == 0
    manifest = (run / store.MANIFEST).read_bytes()
    folders = sorted(p.name for p in (run / store.CHECKPOINTS).iterdir())
    code, log = fh.cli(["resume", str(run), "--epochs", "1"], tmp_path / "full.log", fsize=limit)
    assert code == 1
    _one_line_no_space(log, store.OPTIMIZER)
    assert (run / store.MANIFEST).read_bytes() == manifest  # the last checkpoint, untouched
    assert sorted(p.name for p in (run / store.CHECKPOINTS).iterdir()) == folders  # the half-written one is gone
    assert store.open_checkpoint(run).epoch == 1
    code, log = fh.cli(["resume", str(run), "--epochs", "1"], tmp_path / "again.log")
    assert code == 0, log
    assert same_state(final_state(run), final_state(ref))


def test_full_disk_in_every_other_writer_is_one_line(real_mnist, tmp_path):
    from cnnlab.data import cache_dir

    # creating a run: nothing to resume, and resume says how to start again
    code, log = fh.cli(["train", *QUICK, "--out", str(tmp_path / "new")], tmp_path / "new.log", fsize=8_000)
    assert code == 1
    _one_line_no_space(log, store.MODEL)
    code, log = fh.cli(["resume", str(tmp_path / "new"), "--epochs", "1"], tmp_path / "new2.log")
    assert code == 2 and "holds no checkpoint" in log
    run = tmp_path / "run"
    assert fh.cli(["train", *QUICK, "--epochs", "1", "--out", str(run)], tmp_path / "run.log")[0] == 0
    manifest = (run / store.MANIFEST).read_bytes()
    # inspection outputs, the ONNX export, the data cache
    code, log = fh.cli(["evaluate", str(run)], tmp_path / "eval.log", fsize=2_000)
    assert code == 1
    _one_line_no_space(log, ".png")
    code, log = fh.cli(["export", str(run), "--onnx", str(tmp_path / "m.onnx")], tmp_path / "onnx.log", fsize=2_000)
    assert code == 1
    _one_line_no_space(log, "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    home = tmp_path / "home"
    code, log = fh.cli(["data", "--from", str(cache_dir())], tmp_path / "data.log", env={"CNNLAB_HOME": str(home)},
                       fsize=1_000_000)
    assert code == 1
    _one_line_no_space(log, "-ubyte")
    assert not [p for p in home.rglob("*") if p.is_file() and p.stat().st_size >= 1_000_000]
    assert (run / store.MANIFEST).read_bytes() == manifest and store.open_checkpoint(run).epoch == 1


# ---------------------------------------------------------------------------------------------------------
# Damaged run folders: every file missing, truncated, replaced by another run's, edited by hand


QUICK_SET = ["data.limit_train=64", "data.limit_test=64", "train.threads=1"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, real_mnist):
    import cnnlab

    root = tmp_path_factory.mktemp("damaged")
    a = cnnlab.train("tiny", out=root / "a", epochs=2, overrides=QUICK_SET, echo=None).path
    b = cnnlab.train("tiny", out=root / "b", epochs=2, overrides=[*QUICK_SET, "data.limit_train=128", "train.seed=1"],
                     echo=None).path
    return a, b


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _damage(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "replaced":
        assert other.read_bytes() != data
        path.write_bytes(other.read_bytes())
    elif path.suffix == ".json":  # edited by hand: still valid JSON, one value changed
        path.write_text(path.read_text().replace("1", "2", 1))
    else:
        i = len(data) - 5
        path.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])


DAMAGED_FILES = [store.MODEL, store.INITIAL, store.WEIGHTS, store.OPTIMIZER, store.OPTIMIZER_JSON, store.RNG,
                 store.STATE, store.HISTORY_CSV, store.HISTORY_JSON, store.MANIFEST, store.CONFIG]


@pytest.mark.parametrize("how", ["missing", "truncated", "replaced", "edited"])
def test_each_damaged_file_is_one_line_and_nothing_is_written(two_runs, tmp_path, capsys, how):
    import shutil

    from cnnlab.cli import main

    a, b = two_runs
    messages = {}
    for name in DAMAGED_FILES:
        if name == store.CONFIG and how in ("replaced", "edited"):
            continue  # a config edited by hand is allowed (e.g. data limits); one that no longer fits: below
        run = tmp_path / name
        shutil.copytree(a, run)
        target = run / name if name in (store.MANIFEST, store.CONFIG) else store.checkpoint_path(run, name)
        other = b / target.relative_to(run)
        _damage(target, how, other)
        before = snapshot(run)
        commands = [["resume", str(run), "--epochs", "1"]]
        if name in (store.MODEL, store.INITIAL, store.MANIFEST):  # reset keeps these (and replaces the rest)
            commands.append(["reset", str(run)])
        for args in commands:
            code = main(args)
            err = capsys.readouterr().err.strip()
            assert code == 2 and len(err.splitlines()) == 1 and err.startswith("cnnlab: error: "), (name, args, err)
            messages[name] = err
        assert snapshot(run) == before, name  # nothing changed, nothing lost
    for name, err in messages.items():
        assert name in err or store.MANIFEST in err, (name, err)


def test_hand_edits_that_no_longer_fit_and_harmless_damage(two_runs, tmp_path, capsys):
    import shutil

    import cnnlab
    from cnnlab.cli import main

    a, _ = two_runs
    run = tmp_path / "units"
    shutil.copytree(a, run)
    config = run / store.CONFIG
    config.write_text(config.read_text().replace("units = 16", "units = 17"))
    assert main(["resume", str(run), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "weights.safetensors: layers.Dense_1.op.weight has shape (16, 200), the model needs (17, 200)" in err
    run = tmp_path / "harmless"
    shutil.copytree(a, run)
    (run / store.PROVENANCE).write_text("{not json")
    (run / runlock.LOCK).write_text("garbage")
    (run / store.CURVES).write_bytes(b"")
    resumed = cnnlab.resume(run, 1, echo=None)
    assert len(resumed.history) == 3
    prov = json.loads((run / store.PROVENANCE).read_text())
    assert len(prov["sessions"]) == 1 and "unreadable" in prov["note"]
    assert (run / store.CURVES).read_bytes()[:4] == b"\x89PNG"


def test_a_folder_from_before_manifests_loads_resumes_and_moves_to_the_manifest(two_runs, tmp_path):
    import shutil

    import cnnlab

    a, _ = two_runs
    old = tmp_path / "old"
    shutil.copytree(a, old, ignore=shutil.ignore_patterns(store.MANIFEST, store.CHECKPOINTS))
    ckpt = store.open_checkpoint(a)
    for name in store.CHECKPOINT_FILES:
        if ckpt.has(name):
            (old / name).write_bytes(ckpt.blobs[name])
    assert not (old / store.MANIFEST).exists()
    loaded = cnnlab.load(old)
    assert len(loaded.history) == 2 and store.load_state(old).epoch == 2
    reference = cnnlab.resume(a, 1, echo=None)
    migrated = cnnlab.resume(old, 1, echo=None)
    assert same_state(final_state(old), final_state(reference.path))
    assert (old / store.MANIFEST).exists() and migrated.history[-1]["epoch"] == 3
    assert not [n for n in store.CHECKPOINT_FILES if (old / n).exists()]  # the top-level files moved


def test_inspection_of_a_folder_it_may_not_write_says_where_to_write(two_runs, tmp_path):
    import shutil
    import tempfile

    from cnnlab.data import cache_dir

    a, _ = two_runs
    shared = Path(tempfile.mkdtemp(prefix="cnnlab-readonly-"))  # readable by another user, unlike tmp_path
    try:
        os.chmod(shared, 0o755)
        run, home, out = shared / "run", shared / "home", shared / "out"
        shutil.copytree(a, run)
        shutil.copytree(cache_dir(), home / "mnist")
        out.mkdir()
        uid = None
        if os.geteuid() == 0:
            uid = 65534  # nobody: root may write anywhere
            os.chown(out, uid, uid)
        else:
            os.chmod(run, 0o555)
        env = {"CNNLAB_HOME": str(home)}
        code, log = fh.cli(["evaluate", str(run)], tmp_path / "ro.log", env=env, uid=uid)
        lines = log.strip().splitlines()
        assert code == 2 and len(lines) == 1, log
        assert lines[0].startswith(f"cnnlab: error: cannot write into {run / 'inspect'}: no permission; write "
                                   "elsewhere with --out DIR, for example --out "), lines[0]
        code, log = fh.cli(["evaluate", str(run), "--out", str(out)], tmp_path / "out.log", env=env, uid=uid)
        assert code == 0 and (out / "evaluation.json").is_file(), log
    finally:
        if (shared / "run").exists():
            os.chmod(shared / "run", 0o755)
        shutil.rmtree(shared)


# ---------------------------------------------------------------------------------------------------------
# The model meets the data


def test_a_last_layer_of_the_wrong_size_is_one_line_before_any_folder(real_mnist, tmp_path, capsys):
    from cnnlab.cli import main

    code = main(["train", "--preset", "tiny", "--set", "model.layers.Dense_2.units=7", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("cnnlab: error: model.layers.Dense_2.units = 7, but the data has 10 classes "
                                 "(labels 0..9): the last layer needs one unit per class; set "
                                 "--set model.layers.Dense_2.units=10")
    assert not (tmp_path / "r").exists()
