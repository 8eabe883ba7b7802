"""Hyper-parameter sweeps on Optuna: a config plus a ``[sweep]`` table; each trial is a normal run folder.

The study lives in Optuna's storage. By default that is Optuna's journal file ``DIR/study.journal``: every
change is one appended line written under a lock file, so several processes on one machine (``--jobs``, or a
second ``cnnlab sweep`` on the same folder) add trials to it safely. SQLite was the other candidate; it locks the
whole database per write and its writers fail with "database is locked" when several processes write at once,
which is the normal case here. ``--storage postgresql://...`` (any Optuna RDB URL) lets several machines share one
study; there Optuna's heartbeat fails a trial whose machine died, and a retry of it is queued.

A trial whose process died on this machine (Ctrl-C, a crash, SIGKILL) is failed as soon as any ``cnnlab sweep``
of the study starts or begins a trial, and Optuna re-queues it once with the same values.
"""

from __future__ import annotations

import copy
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import tomli_w

from cnnlab.errors import CnnlabError
from cnnlab.loop import Callback
from cnnlab.schema import check_choice, parse_toml, suggest, unknown_key

Echo = Callable[[str], None]

METRICS = ("val_accuracy", "val_loss", "accuracy", "loss", "test_accuracy")
PRUNERS = ("none", "median", "hyperband")
SETTINGS = ("metric", "direction", "trials", "pruner", "seed", "space")
SPACE_KEYS = ("low", "high", "log", "step", "choices")
JOURNAL = "study.journal"
SWEEP_FILE = "sweep.toml"
BEST = "best.toml"
TRIALS_CSV = "trials.csv"
HEARTBEAT_S = 10  # RDB storages: a trial's process writes a heartbeat this often
GRACE_S = 30  # ... and a trial without one for this long is failed and queued again
MAX_RETRY = 1
POLL_S = 2  # while other processes finish the last trials, look again this often
TRIAL_DIR = "trial-{:04d}"


@dataclass
class Param:
    """One dimension of the search space: a float or int range (``log``, ``step``) or a list of choices."""

    key: str
    kind: str  # "float", "int" or "choice"
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: list[Any] = field(default_factory=list)


@dataclass
class Sweep:
    """A parsed, checked sweep file: the base config (resolved, as a dict) and the ``[sweep]`` settings."""

    path: Path
    text: str
    base: dict[str, Any]
    metric: str
    direction: str
    trials: int
    pruner: str
    seed: int
    space: list[Param]

    def config_for(self, values: dict[str, Any], threads: int | None = None) -> Any:
        """Return the validated ``Config`` of a trial: the base with ``values`` set as ``--set`` would."""
        from cnnlab.config import apply_override, from_dict

        raw = copy.deepcopy(self.base)
        for key, value in values.items():
            apply_override(raw, f"{key}={toml_value(value)}")
        if threads is not None:
            apply_override(raw, f"train.threads={threads}")
        return from_dict(raw)


