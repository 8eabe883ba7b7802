"""Data augmentation on in-memory batches: small random shifts and mirror flips, drawn from the run's own generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_images(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad images (N, C, H, W) by ``pad`` pixels on every side with each image's border value (edge padding).

    Edge padding keeps the background of a standardized image what it was, where zero padding would not.
    """
    return F.pad(x, (pad, pad, pad, pad), mode="replicate") if pad else x


def random_shift(padded: torch.Tensor, idx: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Crop images ``idx`` from the padded set, each shifted by its own offset in [-pad, pad] on both axes.

    Args:
        padded: the whole training set padded by ``pad_images`` (N, C, H + 2 pad, W + 2 pad).
        idx: the batch's image indices (B,).
        pad: the largest shift in pixels.
        generator: the run's shuffle generator (a CPU one), so a resumed run draws the same shifts; they move
            to the device of ``idx``, which must be that of ``padded``.

    Returns:
        The batch (B, C, H, W): one ``take`` from the flat padded set (2x faster than four broadcast index
        tensors), no per-image Python loop.
    """
    b = len(idx)
    _, c, ph, pw = padded.shape
    h, w = ph - 2 * pad, pw - 2 * pad
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(idx.device)  # drawn on the CPU generator
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(idx.device)
    corner = idx * (c * ph * pw) + dy * pw + dx  # flat index of each crop's top-left pixel, channel 0
    at = {"device": padded.device}
    within = (torch.arange(c, **at)[:, None, None] * (ph * pw) + torch.arange(h, **at)[None, :, None] * pw
              + torch.arange(w, **at)[None, None, :])  # (C, H, W) offsets inside a padded image
    return padded.reshape(-1).take(corner[:, None, None, None] + within[None])


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image of the batch ``x`` (B, C, H, W) left to right with probability 1/2.

    For sets whose classes look the same in a mirror (most of Fashion-MNIST's); never for digits.
    """
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)  # drawn on the run's CPU generator
    return torch.where(flip[:, None, None, None], x.flip(3), x)
