"""Run records on disk, and ``train_or_load``: train once, reuse the finished run afterwards.

CONTRACT (other modules rely on these names; keep them):

    rec = train_or_load(cfg, data=None, data_root=None, runs_dir=None, force=False, progress=None)
        # data: a cifarlib.data.Dataset (loaded from cfg.dataset + data_root when None)
    rec.dir            Path runs/<name>-<hash>/ with config.json history.csv metrics.json model.pt env.json DONE
                       (DONE, written last, holds the status and the SHA-256 of the five files)
    rec.config         TrainConfig
    rec.history        pandas.DataFrame (columns = train.HISTORY_COLUMNS)
    rec.metrics        dict
    rec.env            dict (git commit + dirty flag, torch/torchvision versions, device, threads, wall_s, date)
    rec.status         str
    rec.cached         bool: True when loaded from disk rather than trained now
    rec.finished       bool: the DONE marker is there (interrupted runs are saved without it)
    rec.load_model()   nn.Module with the saved weights (weights_only=True)
    find_runs(name=None, runs_dir=None) -> list[RunRecord]   finished runs, newest first (damaged ones skipped)
    find_finished(cfg, ...) -> RunRecord | None             never trains
    load_run(path) -> RunRecord ; damage(path) -> str | None (why a finished record cannot be trusted)
    prepare_splits(cfg, ds=None, data_root=None) -> Splits     (memoized in-process)

The folder hash covers the config, the data identity (data set + selection + split) and the code
version: a hash of the code of the engine (train.py, data/, models/__init__.py) and of the module
that defines the run's model (their syntax trees, without comments and docstrings). Editing a
notebook, the report, a comment, a docstring or another model's module keeps the cache; a change to
the code that trains this model retrains it.

Many runs at once go through :func:`cifarlib.sweep.run_many`, which calls ``train_or_load`` in its
workers: the run's lock and the rename of its staging folder make that safe across processes.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import datetime
import functools
import hashlib
import inspect
import json
import linecache
import os
import platform
import shutil
import sys
import sysconfig
import textwrap
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from cifarlib import atomic, data, models, paths, provenance, train
from cifarlib.errors import CifarlibError, first_line

DONE = "DONE"  # completion marker, written last: a folder without it is never taken as finished; it holds
#               the status and the SHA-256 of every file, so a damaged file is found (older records: status only)
FILES = ("config.json", "history.csv", "metrics.json", "model.pt", "env.json")
FINISHED_STATUSES = ("finished", "early_stopped", "diverged")  # outcomes a rerun would reproduce
PACKAGE = Path(__file__).resolve().parent


# ---- identity of a run ---------------------------------------------------------------------------

def _code_only(source: str) -> str:
    """``source``'s syntax tree without docstrings (the parser drops comments and layout)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_version(model: str | None = None) -> str:
    """Hash of the code that decides what a training run of ``model`` computes: the engine (train.py,
    the data package but its command line, models/__init__.py) and the module that defines ``model``
    (None: every model module); for a model registered from outside the package, its own code instead
    of a module (:func:`user_code`). Comments and docstrings are excluded."""
    folder = PACKAGE / "models"
    if model is not None and models.is_user_model(model):  # the user's code, and all of ours it may use
        every = sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")
        return _engine_digest(every, user_code(models.builder_of(model)))
    if model is None:
        modules = sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")
    else:
        modules = [folder / models.module_name(model)]
    return _engine_digest(modules)


def _engine_digest(model_modules: list[Path], user: str | None = None) -> str:
    data_modules = sorted(p for p in (PACKAGE / "data").glob("*.py") if p.name != "command.py")
    digest = hashlib.sha256()
    for path in [PACKAGE / "train.py", *data_modules, PACKAGE / "models" / "__init__.py", *model_modules]:
        name = path.relative_to(PACKAGE).as_posix()
        digest.update(name.encode() + b"\0" + _code_only(path.read_text()).encode() + b"\0")
    if user is not None:
        digest.update(b"user\0" + user.encode() + b"\0")
    return digest.hexdigest()[:12]