# ---------------------------------------------------------------------------------------------------------
# Reading and checking a sweep file (before anything is written or any trial starts)


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep file and check every setting and every key of ``[sweep.space]`` against the config schema."""
    from cnnlab.config import from_dict

    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"sweep file {path} does not exist; give a TOML config with a [sweep] table")
    text = path.read_text()
    raw = parse_toml(text, str(path))
    settings = raw.pop("sweep", None)
    if not isinstance(settings, dict):
        raise CnnlabError(f"{path}: no [sweep] table; add one with metric, trials and a [sweep.space] table")
    try:
        base = from_dict(raw).to_dict()
    except CnnlabError as exc:
        raise CnnlabError(f"{path}: {exc}") from None
    sweep = _settings(path, text, base, settings)
    for param in sweep.space:
        _check_param(sweep, param)
    return sweep


def _settings(path: Path, text: str, base: dict[str, Any], s: dict[str, Any]) -> Sweep:
    for key in s:
        if key not in SETTINGS:
            raise unknown_key(f"sweep.{key}", "unknown key", SETTINGS)
    metric = check_choice("sweep.metric", s.get("metric", "val_accuracy"), METRICS)
    direction = s.get("direction", "minimize" if "loss" in metric else "maximize")
    if direction not in ("maximize", "minimize"):
        raise CnnlabError(f"sweep.direction: {direction!r} is not one of maximize, minimize")
    pruner = check_choice("sweep.pruner", s.get("pruner", "median"), PRUNERS)
    trials, seed = s.get("trials", 20), s.get("seed", 0)
    for name, value in (("trials", trials), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "trials" else 0):
            raise CnnlabError(f"sweep.{name}: expected a whole number >= {1 if name == 'trials' else 0}, "
                              f"got {value!r}")
    space = s.get("space")
    if not isinstance(space, dict) or not space:
        raise CnnlabError('sweep.space: missing or empty; add e.g. "optimizer.momentum" = { low = 0.0, high = 0.95 }')
    params = [_param(key, spec, base) for key, spec in space.items()]
    return Sweep(path=path, text=text, base=base, metric=metric, direction=direction, trials=trials, pruner=pruner,
                 seed=seed, space=params)


def _param(key: str, spec: Any, base: dict[str, Any]) -> Param:
    where = f"sweep.space.{key!r}"
    if not isinstance(spec, dict):
        raise CnnlabError(f"{where}: expected a table like {{ low = 0.0, high = 1.0 }} or {{ choices = [32, 64] }}")
    for k in spec:
        if k not in SPACE_KEYS:
                    raise CnnlabError(f"{where}: unknown setting {k!r}; valid: {', '.join(SPACE_KEYS)}"
                              + suggest(k, list(SPACE_KEYS)))
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise CnnlabError(f"{where}: choices must be a non-empty list and come alone (no low/high)")
        return Param(key=key, kind="choice", choices=choices)
    if "low" not in spec or "high" not in spec:
        raise CnnlabError(f"{where}: give low and high (a range) or choices (a list)")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CnnlabError(f"{where}: {name} must be a number, got {value!r}")
    if not isinstance(log, bool):
        raise CnnlabError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise CnnlabError(f"{where}: low {low} must be below high {high}")
    if log and (step is not None or low <= 0):
        raise CnnlabError(f"{where}: a log range needs low > 0 and no step (Optuna samples log ranges without steps)")
    if step is not None and step <= 0:
        raise CnnlabError(f"{where}: step must be > 0, got {step}")
    current = _lookup(base, key)
    is_int = isinstance(current, int) and not isinstance(current, bool) if current is not None else \
        all(isinstance(v, int) for v in (low, high, step) if v is not None)
    if is_int:
        return Param(key=key, kind="int", low=low, high=high, log=log, step=step)
    return Param(key=key, kind="float", low=float(low), high=float(high), log=log,
                 step=None if step is None else float(step))


def _lookup(node: Any, key: str) -> Any:
    """Return the value at a dotted key (layers by name or index, as ``--set``), or None where there is none."""
    for part in key.split("."):
        if isinstance(node, list):
            names = [item.get("name") for item in node if isinstance(item, dict)]
            if part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif part in names:
                node = node[names.index(part)]
            else:
                return None
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _check_param(sweep: Sweep, param: Param) -> None:
    """Set each end of the range (or each choice) through the config's own override and validation path."""
    ends = param.choices if param.kind == "choice" else [param.low, param.high]
    names = [f"choice {v!r}" for v in ends] if param.kind == "choice" else [f"low {param.low}", f"high {param.high}"]
    for name, value in zip(names, ends):
        try:
            sweep.config_for({param.key: value})
        except CnnlabError as exc:
            raise CnnlabError(f"sweep.space.{param.key!r}: {name}: {exc}") from None


def toml_value(value: Any) -> str:
    """Return ``value`` as TOML text, as ``--set KEY=VALUE`` reads it."""
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


# ---------------------------------------------------------------------------------------------------------
# The study


