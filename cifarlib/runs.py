"""Run records on disk, and ``train_or_load``: train once, reuse the finished run afterwards.

CONTRACT (other modules rely on these names; keep them):

    rec = train_or_load(cfg, data=None, data_root=None, runs_dir=None, force=False, progress=None)
        # data: a cifarlib.data.Dataset (loaded from cfg.dataset + data_root when None)
    rec.dir            Path runs/<name>-<hash>/ with config.json history.csv metrics.json model.pt env.json DONE
    rec.config         TrainConfig
    rec.history        pandas.DataFrame (columns = train.HISTORY_COLUMNS)
    rec.metrics        dict
    rec.env            dict (git commit + dirty flag, torch/torchvision versions, device, threads, wall_s, date)
    rec.status         str
    rec.cached         bool: True when loaded from disk rather than trained now
    rec.finished       bool: the DONE marker is there (interrupted runs are saved without it)
    rec.load_model()   nn.Module with the saved weights (weights_only=True)
    find_runs(name=None, runs_dir=None) -> list[RunRecord]   finished runs, newest first
    load_run(path) -> RunRecord
    prepare_splits(cfg, data=None, data_root=None) -> Splits   (memoized in-process)

The folder hash covers the config, the data identity (data set + selection + split) and the code
version: a hash of the code of the engine (train.py, data.py, models/__init__.py) and of the module
that defines the run's model (their syntax trees, without comments and docstrings). Editing a
notebook, the report, a comment, a docstring or another model's module keeps the cache; a change to
the code that trains this model retrains it.
"""

from __future__ import annotations

import ast
import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from cifarlib import atomic, data, models, paths, train
from cifarlib import cli as cli_
from cifarlib.errors import CifarlibError

DONE = "DONE"  # completion marker, written last: a folder without it is never taken as finished
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
    data.py, models/__init__.py) and the module that defines ``model`` (None: every model module).
    Comments and docstrings are excluded."""
    folder = PACKAGE / "models"
    if model is None:
        modules = sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")
    else:
        modules = [folder / models.module_name(model)]
    digest = hashlib.sha256()
    for path in [PACKAGE / "train.py", PACKAGE / "data.py", folder / "__init__.py", *modules]:
        digest.update(path.name.encode() + b"\0" + _code_only(path.read_text()).encode() + b"\0")
    return digest.hexdigest()[:12]


def run_hash(cfg: train.TrainConfig, data_identity: str) -> str:
    key = {"config": cfg.to_dict(), "data": data_identity, "code": code_version(cfg.model)}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


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
        since model.pt holds every weight)."""
        if model is None:
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
    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": _dirty(),
            "code_version": code_version(run.config.model), "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
            "device_name": _device_name(device), "threads": torch.get_num_threads(), "wall_s": run.wall_s,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _dirty() -> bool | None:
    """Uncommitted changes in the checkout; None when unknown (no git, or not a checkout)."""
    status = _git("status", "--porcelain")
    return None if status is None else bool(status)


