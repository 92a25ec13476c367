"""Data on disk: find a data set's files (image trees, archives, the official formats, the default
download), decode them once into uint8 tensors and cache those.

Every way in is checked before the work: a root without data, an image too large or of an unknown
format, a tree of one class, an unsafe archive member are one-line errors naming the remedy.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy
import torch
from PIL import Image, UnidentifiedImageError

from cifarlib import atomic, paths
from cifarlib.atomic import atomic_path, locked, writable_dir
from cifarlib.data.sets import MNIST_CLASSES, Dataset, ImageSet, class_counts, short_hash, synthetic
from cifarlib.errors import CifarlibError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_IMAGE_PIXELS = 4096 * 4096  # per image, checked from the file's header before decoding (a 140 KB PNG can
#                                 claim 144 million pixels and take 2 GB to decode)
WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # PIL's modes for 16-bit grayscale PNGs
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
ENV_VARS = {"cifar10": paths.ENV_DATA, "mnist": paths.ENV_MNIST}  # data root variable per data set
TREE_LAYOUTS = "an image-folder tree ROOT/{train,test}/<class>/*.png|jpg|jpeg or a .tar.gz/.tgz/.zip of one"
LAYOUTS = {  # what a data root may hold, per data set (for help texts and error messages)
    "cifar10": f"{TREE_LAYOUTS}, or an official cifar-10-batches-py folder (or its parent)",
    "mnist": f"{TREE_LAYOUTS}, or a torchvision MNIST root (ROOT/MNIST/raw)",
}
CACHE_FORMAT = 1  # bump when the cached payload changes; old cache files are then ignored
LABELS = {"cifar10": "CIFAR-10", "mnist": "MNIST"}
ROOT_PARAMETERS = {"cifar10": "data_root", "mnist": "mnist_root"}  # the notebooks' parameter per data set
ROOT_OPTIONS = {  # how a user gives a root, per data set (for error messages)
    "cifar10": "--data-root PATH (make report DATA=PATH, notebook data_root=PATH)",
    "mnist": "--mnist-root PATH (make report MNIST=PATH, notebook mnist_root=PATH)",
}
DOWNLOADS = {  # what torchvision fetches into the default location: the first URL it tries, and the size
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "about 170 MB"),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz", "about 12 MB"),
}
CACHE_REMEDY = f"set ${paths.ENV_CACHE} to a writable folder"
PROBE_TIMEOUT_S = 5.0  # how long the reachability check waits for the download server


def load(name: str = "cifar10", root=None, download: bool = False, cache_dir=None) -> Dataset:
    """Find, decode (or read from the cache) and return a data set.

    ``root`` (default: $CIFARLIB_DATA for cifar10, $CIFARLIB_MNIST_DATA for mnist) may hold any of
    ``LAYOUTS[name]``; the layout is detected. A given root is only read: ``download=True`` fetches
    the official files with torchvision (checksum-verified) into it when it holds no data. With no
    root given, the data comes from :func:`default_root` (``<cache>/datasets/<name>``), where
    torchvision downloads it the first time (after a reachability check of a few seconds; offline,
    a one-line error names the remedies). Decoded tensors are cached under ``cache_dir`` (default
    :func:`cifarlib.paths.cache_dir`), keyed by the source files' names, sizes and modification
    times, so a changed source is decoded again. ``info`` records ``cache`` ("hit"/"miss"),
    ``load_s`` (seconds) and the cache file. ``name="synthetic"`` returns :func:`synthetic`.
    """
    if name == "synthetic":
        return synthetic()
    if name not in ENV_VARS:
        raise CifarlibError(f"unknown dataset {name!r}; choose one of: cifar10, mnist, synthetic")
    start = time.perf_counter()
    cache = paths.cache_dir(cache_dir)
    given = _given_root(name, root)
    root = given if given is not None else default_root(name, cache)
    if _find_layout(name, root) is None:
        if given is None:
            _fetch_default(name, root)
        elif download:
            _download(name, root)
    kind, where = _detect(name, root)
    cache_file = cache / "data" / f"{name}-{kind}-{short_hash(str(where.resolve()))}-{_source_key(kind, where)}.pt"
    payload = _read_cache(cache_file)
    hit = payload is not None
    if not hit:
        payload = _decode_source(name, kind, where, cache)
        _write_cache(cache_file, payload)
    return _dataset(name, kind, root, payload, {
        "cache": "hit" if hit else "miss", "cache_file": str(cache_file), "layout": kind,
        "load_s": round(time.perf_counter() - start, 3)})


def _dataset(name: str, kind: str, root: Path, payload: dict, info: dict) -> Dataset:
    classes = list(payload["classes"])
    train = ImageSet(payload["train_images"], payload["train_labels"])
    test = ImageSet(payload["test_images"], payload["test_labels"])
    source = "torchvision" if kind == "torchvision-mnist" else payload["layout"]  # what was read, not how it came
    info.update(train_per_class=class_counts(train.labels, len(classes)),
                test_per_class=class_counts(test.labels, len(classes)))
    return Dataset(name, source, classes, train, test, short_hash(name, payload["content"]), str(root), info)


# ----------------------------------------------------------------------------- finding the source

def _given_root(name: str, root) -> Path | None:
    """The root the user gave: the argument, else the data set's environment variable; None if neither."""
    if root is None:
        root = os.environ.get(ENV_VARS[name]) or None
    return Path(root).expanduser() if root is not None else None


