"""``cnnlab activations | filters | patterns | evaluate | saliency | report``: parse, call ``cnnlab.report``, print."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnnlab import child_process
from cnnlab.cli import command, echo, warn
from cnnlab.errors import CnnlabError
from cnnlab.schema import check_choice


def parse_indices(text: str, option: str = "--image") -> list[int]:
    """Parse ``"19"``, ``"19,20,21"`` or ``"0-15"`` (and mixes like ``"0-3,9"``) into a list of integers."""
    values: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            first, sep, last = part.partition("-") if not part.startswith("-") else (part, "", "")
            lo, hi = int(first), int(last) if sep else int(first)
            if hi < lo:
                raise ValueError
            values.extend(range(lo, hi + 1))
    except ValueError:
        raise CnnlabError(f"{option} {text!r}: expected whole numbers >= 0 like 19, 19,20,21 or 0-15") from None
    if any(v < 0 for v in values):
        raise CnnlabError(f"{option} {text!r}: indices start at 0")
    return values


def add_parsers(sub: Any) -> None:
    """Add the inspection subcommands to the ``cnnlab`` parser."""
    p = sub.add_parser("activations", help="grid of every map's activation of a layer for an image (+ .npz)")
    _run_arg(p, layer="a layer name (see cnnlab summary), or 'all' for every conv/pool")
    p.add_argument("--image", required=True, help="index into the set: 19, or several: 19,20,21 or 19-21")
    _split_arg(p)
    p.add_argument("--cols", type=int, default=8, help="maps per row (default 8)")
    p.add_argument("--cmap", default="viridis", help="matplotlib colour map (default viridis)")
    p.add_argument("--scale", action="store_true",
                   help="standardize and clip each map (the articles' option); default: raw values, one scale")
    _out_arg(p)

    p = sub.add_parser("filters", help="per map, an input found by gradient ascent that maximizes it (+ .npz)")
    _run_arg(p, layer="a layer name, e.g. Conv2D_2")
    p.add_argument("--maps", help="which maps: 0-15 or 0,3,7 (default: all)")
    p.add_argument("--steps", type=int, default=None, help="gradient-ascent steps (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default 0)")
    p.add_argument("--cols", type=int, default=8, help="patterns per row (default 8)")
    _out_arg(p)

    p = sub.add_parser("patterns", help="mean activation of every map per class; nearest-class-pattern accuracy")
    _run_arg(p, layer="a layer name, e.g. Conv2D_3")
    p.add_argument("--cols", type=int, default=8, help="maps per row in the per-class pictures (default 8)")
    p.add_argument("--cmap", default="viridis", help="matplotlib colour map (default viridis)")
    _out_arg(p, folder=True)

    p = sub.add_parser("evaluate", help="test accuracy, loss, per-class accuracy, confusion matrix, mistakes")
    _run_arg(p)
    p.add_argument("--mistakes", type=int, default=24, help="images in the gallery of mistakes (default 24)")
    _out_arg(p, folder=True)

    p = sub.add_parser("saliency", help="gradient saliency and Grad-CAM for an image (+ .npz)")
    _run_arg(p)
    p.add_argument("--image", required=True, help="index into the set: 19, or several: 19,20,21")
    _split_arg(p)
    p.add_argument("--layer", help="the conv layer for Grad-CAM (default: the last conv layer)")
    _out_arg(p)

    p = sub.add_parser("report", help="write RUN/report.html: one page with every picture embedded")
    _run_arg(p)


def _run_arg(p: argparse.ArgumentParser, layer: str = "") -> None:
    """The run folder and ``--device``; with ``layer`` (its help), also the required ``--layer``."""
    p.add_argument("run", type=Path, help="the run folder")
    p.add_argument("--device", default="auto",
                   help="where the model runs: auto (CUDA where torch sees a GPU, else the CPU), cpu or cuda")
    if layer:
        p.add_argument("--layer", required=True, help=layer)


def _load(args: argparse.Namespace) -> Any:
    """The run of ``args.run``, loaded onto ``--device``."""
    from cnnlab.device import resolve_device
    from cnnlab.run import load

    return load(args.run, device=resolve_device(args.device, "--device"))


def _folder(args: argparse.Namespace) -> Any:
    """The run folder of ``args.run``, read without torch; its model is loaded onto ``--device`` only where a
    result is not kept in the run's cache. A device other than auto or cpu is checked at once (a GPU asked
    for must be there, whatever the cache holds)."""
    from cnnlab.report import as_folder

    device = args.device
    if device not in ("auto", "cpu"):
        from cnnlab.device import resolve_device

        device = resolve_device(device, "--device")
    return as_folder(args.run, device)


SPLITS = ("test", "train")


def _split_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=SPLITS, help="the run's test or training set, in the run's own order "
                                                   "(default test)")
    # The spelling of the release before; --set means a config override in every other command.
    p.add_argument("--set", dest="old_split", metavar="test|train", help=argparse.SUPPRESS)


def _split(args: argparse.Namespace) -> str:
    """The image set asked for: ``--split``, or the deprecated ``--set test|train`` (with a warning)."""
    if args.old_split is None:
        return args.split or "test"
    if args.split is not None:
        raise CnnlabError("give --split only (--set test|train is its deprecated spelling)")
    check_choice("--set", args.old_split, SPLITS)
    warn(f"--set {args.old_split} is deprecated here and goes in the next release; use --split {args.old_split} "
         "(--set KEY=VALUE means a config override elsewhere)")
    return args.old_split


def _out_arg(p: argparse.ArgumentParser, folder: bool = False) -> None:
    where = "a folder" if folder else "FILE.png or a folder"
    p.add_argument("--out", type=Path, help=f"{where} for the output (default: RUN/inspect/)")


def _pictures(name: str) -> Callable:
    """Register ``cnnlab NAME`` for a function ``args -> Written`` that makes pictures of a run and prints what
    they show; the command then lists the files written."""

    def register(func: Callable) -> Callable:
        @command(name, quick_exit=True)
        def run_command(args: argparse.Namespace) -> None:
            for path in func(args).paths:
                echo(f"wrote {path}")

        return func

    return register


@_pictures("activations")
def _activations(args: argparse.Namespace) -> Any:
    from cnnlab.report import activation_pictures

    return activation_pictures(_load(args), args.layer, parse_indices(args.image), _split(args), cols=args.cols,
                               cmap=args.cmap, scale=args.scale, out=args.out)


@_pictures("filters")
def _filters(args: argparse.Namespace) -> Any:
    from cnnlab.inspection.filters import STEPS
    from cnnlab.report import filter_pictures

    maps = parse_indices(args.maps, "--maps") if args.maps else None
    steps = STEPS if args.steps is None else args.steps
    written = filter_pictures(_load(args), args.layer, maps, steps=steps, seed=args.seed, cols=args.cols, out=args.out)
    s = written.summary
    echo(f"{'map':>4}  {'pattern':>9}  {'test mean':>9}  {'ratio':>7}  {'test max':>9}  {'ratio to max':>12}")
    for row in zip(s["maps"], s["activation"], s["test_mean"], s["ratio"], s["test_max"], s["ratio_max"]):
        m, a, mean, r, top, rmax = row
        echo(f"{m:>4}  {a:9.4g}  {mean:9.4g}  {r:7.3g}  {top:9.4g}  {rmax:12.3g}")
    live = np.asarray(s["test_max"]) > 0
    ratio = np.asarray(s["ratio"])[live]
    if live.any():
        echo(f"{s['layer']}: {len(s['maps'])} patterns in {s['seconds']:.1f} s; pattern / average test image: "
              f"min {ratio.min():.3g}, median {np.median(ratio):.3g}; the pattern beats every test image on "
              f"{int((np.asarray(s['ratio_max'])[live] > 1).sum())} of {int(live.sum())} maps"
              + (f" ({int((~live).sum())} maps no test image activates)" if (~live).any() else ""))
    return written


@_pictures("patterns")
def _patterns(args: argparse.Namespace) -> Any:
    # the class centroids' pass starts before this process's imports (see child_process), where none are kept
    with child_process.started_early("keep_centroids", args.run, args.layer,
                                     unless=lambda: _kept(args.run, "centroids", args.layer)):
        from cnnlab.report import pattern_pictures

        written = pattern_pictures(_folder(args), args.layer, cols=args.cols, cmap=args.cmap, out=args.out)
    s = written.summary
    echo(f"{s['layer']}: nearest-class-pattern classifier (cosine to the class means of the map means, fitted on "
          f"{s['train_images']} training images): test accuracy {s['nearest_accuracy']:.4f}; "
          f"the network: {s['network_accuracy']:.4f}")
    return written


def _kept(run: Path, kind: str, layer: str) -> bool:
    """Whether the run's cache holds results of ``kind`` for ``layer`` (of any weights)."""
    from cnnlab.inspection import cache

    return cache.holds(run, kind, layer)