# ---- code identity of a network defined outside the package (a notebook cell, the user's own file) ----

SIMPLE = (int, float, complex, str, bytes, bool, type(None))


def _is_users(obj) -> bool:
    """Whether ``obj`` (a class or function) is the user's code: defined in ``__main__`` (a notebook or
    script) or in a file outside this package, the standard library and installed packages."""
    module = getattr(obj, "__module__", None) or ""
    if module == "__main__":
        return True
    if module.split(".")[0] in ("cifarlib", "torch", "torchvision", "builtins") or module in sys.builtin_module_names:
        return False
    file = getattr(sys.modules.get(module), "__file__", None)
    if not file:
        return False
    path = Path(file).resolve()
    if {"site-packages", "dist-packages"} & set(path.parts):
        return False
    library = {Path(p).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")
               if (p := sysconfig.get_paths().get(key))}
    return not any(path.is_relative_to(folder) for folder in library | {PACKAGE})


def _functions_of(obj) -> list:
    """The functions whose code ``obj`` runs: itself, or a class's methods (properties included)."""
    if inspect.isfunction(obj):
        return [obj]
    found = []
    for value in vars(obj).values():
        value = getattr(value, "__func__", value)  # staticmethod, classmethod
        if isinstance(value, property):
            found += [f for f in (value.fget, value.fset, value.fdel) if f is not None]
        elif inspect.isfunction(value):
            found.append(value)
    return found


def _class_in_cells(cls, filenames) -> str | None:
    """The source of class ``cls`` found in the cached text of ``filenames`` (a notebook's cells; the
    last match wins, as the cell run last defines the class), decorators included."""
    found = None
    for filename in filenames:
        text = "".join(linecache.getlines(filename))
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                found = textwrap.dedent("".join(text.splitlines(True)[start - 1:node.end_lineno]))
    return found


def _source_of(obj) -> str:
    """``obj``'s source text. A class defined in a notebook cell has no file for ``inspect``: it is found
    in the cell of one of its methods, else in the notebook's cells IPython keeps."""
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        pass
    if inspect.isclass(obj):
        cells = [f.__code__.co_filename for f in _functions_of(obj)]
        cells = cells or [name for name in list(linecache.cache) if "ipykernel" in name or name.startswith("<ipython")]
        found = _class_in_cells(obj, dict.fromkeys(cells))
        if found is not None:
            return found
    raise CifarlibError(f"cannot read the source code of {getattr(obj, '__qualname__', obj)!r}, which its runs are "
                        "keyed by; define it with def or class in a notebook cell or a .py file")


def _normalized(source: str, obj) -> str:
    try:
        return _code_only(source)
    except SyntaxError:  # a lambda cut out of a longer line: its compiled code stands in
        code = obj.__code__
        return repr((code.co_code, code.co_consts, code.co_names, code.co_varnames))


