"""Figures: training curves, run comparisons, confusion matrices, image grids.

Every figure gets a title, labelled axes with units, and is saved by :func:`save` as PNG (for
HTML and quick viewing) and PDF (vector, for the LaTeX report) under ``figures/``.
Accuracies are fractions in run records and plotted in percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd

from cifarlib import paths
from cifarlib.atomic import atomic_path

SPLIT_STYLE = {"train": ("tab:blue", "-"), "val": ("tab:orange", "--"), "test": ("tab:green", ":")}
SPLIT_LABEL = {"train": "train", "val": "validation", "test": "test"}
X_LABEL = {"epoch": "epoch", "examples_seen": "training examples seen", "step": "optimizer step"}
Y_LABEL = {"loss": "loss (mean per image)", "acc": "accuracy (%)"}


def setup_notebook() -> None:
    """Notebook defaults: PNG + PDF figure outputs (the PDF export uses the vector one), readable sizes."""
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png", "pdf")
    except ImportError:  # not inside IPython
        pass
    plt.rcParams.update({
        "figure.figsize": (6.4, 3.8), "figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
        "axes.grid": True, "grid.alpha": 0.3, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
    })


def save(fig, name: str, figures_dir=None) -> Path:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` and ``.pdf`` (atomically). Returns the PNG path."""
    out = paths.figures_dir(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        with atomic_path(out / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext)
    return out / f"{name}.png"


def _frame(history) -> pd.DataFrame:
    """History as a DataFrame, from a run record (.history), a Run (.history list) or rows."""
    h = getattr(history, "history", history)
    return h if isinstance(h, pd.DataFrame) else pd.DataFrame(list(h))


def _y(frame: pd.DataFrame, col: str, metric: str):
    return frame[col] * 100.0 if metric == "acc" else frame[col]


def plot_curves(history, metric: str = "loss", x: str = "epoch", splits: Sequence[str] = ("train", "val", "test"),
                title: str | None = None, ax=None, label_prefix: str = "", style=None):
    """Train/validation/test ``metric`` ("loss" or "acc") against ``x`` ("epoch", "examples_seen", "step")
    in one axes. Returns the figure."""
    frame = _frame(history)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots()
    for split in splits:
        col = f"{split}_{metric}"
        if col not in frame or frame[col].isna().all():
            continue
        color, ls = SPLIT_STYLE[split]
        color, ls = (color, ls) if style is None else (style.get("color", color), style.get("ls", ls))
        ax.plot(frame[x], _y(frame, col, metric), color=color, ls=ls, marker="o", ms=3,
                label=f"{label_prefix}{SPLIT_LABEL[split]}")
    ax.set_xlabel(X_LABEL.get(x, x))
    ax.set_ylabel(Y_LABEL.get(metric, metric))
    ax.set_title(title or f"{Y_LABEL.get(metric, metric).split(' (')[0].capitalize()} during training")
    ax.legend()
    return fig


def plot_loss_and_accuracy(history, title: str, x: str = "epoch"):
    """Two panels side by side: loss and accuracy for train/validation/test."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    plot_curves(history, "loss", x=x, ax=a, title="Loss")
    plot_curves(history, "acc", x=x, ax=b, title="Accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_runs(histories: Mapping[str, object], metric: str = "loss", splits: Sequence[str] = ("val",),
              x: str = "epoch", title: str | None = None, ax=None):
    """Compare runs: one line per (run, split). ``histories`` maps a label to a history."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, hist) in enumerate(histories.items()):
        frame = _frame(hist)
        for split in splits:
            col = f"{split}_{metric}"
            if col in frame and not frame[col].isna().all():
                ax.plot(frame[x], _y(frame, col, metric), color=colors[i % len(colors)], ls=SPLIT_STYLE[split][1],
                        marker="o", ms=3, label=f"{label} ({SPLIT_LABEL[split]})")
    ax.set_xlabel(X_LABEL.get(x, x))
    ax.set_ylabel(Y_LABEL.get(metric, metric))
    ax.set_title(title or f"{metric} by run")
    ax.legend()
    return fig


def plot_confusion(matrix, classes: Sequence[str], title: str = "Confusion matrix (test set)", normalize: bool = True):
    """Rows = true class, columns = predicted class; cells in percent of the row when ``normalize``."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    shown = 100.0 * m / np.maximum(m.sum(axis=1, keepdims=True), 1) if normalize else m
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(shown, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.grid(False)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{shown[i, j]:.0f}" if normalize else f"{int(m[i, j])}", ha="center", va="center",
                    fontsize=7, color="white" if shown[i, j] > shown.max() / 2 else "black")
    fig.colorbar(im, ax=ax, label="% of true class" if normalize else "images")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_image_grid(images, titles: Sequence[str] | None = None, ncols: int = 8, title: str = "",
                    cmap: str | None = None, size: float = 1.4):
    """Show images (uint8 or float tensors/arrays, (N, C, H, W) or (N, H, W)) in a grid with per-image titles."""
    import numpy as np
    import torch

    imgs = torch.as_tensor(images).detach().cpu()
    if imgs.dim() == 3:
        imgs = imgs[:, None]
    n = len(imgs)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = imgs[k].float()
        img = img / 255.0 if imgs.dtype == torch.uint8 else img
        arr = np.asarray(img.permute(1, 2, 0).clamp(0, 1))
        ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap=cmap or ("gray" if arr.shape[-1] == 1 else None))
        if titles is not None:
            ax.set_title(titles[k], fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
