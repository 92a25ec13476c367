"""Shared fixtures. Real data sets load once per session (the first load per machine decodes them
into the cache, later ones read it); tests that use them are marked ``realdata`` and skip when the
data root variable is unset."""

from __future__ import annotations

import os

import pytest
import torch

from cifarlib import data, devcheck, paths


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
def idle_machine():
    """Skip a test that measures CPU load against an otherwise idle machine when other processes
    already keep the cores busy (another build, a second test run): its numbers would be theirs."""
    from cifarlib import train

    busy = train.busy_elsewhere(0.5)
    if busy is not None and busy > 0.3:
        pytest.skip(f"other processes keep {busy:.1f} cores busy; this test needs an idle machine")


@pytest.fixture
def one_thread():
    """Run a test's torch work on one thread: tiny models gain nothing from a second one, and on a
    busy shared CPU OpenMP's spin-waiting threads make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def quick_data(tmp_path_factory) -> dict:
    """Data roots for running the notebooks on the quick profile: the real data sets where
    $CIFARLIB_DATA / $CIFARLIB_MNIST_DATA point at them, else the small stand-in sets of the same
    layouts that ``gpu-check`` makes (a CIFAR-like image-folder tree and an MNIST-like .tar.gz
    archive), big enough for every quick-profile run. Maps the variable name to the root."""
    roots = {env: os.environ[env] for env in (paths.ENV_DATA, paths.ENV_MNIST) if os.environ.get(env)}
    if len(roots) < 2:
        made = devcheck.stand_in_data(tmp_path_factory.mktemp("stand-in-data"))
        roots = {**made, **roots}
    return roots


@pytest.fixture
def stand_in_notebook():
    """A writer of tiny notebooks for the report command: a title, a ``parameters`` cell with the
    given source, and one cell printing the profile."""
    import nbformat

    def write(path, parameters: str) -> None:
        cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), nbformat.v4.new_code_cell(parameters),
                 nbformat.v4.new_code_cell("print(profile)")]
        cells[1].metadata["tags"] = ["parameters"]
        nb = nbformat.v4.new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, path)

    return write
