"""Comparison studies: train (or load) a named group of experiments, then compare them in one table,
one figure and a few printed sentences, so that each notebook section stays a few short cells.

A group maps a row label to an experiment name, e.g. ``{"lr 0.1": "mnist_lr_0.1", ...}``.
Runs that diverged stay in the comparison: their accuracy cells read "diverged" instead of a number.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from cifarlib import experiments, plots, runs, train

DIVERGED = "diverged"


def run_group(group: Mapping[str, str], profile: str = "full", data=None, data_root=None, runs_dir=None,
              progress: bool | None = None, **overrides) -> dict[str, runs.RunRecord]:
    """``{label: run record}``: each experiment of ``group`` (label -> experiment name) trained or loaded
    with ``overrides`` (e.g. device, seed, epochs) applied to its ``profile`` configuration."""
    out = {}
    for label, name in group.items():
        cfg = experiments.config(name, profile=profile, **overrides)
        out[label] = runs.train_or_load(cfg, data=data, data_root=data_root, runs_dir=runs_dir, progress=progress)
    return out


def run_seeds(group: Mapping[str, str], seeds: Sequence[int], **kw) -> dict[str, list[runs.RunRecord]]:
    """``{label: [run record per seed]}``: :func:`run_group` repeated for each model seed (the split stays
    fixed), for ``cifarlib.tables.mean_std_table``. A ``seed`` in ``kw`` is ignored."""
    kw = {k: v for k, v in kw.items() if k != "seed"}
    per_seed = [run_group(group, seed=seed, **kw) for seed in seeds]
    return {label: [records[label] for records in per_seed] for label in group}


def _status(item) -> str:
    return getattr(item, "status", None) or item.metrics.get("status", "?")


def _percent(item, key: str) -> str:
    """An accuracy in percent with two decimals, or "diverged" for a run that diverged."""
    if _status(item) == DIVERGED:
        return DIVERGED
    value = item.metrics.get(key, math.nan)
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def comparison_table(records: Mapping[str, object], label: str = "run") -> pd.DataFrame:
    """One row per run (a run record or a ``fit`` Run): status, parameters, final train and test
    accuracy in percent (the text "diverged" for a diverged run) and the training time."""
    rows = []
    for name, item in records.items():
        m = item.metrics
        rows.append({label: name, "status": _status(item), "params": f"{m.get('params', 0):,}",
                     "train acc (%)": _percent(item, "final_train_acc"),
                     "test acc (%)": _percent(item, "final_test_acc"),
                     "time (s)": f"{m.get('wall_s', math.nan):.0f}", "device": m.get("device", "?")})
    return pd.DataFrame(rows)


def comparison_lines(records: Mapping[str, object], reference: str) -> list[str]:
    """One sentence per run against ``reference``: final test and train accuracy side by side."""
    ref = records[reference]
    lines = []
    for name, item in records.items():
        if name == reference:
            continue
        lines.append(f"{name} vs {reference}: test acc {_percent(item, 'final_test_acc')} vs "
                     f"{_percent(ref, 'final_test_acc')} %, train acc {_percent(item, 'final_train_acc')} vs "
                     f"{_percent(ref, 'final_train_acc')} % ({_status(item)} vs {_status(ref)})")
    return lines


def finite(history) -> pd.DataFrame:
    """A history as a DataFrame with +-inf replaced by NaN (a diverged run leaves a gap, not a broken axis)."""
    frame = pd.DataFrame(getattr(history, "history", history))
    return frame.replace([np.inf, -np.inf], np.nan)


def epoch_ends(history) -> pd.DataFrame:
    """The evaluation points at whole epochs (drops the extra points of ``eval_every_steps``)."""
    frame = finite(history)
    return frame[np.isclose(frame["epoch"], frame["epoch"].round())].reset_index(drop=True)


def plot_comparison(records: Mapping[str, object], title: str, metrics: Sequence[str] = ("loss", "acc"),
                    splits: Sequence[str] = ("train", "test"), x: str = "epoch"):
    """One panel per metric, one line per (run, split): the runs of a study side by side."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.4 if len(metrics) > 1 else 4.8, 3.3), squeeze=False)
    histories = {name: finite(item.history) for name, item in records.items()}
    for ax, metric in zip(axes[0], metrics):
        what = "Loss" if metric == "loss" else "Accuracy"
        plots.plot_runs(histories, metric, splits=splits, x=x, ax=ax, title=what)
        ax.get_legend().remove()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 * ((len(labels) + 2) // 3) + 0.02, 1, 1))
    return fig


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
