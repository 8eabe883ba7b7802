"""Where the network looks: gradient saliency and Grad-CAM for single images.

Gradient saliency is ``|d logit_c / d pixel|`` for the class ``c`` explained (Simonyan et al. 2013). Grad-CAM
(Selvaraju et al. 2017) weighs each map of a conv layer by the mean gradient of ``logit_c`` over that map,
sums the weighted maps, keeps the positive part and scales the result up to the input's 28 x 28 pixels.
Only the input's and the layer's gradients are taken: the weights' ``.grad`` stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab import native
from cnnlab.device import model_device
from cnnlab.errors import CnnlabError
from cnnlab.inspection.activations import check_layer, eval_mode, forward_from, last_conv_layer
from cnnlab.model import CnnModel


@dataclass
class Saliency:
    """Saliency of a batch of images.

    Attributes:
        layer: the conv layer Grad-CAM used.
        targets: the class explained per image (N,): the predicted one unless given.
        probabilities: softmax outputs (N, classes).
        gradient: ``|d logit / d input|`` (N, 28, 28).
        grad_cam: Grad-CAM scaled up to the input size (N, 28, 28), >= 0.
        grad_cam_maps: Grad-CAM at the layer's own resolution (N, H, W).
    """

    layer: str
    targets: np.ndarray
    probabilities: np.ndarray
    gradient: np.ndarray
    grad_cam: np.ndarray
    grad_cam_maps: np.ndarray


def saliency(model: CnnModel, x: torch.Tensor, targets: list[int] | np.ndarray | None = None,
             layer: str | None = None) -> Saliency:
    """Compute gradient saliency and Grad-CAM.

    Args:
        model: the network (train/eval mode restored; weight gradients untouched).
        x: normalized images (N, 1, 28, 28); a few at a time (it keeps the graph of one batch). They go to the
            model's device; the maps come back as CPU arrays.
        targets: the class to explain per image (default: the predicted class).
        layer: the conv layer for Grad-CAM (default: the last conv layer).

    Returns:
        Both maps per image, with the class explained and the probabilities.
    """
    layer = check_layer(model, layer) if layer is not None else last_conv_layer(model)
    if len(model.output_shapes[layer]) != 3:
        raise CnnlabError(f"Grad-CAM needs a layer with maps; {layer} has output {model.output_shapes[layer]}")
    native.prepare_for(model_device(model))
    with eval_mode(model), torch.enable_grad():
        inputs = x.detach().to(model_device(model), copy=True).requires_grad_(True)
        maps = model.activation(inputs, layer)  # (N, C, H, W)
        logits = forward_from(model, maps, layer)
        chosen = logits.argmax(dim=1) if targets is None else torch.as_tensor(np.asarray(targets)).to(logits.device)
        picked = logits[torch.arange(len(chosen), device=logits.device), chosen].sum()
        grad_input, grad_maps = torch.autograd.grad(picked, (inputs, maps))
    weights = grad_maps.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    cam = torch.relu((weights * maps.detach()).sum(dim=1))  # (N, H, W)
    big = F.interpolate(cam[:, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    return Saliency(layer, chosen.cpu().numpy(), torch.softmax(logits.detach(), dim=1).cpu().numpy(),
                    grad_input.abs()[:, 0].cpu().numpy(), big.clamp_min(0).cpu().numpy(), cam.cpu().numpy())