def default_root(name: str, cache_dir=None) -> Path:
    """Where ``name`` lives when no root is given: ``<cache>/datasets/<name>`` (a torchvision root,
    filled by the first :func:`load`). Deleting it only costs a new download."""
    return paths.cache_dir(cache_dir) / "datasets" / name


def check_source(name: str, root=None, cache_dir=None) -> str:
    """Where :func:`load` with these arguments will get ``name`` from, as one short line; or a one-line
    CifarlibError saying why it cannot, with the remedies. Decodes nothing and downloads nothing.

    A given root (argument or environment variable) must exist and hold a known layout. Without one,
    the default location must hold the data already or its download server must answer
    :func:`probe` within ``PROBE_TIMEOUT_S`` seconds."""
    if name not in ENV_VARS:
        raise CifarlibError(f"unknown dataset {name!r}; choose one of: {', '.join(ENV_VARS)}")
    given = _given_root(name, root)
    if given is not None:
        kind, where = _detect(name, given)
        origin = "" if root is not None else f", from ${ENV_VARS[name]}"
        return f"{LABELS[name]}: {kind} at {where}{origin}"
    home = default_root(name, cache_dir)
    found = _find_layout(name, home)
    if found is not None:
        return f"{LABELS[name]}: {found[0]} at {found[1]} (the default location)"
    return _check_download(name, home)


