"""``python -m cnnlab.native``: build the native kernels now (set-up runs this) and say how it went."""

from cnnlab.native import status

print(f"native kernels: {status()}")
