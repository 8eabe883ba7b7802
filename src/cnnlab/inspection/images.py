"""Pick images of a run's test or training set by index, as the run's own split ordered them.

"test 19" is the 20th image of the run's test set after its split (with ``split = "reshuffle"``, of the
reshuffled test set, as in the articles), i.e. ``run.data().test_x[19]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnnlab.config import Config
from cnnlab.data import Mnist, from_pool, load_data, split_indices
from cnnlab.data.preparation import FROM_POOL_CHUNK
from cnnlab.errors import CnnlabError
from cnnlab.inspection.cache import arrays_hash, streamed_hash

SETS = ("test", "train")


@dataclass
class Picked:
    """Images picked from a run's data set.

    Attributes:
        image_set: ``"test"`` or ``"train"``.
        indices: the indices into that set.
        images: uint8 (K, 28, 28), as stored in the data set.
        labels: int64 (K,).
    """

    image_set: str
    indices: list[int]
    images: np.ndarray
    labels: np.ndarray


class ImageSets:
    """The raw images and labels of a run's test and training sets, in the run's order.

    Loads the data set from the cache and asks ``cnnlab.data.prepare`` for the split, without normalizing 70,000
    images: enough for commands that look at a few images. A whole set is gathered once and kept, read-only
    (a report reads the training images twice and the test images four times).
    """

    def __init__(self, config: Config, mnist: Mnist | None = None):
        mnist = mnist if mnist is not None else load_data(config.data)
        self._images = (mnist.train_images, mnist.test_images)  # the pool of split_indices, kept apart: no copy
        self._labels = (mnist.train_labels, mnist.test_labels)
        self.indices = _split_indices(config, mnist)
        self._whole: dict[tuple[str, str], np.ndarray] = {}

    def size(self, image_set: str) -> int:
        """The number of images in ``image_set``."""
        return len(self.indices[_check_set(image_set)])

    def images(self, image_set: str) -> np.ndarray:
        """All uint8 images (N, 28, 28) of ``image_set``, read-only."""
        return self._gathered("images", image_set)

    def labels(self, image_set: str) -> np.ndarray:
        """All int64 labels (N,) of ``image_set``, read-only."""
        return self._gathered("labels", image_set)

    def _gathered(self, what: str, image_set: str) -> np.ndarray:
        key = (what, _check_set(image_set))
        if key not in self._whole:
            pool = self._images if what == "images" else self._labels
            whole = from_pool(*pool, self.indices[image_set], copy=False)  # a run of one file: a view, no copy
            whole = whole.astype(np.int64) if what == "labels" else whole
            whole.flags.writeable = False  # shared by every caller: a change in place must fail, not spread
            self._whole[key] = whole
        return self._whole[key]

    def gather(self, image_set: str, positions: np.ndarray | slice) -> np.ndarray:
        """The uint8 images at ``positions`` of ``image_set`` (unchecked: for passes that go a block at a time,
        without the whole set in memory)."""
        return from_pool(*self._images, self.indices[_check_set(image_set)][positions], copy=False)

    def set_hash(self, image_set: str) -> str:
        """``cache.arrays_hash(images(image_set), labels(image_set))``, without gathering the whole set where it
        is not at hand: a block of rows at a time (a reshuffled training set is otherwise 47 MB of fresh memory,
        0.1-0.2 s of first touches on these machines, for a key)."""
        image_set = _check_set(image_set)
        labels = self.labels(image_set)
        if ("images", image_set) in self._whole:
            return arrays_hash(self._whole[("images", image_set)], labels)
        pool, n, step = self._images[0], len(labels), FROM_POOL_CHUNK
        blocks = (self.gather(image_set, slice(start, start + step)) for start in range(0, n, step))
        return streamed_hash((pool.dtype, (n, *pool.shape[1:]), blocks), (labels.dtype, labels.shape, [labels]))

    def pick(self, image_set: str, indices: list[int] | int, option: str = "--image") -> Picked:
        """Return the images at ``indices`` of ``image_set``.

        Raises:
            CnnlabError: an unknown set, or an index out of range (the message gives the range).
        """
        indices = [indices] if isinstance(indices, (int, np.integer)) else [int(i) for i in indices]
        n = self.size(image_set)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise CnnlabError(f"{option} {bad[0]} is out of range: the {image_set} set of this run has {n} images, "
                              f"so use 0..{n - 1}")
        pool_idx = self.indices[image_set][indices]
        return Picked(image_set, indices, from_pool(*self._images, pool_idx),
                      from_pool(*self._labels, pool_idx).astype(np.int64))


def _check_set(image_set: str) -> str:
    if image_set not in SETS:
        raise CnnlabError(f"--set {image_set!r} is not one of {', '.join(SETS)}")
    return image_set


def _split_indices(config: Config, mnist: Mnist) -> dict[str, np.ndarray]:
    d = config.data
    train, _, test = split_indices(len(mnist.train_images), len(mnist.test_images), d.split, d.validation,
                                   config.train.seed, d.limit_train, d.limit_test)
    return {"train": train, "test": test}
