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


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_image_tree(root, classes, per_class: dict, channels: int, size: int, seed: int) -> None:
    """``root/<split>/<class>/<k>.png`` from :func:`cifarlib.data.synthetic` images (learnable classes)."""
    from PIL import Image

    for s, (split, n) in enumerate(per_class.items()):
        ds = data.synthetic(n_train=n * len(classes), n_test=0, num_classes=len(classes), channels=channels,
                            size=size, seed=seed + s)
        for k, (image, label) in enumerate(zip(ds.train.images, ds.train.labels)):
            folder = root / split / classes[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = image.permute(1, 2, 0).numpy()
            Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(folder / f"{k:05d}.png")


@pytest.fixture(scope="session")
def quick_data(tmp_path_factory) -> dict:
    """Data roots for running the notebooks on the quick profile: the real data sets where
    $CIFARLIB_DATA / $CIFARLIB_MNIST_DATA point at them, else small ones of the same layouts made
    here (a CIFAR-like image-folder tree and an MNIST-like .tar.gz archive), big enough for every
    quick-profile run. Maps the variable name to the root."""
    import tarfile

    roots = {}
    if os.environ.get(paths.ENV_DATA):
        roots[paths.ENV_DATA] = os.environ[paths.ENV_DATA]
    else:
        cifar = tmp_path_factory.mktemp("cifar10-like")
        write_image_tree(cifar, CIFAR_CLASSES, {"train": 110, "test": 50}, channels=3, size=32, seed=1)
        roots[paths.ENV_DATA] = str(cifar)
    if os.environ.get(paths.ENV_MNIST):
        roots[paths.ENV_MNIST] = os.environ[paths.ENV_MNIST]
    else:
        tree = tmp_path_factory.mktemp("mnist-like")
        write_image_tree(tree, [str(d) for d in range(10)], {"train": 60, "test": 20}, channels=1, size=28, seed=2)
        archive = tree.parent / "mnist-like.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for split in ("train", "test"):
                tar.add(tree / split, arcname=split)
        roots[paths.ENV_MNIST] = str(archive)
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