def open_study(sweep: Sweep, storage: str | None, out: Path, seed_offset: int = 0) -> Any:
    """Create or load the study named after the sweep file in ``storage`` (default: the journal file in ``out``)."""
    from cnnlab.extras import require

    optuna = require("optuna", "sweep", "cnnlab sweep")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # cnnlab prints one line per trial itself
    sampler = optuna.samplers.TPESampler(seed=sweep.seed + seed_offset)
    pruner = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
              "hyperband": optuna.pruners.HyperbandPruner}[sweep.pruner]()
    try:
        return optuna.create_study(study_name=study_name(sweep), storage=make_storage(storage, out), sampler=sampler,
                                   pruner=pruner, direction=sweep.direction, load_if_exists=True)
    except ValueError as exc:  # another direction than the stored study's
        raise CnnlabError(f"the study {study_name(sweep)!r} in {storage_label(storage, out)} does not fit this "
                          f"sweep file ({exc}); use another --out or --storage") from None


def study_name(sweep: Sweep) -> str:
    """The study's name in its storage: the sweep file's stem (the same on every machine)."""
    return sweep.path.stem


def make_storage(storage: str | None, out: Path) -> Any:
    """Return the Optuna storage: the journal file in ``out``, a journal file path, or an RDB URL with heartbeat."""
    import optuna

    if storage and "://" in storage:
        from cnnlab.extras import require

        require("sqlalchemy", "sweep", "cnnlab sweep --storage URL")
        error: Exception | None = None
        for attempt in range(3):  # machines starting together race to create the tables; the loser tries again
            try:
                with warnings.catch_warnings():  # the heartbeat is marked experimental
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_S,
                                                      grace_period=GRACE_S, heartbeat_stale_trial_callback=_retry())
            except ImportError as exc:
                error = exc
                break
            except Exception as exc:  # the driver's and SQLAlchemy's own errors: bad URL, no server
                error = exc
                time.sleep(0.5 * (attempt + 1))
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CnnlabError(f"--storage {_hide_password(storage)}: cannot open it ({first}); "
                          "check the URL, the server and that its driver is installed "
                          "(pip install 'cnnlab[sweep]' brings the PostgreSQL one)")
    path = Path(storage) if storage else out / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _retry() -> Any:
    """Optuna's callback that queues a failed trial again with the same values (at most ``MAX_RETRY`` times)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def storage_label(storage: str | None, out: Path) -> str:
    """The storage as shown to people (and to optuna-dashboard): a file path or a URL without its password."""
    return _hide_password(storage) if storage else str(out / JOURNAL)


def _hide_password(url: str) -> str:
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else url


# ---------------------------------------------------------------------------------------------------------
# Trials that were running in a process that is gone


def owner_tag() -> str:
    """This process as ``host:pid:start``; the start time tells a reused pid apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _alive(tag: str) -> bool:
    host, pid, start = tag.rsplit(":", 2)
    if host != socket.gethostname():
        return True  # another machine's trial: Optuna's heartbeat (RDB storages) deals with it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start == "?" or _start_time(int(pid)) in (start, "?")


def fail_dead_trials(study: Any, out: Path) -> list[int]:
    """Fail the running trials whose process on this machine is gone, and queue each once more (same values).

    Returns:
        The numbers of the trials this call failed (another process may win the race for some).
    """
    import optuna
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag = trial.user_attrs.get("owner")
        if tag and not _alive(tag):
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                continue  # another process failed it first
            _retry()(study, study.trials[trial.number])
            _mark_folder(out, trial.number, "failed")
            failed.append(trial.number)
    return failed


def _mark_folder(out: Path, number: int, state: str) -> None:
    from cnnlab import store
    from cnnlab.files import write_json

    record = out / TRIAL_DIR.format(number) / "trial.json"
    if record.parent.is_dir():
        info = store.read_json(record) if record.is_file() else {"trial": number}
        info["state"] = state
        write_json(record, info)


# ---------------------------------------------------------------------------------------------------------
# Counting


def counts(study: Any) -> dict[str, int]:
    """Trials per state name (``complete``, ``pruned``, ``running``, ``waiting``, ``fail``)."""
    out: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        out[trial.state.name.lower()] = out.get(trial.state.name.lower(), 0) + 1
    return out


def finished(study: Any) -> int:
    """Trials that count towards ``--trials``: complete and pruned ones."""
    c = counts(study)
    return c.get("complete", 0) + c.get("pruned", 0)


