"""Many runs at once: ``run_many(configs)`` returns their run records, training the missing ones on an
executor. Every notebook, the CLI and the report go through it.

Executors (``executor=``):

- ``"local"`` (the default; ``$CIFARLIB_EXECUTOR`` changes it): a pool of worker processes on this
  machine. Workers x threads per worker come from the free cores (2 cores: two 1-thread workers), or
  from ``workers=`` / ``threads=``; with several GPUs each worker gets one of its own.
- ``"serial"``: one run after another in this process (the per-run progress bar shows).
- ``"dask:ADDRESS"``: the workers of a running Dask scheduler (``distributed.Client(ADDRESS)``).
- ``"submitit:FOLDER"``: one SLURM job array through submitit (its local executor where no SLURM is),
  job logs in FOLDER; for a partition, GPUs or time limits pass a configured submitit executor.
- any object with ``submit(fn, *args)`` whose results have ``done()`` and ``result()``: a
  ``concurrent.futures`` executor, a ``distributed.Client``, a ``submitit`` executor.

The run folder is the shared store: a worker trains one config under that run's lock and publishes
the finished folder by a rename (see :func:`cifarlib.runs.train_or_load`), so two sweeps never write
the same run, and a killed worker leaves nothing that passes for finished. A failed run is reported
and the others keep their results; :class:`SweepError` names the failures after the rest finished.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cifarlib import atomic, models, paths, runs, train
from cifarlib.errors import CifarlibError

ENV_EXECUTOR = paths.ENV_EXECUTOR  # default executor for notebooks and the report ("local", "serial", ...)
EXECUTORS = ("local", "serial", "dask:ADDRESS", "submitit:FOLDER")
POLL_S = 0.2  # how often the sweep looks at its running futures


class SweepError(CifarlibError):
    """Some runs of a sweep failed; the others are finished and cached."""

    def __init__(self, failures: list["Failure"], done: int):
        self.failures = failures
        listed = "; ".join(f"{f.label}: {f.error}" for f in failures[:3])
        more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
        super().__init__(f"{len(failures)} of {done + len(failures)} runs failed ({listed}{more}); the "
                         "finished runs are kept, so running the same sweep again retries only the failed ones")


@dataclass
class Failure:
    config: train.TrainConfig
    error: str

    @property
    def label(self) -> str:
        return f"{self.config.name} seed {self.config.seed}"


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan(tasks: int, workers: int | None = None, threads: int | None = None, cpus: int | None = None,
         gpus: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker) for ``tasks`` runs: one worker per GPU where there are GPUs, else
    one per core (at most one per task), and the cores shared out among the workers."""
    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CifarlibError(f"{name} must be a whole number of at least 1, got {value!r}")
    cpus = cpu_count() if cpus is None else cpus
    gpus = gpu_count() if gpus is None else gpus
    if workers is None:
        workers = gpus if gpus else max(1, cpus // (threads or 1))
    workers = max(1, min(workers, tasks))
    return workers, threads or max(1, cpus // workers)


def resolve_executor(executor) -> object:
    """``executor`` as given, or ``$CIFARLIB_EXECUTOR``, or "local"; a string is checked here."""
    executor = executor if executor is not None else os.environ.get(ENV_EXECUTOR) or "local"
    if isinstance(executor, str):
        kind = executor.partition(":")[0]
        if kind not in ("local", "serial", "dask", "submitit") or (kind in ("dask", "submitit")
                                                                  and not executor.partition(":")[2]):
            raise CifarlibError(f"unknown executor {executor!r}; use one of: {', '.join(EXECUTORS)}")
    elif not callable(getattr(executor, "submit", None)):
        raise CifarlibError(f"executor {executor!r} has no submit(fn, *args) method; pass \"local\", \"serial\", "
                            "\"dask:ADDRESS\", \"submitit:FOLDER\" or an executor object")
    return executor


# ---- the work of one run (in a worker) ------------------------------------------------------------

def _init_worker(gpu_queue) -> None:
    """Pool worker start: take a GPU of its own (before CUDA starts) when the sweep hands them out."""
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_queue.get())


def train_one(config: dict, data_root, runs_dir, threads: int | None, force: bool) -> tuple[str, bool]:
    """Train (or load) one run in a worker; returns its folder and whether it was already finished.
    Module-level, so that every executor can pickle it by name."""
    import torch

    if threads:  # the sweep's plan: fit keeps it instead of following the load (its siblings are the load)
        torch.set_num_threads(threads)
        os.environ[paths.ENV_THREADS] = str(threads)
    record = runs.train_or_load(train.TrainConfig.from_dict(config), data_root=data_root, runs_dir=runs_dir,
                                force=force, progress=False)
    return str(record.dir), record.cached


# ---- the sweep -------------------------------------------------------------------------------------

def run_many(configs: Iterable[train.TrainConfig], data=None, data_root=None, runs_dir=None, executor=None,
             workers: int | None = None, threads: int | None = None, force: bool = False,
             progress: bool | None = None) -> list[runs.RunRecord]:
    """The run records of ``configs``, in order: finished runs are read back, the others trained on
    ``executor`` (see the module docstring). ``data``: an in-memory data set for every config (serial
    only: workers load theirs from ``data_root``). One progress line for the whole sweep (runs done /
    total, ETA). When runs fail, the others still finish and :class:`SweepError` names the failures."""
    configs = list(configs)
    executor = resolve_executor(executor)
    if any(models.is_user_model(c.model) for c in configs):
        executor = "serial"  # a network defined in a notebook cannot be sent to other processes
    root = atomic.writable_dir(paths.runs_dir(runs_dir), what="run records to",  # before loading data: fail fast
                               remedy=f"pass runs_dir=/--runs-dir or set {paths.ENV_RUNS} to a writable folder")
    folders = [runs.run_dir_of(cfg, data, data_root, root) for cfg in configs]
    records: dict = {}
    if not force:
        for folder in dict.fromkeys(folders):
            record = runs.usable(folder)
            if record is not None:
                records[folder] = record
    todo = {folder: cfg for folder, cfg in zip(folders, configs) if folder not in records}  # one per folder
    show = paths.progress_enabled() if progress is None else progress
    failures = []
    if todo:
        serial = executor == "serial" or (executor == "local" and len(todo) == 1 and threads is None)
        if not serial and data is not None:
            raise CifarlibError("an in-memory data set cannot be handed to worker processes; pass data_root= "
                                "(or executor=\"serial\")")
        bar = _Bar(len(dict.fromkeys(folders)), len(records), len(todo), show)
        try:
            if serial:
                for folder, cfg in todo.items():
                    _serial_one(cfg, data, data_root, root, threads, force, progress, records, failures, folder)
                    bar.update(failures)
            else:
                _parallel(todo, executor, data_root, root, workers, threads, force, records, failures, bar)
        finally:
            bar.close()
    if failures:
        raise SweepError(failures, len(records))
    return [runs.log_use(records[folder]) for folder in folders]


def _serial_one(cfg, data, data_root, root, threads, force, progress, records, failures, folder) -> None:
    import torch

    before, fixed = torch.get_num_threads(), os.environ.get(paths.ENV_THREADS)
    if threads:  # a count the caller asked for: fit keeps it
        torch.set_num_threads(threads)
        os.environ[paths.ENV_THREADS] = str(threads)
    try:
        records[folder] = runs.train_or_load(cfg, data=data, data_root=data_root, runs_dir=root, force=force,
                                             progress=progress)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # one failed run must not take the others with it
        failures.append(Failure(cfg, _one_line(err)))
        print(f"failed: {cfg.name} seed {cfg.seed}: {_one_line(err)}", file=sys.stderr)
    finally:
        torch.set_num_threads(before)
        if threads:
            if fixed is None:
                os.environ.pop(paths.ENV_THREADS, None)
            else:
                os.environ[paths.ENV_THREADS] = fixed


def _parallel(todo: dict, executor, data_root, root, workers, threads, force, records, failures, bar) -> None:
    pool, owned, n_threads = _open(executor, len(todo), workers, threads)
    data_root = os.fspath(os.path.abspath(data_root)) if data_root is not None else None
    pending = {}
    try:
        pending = _submit_all(pool, todo, data_root, os.fspath(root.resolve()), n_threads, force)
        while pending:
            finished = [folder for folder, (_, future) in pending.items() if future.done()]
            for folder in finished:
                cfg, future = pending.pop(folder)
                try:
                    where, cached = future.result()
                    if Path(where).name != folder.name:
                        raise CifarlibError(f"the worker trained {Path(where).name}, not {folder.name}: its code or "
                                            "data differ from this machine's; give every worker the same checkout "
                                            "and data")
                    records[folder] = runs.load_run(folder)
                    records[folder].cached = cached
                except Exception as err:
                    failures.append(Failure(cfg, _one_line(err)))
                    print(f"failed: {cfg.name} seed {cfg.seed}: {_one_line(err)}", file=sys.stderr)
                bar.update(failures)
            if pending and not finished:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        for _, future in pending.values():
            getattr(future, "cancel", lambda: None)()
        if owned and hasattr(pool, "_processes"):  # our own pool: stop its workers now, not after their runs
            for process in list((pool._processes or {}).values()):
                process.terminate()
        raise
    finally:
        if owned:
            _close(pool)


def _submit_all(pool, todo: dict, data_root, runs_dir, threads, force) -> dict:
    """{folder: (config, future)}; a submitit executor gets one job array for the whole sweep."""
    args = {folder: (cfg.to_dict(), data_root, runs_dir, threads, force) for folder, cfg in todo.items()}
    module = type(pool).__module__
    if module.startswith("distributed"):  # pure=False: a Client would otherwise dedupe by arguments
        futures = {folder: pool.submit(train_one, *a, pure=False) for folder, a in args.items()}
    elif module.startswith("submitit"):
        with pool.batch():
            futures = {folder: pool.submit(train_one, *a) for folder, a in args.items()}
    else:
        futures = {folder: pool.submit(train_one, *a) for folder, a in args.items()}
    return {folder: (todo[folder], futures[folder]) for folder in todo}


def _open(executor, tasks: int, workers, threads):
    """(executor object, whether this sweep owns it and must shut it down, threads per run)."""
    if not isinstance(executor, str):
        return executor, False, threads
    kind, _, where = executor.partition(":")
    if kind == "local":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        n_workers, n_threads = plan(tasks, workers, threads)
        ctx = multiprocessing.get_context("spawn")  # fork would copy this process's torch thread pool state
        gpus = gpu_count()
        queue = None
        if gpus > 1:  # one GPU a worker, from the GPUs this process may use
            visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
            ids = visible[:gpus] if visible else [str(i) for i in range(gpus)]
            queue = ctx.Queue()
            for i in range(n_workers):
                queue.put(ids[i % len(ids)])
        pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(queue,))
        return pool, True, n_threads
    if kind == "dask":
        try:
            from distributed import Client
        except ImportError:
            raise CifarlibError("the dask executor needs the distributed package; pip install 'cifarlib[cluster]' "
                                "(or pip install distributed)") from None
        try:
            return Client(where, timeout="10s"), True, threads
        except OSError as err:
            raise CifarlibError(f"cannot reach the Dask scheduler at {where} ({err}); start one with "
                                "`dask scheduler` and `dask worker ADDRESS`, or check the address") from None
    try:
        import submitit
    except ImportError:
        raise CifarlibError("the submitit executor needs the submitit package; pip install 'cifarlib[cluster]' "
                            "(or pip install submitit)") from None
    pool = submitit.AutoExecutor(folder=where)  # for partitions, GPUs and limits pass a configured executor
    n_threads = threads or 1
    pool.update_parameters(timeout_min=24 * 60, cpus_per_task=n_threads)
    return pool, False, n_threads


