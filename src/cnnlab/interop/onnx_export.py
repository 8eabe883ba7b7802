"""Export a run's model to ONNX and check the file with onnxruntime right away.

The graph takes the normalized images the model was trained on, input ``images`` (N, 1, 28, 28) float32 with a
dynamic batch axis, and returns ``probabilities`` (N, classes): the softmax sits inside the graph. The run's
normalizer travels in the file's metadata (``cnnlab.normalizer``), so a consumer can prepare raw pixels.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab import __version__
from cnnlab.errors import CnnlabError
from cnnlab.extras import require
from cnnlab.files import atomic_write
from cnnlab.run import load

OPSET = 18
CHECK_IMAGES = 256
TOLERANCE = 1e-5  # max abs difference of the probabilities, onnxruntime vs torch


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how well onnxruntime reproduced the torch probabilities."""

    path: Path
    opset: int
    images: int  # test images the check ran on
    max_abs_diff: float
    tolerance: float
    normalizer: str  # the normalize mode the graph's input expects
    onnxruntime: str
    seconds: float


class _Probabilities(nn.Module):
    """The model with the softmax on top: the exported graph returns probabilities, not logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.softmax(self.model(images), dim=1)


def export_onnx(run_dir: str | Path, path: str | Path, check_images: int = CHECK_IMAGES,
                tolerance: float = TOLERANCE) -> ExportReport:
    """Write a run's model as an ONNX file and check it with onnxruntime on the run's test images.

    Args:
        run_dir: a run folder (trained or imported).
        path: the ``.onnx`` file to write; written only if the check passes.
        check_images: how many of the run's test images the check uses.
        tolerance: the largest accepted absolute difference between onnxruntime's and torch's probabilities.

    Returns:
        An ``ExportReport`` with the measured difference.

    Raises:
        CnnlabError: not a run folder, the target is a folder, or onnxruntime disagrees beyond ``tolerance``.
    """
    for module in ("onnx", "onnxruntime", "onnxscript"):  # torch's exporter needs onnxscript
        require(module, "onnx", "ONNX export")
    started = time.perf_counter()
    path = Path(path)
    if path.is_dir():
        raise CnnlabError(f"--onnx {path}: is a folder; give a file name such as model.onnx")
    run = load(run_dir, device="cpu")  # exported from the CPU, where onnxruntime checks it
    images = run.data().test_x[:check_images].contiguous()
    wrapper = _Probabilities(run.model).eval()
    with torch.inference_mode():
        expected = wrapper(images).numpy()
    report: dict[str, float] = {}

    def write(tmp: Path) -> None:
        _export(wrapper, tmp)
        _add_metadata(tmp, run)
        report["diff"] = _check(tmp, images.numpy(), expected)
        if not report["diff"] <= tolerance:
            raise CnnlabError(f"onnxruntime's probabilities differ from torch's by up to {report['diff']:.2e} "
                              f"(more than {tolerance:.0e}) on {len(images)} test images; {path} was not written")

    atomic_write(path, write)
    import onnxruntime

    return ExportReport(path, OPSET, len(images), report["diff"], tolerance, run.normalizer.mode,
                        onnxruntime.__version__, time.perf_counter() - started)


def _export(wrapper: nn.Module, target: Path) -> None:
    example = torch.zeros(2, 1, 28, 28)
    batch = torch.export.Dim("batch")
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # "torchvision is not installed" and other exporter chatter is not for the user
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (example,), str(target), input_names=["images"],
                              output_names=["probabilities"], dynamic_shapes=({0: batch},), opset_version=OPSET,
                              dynamo=True, verbose=False)
    finally:
        onnx_log.setLevel(level)


def _add_metadata(target: Path, run: object) -> None:
    import onnx

    model = onnx.load(str(target))
    meta = {"cnnlab.version": __version__, "cnnlab.run": str(run.path),
            "cnnlab.normalizer": json.dumps(run.normalizer.to_dict()),
            "cnnlab.input": "images: (N, 1, 28, 28) float32, normalized with cnnlab.normalizer: (pixels - mean) / std"}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"cnnlab {__version__} model from {run.path}; output: class probabilities"
    onnx.save(model, str(target))


def _check(target: Path, images: np.ndarray, expected: np.ndarray) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"images": images})[0]
    if got.shape != expected.shape:
        raise CnnlabError(f"onnxruntime returned shape {got.shape}, expected {expected.shape}; the export is broken")
    return float(np.abs(got - expected).max())