def _names_loaded(source: str) -> set[str]:
    """Names the code reads (not attribute names): what it may take from its module or closure."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _simple(value) -> bool:
    if isinstance(value, SIMPLE):
        return True
    if isinstance(value, (tuple, list, frozenset, set)):
        return all(_simple(v) for v in value)
    if isinstance(value, dict):
        return all(_simple(k) and _simple(v) for k, v in value.items())
    return False


def user_code(builder) -> str:
    """The source of a user's network, as its runs are keyed: the builder (class, function,
    ``functools.partial`` or bound method) and every class or function of the user's it uses, followed
    through the names its source reads (module globals, closure variables, decorators, defaults, base
    classes), each without comments and docstrings; plain values it reads (``WIDTH = 64``, a tuple of
    them) by their repr, other values by their type. Editing any of them changes it; editing other
    code, running the cell again or restarting the kernel does not."""
    parts, seen, todo = [], set(), [builder]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, functools.partial):
            parts.append(("partial", repr((obj.args, sorted(obj.keywords.items())))))
            todo.append(obj.func)
            continue
        if inspect.ismethod(obj):
            todo += [obj.__func__, obj.__self__ if inspect.isclass(obj.__self__) else type(obj.__self__)]
            continue
        if hasattr(obj, "__wrapped__"):
            todo.append(obj.__wrapped__)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not _is_users(obj):
            continue
        source = _source_of(obj)
        key = f"{obj.__module__}.{obj.__qualname__}"
        parts.append((key, _normalized(source, obj)))
        scope = dict(vars(sys.modules[obj.__module__])) if obj.__module__ in sys.modules else {}
        if inspect.isfunction(obj):
            scope.update(obj.__globals__)
            with contextlib.suppress(ValueError, TypeError):
                scope.update(inspect.getclosurevars(obj).nonlocals)
        else:
            todo += list(obj.__mro__[1:])
        for name in sorted(_names_loaded(source)):
            if name not in scope or name in vars(builtins) or inspect.ismodule(scope[name]):
                continue
            value = scope[name]
            if inspect.isclass(value) or callable(value) and not isinstance(value, nn.Module):
                todo.append(value)
            elif _simple(value):
                parts.append((f"{key}:{name}", repr(value)))
            else:
                parts.append((f"{key}:{name}", f"a {type(value).__module__}.{type(value).__qualname__}"))
    return "\n".join(f"{key}\n{text}" for key, text in sorted(parts))


def run_hash(cfg: train.TrainConfig, data_identity: str) -> str:
    key = {"config": cfg.to_dict(), "data": data_identity, "code": code_version(cfg.model)}
    weights = weights_identity(cfg)
    if weights is not None:  # only for runs that start from downloaded weights: other keys stay as they were
        key["weights"] = weights
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


_DIGESTS: dict = {}  # (path, size, mtime) -> sha256: a weights file is hashed once per process


def weights_identity(cfg: train.TrainConfig) -> str | None:
    """What the starting weights of a ``pretrained`` run are: the SHA-256 of the weights file it will
    read (``weights_path``, else ``$CIFARLIB_RESNET18_WEIGHTS``), or torchvision's checked download;
    None for a run that starts from random weights. Part of the run key, so that a finished run is not
    reused after its weights file was replaced."""
    if not cfg.model_kw.get("pretrained"):
        return None
    path = cfg.model_kw.get("weights_path") or os.environ.get(paths.ENV_WEIGHTS)
    if not path:
        return "torchvision:ResNet18_Weights.IMAGENET1K_V1"  # torchvision checks the file against its hash
    try:
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
        if key not in _DIGESTS:
            _DIGESTS[key] = atomic.file_digest(Path(path))
        return f"sha256:{_DIGESTS[key]}"
    except OSError:
        return f"missing:{path}"  # training then stops with the weights loader's one-line error


# ---- data for a config ---------------------------------------------------------------------------

_DATASETS: OrderedDict = OrderedDict()  # in-process memo: notebooks train several models on one data set
_MEMO_SIZE = 4  # a decoded CIFAR-10 is ~180 MB; keep a few


def _memo(key, make):
    if key not in _DATASETS:
        _DATASETS[key] = make()
        while len(_DATASETS) > _MEMO_SIZE:
            _DATASETS.popitem(last=False)
    _DATASETS.move_to_end(key)
    return _DATASETS[key]


def load_dataset(cfg: train.TrainConfig, data_root=None) -> data.Dataset:
    """The data set named by ``cfg.dataset`` (memoized per name and root)."""
    if cfg.dataset == "synthetic":
        return _memo(("synthetic", cfg.split_seed), lambda: data.synthetic(seed=cfg.split_seed))
    root = str(data_root) if data_root is not None else None
    return _memo((cfg.dataset, root), lambda: data.load(cfg.dataset, root=data_root))


def prepare_splits(cfg: train.TrainConfig, ds: data.Dataset | None = None, data_root=None) -> data.Splits:
    """Train/val/test as ``cfg`` selects them: per-class subset, then the seeded validation split."""
    ds = ds if ds is not None else load_dataset(cfg, data_root)
    key = (id(ds), ds.identity, cfg.train_per_class, cfg.test_per_class, cfg.val_fraction, cfg.val_size,
           cfg.split_seed)

    def make():
        sub = ds
        if cfg.train_per_class or cfg.test_per_class:
            sub = data.subset(ds, cfg.train_per_class, cfg.test_per_class, seed=cfg.split_seed)
        return data.split(sub, val_fraction=cfg.val_fraction, seed=cfg.split_seed, val_size=cfg.val_size)

    return _memo(key, make)


# ---- the record ----------------------------------------------------------------------------------

@dataclass
class RunRecord:
    dir: Path
    config: train.TrainConfig
    history: pd.DataFrame
    metrics: dict
    env: dict
    status: str
    cached: bool = True
    finished: bool = True

    def load_model(self, model: nn.Module | None = None, device="cpu") -> nn.Module:
        """The saved weights in ``model`` (default: a fresh model built from the record's config; a model
        that can start from downloaded weights, like the ResNet18 transfer model, is built without them,
        since model.pt holds every weight). A user's network must be defined as it was when the run
        trained (its code version is checked)."""
        if model is None:
            name = self.config.model
            user = models.is_user_model(name) and user_code(models.builder_of(name))  # not a stand-in
            if user and self.env.get("code_version") not in (None, code_version(name)):
                raise CifarlibError(f"the network {name!r} has changed since the run in {self.dir} was trained, so its "
                                    "weights would fill another network; load it with the definition it was trained "
                                    "with, or train the new one")
            kw = dict(self.metrics.get("model_build_kw", self.config.model_kw))
            if "pretrained" in models.builder_arguments(self.config.model)[0]:
                kw.update(pretrained=False, weights_path=None)
            model = models.build_model(self.config.model, **kw)
        return load_weights(model, self.dir / "model.pt", saved_model=self.config.model).to(device)

    def summary(self) -> dict:
        m = self.metrics
        return {"name": self.config.name, "status": self.status, "epochs_run": m.get("epochs_run"),
                **{k: m.get(f"final_{k}") for k in ("train_loss", "train_acc", "val_loss", "val_acc",
                                                     "test_loss", "test_acc")},
                "params": m.get("params"), "wall_s": m.get("wall_s"), "device": m.get("device"),
                "run_dir": str(self.dir), "cached": self.cached}


def load_weights(model: nn.Module, path: Path, saved_model: str = "?") -> nn.Module:
    """Load a state_dict file (``weights_only=True``) into ``model``; a checkpoint of another
    architecture is a one-line error naming both."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[1:2] or [str(err)[:200]]
        raise CifarlibError(f"{path} holds weights of model {saved_model!r}, which do not fit a "
                            f"{type(model).__name__} ({first[0].strip()}); build the model named in its "
                            f"config.json") from None
    return model


