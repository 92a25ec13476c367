"""Figures of results: training curves, run comparisons, the ablation's effects, confusion matrices,
image grids.

Every figure gets a title, labelled axes with units, and is shown by :func:`show`: saved as PNG (for
HTML and quick viewing) and PDF (vector, for the LaTeX report) under ``figures/``, displayed once with
its label and caption attached (the report numbers it and resolves ``@fig:<label>`` citations), and
checked for print: :func:`print_problems` measures every text at the size the figure is printed on
A4 (it must be at least :data:`MIN_PRINT_PT`) and finds legends that hide data.
Accuracies are fractions in run records and plotted in percent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cifarlib import paths
from cifarlib.atomic import atomic_path, writable_dir

# The report prints a figure at its natural size, shrunk to fit the text width and half the text height
# of an A4 page (see the LaTeX template); text on it must stay readable at that size.
PRINT_WIDTH_IN = 465.0 / 72.27
PRINT_HEIGHT_IN = 0.5 * (29.7 - 2.2 - 2.4) / 2.54
MIN_PRINT_PT = 7.0

SPLIT_STYLE = {"train": ("tab:blue", "-"), "val": ("tab:orange", "--"), "test": ("tab:green", ":")}
SPLIT_LABEL = {"train": "train", "val": "validation", "test": "test"}
X_LABEL = {"epoch": "epoch", "examples_seen": "examples seen (thousands)", "step": "optimizer step"}


def _x_axis(ax, x: str) -> None:
    """The x label; whole epochs as ticks over two epochs or more; thousands of examples; a run of one
    epoch is drawn in the middle of an axis two epochs wide instead of one zoomed to a hair's breadth."""
    ax.set_xlabel(X_LABEL.get(x, x))
    lo, hi = ax.dataLim.intervalx
    single = bool(np.isfinite(lo)) and hi - lo < 1e-9
    if x == "epoch" and (single or hi - lo >= 2):  # shorter spans: matplotlib's fractional ticks read better
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if x == "epoch" and single:
        ax.set_xlim(lo - 1, hi + 1, auto=True)  # a later run drawn on the same axes widens it again
    if x == "examples_seen":
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:,g}"))
Y_LABEL = {"loss": "loss (mean per image)", "acc": "accuracy (%)"}


def setup_notebook() -> None:
    """Notebook defaults: PNG + PDF figure outputs (the PDF export uses the vector one), readable sizes."""
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png", "pdf")
    except ImportError:  # not inside IPython
        pass
    plt.rcParams.update(STYLE)


# Sizes chosen for print: a figure is at most the text width (6.4 in), so its text prints at these sizes.
STYLE = {
    "figure.figsize": (6.4, 3.6), "figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
    "axes.grid": True, "grid.alpha": 0.3, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.titlesize": 10.5, "font.size": 9,
}


