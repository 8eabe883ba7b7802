"""The ``cnnlab`` command: parses arguments and calls the library; user errors become one line and exit 2."""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, NoReturn

from cnnlab.errors import CnnlabError

EXIT_NO_SPACE = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEMO_PRESET = "fast"  # the main job: the speed recipe, a 99.4%+ model in about half a minute

_COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}
_QUICK_EXIT: set[str] = set()  # commands that end without the interpreter's teardown (see run)

# Modules that add subcommands: each has add_parsers(sub) and registers its handlers with @command.
_COMMAND_MODULES: list[str] = ["cnnlab.cli_interop", "cnnlab.cli_inspect", "cnnlab.cli_experiments",
                              "cnnlab.cli_lab"]


def command(name: str, quick_exit: bool = False) -> Callable:
    """Register a function as the handler of ``cnnlab NAME``: it returns the exit code, or None for 0. With
    ``quick_exit``, a command that only reads and writes whole files ends without the interpreter's teardown
    (see ``run``), and its process collects cycles less often (``_fewer_collections``)."""

    def register(func: Callable) -> Callable:
        _COMMANDS[name] = func
        if quick_exit:
            _QUICK_EXIT.add(name)
        return func

    return register


class _Version(argparse.Action):
    """``--version``: the version line, with the git commit when cnnlab runs from a checkout (asked only then)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from cnnlab.version import version_line

        print(version_line())
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2, like every other user error."""

    def error(self, message: str) -> None:  # noqa: D102
        raise CnnlabError(f"{self.prog}: {message} (see {self.prog} --help)")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a built-in preset: seed, tiny, fast, fashion (default: seed)")
    src.add_argument("--config", type=Path, help="a TOML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set optimizer.momentum=0.9 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for all subcommands."""
    parser = _Parser(prog="cnnlab", description="Build, train fast and look inside small CNNs on the real MNIST.")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version (and the git commit of a "
                        "checkout) and exit")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("data", help="get a data set (MNIST by default), verify it and show its checksums")
    p.add_argument("--dataset", default="mnist", help="mnist (default), fashion-mnist, or idx (your own files in --from)")
    p.add_argument("--from", dest="source", type=Path, help="a folder with the four IDX files (gz or not)")

    p = sub.add_parser("config", help="print the fully resolved config as TOML")
    _add_config_args(p)

    p = sub.add_parser("summary", help="print the model's layer table")
    _add_config_args(p)

    p = sub.add_parser("train", help="train a new run into a run folder")
    _add_config_args(p)
    p.add_argument("--out", type=Path, help="the run folder to create (default: runs/<preset>, never overwritten)")
    p.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, only the epoch lines")

    p = sub.add_parser("resume", help="train an existing run N more epochs, exactly where it stopped")
    p.add_argument("run", type=Path, help="the run folder")
    p.add_argument("--epochs", type=int, required=True, help="how many more epochs")
    p.add_argument("--device", help="auto, cpu or cuda for this session (default: the run's train.device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, only the epoch lines")

    p = sub.add_parser("reset", help="put a run back to its initial weights, empty optimizer state, step 0")
    p.add_argument("run", type=Path, help="the run folder")

    for module in _COMMAND_MODULES:
        importlib.import_module(module).add_parsers(sub)

    p = sub.add_parser("demo", help="the main job: fetch the data, train, write the pictures and the report")
    p.add_argument("--out", type=Path, help="the run folder (default: runs/demo, with a free suffix)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    return parser


def main(argv: list[str] | None = None, console: bool = False) -> int:
    """Run the command line; return the exit code. ``console``: called by ``run``, the process is the command's
    own (tests and notebooks leave it False: their process's settings stay theirs)."""
    from cnnlab.files import NO_SPACE_ERRNOS, NoSpaceError, no_space_message

    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit: the write fails (EFBIG) and is reported
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 0
        if console and args.command in _QUICK_EXIT:
            _fewer_collections()
        return _COMMANDS[args.command](args) or 0
    except CnnlabError as exc:
        if debug:
            raise
        print(f"cnnlab: error: {exc}", file=sys.stderr)
        return EXIT_NO_SPACE if isinstance(exc, NoSpaceError) else EXIT_USER_ERROR
    except OSError as exc:  # a write outside files.atomic_write (a library's own file): the same one line
        if debug or exc.errno not in NO_SPACE_ERRNOS:
            raise
        print(f"cnnlab: error: {no_space_message(exc.filename)}", file=sys.stderr)
        return EXIT_NO_SPACE
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> NoReturn:
    """The ``cnnlab`` console script and ``python -m cnnlab``: ``main()``, then the process's exit.

    After a command registered with ``quick_exit`` (the inspection commands), the process ends once its exit
    handlers have run and its output is flushed, without the interpreter's teardown, which frees every object of
    torch and matplotlib one by one: 0.8-1.4 s of ``cnnlab report``'s 5-6 s, 0.3 s of ``cnnlab evaluate``'s
    1.1 s (AMD EPYC, 2 cores). Their files are written whole and closed by then; ``main()`` itself, as tests and
    notebooks call it, never exits. Under a profiler or a debugger (``python -m cProfile -m cnnlab ...``, which
    writes its figures after the command returns) the exit is the normal one.
    """
    _numpy_blas_on_one_thread()
    code = main(console=True)
    name = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if name in _QUICK_EXIT and sys.getprofile() is None and sys.gettrace() is None:
        atexit._run_exitfuncs()  # what a normal exit runs first (logging's flush, finalizers, ...)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _fewer_collections() -> None:
    """Let Python's cycle collector run after 50,000 new objects instead of 700, in the process of a short
    command (the ``quick_exit`` ones). Each full collection walks every object torch and matplotlib made at
    import, though a command's cycles are few and it ends within seconds: `cnnlab report` spent 0.44-0.52 s in
    collections (4 full ones), 0.16 s so; `cnnlab patterns` 0.08-0.12 s, 0.03 s (AMD EPYC Zen 4); its peak
    memory did not grow. Training keeps Python's defaults."""
    gc.set_threshold(50_000, 20, 10)


def _numpy_blas_on_one_thread() -> None:
    """Ask numpy's OpenBLAS for one thread in this process and its children, where the user set no number.

    OpenBLAS starts a thread per core when numpy is imported and keeps them spinning a while after the start
    and after each call, on cores a command's other process needs (0.1 core-second per import here); cnnlab runs
    numpy's BLAS on one thread anyway (``numpy_model.one_blas_thread``). Only on x86, where torch's BLAS is MKL:
    elsewhere torch may use an OpenBLAS that reads the same variable."""
    import platform

    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _load_config(args: argparse.Namespace):
    from cnnlab.config import load_config

    return load_config(preset=args.preset, path=args.config, overrides=args.overrides)


def echo(line: str = "") -> None:
    """Print one line of a command's output, flushed (the one output helper of every ``cli_*`` module)."""
    print(line, flush=True)


def warn(line: str) -> None:
    """Print a one-line warning on stderr (``cnnlab: warning: ...``)."""
    print(f"cnnlab: warning: {line}", file=sys.stderr, flush=True)


@command("data")
def _data(args: argparse.Namespace) -> None:
    from cnnlab.data import DATASETS, load_dataset

    dataset = getattr(args, "dataset", "mnist")
    data = load_dataset(dataset, source=args.source, log=lambda msg: echo(f"  {msg}"))
    title = DATASETS[dataset].title if dataset in DATASETS else f"IDX folder {args.source}"
    echo(f"{title} {'read' if dataset not in DATASETS else 'verified'} ({data.origin}):")
    counts = {"train-images-idx3-ubyte": len(data.train_images), "train-labels-idx1-ubyte": len(data.train_labels),
              "t10k-images-idx3-ubyte": len(data.test_images), "t10k-labels-idx1-ubyte": len(data.test_labels)}
    for name, count in counts.items():
        what = "images" if "images" in name else "labels"
        echo(f"  {name:<26} {count:>6} {what}  md5 {data.md5[name]}")
    echo(f"  classes: {', '.join(data.classes)}")


@command("config", quick_exit=True)
def _config(args: argparse.Namespace) -> None:
    sys.stdout.write(_load_config(args).to_toml())


@command("summary", quick_exit=True)
def _summary(args: argparse.Namespace) -> None:
    from cnnlab.layers.table import format_table  # torch-free: the table comes from the layer kinds

    echo(format_table(_load_config(args).model.layers))


def _train_call(func: Callable, *args, **kwargs) -> int:
    """Run a training function; Ctrl-C ends with exit 130 and says how to resume."""
    from cnnlab.run import TrainingInterrupted

    try:
        func(*args, **kwargs)
    except TrainingInterrupted as exc:
        print(f"cnnlab: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


@command("train")
def _train(args: argparse.Namespace) -> int:
    from cnnlab.run import default_out, train

    cfg = _load_config(args)
    source = args.config if args.config else (args.preset or "seed")
    return _train_call(train, cfg, out=args.out or default_out(source), epochs=args.epochs, echo=echo,
                       progress=not args.no_progress)


@command("resume")
def _resume(args: argparse.Namespace) -> int:
    from cnnlab.run import resume

    return _train_call(resume, args.run, args.epochs, echo=echo, progress=not args.no_progress,
                       device=args.device)


@command("reset")
def _reset(args: argparse.Namespace) -> None:
    from cnnlab.run import reset

    run = reset(args.run)
    echo(f"{run.path} is back at its initial weights, with an empty optimizer state and step 0")


@command("demo")
def _demo(args: argparse.Namespace) -> int:
    from cnnlab.layers.table import format_table
    from cnnlab.report import write_report
    from cnnlab.run import default_out, train

    _data(argparse.Namespace(source=None))
    overrides = [f"train.epochs={args.epochs}"] if args.epochs is not None else []
    cfg = _load_config(argparse.Namespace(preset=DEMO_PRESET, config=None, overrides=overrides))
    echo("")
    echo(f"Training the {DEMO_PRESET} preset for {cfg.train.epochs} epoch{'s' if cfg.train.epochs != 1 else ''}:")
    echo(format_table(cfg.model.layers))
    out = args.out or default_out("demo")
    code = _train_call(train, cfg, out=out, echo=echo)
    if code:
        return code
    echo("")
    echo("Writing the pictures and the report:")
    write_report(out, echo=echo)  # its last line names the page
    out = Path(out)
    echo(f"Draw digits for it, look at every map, browse its pictures: "
         f"cnnlab lab --root {out.parent} --run {out.name} --open")
    return 0


if __name__ == "__main__":
    # Run as a script, this file is a second copy of the module; the registered commands live in cnnlab.cli.
    from cnnlab.cli import main as _main

    sys.exit(_main())
