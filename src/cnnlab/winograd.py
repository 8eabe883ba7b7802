"""Winograd's minimal filtering F(3x3, 3x3) in numpy: a 3x3 convolution in 25 products per 3x3 block of outputs
and channel pair instead of 81.

The numpy model runs a 3x3 convolution with 64 or more input channels that no 2x2 max-pool follows this way
(the seed model's Conv2D_3, 5x5x64
-> 3x3x128: 1.10 -> 0.53 s for the 60,000 training images of the class centroids, one core, AMD EPYC Zen 4);
the pairs with a pool have their native kernel (F(2x2, 3x3), ``cnnlab.native``). Each 5x5 block of the input
becomes ``B^T d B``, each filter ``G g G^T``; their products summed over the input channels are one matrix
product per of the 25 positions, and ``A^T m A`` gives the 3x3 outputs (Lavin and Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016). The matrices come from the interpolation points 0, 1, -1, 2, -2 (Toom-Cook,
derived exactly in fractions below): their float32 error on the seed model's Conv2D_3 is 3.5e-6 of values up to
4, against 1.3e-6 for the direct product.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

POINTS = (0, 1, -1, 2, -2)
TILE = 3  # outputs per block side
SPAN = TILE + 2  # input per block side
# Fewer input channels: the products are too thin for the transforms to pay off. Direct time / this time, one
# core, F = 32, 64, 128 filters (AMD EPYC Zen 4): 13x13 inputs with 16 channels 0.62-0.86x, 32: 0.94-1.04x,
# 64: 1.02-1.44x, 128: 1.26-1.89x; 30x30 inputs alike; a 5x5 input (one block) 1.06-1.23x already at 16.
MIN_CHANNELS = 64


def matrices(m: int, r: int, points: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T, G, B^T)`` of F(m, r) from ``m + r - 1`` distinct points, in float64: for a filter ``g`` (r) and an
    input ``d`` (m + r - 1), ``A^T ((G g) * (B^T d))`` is the correlation ``y_i = sum_k g_k d_(i+k)`` (m).

    The correlation is the transpose of the polynomial product of an m- and an r-term polynomial, which is
    evaluated at the points (the Vandermonde rows ``V``) and interpolated back (``V^-1``); so ``A^T`` is the
    m-term Vandermonde's transpose, ``G`` the r-term Vandermonde and ``B^T`` the inverse's transpose."""
    size = m + r - 1
    if len(set(points)) != size:
        raise ValueError(f"F({m}, {r}) needs {size} distinct points, got {points}")
    vander = [[Fraction(p) ** k for k in range(size)] for p in points]
    inverse = _inverse(vander)
    a_t = np.array([[float(row[k]) for row in vander] for k in range(m)])
    g = np.array([[float(row[k]) for k in range(r)] for row in vander])
    b_t = np.array([[float(inverse[j][i]) for j in range(size)] for i in range(size)])
    return a_t, g, b_t


def _inverse(matrix: list[list[Fraction]]) -> list[list[Fraction]]:
    """The exact inverse of a square matrix of fractions (Gauss-Jordan)."""
    n = len(matrix)
    rows = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next(i for i in range(col, n) if rows[i][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        rows[col] = [x / rows[col][col] for x in rows[col]]
        for i in range(n):
            if i != col and rows[i][col] != 0:
                rows[i] = [x - rows[i][col] * y for x, y in zip(rows[i], rows[col])]
    return [row[n:] for row in rows]


_A_T, _G, _B_T = matrices(TILE, 3, POINTS)
OUTPUT = np.kron(_A_T, _A_T).astype(np.float32)  # (9, 25): A^T m A of a flattened 5x5 block
INPUT = np.kron(_B_T, _B_T).astype(np.float32)  # (25, 25): B^T d B of a flattened 5x5 block
FILTER = np.kron(_G, _G)  # (25, 9), float64 for the filters' transform


def fits(kernel: int, stride: int, channels: int) -> bool:
    """Whether a convolution with this square ``kernel``, ``stride`` and input ``channels`` runs here."""
    return kernel == 3 and stride == 1 and channels >= MIN_CHANNELS


def filters(weight: np.ndarray, transform: np.ndarray = FILTER) -> np.ndarray:
    """The transformed filters ``G g G^T`` of conv weights (F, C, 3, 3) as (positions, C, F), float32.
    ``transform`` is kron(G, G) (positions x 9): this module's F(3x3, 3x3), applied in float64, or another
    algorithm's, applied in its own dtype (the native kernels' F(2x2, 3x3), float32)."""
    f, c = weight.shape[:2]
    u = (transform @ weight.reshape(f * c, 9).T).reshape(len(transform), f, c).transpose(0, 2, 1)
    return np.ascontiguousarray(u, dtype=np.float32)


def conv3x3(h: np.ndarray, transformed: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """The 'valid' 3x3 convolution, stride 1, of ``h`` (N, H, W, C) with ``filters(weight)`` (25, C, F) and
    ``bias`` (F,): (N, H - 2, W - 2, F), float32. Images go in blocks whose transformed input stays near 0.5 MB,
    in the caches (the seed model's Conv2D_3, 60,000 images, one core: blocks of 2 MB 0.71 s, of 0.5 MB 0.53 s)."""
    n, rows, cols, channels = h.shape
    f = transformed.shape[2]
    out_rows, out_cols = rows - 2, cols - 2
    tiles_r, tiles_c = -(-out_rows // TILE), -(-out_cols // TILE)
    grow_r, grow_c = TILE * tiles_r + 2 - rows, TILE * tiles_c + 2 - cols
    if grow_r or grow_c:  # whole blocks: zeros below and right, their outputs dropped
        h = np.pad(h, ((0, 0), (0, grow_r), (0, grow_c), (0, 0)))
    blocks = np.lib.stride_tricks.sliding_window_view(h, (SPAN, SPAN), axis=(1, 2))[:, ::TILE, ::TILE]
    out = np.empty((n, out_rows, out_cols, f), np.float32)
    step = max(1, (1 << 17) // (25 * tiles_r * tiles_c * channels))
    for start in range(0, n, step):
        part = blocks[start:start + step]  # (n', tiles_r, tiles_c, C, 5, 5)
        d = part.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 25, channels)
        v = np.ascontiguousarray(np.matmul(INPUT, d).transpose(1, 0, 2))  # (25, blocks, C)
        m = np.ascontiguousarray(np.matmul(v, transformed).transpose(1, 0, 2))  # (blocks, 25, F)
        y = np.matmul(OUTPUT, m).reshape(len(part), tiles_r, tiles_c, TILE, TILE, f)
        y = y.transpose(0, 1, 3, 2, 4, 5).reshape(len(part), TILE * tiles_r, TILE * tiles_c, f)
        out[start:start + step] = y[:, :out_rows, :out_cols]
    if bias is not None:
        out += bias
    return out