def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PACKAGE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


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
    ``build_kw``: the build_model arguments (with the shapes from the data) that load_model uses."""
    (run_dir / DONE).unlink(missing_ok=True)  # the old marker must not vouch for the new files
    atomic.write_json(run_dir / "config.json", run.config.to_dict())
    with atomic.atomic_path(run_dir / "history.csv") as tmp:
        pd.DataFrame(run.history, columns=train.HISTORY_COLUMNS).to_csv(tmp, index=False)
    atomic.write_json(run_dir / "metrics.json", {**run.metrics, "model_build_kw": build_kw})
    with atomic.atomic_path(run_dir / "model.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in run.model.state_dict().items()}, tmp)
    atomic.write_json(run_dir / "env.json", _env(run))
    if run.status in FINISHED_STATUSES:
        atomic.write_text(run_dir / DONE, run.status + "\n")


def load_run(path) -> RunRecord:
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CifarlibError(f"{path} is not a complete run record (missing {', '.join(missing)}); "
                            f"train it again (train_or_load(..., force=True) or `python -m cifarlib run --force`)")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    return RunRecord(dir=path, config=train.TrainConfig.from_dict(config),
                     history=pd.read_csv(path / "history.csv"), metrics=metrics,
                     env=json.loads((path / "env.json").read_text(encoding="utf-8")),
                     status=metrics.get("status", "?"), cached=True, finished=is_finished(path))


def is_finished(path) -> bool:
    path = Path(path)
    return (path / DONE).is_file() and all((path / f).is_file() for f in FILES)


def find_runs(name: str | None = None, runs_dir=None) -> list[RunRecord]:
    """Finished runs (optionally of one config name), newest first."""
    root = paths.runs_dir(runs_dir)
    dirs = [d for d in root.glob("*-*") if is_finished(d)] if root.is_dir() else []
    records = []
    for d in sorted(dirs, key=lambda d: (d / DONE).stat().st_mtime, reverse=True):
        try:
            records.append(load_run(d))
        except CifarlibError as err:  # e.g. a record written by an older cifarlib: skip it, don't stop
            print(f"warning: skipping run record {d}: {err}", file=sys.stderr)
    return [r for r in records if name is None or r.config.name == name]


def find_finished(cfg: train.TrainConfig, data=None, data_root=None, runs_dir=None) -> RunRecord | None:
    """The finished run of ``cfg`` on this data with this code, or None; never trains."""
    splits = prepare_splits(cfg, data, data_root)
    run_dir = paths.runs_dir(runs_dir) / f"{cfg.name}-{run_hash(cfg, splits.identity)}"
    return _log_use(load_run(run_dir)) if is_finished(run_dir) else None


def train_or_load(cfg: train.TrainConfig, data=None, data_root=None, runs_dir=None, force: bool = False,
                  progress: bool | None = None) -> RunRecord:
    """The finished run of ``cfg`` on this data with this code, trained now if there is none.

    An interrupted run (Ctrl-C) is saved with status "interrupted" but without the DONE marker, and
    then the KeyboardInterrupt is raised again so that a notebook or script stops; the next call
    trains it again from the start.
    """
    root = atomic.writable_dir(paths.runs_dir(runs_dir), what="run records to",  # before loading data: fail fast
                              remedy=f"pass runs_dir=/--runs-dir or set {paths.ENV_RUNS} to a writable folder")
    splits = prepare_splits(cfg, data, data_root)
    run_dir = root / f"{cfg.name}-{run_hash(cfg, splits.identity)}"
    if not force and is_finished(run_dir):
        return _log_use(load_run(run_dir))
    run_dir.mkdir(exist_ok=True)
    model = train.build(cfg, splits)
    run = train.fit(model, splits, cfg, progress=progress)
    save_run(run_dir, run, train._shape_kwargs(cfg.model, splits) | cfg.model_kw)
    if run.status == "interrupted":
        print(f"interrupted: partial run saved in {run_dir} (not marked finished)", file=sys.stderr)
        raise KeyboardInterrupt
    record = load_run(run_dir)
    record.cached = False
    return _log_use(record)


def _log_use(record: RunRecord) -> RunRecord:
    """Append the run folder to $CIFARLIB_RUN_LOG when set: the report lists exactly the runs it used."""
    log = os.environ.get(paths.ENV_RUN_LOG)
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{record.dir.resolve()}\n")
    return record


# ---- python -m cifarlib run ----------------------------------------------------------------------

def parse_sets(items: list[str]) -> dict:
    """``key=value`` pairs; a value is JSON when it parses (10, 0.5, true, null, "x", {...}), else a string."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CifarlibError(f"malformed --set {item!r}; write --set key=value (e.g. --set epochs=3)")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def cli(argv: list[str]) -> int:
    from cifarlib import experiments

    p = cli_.OneLineParser(prog="python -m cifarlib run", description="Train a named experiment, or load its finished run.")
    p.add_argument("name", help="experiment name (python -m cifarlib experiments lists them)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (JSON when it parses, else a string); repeatable")
    p.add_argument("--profile", choices=["quick", "full"], default="full")
    p.add_argument("--data-root", help=f"data set folder (default: ${paths.ENV_DATA} / ${paths.ENV_MNIST})")
    p.add_argument("--runs-dir", help=f"run records folder (default: ${paths.ENV_RUNS}, else ./runs)")
    p.add_argument("--force", action="store_true", help="train even when a finished run exists")
    p.add_argument("--json", action="store_true", help="print one JSON object with the results")
    args = p.parse_args(argv)
    cfg = experiments.config_from(args.name, args.profile, parse_sets(args.sets))
    rec = train_or_load(cfg, data_root=args.data_root, runs_dir=args.runs_dir, force=args.force)
    summary = rec.summary()
    if args.json:  # strict JSON: a diverged run's NaN losses become null
        print(json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v
                          for k, v in summary.items()}))
    else:
        how = "cached" if rec.cached else f"trained in {summary['wall_s']:.1f} s"
        print(f"{summary['name']}: {summary['status']} after {summary['epochs_run']} epochs, "
              f"test acc {summary['test_acc']:.4f}, val acc {summary['val_acc']:.4f} ({how} on {summary['device']})")
        print(f"run record: {rec.dir}")
    return 0