def _env(run: train.Run) -> dict:
    device = torch.device(run.metrics["device"])
    commit, dirty = provenance.checkout()
    return {"git_commit": commit, "git_dirty": dirty,
            "code_version": code_version(run.config.model), "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
            "device_name": _device_name(device), "threads": run.metrics.get("threads", torch.get_num_threads()), "wall_s": run.wall_s,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or device.type


def save_run(run_dir: Path, run: train.Run, build_kw: dict) -> None:
    """Write every file atomically, the DONE marker last (and only for a run a rerun would reproduce).
    ``build_kw``: the build_model arguments (with the shapes from the data) that load_model uses.
    A full disk or another OSError is one line naming the folder (the caller keeps the weights)."""
    try:
        (run_dir / DONE).unlink(missing_ok=True)  # the old marker must not vouch for the new files
        atomic.write_json(run_dir / "config.json", run.config.to_dict())
        with atomic.atomic_path(run_dir / "history.csv") as tmp:
            pd.DataFrame(run.history, columns=train.HISTORY_COLUMNS).to_csv(tmp, index=False)
        atomic.write_json(run_dir / "metrics.json", {**run.metrics, "model_build_kw": build_kw})
        with atomic.atomic_path(run_dir / "model.pt") as tmp:
            torch.save({k: v.detach().cpu() for k, v in run.model.state_dict().items()}, tmp)
        atomic.write_json(run_dir / "env.json", _env(run))
        if run.status in FINISHED_STATUSES:
            marker = {"status": run.status, "sha256": {f: atomic.file_digest(run_dir / f) for f in FILES}}
            atomic.write_json(run_dir / DONE, marker)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or first_line(err)
        raise CifarlibError(f"cannot save the run record in {run_dir} ({reason}); free space or pass another "
                            f"runs_dir/--runs-dir, then run again") from None


def damage(path) -> str | None:
    """Why the finished record in ``path`` cannot be trusted (a file that no longer matches the checksum
    in its DONE marker, or a marker that does not parse), or None when it is intact. Records written
    before the marker held checksums (a marker that is just a status word) are taken as they are."""
    path = Path(path)
    text = (path / DONE).read_text(encoding="utf-8", errors="replace")
    if text.strip() in FINISHED_STATUSES:
        return None  # an older marker: the status only
    try:
        sums = json.loads(text)["sha256"]
        if set(sums) != set(FILES):
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        return "its DONE marker is damaged"
    changed = [f for f in FILES if not (path / f).is_file() or atomic.file_digest(path / f) != sums[f]]
    return f"{', '.join(changed)} changed after the run finished" if changed else None


def load_run(path) -> RunRecord:
    """The record in ``path``; a missing or unreadable file is a one-line CifarlibError naming the folder."""
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CifarlibError(f"{path} is not a complete run record (missing {', '.join(missing)}); "
                            f"train it again (train_or_load(..., force=True) or `python -m cifarlib run --force`)")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        env = json.loads((path / "env.json").read_text(encoding="utf-8"))
        history = pd.read_csv(path / "history.csv")
        if isinstance(config, dict) and isinstance(config.get("model"), str):
            models.stand_in(config["model"])  # a user's network this process has not defined: still readable
        cfg = train.TrainConfig.from_dict(config)
    except (ValueError, TypeError, AttributeError, pd.errors.ParserError, CifarlibError) as err:
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise CifarlibError(f"damaged run record {path} ({reason}); train it again (train_or_load(..., force=True) "
                            f"or `python -m cifarlib run --force`)") from None
    return RunRecord(dir=path, config=cfg, history=history, metrics=metrics, env=env,
                     status=metrics.get("status", "?"), cached=True, finished=is_finished(path))


def is_finished(path) -> bool:
    path = Path(path)
    return (path / DONE).is_file() and all((path / f).is_file() for f in FILES)


def find_runs(name: str | None = None, runs_dir=None) -> list[RunRecord]:
    """Finished runs (optionally of one config name), newest first; a damaged record is skipped with a
    warning that names it."""
    root = paths.runs_dir(runs_dir)
    dirs = [d for d in root.glob("*-*") if not d.name.startswith(".") and is_finished(d)] if root.is_dir() else []
    records = []
    for d in sorted(dirs, key=lambda d: (d / DONE).stat().st_mtime, reverse=True):
        try:
            why = damage(d)
            if why:
                raise CifarlibError(f"{why}; train it again with --force")
            records.append(load_run(d))
        except (CifarlibError, OSError) as err:  # e.g. a record written by an older cifarlib: skip it, don't stop
            print(f"warning: skipping run record {d}: {err}", file=sys.stderr)
    return [r for r in records if name is None or r.config.name == name]


def run_dir_of(cfg: train.TrainConfig, data=None, data_root=None, runs_dir=None) -> Path:
    """The folder that holds (or will hold) the run of ``cfg`` on this data with this code."""
    splits = prepare_splits(cfg, data, data_root)
    return paths.runs_dir(runs_dir) / f"{cfg.name}-{run_hash(cfg, splits.identity)}"


def usable(run_dir: Path) -> RunRecord | None:
    """The finished, intact record in ``run_dir``, or None (a damaged one is named in a warning)."""
    if not is_finished(run_dir):
        return None
    try:
        why = damage(run_dir)
        if why is None:
            return load_run(run_dir)
    except (CifarlibError, OSError) as err:
        why = str(err)
    print(f"warning: run record {run_dir} is damaged ({why}); it will be trained again", file=sys.stderr)
    return None


def find_finished(cfg: train.TrainConfig, data=None, data_root=None, runs_dir=None) -> RunRecord | None:
    """The finished run of ``cfg`` on this data with this code, or None; never trains."""
    record = usable(run_dir_of(cfg, data, data_root, runs_dir))
    return log_use(record) if record is not None else None


def run_lock(run_dir: Path):
    """The lock of ``run_dir`` (a ``.<name>.lock`` file beside it, see :func:`cifarlib.atomic.locked`):
    one process at a time trains or replaces a run; another waits here, then finds the run finished."""
    return atomic.locked(run_dir.parent / f".{run_dir.name}.lock",
                         waiting=f"waiting: another process is training {run_dir.name}")


def train_or_load(cfg: train.TrainConfig, data=None, data_root=None, runs_dir=None, force: bool = False,
                  progress: bool | None = None, callback=None) -> RunRecord:
    """The finished run of ``cfg`` on this data with this code, trained now if there is none.

    The run trains into a hidden staging folder under the run's lock and is published by renaming
    that folder: a killed process leaves no folder that passes for finished (its staging folder is
    removed by the next attempt), and two processes asked for the same run train it once. The lock
    is an flock: on a network file system it needs working locks (NFS with lockd).
    An interrupted run (Ctrl-C) is published with status "interrupted" but without the DONE marker,
    and then the KeyboardInterrupt is raised again so that a notebook or script stops; the next call
    trains it again from the start. ``callback``: passed to :func:`cifarlib.train.fit` (live curves).
    """
    root = atomic.writable_dir(paths.runs_dir(runs_dir), what="run records to",  # before loading data: fail fast
                              remedy=f"pass runs_dir=/--runs-dir or set {paths.ENV_RUNS} to a writable folder")
    splits = prepare_splits(cfg, data, data_root)
    run_dir = root / f"{cfg.name}-{run_hash(cfg, splits.identity)}"
    record = None if force else usable(run_dir)
    if record is not None:
        return log_use(record)
    with run_lock(run_dir):
        record = None if force else usable(run_dir)  # another process may have finished it while we waited
        if record is not None:
            return log_use(record)
        for stale in root.glob(f".{run_dir.name}.*"):  # left by killed runs (we hold the lock: nobody uses them)
            if stale.is_dir() and (atomic.fcntl is not None or stale.name.endswith(f"-{os.getpid()}")):
                shutil.rmtree(stale, ignore_errors=True)
        stage = root / f".{run_dir.name}.partial-{platform.node()}-{os.getpid()}"
        stage.mkdir()
        model = train.build(cfg, splits)
        run = train.fit(model, splits, cfg, progress=progress, callback=callback)
        try:
            save_run(stage, run, train.build_kwargs(cfg, splits))
        except CifarlibError as err:
            err.run = run  # the trained model stays reachable (err.run.model) for a caller that can retry
            raise
        if run.status == "interrupted" and is_finished(run_dir):
            print(f"interrupted: the finished run in {run_dir} is kept (the partial new one is in {stage})",
                  file=sys.stderr)
            raise KeyboardInterrupt
        _publish(stage, run_dir)
    if run.status == "interrupted":
        print(f"interrupted: partial run saved in {run_dir} (not marked finished)", file=sys.stderr)
        raise KeyboardInterrupt
    record = load_run(run_dir)
    record.cached = False
    return log_use(record)


def _publish(stage: Path, run_dir: Path) -> None:
    """Rename ``stage`` to ``run_dir`` (the caller holds the run's lock); an older folder there is moved
    aside first and then deleted."""
    old = None
    if run_dir.exists():
        old = run_dir.parent / f".{run_dir.name}.old-{platform.node()}-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(run_dir, old)
    os.replace(stage, run_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def log_use(record: RunRecord) -> RunRecord:
    """Append the run folder to $CIFARLIB_RUN_LOG when set: the report lists exactly the runs it used."""
    log = os.environ.get(paths.ENV_RUN_LOG)
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{record.dir.resolve()}\n")
    return record