def _close(pool) -> None:
    if type(pool).__module__.startswith("distributed"):
        pool.close()  # the connection only: Client.shutdown would stop the user's cluster
    else:
        pool.shutdown(wait=True, cancel_futures=True)


def _one_line(err: BaseException) -> str:
    if type(err).__name__ == "BrokenProcessPool":
        return ("a worker process died (killed, out of memory, or a script that starts a sweep without "
                "`if __name__ == \"__main__\":`)")
    text = str(err).strip().splitlines()
    return (f"{type(err).__name__}: {text[-1]}" if text and not isinstance(err, CifarlibError)
            else text[0] if text else type(err).__name__)[:300]


class _Bar:
    """One line for the whole sweep: runs done / total, cached and failed counts, ETA."""

    def __init__(self, total: int, cached: int, todo: int, show: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=cached, desc="runs", unit="run", disable=not show,
                        postfix=f"{cached} cached, {todo} to train" if cached else None)

    def update(self, failures: Sequence) -> None:
        self.bar.update(1)
        if failures:
            self.bar.set_postfix_str(f"{len(failures)} failed")

    def close(self) -> None:
        self.bar.close()


# ---- seeds ------------------------------------------------------------------------------------------

def seeded(config: train.TrainConfig, seeds: int, seed: int = 0) -> list[train.TrainConfig]:
    """``config`` with model seeds ``seed``, ``seed + 1``, ... (``seeds`` of them; the split stays)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise CifarlibError(f"seeds must be a whole number of at least 1, got {seeds!r}")
    return [config.replace(seed=seed + k) for k in range(seeds)]
