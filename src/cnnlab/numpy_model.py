"""A model's inference in numpy and the native kernels, without torch: the pass behind every kept test result.

``cnnlab evaluate`` and ``cnnlab patterns`` on a run whose results are not kept yet spent 1-3 s importing
torch before a 0.3 s pass. ``NumpyModel`` runs the same layers from the config and the weights file: the
first layer's conv + max-pool and 3x3 conv + max-pool pairs through the native kernels (as the torch model
does), other 3x3 convolutions with 64 or more input channels by Winograd's F(3x3, 3x3) (``cnnlab.winograd``),
the rest of the convolutions as one matrix product over the image patches, pools and the rest in numpy.

It is the one implementation of every pass whose results are kept in a run's cache (the test pass, the class
centroids, the logits training keeps when it ends), so a result computed in a process without torch and one
computed right after training are the same bits. Its values equal the torch model's up to float rounding
(tested per layer kind). It serves every layer kind and every activation except ``gelu`` (numpy has no erf);
``supports`` says whether it serves a model (a model it does not serve runs on torch, as before). Maps are
channels-last (N, H, W, C) inside; what it returns is in torch's order.

numpy's BLAS runs on one thread during a pass, and the chunks of a pass run side by side, one per core: BLAS's
own idle threads spin and took the cores from the native kernels' threads (the seed model's 10,000 test images:
0.45-0.54 s with two BLAS threads, 0.22-0.26 s with one, AMD EPYC, 2 cores), and its sums' order depends on its
thread count (other bits with two threads than with one), so one thread also makes a pass give the same bits in
every process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import numpy as np

from cnnlab import winograd
from cnnlab.cpu import keep_freed_memory, usable_cores
from cnnlab.layers.base import same_pads
from cnnlab.native import arrays

ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "linear", "softmax")
KINDS = ("conv", "maxpool", "avgpool", "dense", "flatten", "globalavgpool", "batchnorm", "dropout", "activation")


def supports(specs: list[dict[str, Any]]) -> bool:
    """Whether ``NumpyModel`` serves layers ``specs``: each of a kind and with an activation it computes (a layer
    kind added later runs on torch until it is added here)."""
    return all(spec["type"] in KINDS and spec.get("activation", "linear") in ACTIVATIONS for spec in specs)


class Outputs(NamedTuple):
    """What one forward pass gives: the logits (or None), the maps of the layers asked for (N, C, H, W) (a flat
    layer's (N, units)), the per-map means (N, C) of the layers asked for."""

    logits: np.ndarray | None
    maps: dict[str, np.ndarray]
    means: dict[str, np.ndarray]


class NumpyModel:
    """The forward pass of layers ``specs`` (resolved config layers) with ``weights`` (the model's state dict
    as numpy arrays, torch's names and shapes), in inference mode.

    Raises:
        ValueError: an activation it does not compute, or weights that do not fit the layers.
    """

    def __init__(self, specs: list[dict[str, Any]], weights: dict[str, np.ndarray]):
        if not supports(specs):
            raise ValueError("a layer kind or an activation the numpy model does not compute (gelu)")
        self.specs = {spec["name"]: dict(spec) for spec in specs}
        self.names = list(self.specs)
        self.kernels = arrays.load()
        self.params = {name: _layer_params(spec, weights) for name, spec in self.specs.items()}
        self._fused: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}  # conv -> (kernel, filters, bias)
        self._transformed: dict[str, np.ndarray] = {}  # conv -> its filters for winograd.conv3x3

    def forward(self, x: np.ndarray, maps: list[str] | tuple[str, ...] = (), means: list[str] | tuple[str, ...] = (),
                logits: bool = True) -> Outputs:
        """One forward pass over images ``x`` (N, 1, H, W), float32, normalized: the logits (N, classes) if
        ``logits``, the activation output of each layer in ``maps`` (maps as (N, C, H, W)) and the per-map means
        (N, C) of each layer in ``means`` (a flat layer's values (N, units)). The pass stops after the last layer
        needed.

        A conv layer and the 2x2 max-pool after it run as one native kernel whatever is asked, so the logits and
        the means are the same bits whichever maps a pass also gives: the kernel sums each pooling window beside
        its maximum for the layer's means (the rows and columns the pool leaves out are added here), and the
        maps of such a layer, where asked, are computed beside it (the report's test pass with every conv layer's
        means: 0.9-1.5 -> 0.3-0.4 s, the seed model, AMD EPYC, 2 cores)."""
        with one_blas_thread():
            return self._forward(x, maps, means, logits)

    def outputs(self, x: np.ndarray, names: list[str] | tuple[str, ...] = (),
                logits: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """(the logits or None, the activation output of each layer in ``names``) of ``forward``."""
        got = self.forward(x, names, (), logits)
        return got.logits, got.maps

    def chunked_outputs(self, images: Any, names: list[str] | tuple[str, ...] = (), logits: bool = True,
                        prepare: Callable[[Any], np.ndarray] | None = None, chunk: int = 256,
                        means: list[str] | tuple[str, ...] = ()) -> Iterator[tuple[int, Outputs]]:
        """Yield ``(start, forward's Outputs of the maps of names, the means)`` for each chunk of ``images``
        (normalized, or whatever ``prepare`` turns into normalized images), in order.

        The chunks run side by side on every usable core, each on one thread (its native kernels too): the
        same bits as one at a time, since no chunk's sums depend on another's or on the thread count.
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        workers = usable_cores()

        def one(start: int) -> tuple[int, Outputs]:
            part = images[start:start + chunk]
            return start, self._forward(prepare(part) if prepare is not None else part, names, means, logits,
                                        threads=1 if workers > 1 else 0)

        keep_freed_memory()  # a chunk's maps (22 MB for the seed model's Conv2D_1) reuse memory, not fresh pages
        with one_blas_thread(), ThreadPoolExecutor(workers) as pool:
            pending: deque[Future] = deque()
            for start in range(0, len(images), chunk):
                pending.append(pool.submit(one, start))
                if len(pending) > workers:  # at most one chunk waiting per core: memory stays a few chunks'
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def map_means(self, images: Any, layer: str, prepare: Callable[[Any], np.ndarray] | None = None,
                  chunk: int = 256) -> np.ndarray:
        """Each map's mean activation of ``layer`` per image, (N, maps); the unit values (N, units) of a flat
        layer (as ``cnnlab.inspection.activations.map_means``)."""
        parts = [got.means[layer] for _, got in self.chunked_outputs(images, (), False, prepare, chunk, [layer])]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def _forward(self, x: np.ndarray, names: list[str] | tuple[str, ...], averaged: list[str] | tuple[str, ...],
                 logits: bool, threads: int = 0) -> Outputs:
        wanted = set(names)
        targets = wanted | set(averaged)
        stop = len(self.names) if logits or not targets else max(self.names.index(n) for n in targets) + 1
        h = np.ascontiguousarray(x, dtype=np.float32).transpose(0, 2, 3, 1)  # (N, H, W, 1): the same memory
        out: dict[str, np.ndarray] = {}
        means: dict[str, np.ndarray] = {}
        i, scores = 0, None
        while i < stop:
            name = self.names[i]
            pool = self.names[i + 1] if i + 1 < len(self.names) else None
            if pool is not None and self._fusable(name, pool, h):
                if name in wanted:  # its maps beside the kernel, which gives what comes after
                    out[name] = _activate("relu", self._op(name, h), in_place=True).transpose(0, 3, 1, 2)
                h, mean = self._conv_pool(name, h, threads, sums=name in averaged)
                if mean is not None:
                    means[name] = mean
                name, i = pool, i + 2
            else:
                last = i == len(self.names) - 1
                h = self._op(name, h)
                if last:
                    scores = h
                fresh = self.specs[name]["type"] in ("conv", "dense")  # its op made h: no one else holds it
                h = _activate(self.specs[name].get("activation", "linear"), h, in_place=fresh and not last)
                if name in averaged:
                    means[name] = h.mean(axis=(1, 2), dtype=np.float32) if h.ndim == 4 else h
                i += 1
            if name in wanted:
                out[name] = h.transpose(0, 3, 1, 2) if h.ndim == 4 else h
        return Outputs(scores if logits else None, out, means)

    # -- layers -------------------------------------------------------------------------------------------

    def _op(self, name: str, h: np.ndarray) -> np.ndarray:
        """Layer ``name``'s operation (before its activation) on ``h``."""
        spec, params = self.specs[name], self.params[name]
        kind = spec["type"]
        if kind == "conv":
            stride = max(spec["stride"], 1)
            if winograd.fits(spec["kernel"], stride, h.shape[3]):  # a 3x3 conv without a pool after it
                if name not in self._transformed:
                    self._transformed[name] = winograd.filters(params["weight"])
                h = _padded(h, 3, 1) if spec["padding"] == "same" else h
                return winograd.conv3x3(h, self._transformed[name], params.get("bias"))
            return _conv(h, params["weight"], params.get("bias"), spec["kernel"], stride, spec["padding"] == "same")
        if kind in ("maxpool", "avgpool"):
            size = spec["size"]
            return _pool(h, kind, size, spec["stride"] or size, spec["padding"] == "same")
        if kind == "dense":
            y = h @ params["weight"].T
            return y + params["bias"] if "bias" in params else y
        if kind == "flatten":
            return h.transpose(0, 3, 1, 2).reshape(len(h), -1) if h.ndim == 4 else h  # torch's (C, H, W) order
        if kind == "globalavgpool":
            return h.mean(axis=(1, 2), dtype=np.float32)
        if kind == "batchnorm":
            scale = params["weight"] / np.sqrt(params["running_var"] + np.float32(spec["epsilon"]))
            return (h - params["running_mean"]) * scale + params["bias"]
        return h  # dropout (off in inference), activation (its function follows)

    def _fusable(self, name: str, pool: str, h: np.ndarray) -> bool:
        """Whether conv ``name`` with its relu and the 2x2 max-pool ``pool`` after it runs as one native kernel
        (the torch model fuses the same pairs)."""
        spec, after = self.specs[name], self.specs[pool]
        if (self.kernels is None or spec["type"] != "conv" or spec.get("activation") != "relu"
                or after["type"] != "maxpool" or after["size"] != 2 or (after["stride"] or 2) != 2
                or after["padding"] != "valid" or max(spec["stride"], 1) != 1):
            return False
        k, channels = spec["kernel"], h.shape[3]
        pad = (k - 1) // 2 if spec["padding"] == "same" else 0
        if spec["padding"] == "same" and k % 2 == 0:
            return False
        if channels == 1:
            return k <= min(h.shape[1:3]) + 2 * pad
        return k == 3 and min(h.shape[1:3]) + 2 * pad >= 4

    def _conv_pool(self, name: str, h: np.ndarray, threads: int = 0,
                   sums: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(relu(max_pool(conv(h), 2)) of conv ``name`` by the native kernel that serves it, on ``threads`` (0:
        every usable core); with ``sums``, the per-map means of relu(conv(h)) (N, C), else None)."""
        spec, params = self.specs[name], self.params[name]
        if name not in self._fused:
            self._fused[name] = _fused_filters(params["weight"], params.get("bias"), h.shape[3])
        kernel, filters, bias = self._fused[name]
        if spec["padding"] == "same":
            h = _padded(h, spec["kernel"], 1)
        h = np.ascontiguousarray(h)
        if kernel == "first":
            pooled, totals = self.kernels.conv_pool_forward(h.reshape(h.shape[:3]), filters, bias,
                                                            len(params["weight"]), relu=True, threads=threads,
                                                            sums=sums)
        else:
            pooled, totals = self.kernels.winograd_pool_forward(h, filters, bias, relu=True, threads=threads,
                                                                sums=sums)
        return pooled, (None if totals is None else self._fused_means(name, h, totals))

    def _fused_means(self, name: str, h: np.ndarray, totals: np.ndarray) -> np.ndarray:
        """Each map's mean of relu(conv(h)) (N, C) for conv ``name`` on its (padded) input ``h``, from the
        kernel's window sums ``totals`` (N, ho, wo, C) and the last conv row and column where the pool left them
        out (an odd-sized map: 11 x 11 -> 5 x 5 leaves row and column 10)."""
        params, k = self.params[name], self.specs[name]["kernel"]
        rows, cols = h.shape[1] - k + 1, h.shape[2] - k + 1  # the conv's output
        pooled_rows, pooled_cols = 2 * totals.shape[1], 2 * totals.shape[2]
        total = totals.sum(axis=(1, 2), dtype=np.float32)
        edges = []
        if rows > pooled_rows:  # the last row, every column
            edges.append(h[:, pooled_rows:])
        if cols > pooled_cols:  # the last column, the rows above it
            edges.append(h[:, :pooled_rows + k - 1, pooled_cols:])
        for edge in edges:
            values = _activate("relu", _conv(edge, params["weight"], params.get("bias"), k, 1, False), True)
            total += values.sum(axis=(1, 2), dtype=np.float32)
        return total / np.float32(rows * cols)


def map_means_of(acts: np.ndarray) -> np.ndarray:
    """Each map's mean of activations ``acts`` (N, C, H, W) as (N, C), float32; flat ones (N, units) as they are.
    Summed in the channels-last order the numpy model keeps its maps in (its (N, C, H, W) arrays are views of
    (N, H, W, C) ones): 10x faster than over their strided last axes."""
    if acts.ndim != 4:
        return acts
    return np.moveaxis(acts, 1, -1).mean(axis=(1, 2), dtype=np.float32)


def one_blas_thread() -> AbstractContextManager:
    """numpy's BLAS on one thread inside the block (see the module's note), as it was after."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def _layer_params(spec: dict[str, Any], weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float32 arrays of layer ``spec`` in ``weights`` (``layers.<name>.op.<key>``, or ``op.1.<key>`` for a
    padded op), checked against the shapes the layer needs."""
    prefixes = (f"layers.{spec['name']}.op.", f"layers.{spec['name']}.op.1.")
    found = {key[len(p):]: value for p in prefixes for key, value in weights.items()
             if key.startswith(p) and "." not in key[len(p):]}
    kind = spec["type"]
    keys = {"conv": ["weight"], "dense": ["weight"],
            "batchnorm": ["weight", "bias", "running_mean", "running_var"]}.get(kind, [])
    if kind in ("conv", "dense") and spec.get("use_bias", True):
        keys.append("bias")
    missing = [key for key in keys if key not in found]
    if missing:
        raise ValueError(f"the weights lack {spec['name']}'s {', '.join(missing)}")
    params = {key: np.ascontiguousarray(found[key], dtype=np.float32) for key in keys}
    if kind == "conv" and params["weight"].shape[2:] != (spec["kernel"], spec["kernel"]):
        raise ValueError(f"{spec['name']}'s kernel has shape {params['weight'].shape}")
    return params


def _fused_filters(weight: np.ndarray, bias: np.ndarray | None, channels: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(which kernel, its filters, its bias) for conv weights (F, C, K, K): the first layer's (K*K, F padded to
    32s) or Winograd's U = G g G^T as (16, C, F)."""
    f = weight.shape[0]
    if channels == 1:
        padded = -(-f // 32) * 32
        wt = np.zeros((weight.shape[2] * weight.shape[3], padded), np.float32)
        wt[:, :f] = weight.reshape(f, -1).T
        b = np.zeros(padded, np.float32)
        if bias is not None:
            b[:f] = bias
        return "first", wt, b
    return "winograd", winograd.filters(weight, arrays.WINOGRAD_GG), (bias if bias is not None
                                                                      else np.zeros(f, np.float32))


def _padded(h: np.ndarray, kernel: int, stride: int, value: float = 0.0) -> np.ndarray:
    """``h`` (N, H, W, C) with Keras ``same`` padding of ``value``."""
    pads = ((0, 0), same_pads(h.shape[1], kernel, stride), same_pads(h.shape[2], kernel, stride), (0, 0))
    return np.pad(h, pads, constant_values=value) if any(sum(p) for p in pads) else h


def _windows(h: np.ndarray, size: int, stride: int) -> np.ndarray:
    """The ``size`` x ``size`` windows of ``h`` (N, H, W, C) at ``stride``: a view (N, Ho, Wo, C, size, size)."""
    return np.lib.stride_tricks.sliding_window_view(h, (size, size), axis=(1, 2))[:, ::stride, ::stride]


def _conv(h: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, k: int, stride: int,
          same: bool) -> np.ndarray:
    """A convolution of ``h`` (N, H, W, C) with ``weight`` (F, C, K, K): per block of images, one product of the
    patches (images * Ho * Wo, K*K*C) with the filters (K*K*C, F). The blocks keep the patches near 1 MB, in the
    caches and in reused memory (a whole chunk's patches of the seed model's Conv2D_2 are 36 MB, mapped and
    page-faulted afresh by every chunk: 1.7 s for the 10,000 test images on one core, 0.58-0.70 s in blocks)."""
    if same:
        h = _padded(h, k, stride)
    windows = _windows(h, k, stride).transpose(0, 1, 2, 4, 5, 3)  # (N, Ho, Wo, K, K, C)
    n, ho, wo = windows.shape[:3]
    filters = weight.transpose(2, 3, 1, 0).reshape(-1, len(weight))
    out = np.empty((n, ho, wo, len(weight)), np.float32)
    block = max(1, (1 << 18) // (ho * wo * filters.shape[0]))
    for start in range(0, n, block):
        patches = windows[start:start + block].reshape(-1, filters.shape[0])
        np.matmul(patches, filters, out=out[start:start + block].reshape(-1, len(weight)))
    if bias is not None:
        out += bias
    return out


def _pool(h: np.ndarray, kind: str, size: int, stride: int, same: bool) -> np.ndarray:
    """Max or average pooling of ``h`` (N, H, W, C); ``same``: max pads with -inf, average counts only the
    cells each window covers (as TensorFlow)."""
    if kind == "maxpool":
        if same:
            h = _padded(h, size, stride, -np.inf)
        if size == stride:  # windows that do not overlap (2x2 at stride 2): the maximum of size^2 strided slices
            ho, wo = (h.shape[1] - size) // stride + 1, (h.shape[2] - size) // stride + 1
            out = np.array(h[:, :size * ho:size, :size * wo:size])
            for i in range(size):
                for j in range(size):
                    np.maximum(out, h[:, i:i + size * ho:size, j:j + size * wo:size], out=out)
            return out
        return _windows(h, size, stride).max(axis=(4, 5))
    if not same:
        return _windows(h, size, stride).mean(axis=(4, 5), dtype=np.float32)
    ones = _padded(np.ones((1, *h.shape[1:3], 1), np.float32), size, stride)
    return (_windows(_padded(h, size, stride), size, stride).sum(axis=(4, 5), dtype=np.float32)
            / _windows(ones, size, stride).sum(axis=(4, 5), dtype=np.float32))


def _activate(name: str, h: np.ndarray, in_place: bool = False) -> np.ndarray:
    """The activation function ``name`` of ``h`` (relu into ``h`` itself where ``in_place``); softmax over the
    channels (maps) or the features (flat), the last axis either way here."""
    if name == "relu":
        return np.maximum(h, np.float32(0), out=h if in_place else None)
    if name == "tanh":
        return np.tanh(h)
    if name == "sigmoid":
        with np.errstate(over="ignore"):  # exp of a large negative input overflows to inf: 1 / inf = 0, right
            return 1 / (1 + np.exp(-h))
    if name == "elu":
        return np.where(h > 0, h, np.expm1(np.minimum(h, 0)))
    if name == "softmax":
        e = np.exp(h - h.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return h
