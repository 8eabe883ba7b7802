"""The ``import-keras`` and ``export`` subcommands: parse arguments, call ``cnnlab.interop``, print the result."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.cli import command, echo

NORMALIZE_TEXT = {"unit": "pixels / 255", "none": "raw pixel values 0..255",
                  "pixel": "per-pixel standardization fitted on the 60,000 MNIST training images",
                  "global": "one mean and std over all training pixels"}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``import-keras`` and ``export`` to the ``cnnlab`` command."""
    p = sub.add_parser("import-keras", help="turn a Keras .keras or .h5 model file into a run folder (no TensorFlow)")
    p.add_argument("model", type=Path, help="the Keras file saved with model.save(...): MODEL.keras or MODEL.h5")
    p.add_argument("--out", type=Path, help="the run folder to create (default: runs/<file name>, never overwritten)")
    p.add_argument("--normalize", default="unit",
                   help="what the Keras model expects as input: unit = pixels/255 (default), none = raw 0..255, "
                        "pixel = per-pixel standardization (fitted on the MNIST training images)")

    p = sub.add_parser("export", help="write a run's model as ONNX (checked with onnxruntime), or runs as "
                                      "TensorBoard event files")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                   help="the run folder (--tensorboard: several, globs, or a folder of runs such as a sweep)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--onnx", type=Path, metavar="FILE.onnx", help="the ONNX file to write (one run)")
    what.add_argument("--tensorboard", type=Path, metavar="DIR",
                      help="a TensorBoard log folder: one sub-folder of event files per run")



@command("import-keras")
def _import_keras(args: argparse.Namespace) -> None:
    from cnnlab.interop import import_keras
    from cnnlab.interop.keras_import import FORMAT_LABELS
    from cnnlab.model import build_model, count_parameters

    report = import_keras(args.model, out=args.out, normalize=args.normalize)
    cfg = report.config
    version = f", Keras {report.keras_version}" if report.keras_version else ""
    echo(f"imported {report.source} ({FORMAT_LABELS[report.format]}{version}) in {report.seconds:.2f} s "
          f"-> {report.run_dir}")
    echo(f"  sha256 {report.sha256}")
    model = build_model(cfg.model.layers, init=cfg.model.init)
    echo(f"  layers: {', '.join(model.layer_names)} ({count_parameters(model):,} parameters)")
    echo(f"  input: {NORMALIZE_TEXT[report.normalize]} (--normalize {report.normalize})")
    echo(f"  training config: {_spec_text(cfg.optimizer, 'name')}; schedule {_spec_text(cfg.schedule, 'name')}; "
          f"regularizer {_spec_text(cfg.regularizer, 'kind')}")
    for note in report.notes:
        echo(f"  note: {note}")
    echo(f"next: cnnlab summary --config {report.run_dir / 'config.toml'}")
    echo(f"      cnnlab export {report.run_dir} --onnx {report.source.stem}.onnx")


@command("export")
def _export(args: argparse.Namespace) -> int:
    from cnnlab.errors import CnnlabError
    from cnnlab.interop import export_onnx

    if args.tensorboard is not None:
        from cnnlab.cli_experiments import export_tensorboard

        return export_tensorboard(args.runs, args.tensorboard)
    if len(args.runs) != 1:
        raise CnnlabError(f"export --onnx writes one run's model; got {len(args.runs)} runs")
    report = export_onnx(args.runs[0], args.onnx)
    echo(f"wrote {report.path} in {report.seconds:.2f} s: ONNX opset {report.opset}; input 'images' "
          f"(N, 1, 28, 28) float32, already normalized ({NORMALIZE_TEXT.get(report.normalizer, report.normalizer)}; "
          "mean and std in the metadata 'cnnlab.normalizer'); output 'probabilities' (N, classes)")
    echo(f"checked with onnxruntime {report.onnxruntime} on {report.images} test images: probabilities equal to "
          f"{report.tolerance:.0e} (max abs difference {report.max_abs_diff:.1e})")
    return 0


def _spec_text(spec: dict, key: str) -> str:
    rest = ", ".join(f"{k} {v}" for k, v in spec.items() if k not in (key, "flavour"))
    return f"{spec[key]} ({rest})" if rest else str(spec[key])