def _check_download(name: str, home: Path) -> str:
    """"Downloaded on first use" when :func:`probe` reaches the server of ``name``; else the one-line
    error naming the three remedies (internet once, a local copy, the environment variable)."""
    url, size = DOWNLOADS[name]
    reason = probe(url)
    if reason is not None:
        raise CifarlibError(f"{LABELS[name]} is not in {home} yet and cannot be downloaded "
                            f"({_host(url)}: {reason}); {_remedies(name)}")
    return f"{LABELS[name]}: not in {home} yet, downloaded there on first use ({size} from {_host(url)})"


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the server of ``url`` answers an HTTP HEAD request within ``timeout`` seconds (any
    status counts: the network works), else why not, in a few words. Goes through the proxy urllib
    uses, as torchvision's download does; waits at most ``timeout`` seconds, name lookup included."""
    import urllib.error
    import urllib.request

    answer: list[str | None] = []

    def ask():
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "cifarlib"})
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                answer.append(None)
        except urllib.error.HTTPError:
            answer.append(None)
        except Exception as err:  # noqa: BLE001 - any failure means: cannot download from here
            answer.append(first_line(err))

    worker = threading.Thread(target=ask, name="cifarlib-probe", daemon=True)  # a hung name lookup
    worker.start()  # cannot be interrupted; a daemon thread left waiting on it does not delay exit
    worker.join(timeout)
    return answer[0] if answer else f"no answer within {timeout:g} s"


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _remedies(name: str) -> str:
    return (f"either connect to the internet once (the download is kept there), or point {ROOT_OPTIONS[name]} "
            f"at a local copy ({LAYOUTS[name]}), or set ${ENV_VARS[name]} to one")


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _find_layout(name: str, root: Path) -> tuple[str, Path] | None:
    """(kind, folder) of the data under ``root``, looking also inside one wrapping folder; or None.
    kind: "image-folder" | "image-archive" | "cifar-batches" | "torchvision-mnist"."""
    if root.is_file():
        return ("image-archive", root) if _is_archive(root) else None
    if not root.is_dir():
        return None
    entries = _visible(root)
    wrapper = entries if len(entries) == 1 and entries[0].is_dir() else []
    for folder in (root, *wrapper):
        if name == "cifar10":
            for candidate in (folder, folder / "cifar-10-batches-py"):
                if (candidate / "batches.meta").is_file():
                    return "cifar-batches", candidate
        if name == "mnist" and (folder / "MNIST" / "raw").is_dir():
            return "torchvision-mnist", folder
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return "image-folder", folder
    return None


def _detect(name: str, root: Path) -> tuple[str, Path]:
    """Like :func:`_find_layout`, but a root without data is a one-line error saying why."""
    found = _find_layout(name, root)
    if found is not None:
        return found
    env, layouts = ENV_VARS[name], LAYOUTS[name]
    if not root.exists():
        raise CifarlibError(f"data root {root} does not exist; pass --data-root PATH or set ${env} to {layouts}")
    if root.is_file():
        raise CifarlibError(f"data root {root} is a file but not a .tar.gz/.tgz/.zip archive; accepted: {layouts}")
    entries = _visible(root)
    if not entries:
        raise CifarlibError(f"data root {root} is empty; put {layouts} there (or use --download with internet)")
    names = {p.name for p in entries}
    for have, lack in (("train", "test"), ("test", "train")):
        if have in names and lack not in names:
            raise CifarlibError(f"data root {root} has a {have}/ folder but no {lack}/ folder; "
                                f"an image-folder tree needs both ROOT/train/<class>/ and ROOT/test/<class>/")
    shown = ", ".join(sorted(names)[:8]) + (", ..." if len(names) > 8 else "")
    raise CifarlibError(f"data root {root} is not a recognised layout (it holds: {shown}); accepted: {layouts}")


def _scan_tree(root: Path) -> dict[str, dict[str, list[os.DirEntry]]]:
    """split -> class -> image files (sorted by name) of an image-folder tree."""
    tree = {}
    for split_name in ("train", "test"):
        with os.scandir(root / split_name) as it:
            class_dirs = sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
        tree[split_name] = {}
        for cls in class_dirs:
            with os.scandir(cls.path) as it:
                files = [e for e in it if e.is_file() and not e.name.startswith(".")
                         and e.name.lower().endswith(IMAGE_SUFFIXES)]
            tree[split_name][cls.name] = sorted(files, key=lambda e: e.name)
    return tree


def _source_key(kind: str, where: Path) -> str:
    """Cheap fingerprint of the source: names, sizes and modification times of its files."""
    if kind == "image-folder":
        files = [(f"{s}/{c}/{e.name}", e.stat()) for s, classes in _scan_tree(where).items()
                 for c, entries in classes.items() for e in entries]
    elif kind == "image-archive":
        files = [(where.name, where.stat())]
    else:
        folder = where / "MNIST" / "raw" if kind == "torchvision-mnist" else where
        files = [(p.name, p.stat()) for p in _visible(folder) if p.is_file()]
    return short_hash(CACHE_FORMAT, kind, [(n, st.st_size, st.st_mtime_ns) for n, st in files])