def save(fig, name: str, figures_dir=None) -> Path:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` and ``.pdf`` (atomically). Returns the PNG path."""
    out = writable_dir(paths.figures_dir(figures_dir), what="figures to",
                       remedy=f"pass figures_dir= or set ${paths.ENV_FIGURES} to a writable folder")
    for ext in ("png", "pdf"):
        with atomic_path(out / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext)
    return out / f"{name}.png"


def show(fig, name: str, caption: str, figures_dir=None) -> Path:
    """Save ``fig`` (see :func:`save`), then display it once with its label ``name`` and ``caption``
    attached, for the report to number and cite (``@fig:<name>`` in the text). A legend that hides
    data is moved below the axes first. Returns the PNG path."""
    for ax in fig.axes:
        if _legend_hides_data(ax):
            _legend_below(ax)
    png = save(fig, name, figures_dir)
    meta = {"label": name, "caption": caption, "print_problems": print_problems(fig)}
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return png
    if get_ipython() is not None:
        display(fig, metadata={"cifarlib": meta})
        plt.close(fig)  # shown once, with its metadata; the inline backend would show it again
    return png


def print_scale(fig) -> float:
    """The factor the report scales ``fig`` by on the page: its tight bounding box (plus the saved
    padding) shrunk to fit the text width and half the text height; never enlarged."""
    fig.canvas.draw()
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    pad = 2 * plt.rcParams["savefig.pad_inches"]
    return min(1.0, PRINT_WIDTH_IN / (box.width + pad), PRINT_HEIGHT_IN / (box.height + pad))


def print_problems(fig) -> list[str]:
    """What would be hard to read when ``fig`` is printed in the report: texts smaller than
    :data:`MIN_PRINT_PT` at print size, and legends drawn over data points."""
    from matplotlib.text import Text

    scale, problems = print_scale(fig), []
    small = sorted({(round(t.get_fontsize() * scale, 1), t.get_text().strip()[:30]) for t in fig.findobj(Text)
                    if t.get_visible() and t.get_text().strip() and t.get_fontsize() * scale < MIN_PRINT_PT})
    if small:
        problems.append(f"{len(small)} text(s) print below {MIN_PRINT_PT:g} pt, e.g. {small[0][1]!r} at {small[0][0]} pt")
    problems += [f"the legend of {ax.get_title()!r} hides data" for ax in fig.axes if _legend_hides_data(ax)]
    problems += [f"{a!r} overlaps {b!r}" for a, b in _overlapping_labels(fig)]
    return problems


def _overlapping_labels(fig) -> list[tuple[str, str]]:
    """Pairs of axis labels, titles and tick labels of different axes whose boxes overlap."""
    renderer = fig.canvas.get_renderer()
    texts = []
    for k, ax in enumerate(fig.axes):
        parts = [ax.title]
        if ax.axison:  # drawn tick labels only: those of ticks inside the view limits
            (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
            parts += [ax.xaxis.label, ax.yaxis.label]
            parts += [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]
            parts += [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
        texts += [(k, t.get_text(), t.get_window_extent(renderer)) for t in parts if t.get_visible() and t.get_text()]
    return [(ta, tb) for i, (ka, ta, a) in enumerate(texts) for kb, tb, b in texts[i + 1:]
            if ka != kb and a.overlaps(b)]


def _legend_hides_data(ax) -> bool:
    """Whether data of ``ax`` falls inside the legend's box (inside the axes): a point of a line or of the
    straight segments between its points, a scatter point, or part of a bar."""
    import numpy as np

    legend = ax.get_legend()
    if legend is None or not legend.get_visible():
        return False
    ax.figure.canvas.draw()
    box = legend.get_window_extent()
    if not ax.get_window_extent().overlaps(box):
        return False
    def inside(xy) -> bool:
        xy = xy[np.isfinite(xy).all(axis=1)]
        return bool(len(xy)) and bool(((xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1)
                                       & (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)).any())

    for line in ax.get_lines():
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
        if line.get_linestyle() not in ("None", "", " ") and len(xy) > 1:  # points along each segment, too
            steps = np.linspace(0, 1, 25)[:, None, None]
            xy = (xy[:-1] + steps * (xy[1:] - xy[:-1])).reshape(-1, 2)
        if inside(xy):
            return True
    for collection in ax.collections:  # scatter points
        offsets = np.asarray(collection.get_offsets(), dtype=float).reshape(-1, 2)
        if len(offsets) and inside(collection.get_offset_transform().transform(offsets)):
            return True
    for patch in ax.patches:  # bars
        if patch.get_visible() and patch.get_window_extent().overlaps(box):
            return True
    return False


def _legend_below(ax) -> None:
    """Move ``ax``'s legend under its x-axis label, in as many columns as fit."""
    handles, labels = ax.get_legend_handles_labels()
    ncol = min(3, len(labels)) if max(map(len, labels), default=0) <= 24 else 1
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=ncol, frameon=False)
    ax.figure.tight_layout()


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
    _x_axis(ax, x)
    ax.set_ylabel(Y_LABEL.get(metric, metric))
    ax.set_title(title or f"{Y_LABEL.get(metric, metric).split(' (')[0].capitalize()} during training")
    ax.legend()
    return fig


def plot_loss_and_accuracy(history, title: str, x: str = "epoch"):
    """Two panels side by side: loss and accuracy for train/validation/test."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(6.4, 3.0))
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
    _x_axis(ax, x)
    ax.set_ylabel(Y_LABEL.get(metric, metric))
    ax.set_title(title or f"{metric} by run")
    ax.legend()
    return fig


def plot_confusion(matrix, classes: Sequence[str], title: str = "Confusion matrix (test set)", normalize: bool = True):
    """Rows = true class, columns = predicted class; cells in percent of the row when ``normalize``."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    shown = 100.0 * m / np.maximum(m.sum(axis=1, keepdims=True), 1) if normalize else m
    fig, ax = plt.subplots(figsize=(5.8, 5.0))
    im = ax.imshow(shown, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.grid(False)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{shown[i, j]:.0f}" if normalize else f"{int(m[i, j])}", ha="center", va="center",
                    fontsize=8.5, color="white" if shown[i, j] > shown.max() / 2 else "black")
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
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.35) * nrows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = imgs[k].float()
        img = img / 255.0 if imgs.dtype == torch.uint8 else img
        arr = np.asarray(img.permute(1, 2, 0).clamp(0, 1))
        ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap=cmap or ("gray" if arr.shape[-1] == 1 else None))
        if titles is not None:
            ax.set_title(titles[k], fontsize=7.5, pad=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---- studies: several runs side by side ---------------------------------------------------------

LOSS_NAMES = {"cross_entropy": "Cross-entropy", "mse": "L2"}


def finite(history) -> pd.DataFrame:
    """A history as a DataFrame with +-inf replaced by NaN (a diverged run leaves a gap, not a broken axis)."""
    return _frame(history).replace([math.inf, -math.inf], math.nan)


def epoch_ends(history) -> pd.DataFrame:
    """The evaluation points at whole epochs (drops the extra points of ``eval_every_steps``)."""
    frame = finite(history)
    return frame[np.isclose(frame["epoch"], frame["epoch"].round())].reset_index(drop=True)


def plot_comparison(records: Mapping[str, object], title: str, metrics: Sequence[str] = ("loss", "acc"),
                    splits: Sequence[str] = ("train", "test"), x: str = "epoch", epoch_ends_only: bool = False,
                    loss_per_run: bool = False, loss_levels: Mapping[str, float] | None = None):
    """One panel per metric, one line per (run, split): the runs of a study side by side.

    ``epoch_ends_only`` keeps the evaluations at whole epochs (one point per epoch). ``loss_per_run``
    gives each run's loss a panel of its own, with its own y-axis: for runs whose losses live on
    different scales (cross-entropy against L2); ``loss_levels`` (run -> loss) adds each run's loss of a
    uniform guess there as a grey dotted line."""
    pick = epoch_ends if epoch_ends_only else finite
    histories = {name: pick(item.history) for name, item in records.items()}
    panels = [(m, None) for m in metrics]
    if loss_per_run and "loss" in metrics:
        i = list(metrics).index("loss")
        panels = panels[:i] + [("loss", name) for name in records] + panels[i + 1:]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 if len(panels) > 1 else 4.8, 3.3), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles, labels = [], []
    for ax, (metric, run) in zip(axes[0], panels):
        if run is None:
            what = "Loss" if metric == "loss" else "Accuracy"
            plot_runs(histories, metric, splits=splits, x=x, ax=ax, title=what)
            if not handles:
                handles, labels = ax.get_legend_handles_labels()
        else:
            i, kind = list(records).index(run), records[run].config.loss
            plot_curves(histories[run], "loss", x=x, splits=splits, ax=ax, style={"color": colors[i % len(colors)]},
                        title=f"{LOSS_NAMES.get(kind, kind)} loss")
            if loss_levels and run in loss_levels:
                ax.axhline(loss_levels[run], color="0.5", ls=(0, (1, 2)), lw=1.2)
        ax.get_legend().remove()
    if loss_per_run and loss_levels:
        handles = handles + [plt.Line2D([], [], color="0.5", ls=(0, (1, 2)), lw=1.2)]
        labels = labels + ["loss of a uniform guess"]
    ncol = min(3, -(-len(labels) // max(1, len(splits))))  # one column per run: its splits stacked
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 * -(-len(labels) // ncol) + 0.02, 1, 1))
    return fig


def plot_effects(table: pd.DataFrame, title: str | None = None):
    """Each ingredient's contribution to validation accuracy (points) with its 95 % confidence interval,
    largest at the top; a bar whose interval crosses zero is grey."""
    y = np.arange(len(table))[::-1]
    mean = table["contribution (val, points)"].to_numpy(dtype=float)
    low, high = table["ci low"].to_numpy(dtype=float), table["ci high"].to_numpy(dtype=float)
    colours = ["tab:blue" if v == "helps" else "tab:red" if v == "hurts" else "0.6" for v in table["verdict"]]
    fig, ax = plt.subplots(figsize=(6.4, 0.3 * len(table) + 1.4))
    ax.barh(y, mean, height=0.6, color=colours)
    ok = ~np.isnan(low)
    ax.errorbar(mean[ok], y[ok], xerr=[mean[ok] - low[ok], high[ok] - mean[ok]], fmt="none", ecolor="black",
                capsize=3, lw=1)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, table["change"])
    ax.set_xlabel("contribution to validation accuracy (percentage points)")
    ax.set_title(title or "Leave one out: what each ingredient of Model A is worth")
    fig.tight_layout()
    return fig


class LiveCurves:
    """Loss and accuracy of a training run, redrawn in place after every evaluation: pass it as
    :func:`cifarlib.train.fit`'s ``callback``. In Jupyter one figure output updates as the run goes;
    :meth:`close` leaves that output at its last state and closes the figure, so that Jupyter does not
    show it a second time when the cell ends."""

    def __init__(self, title: str):
        self.title = title
        self.fig = self.axes = self.handle = None  # made at the first evaluation: a finished run shows none
        self.draws = 0

    def __call__(self, history) -> None:
        if self.fig is None:
            from IPython.display import display

            self.fig, self.axes = plt.subplots(1, 2, figsize=(6.4, 3.0))
            self.handle = display(self.fig, display_id=True)
        for ax in self.axes:
            ax.clear()
        plot_curves(history, "loss", ax=self.axes[0], title="Loss")
        plot_curves(history, "acc", ax=self.axes[1], title="Accuracy")
        self.fig.suptitle(self.title)
        self.fig.tight_layout()
        if self.handle is not None:
            self.handle.update(self.fig)
        self.draws += 1

    def close(self) -> None:
        if self.fig is not None:
            plt.close(self.fig)
