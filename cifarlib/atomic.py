"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A reader never sees a half-written file; an interrupted write leaves the old file (or none).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from cifarlib.errors import CifarlibError, WriteError, first_line

try:
    import fcntl  # POSIX; elsewhere nothing is locked
except ImportError:  # pragma: no cover
    fcntl = None


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()
REMEDIES = {  # what to do when a write fails, by the error's errno
    errno.ENOSPC: "free space there or write elsewhere", errno.EDQUOT: "free space there or write elsewhere",
    errno.EACCES: "make the folder writable or write elsewhere", errno.EPERM: "make the folder writable or write "
    "elsewhere", errno.EROFS: "the file system is read-only: write elsewhere",
}


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it to ``target``.

    >>> with atomic_path("out.png") as tmp:
    ...     fig.savefig(tmp, format="png")
    """
    target = Path(target)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp)
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # on disk before the rename: a power cut leaves the old file or the whole new one
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except WriteError:
        raise
    except OSError as err:  # disk full, read-only, no permission: one line, the old file (if any) kept
        reason = err.strerror or first_line(err)
        remedy = REMEDIES.get(err.errno, "write elsewhere")
        raise WriteError(f"cannot write {target} ({reason}); {remedy} (the previous file, if any, is unchanged)",
                         reason) from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike, obj) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def writable_dir(folder: Path, remedy: str, what: str = "to") -> Path:
    """``folder`` (created if missing) after proving a file can be written in it, else a one-line
    CifarlibError naming the folder, the reason and ``remedy``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise CifarlibError(f"cannot write {what} {folder} ({err.strerror or err}); {remedy}") from None
    return folder


@contextlib.contextmanager
def locked(lock_path: str | os.PathLike, waiting: str | None = None, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_path`` (created if missing; the system releases it when the
    process dies, so a killed holder never leaves it stuck). When another process holds it: with
    ``busy`` raise that one-line CifarlibError at once; else print ``waiting`` (if given) to stderr and
    wait. On a network file system this needs working locks (NFS with lockd); where there is no
    flock (not POSIX) nothing is locked."""
    with open(lock_path, "a+") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if busy is not None:
                    raise CifarlibError(busy) from None
                if waiting:
                    print(waiting, file=sys.stderr)
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError as err:  # ENOLCK: a network file system without a lock service
                raise CifarlibError(f"cannot lock {lock_path} ({err.strerror or err}): its file system has no "
                                    "working locks (NFS without lockd?); put that folder on a local disk") from None
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (read in 1 MiB blocks)."""
    import hashlib

    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