# ----------------------------------------------------------------------------- decoding

def _decode_source(name: str, kind: str, where: Path, cache: Path) -> dict:
    """Decode a source into the cache payload (tensors, classes, layout, content hash)."""
    if kind == "image-archive":
        archive, where = where, _extract_archive(where, cache)
        found = _find_layout(name, where)
        if found is None or found[0] == "image-archive":
            raise CifarlibError(f"archive {archive} holds no recognised layout; accepted: {LAYOUTS[name]}")
        kind, where = found
    if kind == "image-folder":
        payload = _decode_tree(where)
    elif kind == "cifar-batches":
        payload = _read_cifar_batches(where)
    else:
        payload = _read_torchvision_mnist(where)
    payload.update(format=CACHE_FORMAT, layout=kind, content=_content_hash(payload))
    return payload


def _extract_archive(archive: Path, cache: Path) -> Path:
    """Extract ``archive`` once into ``<cache>/extracted/``; later calls reuse the folder.

    Extraction goes to a hidden folder beside the target, renamed into place when complete, under a
    lock: two processes extract once, and a folder left by a killed extraction is removed by the next."""
    st = archive.stat()
    stem = re.sub(r"(\.tar\.gz|\.tgz|\.zip)$", "", archive.name, flags=re.IGNORECASE)
    dest = cache / "extracted" / f"{stem}-{short_hash(str(archive.resolve()), st.st_size, st.st_mtime_ns)}"
    if dest.is_dir():
        return dest
    writable_dir(dest.parent, what="the data cache in", remedy=CACHE_REMEDY)
    with locked(_lock_file(cache, f"extract-{dest.name}"), waiting=f"waiting: another process is extracting {archive}"):
        if dest.is_dir():  # extracted by the process we waited for
            return dest
        _remove_stale(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            try:
                if archive.name.lower().endswith(".zip"):
                    with zipfile.ZipFile(archive) as zf:
                        zf.extractall(tmp)
                else:
                    with tarfile.open(archive, "r:gz") as tf:
                        _safe_extract_tar(tf, tmp)
            except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
                raise CifarlibError(f"cannot extract archive {archive} ({first_line(err)}); "
                                    "download or create it again") from None
            try:
                os.replace(tmp, dest)
            except OSError:
                if not dest.is_dir():  # not a concurrent extraction (without working locks) that finished first
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _lock_file(cache: Path, name: str) -> Path:
    """``<cache>/locks/<name>.lock`` (the folder created): locks live apart from the data they guard."""
    return writable_dir(cache / "locks", what="the data cache in", remedy=CACHE_REMEDY) / f"{name}.lock"


def _remove_stale(target: Path) -> None:
    """Remove the hidden staging folders (``.<target name>.XXXXXXXX`` from :func:`tempfile.mkdtemp`) that a
    killed extraction or download left beside ``target``. The caller holds the lock that every writer
    of those folders holds, so none of them is in use; where there are no locks, nothing is removed."""
    if atomic.fcntl is None:
        return
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}")
    for stale in target.parent.iterdir():
        if pattern.fullmatch(stale.name) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _safe_extract_tar(tf: tarfile.TarFile, dest: Path) -> None:
    """Extract only plain files and folders under ``dest``, with ordinary permissions, on every Python:
    members with absolute paths or '..', links, devices and pipes are refused; then tarfile's "data"
    filter extracts where this Python has it, else the same rules by hand (no setuid/setgid bits, no
    write bits for others, files owned by the extracting user)."""
    members = []
    for member in tf.getmembers():
        if member.name.startswith("/") or ".." in Path(member.name).parts:
            raise tarfile.TarError(f"unsafe member {member.name!r} (outside the archive's folder)")
        if not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"unsafe member {member.name!r} (a link, device or pipe)")
        if hasattr(tarfile, "data_filter"):
            continue
        member = copy.copy(member)
        member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
        member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
        members.append(member)
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, filter="data")
    else:
        tf.extractall(dest, members=members, numeric_owner=True)


