"""Your own network, from a notebook cell: trained by the same engine, cached and compared like ours.

    from torch import nn
    from cifarlib import explore

    class MyNet(nn.Module):                      # any nn.Module; in_channels / num_classes / image_size
        def __init__(self, num_classes=10, width=32):   # are filled in from the data when it names them
            ...

    mine = explore.train(MyNet, like="improved_a", epochs=3, seeds=2, model_kw={"width": 48})
    result = explore.compare({"my net": mine, "Model A": "improved_a"}, epochs=3, seeds=2)
    result.table, result.figure, result.runs     # mean ± std per network, curves, the run records

``like`` names the experiment whose recipe (optimizer, schedule, augmentation, data selection, ...) the
run copies; keywords override single settings, as in :func:`cifarlib.experiments.notebook_config`. The
run record is keyed by the recipe, the data and the source code of your network (the class or builder
and every function or class of yours it uses), so editing the network trains it again, while editing
another cell, restarting the kernel or reopening the notebook finds the finished run. In Jupyter the
loss and accuracy curves redraw in place after every evaluation; in batch runs (the report) they are off.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, NamedTuple

from torch import nn

from cifarlib import experiments, models, paths, plots, runs, sweep, tables
from cifarlib.errors import CifarlibError


def model_name(builder: Callable[..., nn.Module], name: str | None = None) -> str:
    """The registry name for ``builder``: ``name``, else the builder's own name in lower case
    (``MyNet`` -> ``mynet``), with anything but letters, digits, '.', '_' and '-' dropped."""
    raw = name or getattr(builder, "__name__", "")
    cleaned = re.sub(r"[^a-z0-9._-]", "", raw.lower())
    if not cleaned or not cleaned[0].isalnum():
        raise CifarlibError(f"cannot make a model name from {raw!r}; pass name='mynet' (letters, digits, . _ -)")
    return cleaned


def register(builder: Callable[..., nn.Module], name: str | None = None) -> str:
    """Register ``builder`` (an ``nn.Module`` class or a function returning one) under
    :func:`model_name` and return that name. Running the defining cell again replaces the entry; a
    name that one of the report's own models has is refused."""
    if isinstance(builder, nn.Module) or not callable(builder):
        raise CifarlibError(f"train() needs an nn.Module class or a function that returns one (not a built model), "
                            f"got {type(builder).__name__}; pass the class, e.g. train(MyNet, ...)")
    name = model_name(builder, name)
    models.register_user(name, builder)
    return name


def train(builder: Callable[..., nn.Module], like: str = "baseline", name: str | None = None,
          profile: str = "full", seeds: int | None = None, seed: int = 0, data=None, data_root=None,
          runs_dir=None, live: bool | None = None, force: bool = False, **config):
    """Train ``builder``'s network with the recipe of experiment ``like`` (or load its finished run).

    ``config``: settings that differ from the recipe (``epochs=3``, ``lr=0.05``, ``model_kw={...}``
    for the builder's own arguments; the recipe's ``model_kw`` belongs to its network and is not
    passed on). ``seeds``: None trains one run with ``seed``; a number n trains seeds ``seed`` ..
    ``seed + n - 1`` and returns a list. ``data``: a data set in memory (else the recipe's data set
    from ``data_root``). ``live``: redraw the curves during training (None: in Jupyter, unless
    progress display is off, as in report builds). Runs train one after another in this process, where
    the network is defined."""
    model = register(builder, name)
    user_kw = config.pop("model_kw", None) or {}
    cfg = experiments.notebook_config(like, profile, **config).replace(model=model, name=model, model_kw=user_kw)
    configs = [cfg.replace(seed=seed)] if seeds is None else sweep.seeded(cfg, seeds, seed)
    show = _interactive() if live is None else live
    records = []
    for one in configs:
        curves = plots.LiveCurves(f"{model} (seed {one.seed})") if show else None
        try:
            records.append(runs.train_or_load(one, data=data, data_root=data_root, runs_dir=runs_dir, force=force,
                                              callback=curves))
        finally:
            if curves is not None:
                curves.close()
    return records[0] if seeds is None else records


class Comparison(NamedTuple):
    table: object  # pandas DataFrame: one row per entry, mean ± std over its runs
    figure: object  # matplotlib Figure: validation curves of each entry's first run
    runs: dict  # label -> the run records behind the row


def compare(entries: Mapping[str, object], profile: str = "full", seeds: int | None = None, seed: int = 0,
            data=None, data_root=None, runs_dir=None, metric: str = "acc", title: str | None = None,
            executor=None, **knobs):
    """One table and one figure for any mix of runs: ``entries`` maps a label to a run record, a list
    of run records (seeds), or the name of one of our experiments, which is trained or loaded with
    ``knobs`` (e.g. ``epochs=3``; None: its own) on the seeds of the longest list of runs given (or
    ``seed`` .. ``seed + seeds - 1``). Returns a :class:`Comparison`: the table of training, validation and test loss and
    accuracy, mean ± std over each entry's runs; the figure of the validation ``metric`` ("acc" or
    "loss") of each entry's first run; and the run records by label."""
    if not entries:
        raise CifarlibError("compare() needs at least one entry, e.g. {'mine': record, 'Model A': 'improved_a'}")
    groups = {label: list(value) if isinstance(value, (list, tuple)) else value for label, value in entries.items()}
    given = [v if isinstance(v, list) else [v] for v in groups.values() if not isinstance(v, str)]
    if seeds is None and given:  # ours on the seeds of the longest group of runs given
        seed_list = [r.config.seed for r in max(given, key=len)]
    else:
        seed_list = list(range(seed, seed + (seeds or 1)))
    names = {label: value for label, value in groups.items() if isinstance(value, str)}
    configs = {label: [experiments.notebook_config(value, profile, **knobs).replace(seed=s) for s in seed_list]
               for label, value in names.items()}
    if configs:
        found = iter(sweep.run_many([c for cfgs in configs.values() for c in cfgs], data=data, data_root=data_root,
                                    runs_dir=runs_dir, executor=executor or ("serial" if data is not None else None)))
        for label, cfgs in configs.items():
            groups[label] = [next(found) for _ in cfgs]
    groups = {label: value if isinstance(value, list) else [value] for label, value in groups.items()}
    table = tables.mean_std_table(groups)
    first = {label: records[0] for label, records in groups.items()}
    fig = plots.plot_runs(first, metric, splits=("val",), title=title or "Validation " + (
        "accuracy" if metric == "acc" else "loss") + " by epoch")
    return Comparison(table, fig, groups)


def _interactive() -> bool:
    """True in a Jupyter kernel with progress display on (report builds turn it off)."""
    if not paths.progress_enabled():
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
