"""Filter patterns: for each map, an input image that maximizes the map's mean activation (gradient ascent).

The recipe follows the usual feature-visualization practice (the Keras example "visualizing what convnets
learn", lucent): start from grey noise, take Adam steps on the input, jitter the image by a pixel each step
(so a pattern cannot hinge on one exact pixel grid), blur it a little every few steps and pull it towards a
dark background with a small L2 term. On top of that every pixel stays inside the range the training images
had at that pixel, so the pattern is an input the network could have seen: a corner pixel that is 0 in every
training image stays 0 instead of growing without bound.

All maps of a layer are optimized together: image ``i`` of one batch serves map ``i``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab import native
from cnnlab.device import model_device
from cnnlab.errors import CnnlabError
from cnnlab.inspection import cache
from cnnlab.inspection.activations import check_layer, eval_mode, frozen_weights
from cnnlab.model import CnnModel, layer_table
from cnnlab.speed import threads as torch_threads
from cnnlab.speed import usable_cores

STEPS = 128
LR = 0.05  # Adam step on the unit pixel scale (0 = darkest, 1 = brightest value seen at that pixel)
L2 = 0.02  # pull towards the dark background, relative to the objective's own scale
BLUR_EVERY = 8  # steps between two light blurs
JITTER = 1  # pixels of random shift per step
THREADS = 1  # see filter_patterns: many small steps run fastest on one thread
START = (0.3, 0.7)  # the starting noise, uniform on the unit pixel scale: grey enough that the ReLUs respond


@dataclass
class FilterPatterns:
    """Gradient-ascent patterns of one layer.

    Attributes:
        layer: the layer name.
        maps: the map indices (M,).
        inputs: the patterns as network inputs, normalized float32 (M, 1, 28, 28).
        pixels: the same patterns in pixel values 0..255 (float32, (M, 28, 28)), for display.
        activation: each pattern's mean activation of its own map (M,).
        steps: gradient-ascent steps taken.
        seconds: how long getting them took (computing, or reading them back from the run folder's cache).
    """

    layer: str
    maps: np.ndarray
    inputs: np.ndarray
    pixels: np.ndarray
    activation: np.ndarray
    steps: int
    seconds: float = 0.0


def pixel_bounds(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel minimum and maximum of the normalized training images, each (1, 28, 28)."""
    return train_x.amin(dim=0), train_x.amax(dim=0)


def pixel_bounds_raw(images: np.ndarray, normalize: Callable[[np.ndarray], torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``pixel_bounds`` of ``normalize(images)`` from the raw uint8 images (N, 28, 28), without normalizing them
    all: normalizing is affine per pixel, so the normalized bounds are the normalized raw bounds (swapped where
    a scale is negative). The same values, bit for bit."""
    ends = normalize(np.stack([images.min(axis=0), images.max(axis=0)]))
    return torch.minimum(ends[0], ends[1]), torch.maximum(ends[0], ends[1])


def check_maps(model: CnnModel, layer: str, maps: list[int] | None) -> np.ndarray:
    """Return the map indices to use (all by default), or raise a one-line error for one out of range."""
    n = model.output_shapes[check_layer(model, layer)][0]
    if maps is None:
        return np.arange(n)
    bad = [m for m in maps if not 0 <= m < n]
    if bad or not maps:
        raise CnnlabError(f"--maps {bad[0] if bad else '(none)'} is out of range: layer {layer} has {n} maps, "
                          f"so use 0..{n - 1}")
    return np.asarray(maps, dtype=np.int64)


def filter_patterns(model: CnnModel, layer: str, bounds: tuple[torch.Tensor, torch.Tensor],
                    maps: list[int] | None = None, steps: int = STEPS, seed: int = 0, lr: float = LR,
                    l2: float = L2, blur_every: int = BLUR_EVERY, jitter: int = JITTER,
                    pixel_scale: tuple[np.ndarray, np.ndarray] | None = None,
                    threads: int = THREADS) -> FilterPatterns:
    """Find, for each map of ``layer``, an input that maximizes the map's mean activation.

    Args:
        model: the network (its weights and gradients are not touched; its train/eval mode is restored).
        layer: a layer name (conv, pooling or dense: for a flat layer each unit is a "map").
        bounds: per-pixel (low, high) of the normalized input, each (1, 28, 28); see ``pixel_bounds``.
        maps: which maps (default: all of the layer).
        steps: gradient-ascent steps.
        seed: seed of the starting noise and the jitter.
        lr: Adam's step size on the unit pixel scale.
        l2: weight of the L2 pull towards the dark background.
        blur_every: blur the images lightly every this many steps (0 = never).
        jitter: largest random shift in pixels per step (0 = none).
        pixel_scale: ``(mean, std)`` of the run's normalizer, to report ``pixels`` in 0..255 (optional).
        threads: torch threads during the optimization (restored after). Hundreds of small steps pay thread
            synchronization on every op, and with other processes on the cores the threads wait for each
            other: on 2 busy cores the seed model's 64-map layer took 4.5 s on one thread and 30 s on two.

    Returns:
        The patterns and the mean activation each produces on its own map.
    """
    with torch_threads(threads):
        return _ascend(model, layer, bounds, maps, steps, seed, lr, l2, blur_every, jitter, pixel_scale)


def _ascend(model: CnnModel, layer: str, bounds: tuple[torch.Tensor, torch.Tensor], maps: list[int] | None,
            steps: int, seed: int, lr: float, l2: float, blur_every: int, jitter: int,
            pixel_scale: tuple[np.ndarray, np.ndarray] | None) -> FilterPatterns:
    if steps < 1:
        raise CnnlabError(f"--steps {steps}: give at least 1 step")
    chosen = check_maps(model, layer, maps)
    device = model_device(model)  # the ascent runs there; the noise and the jitter are drawn on the CPU
    native.prepare_for(device)  # the patterns must not depend on whether an earlier pass loaded the kernels
    low, high = (b.detach().float().to(device) for b in bounds)
    gen = torch.Generator().manual_seed(seed)
    # Optimize on the unit pixel scale: 0 = the lowest, 1 = the highest value the training images had there.
    unit = START[0] + (START[1] - START[0]) * torch.rand((len(chosen), 1, 28, 28), generator=gen).to(device)
    unit.requires_grad_(True)
    target = torch.as_tensor(chosen).to(device)
    optimizer = _Adam(unit, lr)
    best, best_unit = torch.full((len(chosen),), -torch.inf, device=device), unit.detach().clone()
    # frozen: the backward passes then compute the input's gradient alone, none for the weights
    with eval_mode(model), frozen_weights(model), torch.enable_grad():
        for step in range(steps):
            settle = step >= steps * 3 // 4  # the last quarter: no jitter and no blur, to settle on the optimum
            x = _jittered(low + (high - low) * unit, 0 if settle else jitter, gen)
            objective, active = _objective(model, x, layer, target)  # (M,) each
            if settle:  # unjittered: ``active`` is the true mean activation of this very input; keep the best
                better = active.detach() > best
                best = torch.where(better, active.detach(), best)
                best_unit[better] = unit.detach()[better]
            scale = objective.detach().abs().clamp_min(1e-6)  # each map's L2 pull relative to its own scale
            loss = -objective.sum() + l2 * (scale * unit.pow(2).mean(dim=(1, 2, 3))).sum()
            (unit.grad,) = torch.autograd.grad(loss, unit)  # the input's gradient only: weights keep theirs
            optimizer.step()
            with torch.no_grad():
                if blur_every and not settle and (step + 1) % blur_every == 0:
                    unit.copy_(0.5 * unit + 0.5 * _blur(unit))
                unit.clamp_(0.0, 1.0)
        with torch.inference_mode():
            final = _mean_activation(model.activation(low + (high - low) * unit.detach(), layer), target)
            best_unit[final > best] = unit.detach()[final > best]
            inputs = (low + (high - low) * best_unit).contiguous()
            activation = _mean_activation(model.activation(inputs, layer), target)
    inputs, activation = inputs.cpu().numpy(), activation.cpu().numpy()
    return FilterPatterns(layer, chosen, inputs, _to_pixels(inputs, pixel_scale), activation, steps)


class _Adam:
    """Adam on one tensor, step for step what ``torch.optim.Adam`` (defaults, single-tensor path) computes,
    without importing torch's optimizer machinery (its first step imports torch._dynamo: 1-2 s)."""

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.param, self.lr, self.betas, self.eps, self.steps = param, lr, betas, eps, 0
        self.avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self) -> None:
        """One update of ``param`` from ``param.grad``."""
        beta1, beta2 = self.betas
        grad = self.param.grad
        self.steps += 1
        self.avg.lerp_(grad, 1 - beta1)
        self.avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1 ** self.steps)
        denom = (self.avg_sq.sqrt() / math.sqrt(1 - beta2 ** self.steps)).add_(self.eps)
        self.param.addcdiv_(self.avg, denom, value=-step_size)


def pattern_ratios(activation: np.ndarray, maps: np.ndarray, data_means: np.ndarray) -> dict[str, np.ndarray]:
    """Compare each pattern's activation of its map with what the data do to that map.

    Args:
        activation: each pattern's mean activation of its own map (M,).
        maps: the map of each pattern (M,).
        data_means: per image and map, the mean activation over the data (N, maps); see ``map_means``.

    Returns:
        ``data_mean`` and ``data_max`` per pattern (the average image's and the strongest image's mean
        activation of that map) and ``ratio_mean``/``ratio_max`` = pattern / those (inf where the data never
        activate the map but the pattern does; nan where neither does).
    """
    data_mean = data_means[:, maps].mean(axis=0)
    data_max = data_means[:, maps].max(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"data_mean": data_mean, "data_max": data_max,
                "ratio_mean": activation / data_mean, "ratio_max": activation / data_max}


def _objective(model: CnnModel, x: torch.Tensor, layer: str,
               target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return per image (the objective, its map's mean activation).

    The objective is the mean activation; where that is exactly 0 (a ReLU off at every position), the largest
    input to the activation function instead, so the gradient can lead the map out of its dead zone.
    """
    names = model.layer_names
    position = names.index(layer)
    hidden = x if position == 0 else model.activation(x, names[position - 1])
    named = model.layers[layer]
    picked = _own_maps(named, hidden, target)
    if picked is None:
        before = named.op(hidden)
        picked = before[torch.arange(len(target), device=before.device), target]  # (M, H, W) or (M,)
    after = named.act(picked.clone())  # clone: an in-place activation must not overwrite ``picked``
    active = after.mean(dim=(1, 2)) if after.ndim == 3 else after
    strongest = picked.amax(dim=(1, 2)) if picked.ndim == 3 else picked
    return torch.where(active != 0, active, strongest), active


def _own_maps(named: torch.nn.Module, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """For a plain conv layer with an activation that acts on each value alone: each image's own map before the
    activation, (M, H, W), image ``i`` through filter ``target[i]`` only, as one grouped convolution. The maps
    the objective does not look at are never computed (Conv2D_3 of the seed model: 1 of its 128 per image).
    None for any other layer (the caller then runs the whole layer)."""
    conv = named.op
    if (not isinstance(conv, torch.nn.Conv2d) or conv.groups != 1 or conv.padding_mode != "zeros"
            or named.spec.get("activation") == "softmax"):  # softmax mixes the maps
        return None
    m, c, h, w = hidden.shape
    bias = None if conv.bias is None else conv.bias[target]
    # channels-last: oneDNN's grouped conv forward + backward is faster so (seed model: Conv2D_2 3.4x, Conv2D_3 1.4x)
    grouped = hidden.reshape(1, m * c, h, w).contiguous(memory_format=torch.channels_last)
    maps = F.conv2d(grouped, conv.weight[target], bias, conv.stride, conv.padding, conv.dilation, groups=m)
    return maps[0]


def _jittered(x: torch.Tensor, jitter: int, gen: torch.Generator) -> torch.Tensor:
    if not jitter:
        return x
    shift = torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=shift, dims=(2, 3))


def _mean_activation(acts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    picked = acts[torch.arange(len(target), device=acts.device), target]  # (M, H, W) or (M,)
    return picked.mean(dim=(1, 2)) if picked.ndim == 3 else picked


def _blur(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 2.0, 1.0], device=x.device)
    kernel = (kernel[:, None] * kernel[None, :] / 16).view(1, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)


def _to_pixels(inputs: np.ndarray, pixel_scale: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    if pixel_scale is None:
        return inputs[:, 0].astype(np.float32)
    mean, std = pixel_scale
    return np.clip(inputs[:, 0] * std + mean, 0, 255).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Kept in the run folder


def cached_filter_patterns(run_dir: str | Path, model: CnnModel, layer: str,
                           bounds: tuple[torch.Tensor, torch.Tensor], maps: list[int] | None = None,
                           steps: int = STEPS, seed: int = 0,
                           pixel_scale: tuple[np.ndarray, np.ndarray] | None = None) -> FilterPatterns:
    """``filter_patterns`` computed once per weights and settings, kept in ``<run_dir>/cache/filters/``.

    The key holds a hash of the model's weights, the layer, the maps, the steps, the seed, the recipe's
    constants and the pixel bounds (see ``cnnlab.inspection.cache``).
    """
    chosen = check_maps(model, layer, maps)
    low, high = (b.detach().float().cpu().contiguous() for b in bounds)
    path = cache.cache_path(run_dir, "filters", layer, [
        cache.weights_hash(model), layer, ",".join(str(m) for m in chosen), str(steps), str(seed),
        repr((LR, L2, BLUR_EVERY, JITTER, START)), hashlib.sha256(low.numpy().tobytes() + high.numpy().tobytes())
        .hexdigest(), repr(None if pixel_scale is None else [np.asarray(p).tolist() for p in pixel_scale])])

    def compute() -> dict[str, np.ndarray]:
        result = filter_patterns(model, layer, (low, high), maps=chosen.tolist(), steps=steps, seed=seed,
                                 pixel_scale=pixel_scale)
        return {"maps": result.maps, "inputs": result.inputs, "pixels": result.pixels,
                "activation": result.activation}

    got = cache.cached_arrays(path, ("maps", "inputs", "pixels", "activation"), compute)
    return FilterPatterns(layer, got["maps"], got["inputs"], got["pixels"], got["activation"], steps)


def cached_filter_patterns_of_layers(run_dir: str | Path, model: CnnModel, layers: list[str],
                                     bounds: tuple[torch.Tensor, torch.Tensor], steps: int = STEPS, seed: int = 0,
                                     pixel_scale: tuple[np.ndarray, np.ndarray] | None = None,
                                     workers: int = 0) -> dict[str, FilterPatterns]:
    """``cached_filter_patterns`` of every map of each of ``layers``, the layers side by side.

    One layer per thread on ``workers`` threads (0 = the usable cores), one torch thread each, the costliest
    layer first (maps times the multiply-adds of the layers up to it): torch's ops release the GIL, so two
    layers take about the time of the larger one. Each layer's values are those of computing it alone (it draws
    from its own generator), and ``seconds`` says how long it took in its thread.
    """
    rows = {row.name: row for row in layer_table(model)}
    cost = {name: rows[name].output_shape[0] * sum(rows[n].macs for n in model.layer_names[:i + 1])
            for i, name in enumerate(model.layer_names)}
    order = sorted(dict.fromkeys(check_layer(model, layer) for layer in layers), key=lambda n: -cost[n])

    def one(layer: str) -> FilterPatterns:
        started = time.perf_counter()
        result = cached_filter_patterns(run_dir, model, layer, bounds, steps=steps, seed=seed,
                                        pixel_scale=pixel_scale)
        result.seconds = time.perf_counter() - started
        return result

    # the model's mode, its parameters' requires_grad and torch's thread count are process-wide: set once here,
    # not inside each thread
    with eval_mode(model), frozen_weights(model), torch_threads(THREADS), \
            ThreadPoolExecutor(workers or usable_cores()) as pool:
        done = {layer: pool.submit(one, layer) for layer in order}
        return {layer: done[layer].result() for layer in order}