def _check_tree(root: Path, tree: dict) -> None:
    train, test = tree["train"], tree["test"]
    if not train:
        raise CifarlibError(f"{root / 'train'} has no class folders; expected ROOT/train/<class>/*.png|jpg|jpeg")
    if len(train) < 2:
        raise CifarlibError(f"{root / 'train'} has only one class folder ({next(iter(train))}); a classifier needs "
                            "at least 2, one folder per class in both train/ and test/")
    if set(train) != set(test):
        only_train = ", ".join(sorted(set(train) - set(test))) or "none"
        only_test = ", ".join(sorted(set(test) - set(train))) or "none"
        raise CifarlibError(f"train and test class folders differ in {root} (only in train: {only_train}; "
                            f"only in test: {only_test}); give train/ and test/ the same class folders")
    for split_name, classes in tree.items():
        for cls, files in classes.items():
            if not files:
                raise CifarlibError(f"class folder {root / split_name / cls} has no images (*.png, *.jpg, *.jpeg); "
                                    "add images or remove the class from both train/ and test/")


def _decode_tree(root: Path) -> dict:
    """Decode an image-folder tree; classes are the sorted folder names, labels their indices."""
    tree = _scan_tree(root)
    _check_tree(root, tree)
    classes = sorted(tree["train"])
    files = {s: [e.path for c in classes for e in tree[s][c]] for s in ("train", "test")}
    images = _decode_files(files["train"] + files["test"])
    n_train = len(files["train"])
    payload = {"classes": classes, "train_images": images[:n_train].clone(), "test_images": images[n_train:].clone()}
    for s in ("train", "test"):
        payload[f"{s}_labels"] = torch.tensor([k for k, c in enumerate(classes) for _ in tree[s][c]], dtype=torch.int64)
    return payload


def decode_image(path, fix: str = "delete or replace the file") -> numpy.ndarray:
    """One PNG/JPEG file -> uint8 (H, W, 3) array; grayscale, palette and alpha images become RGB and
    16-bit grayscale is scaled to 8 bits (65535 -> 255). The size is checked from the header, before
    any pixel is decoded, against ``MAX_IMAGE_PIXELS``. A file that cannot be used is a one-line
    CifarlibError ending in ``fix``."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise CifarlibError(f"image {path} is {width}x{height} pixels (width x height), more than the "
                                    f"{MAX_IMAGE_PIXELS:,} this loader decodes per image; resize the images "
                                    f"(CIFAR-10's are 32x32); {fix}")
            if image.mode in WIDE_GRAY_MODES:
                return _gray16_to_rgb8(numpy.asarray(image), path)
            return numpy.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise CifarlibError(f"cannot decode image {path} (not an image format PIL can read); {fix}") from None
    except Image.DecompressionBombError as err:
        raise CifarlibError(f"image {path} is refused as a decompression bomb ({first_line(err)}); {fix}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise CifarlibError(f"cannot decode image {path} ({first_line(err)}); {fix}") from None


def _gray16_to_rgb8(pixels: numpy.ndarray, path: str) -> numpy.ndarray:
    """16-bit gray values (0..65535) -> uint8 RGB, rounded: v -> round(v * 255 / 65535)."""
    wide = pixels.astype(numpy.int64)
    if wide.size and (wide.min() < 0 or wide.max() > 65535):
        raise CifarlibError(f"image {path} holds gray values outside 0..65535 (a 32-bit image); save it as 8- or "
                            "16-bit PNG")
    gray = ((wide * 255 + 32767) // 65535).astype(numpy.uint8)
    return numpy.repeat(gray[:, :, None], 3, axis=2)


def _decode_chunk(files: list[str]) -> list[numpy.ndarray]:
    return [decode_image(f) for f in files]


def _decode_files(files: list[str]) -> torch.Tensor:
    """Decode image files (PIL, threads overlap the reads) -> uint8 (N, C, H, W); C = 1 when every
    image is gray (all three channels equal), else 3."""
    chunks = [files[i:i + 512] for i in range(0, len(files), 512)]
    with warnings.catch_warnings():  # PIL warns about large images; decode_image refuses them itself
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            images = [image for part in pool.map(_decode_chunk, chunks) for image in part]
    height, width = images[0].shape[:2]
    for path, image in zip(files, images):
        if image.shape[:2] != (height, width):
            raise CifarlibError(f"images of mixed sizes: {path} is {image.shape[0]}x{image.shape[1]} but {files[0]} "
                                f"is {height}x{width} (height x width); resize all images to one size")
    stacked = torch.from_numpy(numpy.stack(images)).permute(0, 3, 1, 2)  # (N, 3, H, W) view
    gray = torch.equal(stacked[:, 0], stacked[:, 1]) and torch.equal(stacked[:, 1], stacked[:, 2])
    return stacked[:, :1].contiguous() if gray else stacked.contiguous()


def _content_hash(payload: dict) -> str:
    """SHA-256 of the decoded tensors and class names: the data's identity, independent of paths."""
    digest = hashlib.sha256(json.dumps(payload["classes"]).encode("utf-8"))
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        tensor = payload[key].contiguous()
        digest.update(f"{key}{tuple(tensor.shape)}".encode("utf-8"))
        digest.update(tensor.numpy().data)
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- official formats

