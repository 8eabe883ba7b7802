"""The IDX file format of MNIST-style data sets: parse it and write it (unsigned bytes only)."""

from __future__ import annotations

import struct

import numpy as np

from cnnlab.errors import CnnlabError

# The four files of an MNIST-style data set, as upstream names them (decompressed).
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

_IDX_UBYTE = 0x08


def read_idx(data: bytes | bytearray | memoryview, name: str = "file") -> np.ndarray:
    """Parse IDX bytes (the format of the MNIST files) into a numpy array.

    Args:
        data: the whole decompressed file.
        name: the file's name, for error messages.

    Returns:
        A writable uint8 array with the shape the header gives: a view of ``data`` when that is a bytearray
        (nothing copied), else a copy.

    Raises:
        CnnlabError: wrong magic, a type other than unsigned bytes, or a size that does not match the header.
    """
    head = bytes(data[:4])
    if len(head) < 4 or head[:2] != b"\x00\x00":
        raise CnnlabError(f"{name}: not an IDX file (starts with {head.hex() or 'nothing'}); expected two zero "
                          f"bytes, a type code and a rank, e.g. 00000803")
    if head[2] != _IDX_UBYTE:
        raise CnnlabError(f"{name}: IDX type code 0x{head[2]:02x} is not supported; expected 0x08 (unsigned bytes)")
    ndim = head[3]
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise CnnlabError(f"{name}: truncated IDX header ({len(data)} bytes, rank {ndim}); expected rank >= 1 "
                          f"and {4 + 4 * max(ndim, 1)} header bytes")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    count = int(np.prod(dims, dtype=np.int64))
    need = 4 + 4 * ndim + count
    if len(data) != need:
        what = "truncated IDX file" if len(data) < need else "IDX file with trailing bytes"
        shape = "x".join(map(str, dims))
        raise CnnlabError(f"{name}: {what}: {len(data)} bytes, but its header ({shape} uint8) needs exactly {need}")
    array = np.frombuffer(data, dtype=np.uint8, count=count, offset=4 + 4 * ndim).reshape(dims)
    return array if array.flags.writeable else array.copy()



def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: two zero bytes, type 0x08, rank, big-endian dims, then the bytes."""
    header = struct.pack(f">I{array.ndim}I", (_IDX_UBYTE << 8) | array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
