"""Figures for print: texts measured at the size the report prints them, legends kept off the data,
and the label and caption that the report numbers and cites."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from cifarlib import plots  # noqa: E402


@pytest.fixture(autouse=True)
def style():
    with plt.rc_context(plots.STYLE):
        yield
    plt.close("all")


def test_a_figure_at_text_width_prints_at_its_own_size():
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([0, 1], [0, 1])
    assert plots.print_scale(fig) == 1.0
    assert plots.print_problems(fig) == []


def test_a_wide_figure_is_shrunk_and_its_small_text_is_found():
    fig, ax = plt.subplots(figsize=(13, 3))
    ax.plot([0, 1], [0, 1])
    ax.set_title("wide", fontsize=9)
    scale = plots.print_scale(fig)
    assert 0.5 < scale < 0.7  # 6.43 in of text width for the ~10.5 in that the tight box keeps
    problems = plots.print_problems(fig)
    assert problems and "print below 7 pt" in problems[0]


def test_a_legend_over_the_data_is_found_and_moved_below_the_axes(tmp_path):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.linspace(0, 1, 50)
    for k in range(4):
        ax.plot(x, np.full_like(x, 0.9 + 0.02 * k), label=f"a long legend entry {k}")  # flat lines at the top
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right")
    assert plots._legend_hides_data(ax)
    assert any("hides data" in p for p in plots.print_problems(fig))
    plots.show(fig, "legend_case", "A caption", figures_dir=tmp_path)
    assert not plots._legend_hides_data(ax)
    assert (tmp_path / "legend_case.png").is_file() and (tmp_path / "legend_case.pdf").is_file()


@pytest.mark.parametrize("kind", ["segment", "bars", "scatter"])
def test_a_legend_over_a_segment_a_bar_or_a_scatter_point_is_found(kind):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if kind == "segment":  # two vertices far apart; the straight segment between them runs under the legend
        ax.plot([0.5, 1.3], [1.3, 0.56], label="falling")  # both vertices outside the axes
        ax.plot([0.0, 1.0], [0.02, 0.02], label="flat")
    elif kind == "bars":
        ax.bar([0.1, 0.9], [0.3, 0.97], width=0.15, label="bars")
    else:
        ax.scatter([0.1, 0.9], [0.1, 0.93], label="points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right")
    assert plots._legend_hides_data(ax)
    ax.legend(loc="lower right" if kind == "scatter" else "upper left")  # where nothing is drawn
    hidden = plots._legend_hides_data(ax)
    plt.close(fig)
    assert not hidden


def test_show_attaches_label_caption_and_problems_to_the_displayed_figure(tmp_path, monkeypatch):
    shown = []
    import IPython
    import IPython.display

    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", lambda obj, metadata: shown.append((obj, metadata)))
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [1, 0])
    plots.show(fig, "fig_name", "What it shows", figures_dir=tmp_path)
    assert shown == [(fig, {"cifarlib": {"label": "fig_name", "caption": "What it shows", "print_problems": []}})]


# ---- every figure the report draws, on made-up inputs ------------------------------------------------

def _history(epochs: int = 5, steps: int = 1):
    rows = []
    for e in range(1, epochs + 1):
        for s in range(steps):
            frac = e - 1 + (s + 1) / steps
            rows.append({"epoch": frac, "examples_seen": int(frac * 50_000),
                         **{f"{split}_loss": 2.3 / (1 + frac) + k * 0.05 for k, split in enumerate(("train", "val", "test"))},
                         **{f"{split}_acc": 0.1 + 0.8 * frac / epochs - k * 0.01 for k, split in enumerate(("train", "val", "test"))}})
    return rows


class _Rec:
    def __init__(self, epochs=5, steps=1):
        self.history = _history(epochs, steps)
        self.metrics = {"status": "finished"}


def _figures():
    import torch

    from cifarlib import evaluation, theory, visualize

    gen = torch.Generator().manual_seed(0)
    n, classes = 40, ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    probs = torch.rand(n, 10, generator=gen).softmax(1)
    pred = evaluation.Predictions(images=torch.randint(0, 255, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
                                  labels=torch.randint(0, 10, (n,), generator=gen), preds=probs.argmax(1),
                                  probs=probs, classes=classes)
    runs = {"learning rate 0.1": _Rec(), "learning rate 0.01": _Rec(), "learning rate 0.0001": _Rec()}
    mean = np.linspace(6, -1, 10)
    effects = pd.DataFrame({"change": [f"change {k}" for k in range(10)], "contribution (val, points)": mean,
                            "ci low": mean - 0.8, "ci high": mean + 0.8,
                            "verdict": ["helps" if m > 0.8 else "hurts" if m < -0.8 else "cannot tell" for m in mean]})
    image = torch.rand(3, 256, 256, generator=gen)
    yield "curves", plots.plot_curves(_Rec().history, "loss", title="Table-1 baseline: cross-entropy loss")
    yield "loss and accuracy", plots.plot_loss_and_accuracy(_Rec(8, 4).history, "Main configuration", x="examples_seen")
    yield "runs", plots.plot_runs({"ResNet18 transfer (ImageNet weights)": _Rec(), "Model B": _Rec()}, "loss",
                                  splits=("train", "val"), title="Training and validation loss")
    yield "comparison", plots.plot_comparison(runs, "Learning-rate sweep (SGD, momentum 0.5)")
    yield "confusion", plots.plot_confusion(np.random.default_rng(0).integers(0, 900, (10, 10)), classes)
    yield "gallery", evaluation.plot_misclassified(pred)
    yield "conv by hand", theory.plot_conv_by_hand(theory.CONV_IMAGE, theory.SOBEL_KERNEL, padding=1)
    yield "ablation", plots.plot_effects(effects.assign(change=[f"ingredient {k}" for k in range(10)]))
    for pretrained in (True, False):
        yield "activations", visualize.plot_activations(image, torch.randn(1, 64, 128, 128, generator=gen),
                                                        title="conv1 activations, CIFAR-10 test image 3 (cat)",
                                                        pretrained=pretrained)
        yield "filters", visualize.plot_filters(torch.randn(64, 3, 7, 7, generator=gen), pretrained=pretrained)


def test_every_report_figure_is_legible_at_print_size():
    bad = {}
    for name, fig in _figures():
        problems = plots.print_problems(fig)
        if problems:
            bad[name] = problems
        plt.close(fig)
    assert not bad, bad


def test_axis_labels_of_neighbouring_panels_that_run_into_each_other_are_found():
    fig, axes = plt.subplots(1, 3, figsize=(5, 2.5))
    for ax in axes:
        ax.plot([0, 1], [0, 1])
        ax.set_xlabel("a very long axis label that cannot fit under a narrow panel")
    assert any("overlaps" in p for p in plots.print_problems(fig))
    for ax in axes:
        ax.set_xlabel("epoch")
    assert plots.print_problems(fig) == []


def test_a_figures_folder_that_cannot_be_made_is_one_line(tmp_path):
    from cifarlib.errors import CifarlibError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    fig, ax = plt.subplots()
    with pytest.raises(CifarlibError) as excinfo:
        plots.save(fig, "x", figures_dir=blocker / "figures")
    plt.close(fig)
    message = str(excinfo.value)
    assert "\n" not in message and str(blocker / "figures") in message and "CIFARLIB_FIGURES" in message


def test_a_one_epoch_run_is_drawn_on_a_unit_axis_with_whole_epoch_ticks():
    history = [{"epoch": 1.0, "step": 10, "examples_seen": 640, "train_loss": 1.5, "val_loss": 1.6, "test_loss": 1.55}]
    fig = plots.plot_curves(history, "loss")
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo <= 0.0 and hi >= 2.0  # not 0.96 to 1.04
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())
    plt.close(fig)


def test_counts_read_as_words_in_a_sentence():
    from cifarlib import tables

    assert tables.count_of(16, 16, "maps shown") == "all 16 maps shown"
    assert tables.count_of(0, 512, "channels") == "none of the 512 channels"
    assert tables.count_of(3, 64, "filters") == "three of the 64 filters"
    assert tables.upper_first(tables.say_count(0, zero="none")) == "None" and tables.say_count(47) == "47"


def test_a_later_run_on_the_same_axes_widens_it_and_short_spans_keep_fine_ticks():
    one = [{"epoch": 1.0, "step": 10, "examples_seen": 640, "val_loss": 1.6}]
    five = [{"epoch": float(e), "step": 10 * e, "examples_seen": 640 * e, "val_loss": 1.0 / e} for e in range(1, 6)]
    fig = plots.plot_curves(one, "loss", splits=("val",))
    plots.plot_curves(five, "loss", splits=("val",), ax=fig.axes[0], label_prefix="B ")
    assert fig.axes[0].get_xlim()[1] >= 5.0  # not clipped at the first run's 0-2
    plt.close(fig)
    half = [{"epoch": e, "step": 1, "examples_seen": 1, "val_loss": 1.0} for e in (1.0, 1.5)]
    fig = plots.plot_curves(half, "loss", splits=("val",))
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1.0 <= t <= 1.5]
    assert 1.0 in ticks and 1.5 in ticks  # matplotlib's own ticks (1.0, 1.1, ...), not 1.02, 1.08, ...
    plt.close(fig)
    fig = plots.plot_curves(one, "loss", x="examples_seen", splits=("val",))
    assert tuple(fig.axes[0].get_xlim()) != (639.0, 641.0)  # the one-epoch widening is for epoch axes only
    plt.close(fig)