def _cifar_batch_md5() -> dict[str, list[tuple[str, str]]]:
    """Official cifar-10-batches-py files and their MD5 sums (torchvision's list), per part."""
    from torchvision.datasets import CIFAR10

    return {"train": [tuple(x) for x in CIFAR10.train_list], "test": [tuple(x) for x in CIFAR10.test_list],
            "meta": [(CIFAR10.meta["filename"], CIFAR10.meta["md5"])]}


def _read_cifar_batches(folder: Path) -> dict:
    """Verify (MD5) and read the official pickled batches: 10000 x 3072 uint8 rows each."""
    fix = f"delete {folder} and download it again (--download / download=True, or copy it anew)"
    parts = _cifar_batch_md5()
    for file_name, md5 in (entry for files in parts.values() for entry in files):
        path = folder / file_name
        if not path.is_file():
            raise CifarlibError(f"official CIFAR-10 folder {folder} lacks {file_name}; {fix}")
        if atomic.file_digest(path, "md5") != md5:
            raise CifarlibError(f"{path} fails its MD5 check ({path.stat().st_size:,} bytes, expected md5 {md5}): "
                                f"the file is truncated or altered; {fix}")
    meta = _unpickle(folder / parts["meta"][0][0], fix)
    payload = {"classes": [str(c) for c in meta["label_names"]]}
    for part in ("train", "test"):
        batches = [_unpickle(folder / file_name, fix) for file_name, _ in parts[part]]
        rows = numpy.concatenate([numpy.asarray(b["data"], dtype=numpy.uint8) for b in batches])
        payload[f"{part}_images"] = torch.from_numpy(rows.reshape(-1, 3, 32, 32).copy())
        payload[f"{part}_labels"] = torch.tensor([y for b in batches for y in b["labels"]], dtype=torch.int64)
    return payload


def _unpickle(path: Path, fix: str) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, AttributeError) as err:
        raise CifarlibError(f"cannot read {path} ({first_line(err)}): the file is truncated or corrupt; {fix}") from None


