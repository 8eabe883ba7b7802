"""Shared fixtures. Training tests use the real MNIST, fetched once by the product itself into its cache."""

import os

import pytest


@pytest.fixture(scope="session")
def real_mnist():
    """The verified MNIST from the user's cnnlab cache (the first run fetches it the way `cnnlab data` does)."""
    from cnnlab.data import load_mnist

    return load_mnist()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test inside its own temporary folder (so default run folders land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli_env():
    """Environment for a cnnlab subprocess: same cache, one thread each so two can run side by side."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
