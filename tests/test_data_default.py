"""The default data location: with no root given, ``data.load`` reads ``<cache>/datasets/<name>`` and
fills it with torchvision's download the first time; offline it stops at once with one line naming
the remedies; a given root (argument or environment variable) is never downloaded into unless asked.
``python -m cifarlib report`` runs the same check before any notebook.

Nothing here touches the network: the reachability probe and torchvision's downloads are stand-ins
(the downloads write tiny data sets in the official formats where torchvision would put them).
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cifarlib import data as D
from cifarlib import paths, report
from cifarlib.cli import main as cli_main
from cifarlib.errors import CifarlibError

OFFLINE = "[Errno -3] Temporary failure in name resolution"
CIFAR_ROWS = 2  # rows per stand-in CIFAR-10 batch: 5 train batches -> 10 training images
MNIST_SIZES = {"train": 4, "t10k": 3}


# ---- stand-ins ------------------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch):
    """The cache (so the default location) in tmp_path; no data root variable set."""
    monkeypatch.setenv(paths.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(paths.ENV_DATA, raising=False)
    monkeypatch.delenv(paths.ENV_MNIST, raising=False)
    return tmp_path / "cache"


def stub_probe(monkeypatch, reason: str | None) -> list[str]:
    """Replace the reachability probe: it answers ``reason`` (None: reachable). Returns the URLs asked."""
    asked = []

    def probe(url, timeout=None):
        asked.append(url)
        return reason

    monkeypatch.setattr(D.sources, "probe", probe)
    return asked


def forbid_probe(monkeypatch) -> None:
    def probe(url, timeout=None):
        raise AssertionError(f"probed {url} although no download was due")

    monkeypatch.setattr(D.sources, "probe", probe)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar_release(root: Path) -> dict:
    """What torchvision's CIFAR10 download extracts into ``root``: cifar-10-batches-py with the official
    pickles (CIFAR_ROWS rows a batch). Returns torchvision's file lists (name, MD5) for these files."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lists = {"train_list": [], "test_list": []}
    for part, name in [("train_list", f"data_batch_{i}") for i in range(1, 6)] + [("test_list", "test_batch")]:
        batch = {"data": rng.integers(0, 256, (CIFAR_ROWS, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, CIFAR_ROWS).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
        lists[part].append([name, md5(folder / name)])
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": D.CIFAR10_CLASSES}))
    lists["meta"] = {"filename": "batches.meta", "key": "label_names", "md5": md5(folder / "batches.meta")}
    return lists


def write_mnist_raw(raw: Path) -> None:
    """What torchvision's MNIST download leaves in ROOT/MNIST/raw: the IDX files, MNIST_SIZES images."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in MNIST_SIZES.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


@pytest.fixture
def downloads(monkeypatch):
    """torchvision's CIFAR10 and MNIST with their ``download`` replaced: it writes the stand-in files
    where torchvision would and prints on stdout as torchvision does. ``calls`` lists (name, root) per
    download; set ``fail`` to an exception to make the next download write part of the files, then raise it."""
    from torchvision import datasets

    state = SimpleNamespace(calls=[], fail=None)

    class CIFAR10(datasets.CIFAR10):  # the real class otherwise: integrity checks, reading the batches
        def download(self):
            state.calls.append(("cifar10", Path(self.root)))
            print("Downloading https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (stand-in)")
            lists = write_cifar_release(Path(self.root))
            if state.fail is not None:
                (Path(self.root) / "cifar-10-batches-py" / "test_batch").unlink()
                raise state.fail
            for key, value in lists.items():  # the published MD5 sums, as far as the data package is concerned
                setattr(type(self), key, value)

    class MNIST(datasets.MNIST):  # named MNIST: torchvision's folder is ROOT/<class name>/raw
        def download(self):
            if self._check_exists():
                return
            state.calls.append(("mnist", Path(self.root)))
            print("Downloading https://ossci-datasets.s3.amazonaws.com/mnist/ (stand-in)")
            write_mnist_raw(Path(self.raw_folder))

    monkeypatch.setattr(datasets, "CIFAR10", CIFAR10)
    monkeypatch.setattr(datasets, "MNIST", MNIST)
    return state


def write_tree(root: Path, classes=("a", "b"), n=2, mode="RGB") -> None:
    """A tiny image-folder tree ROOT/{train,test}/<class>/<i>.png."""
    for split_name in ("train", "test"):
        for cls in classes:
            folder = root / split_name / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new(mode, (4, 4), i * 40).save(folder / f"{i}.png")


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message, message
    return message


# ---- the default location -------------------------------------------------------------------------

def test_default_location_is_in_the_cache_folder(home):
    assert D.default_root("cifar10") == home / "datasets" / "cifar10"
    assert D.default_root("mnist") == home / "datasets" / "mnist"
    assert D.default_root("mnist", cache_dir=home / "other") == home / "other" / "datasets" / "mnist"


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_default_absent_and_online_downloads_once_then_reuses(home, downloads, monkeypatch, capsys, name):
    asked = stub_probe(monkeypatch, None)
    ds = D.load(name)
    target = home / "datasets" / name
    assert downloads.calls and downloads.calls[0][0] == name and len(downloads.calls) == 1
    assert downloads.calls[0][1].parent == target.parent and downloads.calls[0][1] != target  # a temporary folder
    assert asked == [D.DOWNLOADS[name][0]]
    assert ds.root == str(target) and ds.info["cache"] == "miss"
    if name == "cifar10":
        assert ds.source == "cifar-batches" and ds.classes == D.CIFAR10_CLASSES
        assert ds.train.images.shape == (5 * CIFAR_ROWS, 3, 32, 32) and len(ds.test) == CIFAR_ROWS
        assert (target / "cifar-10-batches-py" / "batches.meta").is_file()
    else:
        assert ds.source == "torchvision" and ds.classes == D.MNIST_CLASSES
        assert ds.train.images.shape == (MNIST_SIZES["train"], 1, 28, 28) and len(ds.test) == MNIST_SIZES["t10k"]
        assert (target / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert [p.name for p in (home / "datasets").iterdir()] == [name]  # no temporary folder left behind
    printed = capsys.readouterr()
    assert "Downloading" not in printed.out, "torchvision's messages would land in a notebook's output"
    assert "Downloading" in printed.err and f"into {target} with torchvision" in printed.err
    forbid_probe(monkeypatch)
    again = D.load(name)
    assert len(downloads.calls) == 1 and again.info["cache"] == "hit" and again.identity == ds.identity


def test_a_download_killed_midway_is_cleaned_and_a_waiting_one_reuses_the_first(home, downloads, monkeypatch, capsys):
    import fcntl
    import threading

    stub_probe(monkeypatch, None)
    killed = home / "datasets" / ".cifar10.k1lled_x"  # the staging folder of a download killed with kill -9
    (killed / "cifar-10-batches-py").mkdir(parents=True)
    lock = home / "locks" / "download-cifar10.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a+") as held:  # another process is downloading
        fcntl.flock(held, fcntl.LOCK_EX)
        loading = threading.Thread(target=D.load, args=("cifar10",))
        loading.start()
        loading.join(1.0)
        assert loading.is_alive() and not downloads.calls, "the download must wait for the lock"
    loading.join(60)
    assert not loading.is_alive() and len(downloads.calls) == 1
    assert [p.name for p in (home / "datasets").iterdir()] == ["cifar10"]  # the killed one's folder is gone
    assert "another process is downloading" in capsys.readouterr().err


def test_default_present_is_read_without_probe_or_download(home, downloads, monkeypatch):
    forbid_probe(monkeypatch)
    write_mnist_raw(home / "datasets" / "mnist" / "MNIST" / "raw")
    ds = D.load("mnist")
    assert ds.source == "torchvision" and ds.root == str(home / "datasets" / "mnist")
    assert downloads.calls == []
    assert D.check_source("mnist") == \
        f"MNIST: torchvision-mnist at {home / 'datasets' / 'mnist'} (the default location)"


@pytest.mark.parametrize("name, option, variable", [("cifar10", "--data-root PATH", "$CIFARLIB_DATA"),
                                                    ("mnist", "--mnist-root PATH", "$CIFARLIB_MNIST_DATA")])
def test_default_absent_and_offline_is_one_line_in_no_time_naming_three_remedies(home, downloads, monkeypatch,
                                                                                 name, option, variable):
    stub_probe(monkeypatch, OFFLINE)
    start = time.perf_counter()
    with pytest.raises(CifarlibError) as excinfo:
        D.load(name)
    assert time.perf_counter() - start < 1.0
    message = one_line(excinfo)
    make_option = {"cifar10": "DATA=PATH", "mnist": "MNIST=PATH"}[name]
    for remedy in ("connect to the internet once", option, make_option, variable):
        assert remedy in message, f"{remedy!r} missing from: {message}"
    assert str(home / "datasets" / name) in message and OFFLINE in message
    assert downloads.calls == [] and not (home / "datasets").exists()
    with pytest.raises(CifarlibError) as again:
        D.check_source(name)
    assert one_line(again) == message


def test_failed_download_leaves_no_partial_data_and_says_what_to_do(home, downloads, monkeypatch):
    stub_probe(monkeypatch, None)
    downloads.fail = RuntimeError("File not found or corrupted.")
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10")
    message = one_line(excinfo)
    assert message.startswith(f"cannot download CIFAR-10 from www.cs.toronto.edu into {home / 'datasets' / 'cifar10'} "
                              "(File not found or corrupted.)")
    assert "connect to the internet" in message and "--data-root PATH" in message and "$CIFARLIB_DATA" in message
    assert list((home / "datasets").iterdir()) == []  # the half-written files went with the temporary folder
    downloads.fail = None
    assert len(D.load("cifar10").train) == 5 * CIFAR_ROWS and len(downloads.calls) == 2


# ---- a given root ---------------------------------------------------------------------------------

def test_explicit_root_is_read_and_never_downloaded_into(tmp_path, home, downloads, monkeypatch):
    forbid_probe(monkeypatch)
    write_tree(tmp_path / "mine")
    assert D.load("cifar10", root=tmp_path / "mine").source == "image-folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "empty")
    assert "is empty" in one_line(excinfo)
    with pytest.raises(CifarlibError) as excinfo:
        D.load("mnist", root=tmp_path / "missing")
    assert "does not exist" in one_line(excinfo)
    assert downloads.calls == [] and list((tmp_path / "empty").iterdir()) == []
    assert not (tmp_path / "missing").exists() and not (home / "datasets").exists()


def test_explicit_root_is_downloaded_into_only_when_asked(tmp_path, home, downloads, monkeypatch):
    forbid_probe(monkeypatch)  # download=True keeps its old behaviour: torchvision straight into the root
    ds = D.load("mnist", root=tmp_path / "asked", download=True)
    assert downloads.calls == [("mnist", tmp_path / "asked")] and ds.root == str(tmp_path / "asked")
    assert not (home / "datasets").exists()


def test_environment_variable_root_is_read_and_never_downloaded_into(tmp_path, home, downloads, monkeypatch):
    forbid_probe(monkeypatch)
    write_tree(tmp_path / "digits", classes=("0", "1"), mode="L")
    monkeypatch.setenv(paths.ENV_MNIST, str(tmp_path / "digits"))
    ds = D.load("mnist")
    assert ds.root == str(tmp_path / "digits") and ds.classes == ["0", "1"]
    assert D.check_source("mnist") == f"MNIST: image-folder at {tmp_path / 'digits'}, from $CIFARLIB_MNIST_DATA"
    monkeypatch.setenv(paths.ENV_MNIST, str(tmp_path / "gone"))
    with pytest.raises(CifarlibError) as excinfo:
        D.load("mnist")
    assert "does not exist" in one_line(excinfo) and "$CIFARLIB_MNIST_DATA" in str(excinfo.value)
    assert downloads.calls == [] and not (home / "datasets").exists()


# ---- check_source ---------------------------------------------------------------------------------

def test_check_source_says_where_the_data_will_come_from_and_reads_nothing(tmp_path, home, downloads, monkeypatch):
    write_tree(tmp_path / "mine")
    forbid_probe(monkeypatch)
    assert D.check_source("cifar10", tmp_path / "mine") == f"CIFAR-10: image-folder at {tmp_path / 'mine'}"
    with pytest.raises(CifarlibError) as excinfo:
        D.check_source("cifar10", tmp_path / "nope")
    assert "does not exist" in one_line(excinfo)
    with pytest.raises(CifarlibError, match="unknown dataset"):
        D.check_source("imagenet")
    asked = stub_probe(monkeypatch, None)
    described = D.check_source("cifar10")
    assert described == (f"CIFAR-10: not in {home / 'datasets' / 'cifar10'} yet, downloaded there on first use "
                         "(about 170 MB from www.cs.toronto.edu)")
    assert asked == [D.DOWNLOADS["cifar10"][0]]
    assert downloads.calls == [] and not (home / "data").exists() and not (home / "datasets").exists()


def test_probe_reports_why_and_gives_up_after_its_timeout(monkeypatch):
    url = D.DOWNLOADS["cifar10"][0]
    seen = []

    def answers(request, timeout=None):
        seen.append((request.get_method(), request.full_url, timeout))
        return open(__file__, "rb")  # any response: a context manager

    monkeypatch.setattr(urllib.request, "urlopen", answers)
    assert D.probe(url, timeout=2) is None and seen == [("HEAD", url, 2)]

    def refuses(request, timeout=None):
        raise urllib.error.HTTPError(url, 403, "Forbidden", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", refuses)
    assert D.probe(url, timeout=2) is None  # the server answered: the network works

    def offline(request, timeout=None):
        raise urllib.error.URLError(OFFLINE)

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert D.probe(url, timeout=2) == OFFLINE

    release = threading.Event()

    def hangs(request, timeout=None):  # a name lookup that never returns ignores urlopen's timeout
        release.wait(10)
        raise urllib.error.URLError("released")

    monkeypatch.setattr(urllib.request, "urlopen", hangs)
    start = time.perf_counter()
    try:
        assert D.probe(url, timeout=0.2) == "no answer within 0.2 s"
        assert time.perf_counter() - start < 1.0
    finally:
        release.set()


def test_download_urls_are_the_ones_torchvision_fetches_first():
    from torchvision.datasets import CIFAR10, MNIST

    assert D.DOWNLOADS["cifar10"][0] == CIFAR10.url
    assert D.DOWNLOADS["mnist"][0] == MNIST.mirrors[0] + MNIST.resources[0][0]


# ---- the report command checks before running anything ----------------------------------------------

@pytest.fixture
def notebooks(tmp_path, home, monkeypatch, stand_in_notebook):
    """A notebooks folder (01 reads no data, 02 CIFAR-10, 03 MNIST) and a report whose notebook runs
    and export are recorded, not done."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    stand_in_notebook(folder / "01_plain.ipynb", 'profile = "full"\nseed = 0')
    stand_in_notebook(folder / "02_cifar.ipynb", 'profile = "full"\ndata_root = None')
    stand_in_notebook(folder / "03_digits.ipynb", 'profile = "full"\nmnist_root = None')
    monkeypatch.setenv(paths.ENV_RUNS, str(tmp_path / "runs"))
    monkeypatch.setenv(paths.ENV_FIGURES, str(tmp_path / "figures"))
    ran = []
    monkeypatch.setattr(report, "run_notebooks", lambda parts, build, keep_going, executor=None: ran.append(parts))
    monkeypatch.setattr(report, "build_report", lambda *args, **kwargs: None)
    return SimpleNamespace(folder=folder, ran=ran, out=tmp_path / "out")


def test_report_stops_before_any_notebook_when_the_default_data_cannot_be_had(notebooks, monkeypatch, capsys):
    stub_probe(monkeypatch, OFFLINE)
    code = cli_main(["report", "--notebooks", str(notebooks.folder), "--out", str(notebooks.out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: 2 problems stop this build before anything runs")
    cifar, mnist = err.splitlines()[1:]  # the whole list, one line per missing data set
    assert cifar.startswith("  02_cifar: CIFAR-10 is not in ") and mnist.startswith("  03_digits: MNIST is not in ")
    assert "connect to the internet once" in cifar and "DATA=PATH" in cifar and "$CIFARLIB_DATA" in cifar
    assert "MNIST=PATH" in mnist and "$CIFARLIB_MNIST_DATA" in mnist
    assert notebooks.ran == [] and not notebooks.out.exists()


def test_report_checks_only_the_data_sets_the_selected_notebooks_read(tmp_path, notebooks, monkeypatch, capsys):
    asked = stub_probe(monkeypatch, OFFLINE)
    args = ["report", "--notebooks", str(notebooks.folder), "--out", str(notebooks.out)]
    assert cli_main([*args, "--only", "01"]) == 0  # reads no data: offline is fine
    assert asked == [] and len(notebooks.ran) == 1
    write_tree(tmp_path / "cifar")
    code = cli_main([*args, "--only", "01,02", "--data-root", str(tmp_path / "cifar")])
    assert code == 0 and asked == [] and len(notebooks.ran) == 2
    assert notebooks.ran[1][1].params["data_root"] == str((tmp_path / "cifar").resolve())
    assert f"data: CIFAR-10: image-folder at {(tmp_path / 'cifar').resolve()}" in capsys.readouterr().out
    code = cli_main([*args, "--data-root", str(tmp_path / "cifar")])  # 03 reads MNIST: not here, offline
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: MNIST is not in ") and "MNIST=PATH" in err
    assert asked == [D.DOWNLOADS["mnist"][0]] and len(notebooks.ran) == 2