@_pictures("evaluate")
def _evaluate(args: argparse.Namespace) -> Any:
    # the test pass starts before this process's imports (see child_process), where no logits are kept
    with child_process.started_early("keep_test_logits", args.run,
                                     unless=lambda: _kept(args.run, "testpass", "logits-model")):
        from cnnlab.report import evaluation_pictures

        written = evaluation_pictures(_folder(args), mistakes=args.mistakes, out=args.out)
    s = written.summary
    echo(f"test: accuracy {s['accuracy']:.4f} ({s['correct']} of {s['images']}), loss {s['loss']:.4f}")
    echo("per class: " + "  ".join(f"{c} {'-' if a is None else f'{a:.4f}'}"
                                    for c, a in s["per_class_accuracy"].items()))
    return written


@_pictures("saliency")
def _saliency(args: argparse.Namespace) -> Any:
    from cnnlab.report import saliency_pictures

    split = _split(args)
    written = saliency_pictures(_load(args), parse_indices(args.image), split, layer=args.layer, out=args.out)
    s = written.summary
    for i, label, pred, p in zip(s["indices"], s["label_names"], s["predicted_names"], s["probability"]):
        echo(f"{split} image {i}: label {label}, predicted {pred} (p = {p:.3f}); Grad-CAM on {s['layer']}")
    return written


@command("report", quick_exit=True)
def _report(args: argparse.Namespace) -> None:
    with child_process.started_early("write_child_sections", args.run, lines=True, nice=child_process.NICE):
        from cnnlab.report import write_report

        write_report(_folder(args), echo=echo)