class SurplusTrial(Exception):
    """A trial that another process's trial made one too many; it is failed at once and trains nothing."""


# ---------------------------------------------------------------------------------------------------------
# One worker: trials one after another in this process


def work(sweep: Sweep, out: Path, trials: int, storage: str | None, threads: int, seed_offset: int = 0,
         echo: Echo | None = print) -> None:
    """Run trials in this process until the study has ``trials`` complete or pruned ones (all processes together)."""
    from optuna.trial import TrialState

    study = open_study(sweep, storage, out, seed_offset)
    owner, failures = owner_tag(), 0
    while failures < trials:  # a config that fails every time (e.g. a diverging rate) does not loop for ever
        fail_dead_trials(study, out)
        c = counts(study)
        if c.get("complete", 0) + c.get("pruned", 0) + c.get("running", 0) >= trials and not c.get("waiting"):
            return
        outcome: dict[str, Any] = {}
        study.optimize(lambda t: _objective(t, sweep, out, trials, threads, owner, echo, outcome), n_trials=1,
                       catch=(SurplusTrial, CnnlabError))
        if outcome.get("surplus"):
            return
        failures += outcome.get("failed", 0)


def _objective(trial: Any, sweep: Sweep, out: Path, trials: int, threads: int, owner: str,
               echo: Echo | None, outcome: dict[str, Any]) -> float:
    import optuna
    from optuna.trial import TrialState

    from cnnlab.files import write_json
    from cnnlab.run import TrainingInterrupted, train

    trial.set_user_attr("owner", owner)
    study = trial.study
    ahead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                  TrialState.RUNNING)) if t.number < trial.number]
    if len(ahead) >= trials:
        outcome["surplus"] = True
        raise SurplusTrial(f"the study already has {trials} trials")
    values = {p.key: _sample(trial, p) for p in sweep.space}
    cfg = sweep.config_for(values, threads=threads)
    folder = out / TRIAL_DIR.format(trial.number)
    record = {"trial": trial.number, "study": study.study_name, "state": "running", "params": values,
              "metric": sweep.metric, "value": None, "test_accuracy": None, "seconds": None}
    pruning = PruningCallback(trial, "val_accuracy" if sweep.metric == "test_accuracy" else sweep.metric,
                              cfg.train.epochs)
    started = time.perf_counter()
    try:
        run = train(cfg, out=folder, echo=None, progress=False, callbacks=[pruning])
    except TrainingInterrupted:
        record["state"] = "failed"
        write_json(folder / "trial.json", record)
        raise KeyboardInterrupt from None
    except CnnlabError as exc:
        record.update(state="failed", error=str(exc), seconds=time.perf_counter() - started)
        if folder.is_dir():
            write_json(folder / "trial.json", record)
        outcome["failed"] = 1
        _say(echo, f"trial {trial.number:>4} failed: {exc}")
        raise
    history = run.history
    value = history[-1][sweep.metric] if sweep.metric != "test_accuracy" else None
    if sweep.metric == "test_accuracy" or not pruning.pruned:
        record["test_accuracy"] = run.evaluate()["accuracy"] if sweep.metric == "test_accuracy" else None
        value = record["test_accuracy"] if sweep.metric == "test_accuracy" else value
    record.update(state="pruned" if pruning.pruned else "complete", value=value,
                  seconds=time.perf_counter() - started, epochs=len(history))
    write_json(folder / "trial.json", record)
    trial.set_user_attr("seconds", record["seconds"])
    shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in values.items())
    _say(echo, f"trial {trial.number:>4} {record['state']:<8} {sweep.metric} {_fmt(value)} after "
               f"{len(history)} epoch{'s' if len(history) != 1 else ''} ({shown}) {record['seconds']:.1f}s")
    if pruning.pruned:
        raise optuna.TrialPruned(f"pruned after epoch {len(history)}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise CnnlabError(f"trial {trial.number}: {sweep.metric} is not a number")
    return float(value)


def _sample(trial: Any, p: Param) -> Any:
    if p.kind == "choice":
        return trial.suggest_categorical(p.key, p.choices)
    if p.kind == "int":
        return trial.suggest_int(p.key, p.low, p.high, step=p.step or 1, log=p.log)
    return trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _say(echo: Echo | None, line: str) -> None:
    if echo is not None:
        echo(line)


class PruningCallback(Callback):
    """Reports the metric to Optuna after every epoch; stops training after the epoch the pruner rejects.

    The last epoch is reported but never pruned: the trial is finished by then, so it is complete.
    """

    def __init__(self, trial: Any, metric: str, epochs: int):
        self.trial, self.metric, self.epochs, self.pruned = trial, metric, epochs, False

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:  # noqa: D102
        value = logs[self.metric]
        if math.isfinite(value):
            self.trial.report(value, step=epoch)
        if epoch < self.epochs and self.trial.should_prune():
            self.pruned = True
            self.trainer.stop()


# ---------------------------------------------------------------------------------------------------------
# The whole sweep: J worker processes, then the summary


@dataclass
class SweepResult:
    """What a finished sweep left: the folder, the table rows, the best row (None if no trial completed)."""

    out: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    paths: list[Path]


def run_sweep(path: str | Path, trials: int | None = None, jobs: int = 1, storage: str | None = None,
              out: str | Path | None = None, echo: Echo | None = print) -> SweepResult:
    """Run (or continue) a sweep until its study holds ``trials`` complete or pruned trials, then summarize it.

    Args:
        path: the sweep file (a config with a ``[sweep]`` table).
        trials: the total number of trials (default ``sweep.trials``); trials from earlier runs count.
        jobs: trials at once on this machine, each in its own process with ``cores // jobs`` threads.
        storage: an Optuna RDB URL (``postgresql://...``) or a journal file; default ``DIR/study.journal``.
        out: the sweep folder ``DIR`` (default ``sweeps/<file stem>``); trials go to ``DIR/trial-NNNN/``.
        echo: where progress lines go.
    """
    from cnnlab.files import write_text
    from cnnlab.speed import usable_cores

    sweep = load_sweep(path)
    trials = sweep.trials if trials is None else trials
    if trials < 1 or jobs < 1:
        raise CnnlabError(f"--trials {trials} --jobs {jobs}: both must be at least 1")
    out = Path(out) if out is not None else Path("sweeps") / Path(path).stem
    _check_folder(out, sweep)
    study = open_study(sweep, storage, out)  # a storage that cannot be opened leaves nothing behind
    if not (out / SWEEP_FILE).is_file():
        write_text(out / SWEEP_FILE, sweep.text)
    threads = max(1, usable_cores() // jobs)
    dead = fail_dead_trials(study, out)
    _say(echo, f"sweep {study.study_name!r}: {finished(study)} of {trials} trials done; storage "
               f"{storage_label(storage, out)}; {jobs} job{'s' if jobs > 1 else ''} x {threads} thread"
               f"{'s' if threads > 1 else ''}" + (f"; failed the dead trials {dead} (queued again)" if dead else ""))
    _drive(sweep, study, out, trials, jobs, threads, storage, echo)
    return summarize(sweep, study, out, echo)


def _check_folder(out: Path, sweep: Sweep) -> None:
    from cnnlab import store

    if out.exists() and not out.is_dir():
        raise CnnlabError(f"--out {out}: is a file; give a folder for the sweep")
    if (out / store.CONFIG).exists():
        raise CnnlabError(f"--out {out}: is a run folder; give a new folder or an earlier sweep's folder")
    copy_ = out / SWEEP_FILE
    if copy_.is_file() and copy_.read_text() != sweep.text:
        raise CnnlabError(f"--out {out}: holds a sweep of another file ({copy_} differs from {sweep.path}); "
                          "use another --out, or the same sweep file to continue it")


def _drive(sweep: Sweep, study: Any, out: Path, trials: int, jobs: int, threads: int, storage: str | None,
           echo: Echo | None) -> None:
    """Run workers until the study is full; wait for trials other processes still run, fail the dead ones."""
    import optuna

    shared = storage is not None and "://" in storage
    rounds_without_progress = 0
    while finished(study) < trials and rounds_without_progress < 1:
        before = finished(study)
        if jobs == 1:
            work(sweep, out, trials, storage, threads, seed_offset(0, shared), echo)
        else:
            _run_workers(sweep, out, trials, jobs, storage)
        c = counts(study)
        if finished(study) >= trials:
            break
        if c.get("running") and not c.get("waiting"):
            _say(echo, f"waiting for {c['running']} trial(s) running in other processes or on other machines")
            time.sleep(POLL_S)
            fail_dead_trials(study, out)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            continue
        rounds_without_progress = 0 if finished(study) > before else rounds_without_progress + 1


def seed_offset(worker: int, shared: bool) -> int:
    """Workers of one sweep sample with different seeds; on a shared storage each machine's too."""
    return worker + (os.getpid() % 100_000) * 1000 if shared else worker


def _run_workers(sweep: Sweep, out: Path, trials: int, jobs: int, storage: str | None) -> None:
    cmd = [sys.executable, "-m", "cnnlab", "sweep", str(sweep.path), "--out", str(out), "--trials", str(trials),
           "--jobs", str(jobs)] + (["--storage", storage] if storage else [])
    procs = [subprocess.Popen([*cmd, "--worker", str(k)], preexec_fn=_die_with_parent) for k in range(jobs)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:  # they got the same Ctrl-C and stop after their current batch
            p.wait()
        raise
    if any(code == 130 for code in codes):
        raise KeyboardInterrupt
    if any(codes):
        raise CnnlabError(f"a sweep worker ended with exit code {max(codes)}; its error is printed above")


def _die_with_parent() -> None:
    """In a worker: get SIGKILL when the sweep process dies, so no worker trains on alone (Linux only)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def summarize(sweep: Sweep, study: Any, out: Path, echo: Echo | None = print) -> SweepResult:
    """Print the table of all trials and the best; write trials.csv, best.toml and the two PNGs."""
    from cnnlab import plots
    from cnnlab.compare import to_csv
    from cnnlab.files import write_text

    rows = trial_rows(sweep, study)
    paths = [write_text(out / TRIALS_CSV, to_csv(rows))]
    best = _best_row(study, rows)
    _say(echo, format_rows(rows, sweep))
    if best is None:
        _say(echo, "no trial completed yet, so there is no best trial")
    else:
        cfg = sweep.config_for({p.key: best[p.key] for p in sweep.space})
        paths.append(cfg.save(out / BEST))
        shown = ", ".join(f"{p.key}={_fmt(best[p.key])}" for p in sweep.space)
        _say(echo, f"best: trial {best['trial']} ({shown}): {sweep.metric} {_fmt(best['value'])}")
    paths.append(plots.save_figure(plots.sweep_history_figure(rows, sweep.metric, sweep.direction), out / "history.png"))
    paths.append(plots.save_figure(plots.sweep_params_figure(rows, sweep.space, sweep.metric), out / "params.png"))
    for p in paths:
        _say(echo, f"wrote {p}")
    return SweepResult(out=out, rows=rows, best=best, paths=paths)


def trial_rows(sweep: Sweep, study: Any) -> list[dict[str, Any]]:
    """One row per trial that ran (surplus ones left out): number, values, metric, state, seconds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "SurplusTrial" in str(t.system_attrs.get("fail_reason", "")):
            continue
        value = t.value if t.state.name == "COMPLETE" else \
            (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        rows.append({"trial": t.number, **{p.key: t.params.get(p.key) for p in sweep.space}, "value": value,
                     "state": t.state.name.lower(), "seconds": t.user_attrs.get("seconds")})
    return rows


def _best_row(study: Any, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    try:
        number = study.best_trial.number
    except ValueError:
        return None
    return next(r for r in rows if r["trial"] == number)


def format_rows(rows: list[dict[str, Any]], sweep: Sweep) -> str:
    """The trials as aligned text."""
    heads = ["trial", *(p.key for p in sweep.space), sweep.metric, "state", "seconds"]
    body = [[str(r["trial"]), *(_fmt(r[p.key]) for p in sweep.space), _fmt(r["value"]), r["state"],
             "-" if r["seconds"] is None else f"{r['seconds']:.1f}"] for r in rows]
    widths = [max(len(line[i]) for line in [heads, *body]) for i in range(len(heads))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in [heads, *body])
