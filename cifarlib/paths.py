"""Where things live: data, caches, run records, figures. One place for every environment variable.

Precedence everywhere: an explicit argument, then the environment variable, then the default.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA = "CIFARLIB_DATA"  # CIFAR-10 root: image-folder tree, cifar-10-batches-py, or torchvision root
ENV_MNIST = "CIFARLIB_MNIST_DATA"  # MNIST root: image-folder tree (or .tar.gz of one), or torchvision root
ENV_CACHE = "CIFARLIB_CACHE"  # decoded tensors and the downloaded data sets (datasets/<name>, when no root is
#                               given); safe to delete, at the cost of a new download (default ~/.cache/cifarlib)
ENV_RUNS = "CIFARLIB_RUNS"  # run records (default <repo>/runs, else ./runs)
ENV_FIGURES = "CIFARLIB_FIGURES"  # figure output folder (default <repo>/figures, else ./figures)
ENV_WEIGHTS = "CIFARLIB_RESNET18_WEIGHTS"  # local ImageNet ResNet18 state_dict file
ENV_THREADS = "CIFARLIB_THREADS"  # CPU threads per run, fixed (default: torch's count, fewer while the CPU is busy)
ENV_PROGRESS = "CIFARLIB_PROGRESS"  # "0" turns progress bars off (batch/report runs do this)
ENV_EXECUTOR = "CIFARLIB_EXECUTOR"  # where notebooks and the report train runs: local | serial | dask:ADDRESS | submitit:FOLDER
ENV_RUN_LOG = "CIFARLIB_RUN_LOG"  # file that train_or_load appends each run folder it uses to (set by the report)


def project_root() -> Path | None:
    """The repository checkout this package was imported from, or None for an installed copy."""
    here = Path(__file__).resolve().parent.parent
    pyproject = here / "pyproject.toml"
    if pyproject.is_file() and 'name = "cifarlib"' in pyproject.read_text(encoding="utf-8"):
        return here
    return None


def _pick(explicit: str | os.PathLike | None, env: str, default_name: str) -> Path:
    if explicit is not None:
        return Path(explicit).expanduser()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    root = project_root()
    return (root if root is not None else Path.cwd()) / default_name


def runs_dir(explicit: str | os.PathLike | None = None) -> Path:
    return _pick(explicit, ENV_RUNS, "runs")


def figures_dir(explicit: str | os.PathLike | None = None) -> Path:
    return _pick(explicit, ENV_FIGURES, "figures")


def report_dir(explicit: str | os.PathLike | None = None) -> Path:
    return _pick(explicit, "CIFARLIB_REPORT", "report")


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit is not None:
        return Path(explicit).expanduser()
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifarlib"


def progress_enabled() -> bool:
    """Progress bars are on unless CIFARLIB_PROGRESS=0 (or TQDM_DISABLE=1) is set."""
    if os.environ.get(ENV_PROGRESS, "1") == "0":
        return False
    return os.environ.get("TQDM_DISABLE", "") not in ("1", "true", "True")
