"""Shared fixtures. Real data sets load once per session (the first load per machine decodes them
into the cache, later ones read it); tests that use them are marked ``realdata`` and skip when the
data root variable is unset."""

from __future__ import annotations

import os

import pytest
import torch

from cifarlib import data, paths


def _real(name: str, env: str):
    if not os.environ.get(env):
        pytest.skip(f"${env} is not set: point it at the real {name} data to run this test")
    return data.load(name)


@pytest.fixture(scope="session")
def real_cifar10():
    """The real CIFAR-10 from $CIFARLIB_DATA (skips when unset)."""
    return _real("cifar10", paths.ENV_DATA)


@pytest.fixture(scope="session")
def real_mnist():
    """The real MNIST from $CIFARLIB_MNIST_DATA (skips when unset)."""
    return _real("mnist", paths.ENV_MNIST)


@pytest.fixture
def one_thread():
    """Run a test's torch work on one thread: tiny models gain nothing from a second one, and on a
    busy shared CPU OpenMP's spin-waiting threads make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