def _read_torchvision_mnist(root: Path) -> dict:
    from torchvision.datasets import MNIST

    try:
        parts = {p: MNIST(str(root), train=(p == "train"), download=False) for p in ("train", "test")}
    except RuntimeError as err:
        raise CifarlibError(f"torchvision MNIST files under {root / 'MNIST' / 'raw'} are missing or fail their checks "
                            f"({first_line(err)}); delete that folder and use --download again") from None
    payload = {"classes": list(MNIST_CLASSES)}
    for p, d in parts.items():
        payload[f"{p}_images"] = d.data.to(torch.uint8).unsqueeze(1).contiguous()
        payload[f"{p}_labels"] = d.targets.to(torch.int64)
    return payload


def fetch(name: str, root: Path) -> None:
    """Download the official files of ``name`` into ``root`` with torchvision (which verifies their MD5
    sums and shows its progress bar). Its messages go to stderr, so that a notebook's printed output
    stays clean. Raises what torchvision raises."""
    from torchvision import datasets

    dataset = {"cifar10": datasets.CIFAR10, "mnist": datasets.MNIST}[name]
    with contextlib.redirect_stdout(sys.stderr):
        dataset(str(root), train=False, download=True)  # fetches both splits; reads back only the test one


def _download(name: str, root: Path) -> None:
    """``download=True`` into a given ``root``: :func:`fetch`, failures as one line."""
    try:
        fetch(name, root)
    except (OSError, RuntimeError) as err:  # urllib.error.URLError is an OSError
        raise CifarlibError(f"cannot download {name} ({first_line(err)}); this machine looks offline: point at local "
                            f"data with --data-root PATH or ${ENV_VARS[name]} ({LAYOUTS[name]})") from None


def _fetch_default(name: str, home: Path) -> None:
    """Fill the default location ``home``: first the reachability check (seconds; offline, the one-line
    error with the remedies), then, under a lock (two processes download once), :func:`fetch` into a
    hidden folder beside it whose contents are moved in when complete, so that ``home`` never holds half
    a data set; a folder left by a killed download is removed by the next."""
    import http.client  # IncompleteRead and friends: a connection lost mid-download

    _check_download(name, home)
    url, size = DOWNLOADS[name]
    writable_dir(home.parent, what="the data cache in", remedy=f"{CACHE_REMEDY}, or {ROOT_OPTIONS[name]}")
    with locked(_lock_file(home.parent.parent, f"download-{home.name}"),
                waiting=f"waiting: another process is downloading into {home}"):
        if _find_layout(name, home) is not None:  # downloaded by the process we waited for
            return
        _remove_stale(home)
        print(f"downloading {LABELS[name]} ({size}) into {home} with torchvision; later runs reuse it",
              file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=f".{home.name}.", dir=home.parent))
        try:
            try:
                fetch(name, tmp)
            except (OSError, RuntimeError, http.client.HTTPException) as err:
                raise CifarlibError(f"cannot download {LABELS[name]} from {_host(url)} into {home} "
                                    f"({first_line(err)}); {_remedies(name)}") from None
            home.mkdir(exist_ok=True)
            for entry in sorted(tmp.iterdir()):
                _move_in(entry, home / entry.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _move_in(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` (one step: a folder appears whole or not at all)."""
    try:
        os.replace(source, target)
    except OSError as err:
        if target.is_dir() and source.is_dir():  # a concurrent download finished first
            return
        raise CifarlibError(f"cannot move the download to {target} ({first_line(err)}); "
                            f"delete {target.parent} and run again") from None


# ----------------------------------------------------------------------------- cache

def _read_cache(path: Path) -> dict | None:
    """The cached payload, or None when missing, unreadable or of an older format (then rebuilt)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        return None
    return payload if isinstance(payload, dict) and payload.get("format") == CACHE_FORMAT else None


def _write_cache(path: Path, payload: dict) -> None:
    """Write atomically; drop older cache files of the same source. A read-only cache only warns."""
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as err:
        warnings.warn(f"could not write the data cache {path} ({first_line(err)}); the next load decodes again")
        return
    prefix = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{prefix}-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
