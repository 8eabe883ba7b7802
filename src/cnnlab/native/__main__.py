"""``python -m cnnlab.native``: build the native kernels now (set-up runs this; it retries a recorded failed
build) and say how it went."""

from cnnlab.native import prepare, status

prepare(echo=print, retry=True)
print(f"native kernels: {status()}")
