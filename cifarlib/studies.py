"""Comparison studies: train (or load) a named group of experiments, or Task 2's models, in one sweep,
and describe the outcome in sentences built from the numbers; the tables and figures of a study are
:func:`cifarlib.tables.comparison_table` and :func:`cifarlib.plots.plot_comparison`.

A group maps a row label to an experiment name, e.g. ``{"lr 0.1": "mnist_lr_0.1", ...}``.
Runs that diverged stay in the comparison: their accuracy cells read "diverged" instead of a number.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from cifarlib import experiments, paths, runs, sweep, tables, train
from cifarlib.plots import LOSS_NAMES, epoch_ends, finite
from cifarlib.experiments import improved
from cifarlib.errors import CifarlibError

DIVERGED = tables.DIVERGED


def run_group(group: Mapping[str, str], profile: str = "full", data=None, data_root=None, runs_dir=None,
              progress: bool | None = None, executor=None, **knobs) -> dict[str, runs.RunRecord]:
    """``{label: run record}``: each experiment of ``group`` (label -> experiment name) trained or loaded
    with ``knobs`` (e.g. device, seed, epochs; None: the experiment's own, see
    :func:`cifarlib.experiments.notebook_config`) on its ``profile`` configuration, in one sweep."""
    configs = {label: experiments.notebook_config(name, profile, **knobs) for label, name in group.items()}
    records = _sweep(list(configs.values()), data, data_root, runs_dir, progress, executor)
    return dict(zip(configs, records))


def run_seeds(group: Mapping[str, str], seeds: Sequence[int], profile: str = "full", data=None, data_root=None,
              runs_dir=None, progress: bool | None = None, executor=None, **knobs) -> dict[str, list[runs.RunRecord]]:
    """``{label: [run record per seed]}``: every experiment of ``group`` with each model seed of ``seeds``
    (the split stays fixed), all in one sweep, for ``cifarlib.tables.mean_std_table``. ``knobs`` as in
    :func:`run_group`, except that a ``seed`` among them is ignored."""
    knobs.pop("seed", None)
    if not len(seeds):
        raise CifarlibError("seeds is empty; give at least one model seed, e.g. seeds=[0, 1, 2]")
    configs = [(label, experiments.notebook_config(name, profile, **knobs, seed=seed))
               for seed in seeds for label, name in group.items()]
    records = _sweep([c for _, c in configs], data, data_root, runs_dir, progress, executor)
    out: dict = {label: [] for label in group}
    for (label, _), record in zip(configs, records):
        out[label].append(record)
    return out


# ---- Task 2's models, as the other sections see them ----------------------------------------------

def task2_records(profile: str = "full", seed: int = 0, seeds: int = 3, epochs: int | None = None,
                  device: str | None = None, data_root=None, runs_dir=None, train: bool = True,
                  executor=None, also: Sequence = ()) -> dict:
    """``{label: [run record per seed]}`` of both models as Task 2 trains them (the quick profile
    runs one seed), all runs in one sweep on ``executor``. ``epochs`` and ``device`` are knobs of
    :func:`cifarlib.experiments.notebook_config` (None: the experiment's own). ``also``: more configs
    to train in the same sweep (the ablation's, read back later), so that the workers stay busy while
    the long runs train instead of waiting for the last of them. With ``train=False`` nothing is
    trained (``also`` is ignored): a model without all its finished runs is left out. Only the first
    seed's run, whose curves the report plots, evaluates after every epoch; the others evaluate once,
    at the end (:func:`curves_for_first`)."""
    n = 1 if profile == "quick" else seeds
    configs = {label: curves_for_first(sweep.seeded(experiments.notebook_config(name, profile, epochs=epochs,
                                                                                device=device), n, seed))
               for label, name in improved.MODELS.items()}
    if train:
        records = iter(sweep.run_many([c for cfgs in configs.values() for c in cfgs] + list(also),
                                      data_root=data_root, runs_dir=runs_dir, executor=executor))
        return {label: [next(records) for _ in cfgs] for label, cfgs in configs.items()}
    found = {label: [runs.find_finished(c, data_root=data_root, runs_dir=runs_dir) for c in cfgs]
             for label, cfgs in configs.items()}
    return {label: recs for label, recs in found.items() if all(recs)}


def curves_for_first(configs: Sequence[train.TrainConfig]) -> list[train.TrainConfig]:
    """``configs`` (one per seed) with ``eval_at="end"`` for all but the first: a model's table needs
    only the final numbers of each seed, its figures the per-epoch curves of one. Training is the same
    either way; the saving is the evaluations (nearly a quarter of a Model A or B epoch on a CPU). A
    config that evaluates within epochs or stops early keeps its evaluations."""
    return [c if k == 0 or c.eval_every_steps or c.early_stop_patience else c.replace(eval_at="end")
            for k, c in enumerate(configs)]


def task2_records_logged() -> dict:
    """``{label: [run record per seed]}`` of the Task 2 runs this report build has used so far (the
    run log of the report command), so that later sections compare with exactly those; {} outside a
    report build or before Task 2 ran."""
    log = os.environ.get(paths.ENV_RUN_LOG)
    if not log or not Path(log).is_file():
        return {}
    folders = [d for d in dict.fromkeys(Path(log).read_text(encoding="utf-8").split("\n")) if d]
    found = {label: [runs.load_run(d) for d in folders if Path(d).name.rpartition("-")[0] == name and runs.is_finished(d)]
             for label, name in improved.MODELS.items()}
    return {label: recs for label, recs in found.items() if recs}


def _sweep(configs, data, data_root, runs_dir, progress, executor) -> list[runs.RunRecord]:
    if data is not None and executor is None:
        executor = "serial"  # an in-memory data set stays in this process
    return sweep.run_many(configs, data=data, data_root=data_root, runs_dir=runs_dir, executor=executor,
                          progress=progress)


_status = tables.run_status


def uniform_loss(kind: str = "cross_entropy", num_classes: int = 10) -> float:
    """The loss of a uniform softmax (all scores equal): ln 10 = 2.303 for cross-entropy, 0.09 for L2."""
    return train.sample_losses(torch.zeros(1, num_classes), torch.tensor([0]), kind).item()


def uniform_losses(records: Mapping[str, object]) -> dict[str, float]:
    """Each run's loss of a uniform guess (its own loss function), for :func:`cifarlib.plots.plot_comparison`."""
    return {name: uniform_loss(item.config.loss) for name, item in records.items()}


def start_gradients(num_classes: int = 10) -> tuple[float, float]:
    """d loss / d z_y, the gradient with respect to the true class's score while the softmax is still
    uniform (all scores equal), for cross-entropy and for the L2 loss of ``loss="mse"``: autograd on
    the training loop's own loss function."""
    grads = []
    for kind in ("cross_entropy", "mse"):
        scores = torch.zeros(1, num_classes, requires_grad=True)
        train.sample_losses(scores, torch.tensor([0]), kind).sum().backward()
        grads.append(scores.grad[0, 0].item())
    return grads[0], grads[1]


# --- Sentences for the report, written from the run records' numbers -------------------------------------
# The report's discussions quote these instead of fixed claims, so that they hold for the build at hand.

NEAR_CHANCE = 0.2  # a 10-class network below 20 % test accuracy has not yet learned much (chance is 10 %)


def acc(item, split: str = "test") -> float:
    """Final accuracy of ``split`` in percent (NaN when missing or the run diverged)."""
    return math.nan if _status(item) == DIVERGED else tables.accuracy(item, split)


def examples_to_reach(item, level: float, split: str = "val") -> int | None:
    """Training examples seen at the first evaluation where ``split`` accuracy reached ``level`` (a
    fraction), or None if it never did."""
    frame = finite(item.history)
    hit = frame[frame[f"{split}_acc"] >= level]
    return None if hit.empty else int(hit["examples_seen"].iloc[0])


def _per_epoch(item) -> float:
    m = item.metrics
    return m["examples_seen"] / m["epochs_run"] if m.get("epochs_run") else math.nan


def _when(item, level: float) -> str:
    """"after 12,800 examples (0.3 epochs)" or "" when the validation accuracy never reached ``level``."""
    n = examples_to_reach(item, level)
    if n is None:
        return ""
    e = n / _per_epoch(item)
    return f"after {n:,} examples ({e:.2g} epoch{'' if f'{e:.2g}' == '1' else 's'})"


def _budget(item) -> str:
    m = item.metrics
    return f"{m['examples_seen']:,} training examples ({m['epochs_run']:g} epoch{'s' if m['epochs_run'] != 1 else ''})"


def _loss_progress(item) -> str:
    """"2.303, practically the 2.303 of a uniform guess" or "0.0412, 82 % below the 0.09 of a uniform guess"."""
    loss, start = item.metrics.get("final_train_loss", math.nan), uniform_loss(item.config.loss)
    if loss > 1.05 * start:
        return f"{loss:.4g}, worse than the {start:.4g} of a uniform guess"
    if loss >= 0.95 * start:
        return f"{loss:.4g}, practically the {start:.4g} of a uniform guess"
    return f"{loss:.4g}, {100 * (1 - loss / start):.0f} % below the {start:.4g} of a uniform guess"


def _still_at_start(item) -> str:
    """A clause for a run that has barely moved from a uniform guess, else ""."""
    loss, start = item.metrics.get("final_train_loss", math.nan), uniform_loss(item.config.loss)
    if _status(item) == DIVERGED or not math.isfinite(loss) or not 0.95 * start <= loss <= 1.05 * start:
        return ""
    return f"its training loss is still {_loss_progress(item)}: the weights have hardly moved from their random start"


def describe_main(item) -> str:
    """The main run in a few sentences: final accuracies, how fast it learned, whether it is still
    improving at the end and whether training and held-out accuracy drift apart."""
    tr, va, te = acc(item, "train"), acc(item, "val"), acc(item, "test")
    if not math.isfinite(te):
        return f"The main configuration did not finish with a usable result (status: {_status(item)})."
    if te < 100 * NEAR_CHANCE:
        return (f"After {_budget(item)} the network is still close to chance: {te:.1f} % test accuracy against "
                f"the 10 % of guessing, and {_still_at_start(item) or 'its loss has only begun to fall'}. "
                "The curves show the very start of training only.")
    text = f"The main configuration ends at **{te:.2f} %** test accuracy ({tr:.2f} % on the training subset, " \
           f"{va:.2f} % on validation) after {_budget(item)}."
    speed = [f"{100 * lvl:.0f} % {_when(item, lvl)}" for lvl in (0.9, 0.95) if _when(item, lvl)]
    if speed:
        text += " Validation accuracy passes " + " and ".join(speed) + "."
    ends = epoch_ends(item.history)
    if len(ends) >= 2:
        change = 100 * (ends["val_acc"].iloc[-1] - ends["val_acc"].iloc[-2])
        text += (f" In the last epoch it changes by {change:+.2f} points: "
                 + ("the network is still improving when training stops." if change > 0.1 else
                    "it fell in the last epoch." if change < -0.1 else "the curve has levelled off."))
    gap = tr - va
    text += (f" Training accuracy is {gap:.1f} points above validation: the network has begun to fit its training "
             "digits better than new ones." if gap >= 2 else
             f" Training, validation and test accuracy stay within {max(tr, va, te) - min(tr, va, te):.1f} points of "
             "each other: no sign of overfitting within this budget.")
    return text


def describe_lr_sweep(records: Mapping[str, object]) -> str:
    """One sentence per learning rate (final test accuracy, speed, divergence), then the best rate."""
    parts = []
    for item in records.values():
        lr = f"At learning rate {item.config.lr:g}"
        if _status(item) == DIVERGED:
            parts.append(f"{lr} the loss stopped being a finite number and the run diverged.")
            continue
        stuck, fast = _still_at_start(item), _when(item, 0.9)
        parts.append(f"{lr} the network ends at {acc(item):.2f} % test accuracy"
                     + (f"; {stuck}." if stuck else f", reaching 90 % validation accuracy {fast}." if fast else
                        ", without reaching 90 % validation accuracy."))
    ok = {name: item for name, item in records.items() if _status(item) != DIVERGED}
    diverged = len(records) - len(ok)
    parts.append("No run diverged." if not diverged else f"{diverged} of the {len(records)} runs diverged.")
    if ok:
        best = max(ok.values(), key=acc)
        others = [acc(i) for i in ok.values() if i is not best]
        margin = acc(best) - max(others) if others else math.nan
        parts.append(f"The best test accuracy, {acc(best):.2f} %, comes from learning rate {best.config.lr:g}"
                     + (f", {margin:.2f} points ahead of the next." if others else "."))
        gap = max(acc(i, "train") - acc(i) for i in ok.values())
        parts.append(f"No run's training accuracy is more than {max(gap, 0):.1f} points above its test accuracy."
                     if gap < 2 else f"The largest gap between training and test accuracy is {gap:.1f} points.")
    return " ".join(parts)


def describe_losses(records: Mapping[str, object], reference: str) -> str:
    """Cross-entropy (``reference``) against the other loss: accuracies, and how much of its
    uniform-guess loss each run has removed (a scale-free way to compare two different losses)."""
    ref = records[reference]
    sentences = []
    for name, item in records.items():
        kind = LOSS_NAMES.get(item.config.loss, item.config.loss)
        kind = kind if kind.isupper() else kind.lower()
        if _status(item) == DIVERGED:
            sentences.append(f"The {kind} run diverged.")
            continue
        sentences.append(f"The {kind} run ends at {acc(item):.2f} % test accuracy with a training loss of "
                         f"{_loss_progress(item)}.")
        if name != reference:
            diff = acc(item) - acc(ref)
            sentences.append(f"Its test accuracy is {abs(diff):.2f} points {'below' if diff < 0 else 'above'} "
                             "the cross-entropy run's.")
    return " ".join(sentences)


def describe_networks(records: Mapping[str, object], seeds: Mapping[str, list], reference: str) -> str:
    """Two networks: parameters, the single-seed result, then mean and spread over the seeds and
    whether their single runs can land in either order. Labels read as "the <label> network"."""
    other = next(n for n in records if n != reference)
    big, small = records[reference], records[other]
    ratio = big.metrics["params"] / small.metrics["params"]
    text = (f"The {other} network has {small.metrics['params']:,} parameters, {ratio:.0f} times fewer than the "
            f"{big.metrics['params']:,} of the {reference} network. With seed {big.config.seed} the {reference} "
            f"network ends at {acc(big):.2f} % and the {other} network at {acc(small):.2f} % test accuracy.")
    fast = {n: examples_to_reach(records[n], 0.9) for n in (reference, other)}
    if all(v is not None for v in fast.values()) and fast[reference] != fast[other]:
        first, later = sorted(fast, key=fast.get)
        text += (f" The {first} network passes 90 % validation accuracy first, after {fast[first]:,} examples "
                 f"against {fast[later]:,} for the {later} network.")
    tests = {n: [acc(r) for r in seeds[n]] for n in (reference, other)}
    if min(len(v) for v in tests.values()) < 2:
        return text
    mean = {n: float(np.nanmean(v)) for n, v in tests.items()}
    std = {n: float(np.nanstd(v, ddof=1)) for n, v in tests.items()}
    lead, lag = sorted(mean, key=mean.get, reverse=True)
    diff = mean[lead] - mean[lag]
    text += (f" Over {len(tests[reference])} seeds the {lead} network averages {mean[lead]:.2f} % and the {lag} "
             f"network {mean[lag]:.2f} % test accuracy, a difference of {diff:.2f} points, against a seed-to-seed "
             f"standard deviation of {std[reference]:.2f} ({reference}) and {std[other]:.2f} ({other}) points.")
    overlap = min(tests[lead]) < max(tests[lag])
    text += (" Single runs of the two land in either order: one run per network would not settle which is better."
             if overlap else f" Every run of the {lead} network beats every run of the {lag} network.")
    return text
