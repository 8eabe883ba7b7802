"""Predictions and loss/accuracy over in-memory tensors, in inference mode.

Batches of 256: larger ones are slower on a CPU, since their activations outgrow the caches (10,000 test
images through the seed model: 0.30 s in batches of 256, 0.77 s in batches of 2,000).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnlab import native
from cnnlab.device import model_device


def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256,
                   memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Return the model's logits (N, classes) for images ``x`` (N, 1, 28, 28), leaving its train/eval mode as it was.

    The images go to the model's device once and are sliced there; the logits stay on that device.
    """
    device = model_device(model)
    native.prepare_for(device)
    x = x.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            parts = [model(x[i:i + batch_size].contiguous(memory_format=memory_format))
                     for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, 0, device=device)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             label_smoothing: float = 0.0,
             memory_format: torch.memory_format = torch.contiguous_format) -> tuple[float, float]:
    """Return (mean cross-entropy loss, accuracy) of ``model`` on images ``x`` with labels ``y``."""
    return scores(predict_logits(model, x, batch_size, memory_format), y, label_smoothing)


def scores(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> tuple[float, float]:
    """Return (mean cross-entropy loss, accuracy) of ``logits`` (N, classes) for labels ``y``."""
    if len(logits) == 0:
        return float("nan"), float("nan")
    y = y.to(logits.device)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    accuracy = (logits.argmax(1) == y).double().mean()
    return float(loss), float(accuracy)
