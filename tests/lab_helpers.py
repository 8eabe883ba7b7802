"""Shared by the lab's tests: a root of run folders made from one tiny training run."""

import shutil
from pathlib import Path


def make_root(base: Path) -> Path:
    """A lab root with ``tiny`` (trained: 2 epochs of the tiny preset), a sweep ``sweep-a`` of two trials (copies
    of it; trial-0001's config.toml says ``seed = 7``, so the two differ in ``train.seed``), and a run folder
    whose first checkpoint is not written yet (``starting``)."""
    from cnnlab.run import train

    root = base / "root"
    train("tiny", out=root / "tiny", echo=None, progress=False)
    for trial in ("trial-0000", "trial-0001"):
        shutil.copytree(root / "tiny", root / "sweep-a" / trial)
    config = root / "sweep-a" / "trial-0001" / "config.toml"
    config.write_text(config.read_text().replace("\nseed = 0\n", "\nseed = 7\n", 1))
    (root / "starting").mkdir()
    shutil.copy(root / "tiny" / "config.toml", root / "starting" / "config.toml")
    return root
