"""Result tables: plain pandas DataFrames, rendered as Markdown so they are real tables in Jupyter
and in the LaTeX PDF (a bare DataFrame prints as monospace text there).

Accuracies are stored as fractions (0..1) in run records and shown in percent here, read through
:func:`accuracy` (as a table cell: :func:`accuracy_cell`). The tables that compare run records live
here; an analysis that computes as it tabulates (the ablation's effects, the models' cost) keeps its
table beside its computation.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

import pandas as pd

SPLITS = ("train", "val", "test")
DIVERGED = "diverged"  # the status of a run whose loss stopped being a finite number
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


NUMBER = re.compile(r"[-+−]?[\d,]*\.?\d+(e[-+]?\d+)?( ?± ?[\d.]+)?( %)?|–")
MINUS = re.compile(r"(?<![\w.])-(?=\.?\d)")  # a hyphen used as a minus sign before a number


TIMES = re.compile(r"(?:(?<=\d)|(?<=\b[A-Z])) ?x ?(?=\d|[A-Z]\b)")  # 3x3, 3 x 32 x 32, C x H x W


def typeset(text: str) -> str:
    """Typography for a reader: a true minus sign (−) for a hyphen before a number, × between
    dimensions, → for an ASCII arrow and ± for +-."""
    text = text.replace("->", "→").replace("+-", "±").replace(" - ", " − ")
    return TIMES.sub("×", MINUS.sub("\u2212", text))


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4g", index: bool = False, intfmt: str = ",") -> str:
    """GitHub-style Markdown (needs ``tabulate``); integers with thousands separators by default,
    yes/no for booleans and a true minus sign for negative numbers."""
    df = df.reset_index() if index else df
    cells, align = {}, []
    for name, col in df.items():
        if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
            cells[name] = ["–" if v is None or (isinstance(v, float) and pd.isna(v)) else _yes_no(v) for v in col]
            align.append("right" if all(NUMBER.fullmatch(str(v)) for v in cells[name]) else "left")
        else:  # numbers: formatted here, so that a text cell such as "11.00" keeps its decimals
            fmt = intfmt if pd.api.types.is_integer_dtype(col) else _metric_format(str(name)) or floatfmt
            cells[name] = ["–" if pd.isna(v) else _number(v, fmt) for v in col]
            align.append("right")
    frame = pd.DataFrame(cells, columns=list(df.columns))
    return typeset(frame.to_markdown(index=False, disable_numparse=True, colalign=align))


def say_count(n: int, zero: str = "no") -> str:
    """A count as a word up to twelve (``zero`` for 0: "no" before a noun, "none" as the subject), in
    digits above."""
    words = (zero, "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
    return words[n] if 0 <= n < len(words) else f"{n:,}"


def count_of(n: int, total: int, noun: str) -> str:
    """How many of ``total`` things, for a sentence: "all 16 maps", "none of the 64 filters",
    "three of the 16 maps"."""
    if n == total:
        return f"all {total:,} {noun}"
    return f"none of the {total:,} {noun}" if n == 0 else f"{say_count(n)} of the {total:,} {noun}"


def upper_first(text: str) -> str:
    """``text`` with its first letter capitalised (the rest as it is), to start a sentence."""
    return text[:1].upper() + text[1:]


def headline(item: str, result: str, value: str) -> None:
    """Show one headline result (``item``: the question's label, e.g. "Task 1(b)"); the report moves
    every headline into its summary table at the front, with the section it comes from."""
    from IPython.display import Markdown, display

    display(Markdown(f"**{item}, {result}:** {value}"),
            metadata={"cifarlib": {"headline": {"item": item, "result": result, "value": value}}})


def _metric_format(column: str) -> str | None:
    """Accuracies in percent with 2 decimals and losses with 3, whatever table they are in."""
    if "Δ" in column:
        return "+.2f"
    if column.startswith(("time", "wall")):
        return ",.0f" if "(s" in column else ".2f"
    if "acc" in column and "%" in column:
        return ".2f"
    return ".3f" if "loss" in column else ".1f" if "%" in column else None


def _number(value, fmt: str) -> str:
    """``format(value, fmt)``, without the minus sign of a value that rounds to zero ("-0.00" -> "0.00")."""
    text = format(value, fmt)
    if math.isfinite(value) and text.startswith("-") and not any(c in "123456789" for c in text):
        return format(0.0, fmt)
    return text


def signed(value: float, fmt: str = "+.2f") -> str:
    """A signed number as a reader writes it: "+1.13", "−0.18" (a true minus sign), "+0.00" for a
    value that rounds to zero."""
    return typeset(_number(value, fmt))


def interval(low: float, high: float, fmt: str = "+.2f") -> str:
    """A confidence interval as a reader writes it, "−0.18 to +1.13": a true minus sign, and "+0.00"
    (never "−0.00") for a bound that rounds to zero; "–" when a bound is missing (NaN)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "–"
    return f"{signed(low, fmt)} to {signed(high, fmt)}"


def _yes_no(v):
    return {True: "yes", False: "no"}.get(v, v) if isinstance(v, bool) else v


def show(df: pd.DataFrame, caption: str, label: str | None = None, floatfmt: str = ".4g", index: bool = False,
         intfmt: str = ",") -> None:
    """Display ``df`` as a Markdown table with its caption line above it. The caption (and the
    ``label`` that ``@tab:<label>`` cites) travel in the output's metadata: the report numbers the
    table, puts the caption in the table's own title and resolves the citations."""
    from IPython.display import Markdown, display

    text = to_markdown(df, floatfmt=floatfmt, index=index, intfmt=intfmt)
    display(Markdown(f"*{caption}*\n\n{text}"), metadata={"cifarlib": {"caption": caption, "label": label}})


def _metrics_of(item) -> Mapping:
    """Accept a run record (has .metrics), a fit() Run (has .metrics) or a plain metrics dict."""
    return getattr(item, "metrics", item)


# ---- the one accessor and the one formatter of a run's accuracy -----------------------------------

def accuracy(item, split: str = "test", prefix: str = "final") -> float:
    """The ``split`` accuracy of a run in percent (``prefix`` "final": of the weights the run returned;
    "best": at its lowest validation loss); NaN when the run has none. ``item``: a run record, a fit()
    Run or a metrics dict."""
    value = _metrics_of(item).get(f"{prefix}_{split}_acc")
    return math.nan if value is None else 100.0 * value


def mean_accuracy(items: Iterable, split: str = "test") -> float:
    """The mean ``split`` accuracy of several runs (seeds), in percent: the mean of the stored fractions,
    then scaled, so that it ranks and rounds as the fractions do. NaN when a run has none."""
    values = [_metrics_of(item).get(f"final_{split}_acc") for item in items]
    if not values or any(v is None for v in values):
        return math.nan
    return 100.0 * (sum(values) / len(values))


def run_status(item) -> str:
    """How a run ended ("finished", "early_stopped", "diverged", ...), from a record, Run or metrics."""
    return getattr(item, "status", None) or _metrics_of(item).get("status", "?")


def accuracy_cell(item, split: str = "test") -> str:
    """:func:`accuracy` as a results table shows it: two decimals, "diverged" for a run that diverged,
    "–" when there is no value."""
    if run_status(item) == DIVERGED:
        return DIVERGED
    value = accuracy(item, split)
    return "–" if not math.isfinite(value) else f"{value:.2f}"


def final_metrics_row(metrics: Mapping, prefix: str = "final") -> dict:
    """``{"train loss": .., "train acc (%)": .., ...}`` from ``final_train_loss``-style keys."""
    row = {}
    for split in SPLITS:
        row[f"{SPLIT_NAMES[split]} loss"] = metrics.get(f"{prefix}_{split}_loss", float("nan"))
        row[f"{SPLIT_NAMES[split]} acc (%)"] = accuracy(metrics, split, prefix)
    return row


def metrics_table(runs: Mapping[str, object], prefix: str = "final", extra: Iterable[str] = ()) -> pd.DataFrame:
    """One row per run: final train/validation/test loss and accuracy (plus ``extra`` metric keys).

    ``runs`` maps a label to a run record, a Run, or a metrics dict.
    """
    rows = []
    for label, item in runs.items():
        m = _metrics_of(item)
        rows.append({"model": label, **final_metrics_row(m, prefix), **{k: m.get(k) for k in extra}})
    return pd.DataFrame(rows)


def mean_std_table(groups: Mapping[str, list], prefix: str = "final", digits: int = 2) -> pd.DataFrame:
    """One row per group of runs (e.g. seeds): each cell ``mean ± std`` over the group, plus the count.

    Losses are shown with 3 decimals, accuracies in percent with ``digits`` decimals; std is the
    sample standard deviation (n-1), left out for a single run. A run without a value (e.g. diverged)
    is not averaged in silently: the cell says how many of the group's runs it covers.
    """
    rows = []
    for label, items in groups.items():
        frame = pd.DataFrame([final_metrics_row(_metrics_of(i), prefix) for i in items])
        row = {"model": label, "runs": len(frame)}
        for col in frame.columns:
            row[col] = _mean_std(frame[col], digits if "acc" in col else 3)
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series, dec: int) -> str:
    finite = values.dropna()
    if finite.empty:
        return "–"
    text = f"{finite.mean():.{dec}f}" + (f" ± {finite.std(ddof=1):.{dec}f}" if len(finite) > 1 else "")
    return text if len(finite) == len(values) else f"{text} (of {len(finite)}/{len(values)} runs)"


# What a reader calls each configuration setting (the report never shows a raw config key).
SETTING_NAMES = {
    "model": "network", "model_kw": "network options", "dataset": "data set", "val_fraction": "validation share",
    "val_size": "validation images", "split_seed": "split seed", "train_per_class": "training images per class",
    "test_per_class": "test images per class", "epochs": "epochs", "batch_size": "batch size",
    "optimizer": "optimizer", "lr": "learning rate (peak)", "momentum": "momentum", "nesterov": "Nesterov momentum",
    "weight_decay": "weight decay", "norm_lr_scale": "learning-rate factor of batch-norm parameters",
    "scheduler": "learning-rate schedule", "warmup_epochs": "warm-up (epochs)", "step_epochs": "step every (epochs)",
    "step_gamma": "step factor", "label_smoothing": "label smoothing", "loss": "loss", "grad_clip": "gradient clipping",
    "lookahead": "lookahead (slow weights)", "crop_pad": "random crop, padding (pixels)",
    "crop_fill": "crop padding filled with", "flip": "random horizontal flip", "flip_alternate": "alternating flips",
    "cutout": "cutout (pixels)", "eval_every_steps": "evaluation every (steps)",
    "train_eval_size": "training images evaluated", "eval_batch_size": "evaluation batch size",
    "early_stop_patience": "early-stopping patience (evaluations)", "restore_best": "restore best weights",
    "tta_flip": "test-time flip averaging", "device": "device", "precision": "precision",
    "channels_last": "channels-last memory layout", "compile": "compiled", "seed": "seed",
    "pretrained": "ImageNet weights", "resolution": "input side (pixels)", "weights_path": "weights file",
    "widths": "filters per stage", "width": "width",
}
VALUE_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "onecycle": "one-cycle", "cosine": "cosine",
               "none": "none", "cross_entropy": "cross-entropy", "mse": "L2 (softmax vs one-hot)", "zeros": "zeros",
               "reflect": "mirrored image", "bf16": "bfloat16", "fp32": "float32", "fp16": "float16",
               "baseline": "Table-1 network", "improved_a": "Model A", "improved_b": "Model B",
               "resnet18_transfer": "ResNet18 (ImageNet layout)", "mnist_lenet": "LeNet-5-style network",
               "mnist_small": "small network", "table1_variant": "Table-1 family network",
               "whitened_net": "whitened network"}


def hardware(device: str, precision: str | None = None, threads=None) -> str:
    """Where a run trained, in a reader's words: "CPU, 2 threads, bfloat16" or "GPU (cuda:0), float32"."""
    where = "CPU" if str(device).startswith("cpu") else "Apple GPU" if str(device).startswith("mps") else f"GPU ({device})"
    parts = [where] + ([f"{threads} thread{'s' if str(threads) != '1' else ''}"] if threads and where == "CPU" else [])
    return ", ".join(parts + ([VALUE_NAMES.get(precision, precision)] if precision else []))


LR_NAMES = {"none": "learning rate", "step": "learning rate (initial)"}  # schedules that warm up: the peak


def setting_name(key: str, config: Mapping | None = None) -> str:
    """A setting's name for a reader; the learning rate's says what the number is under the run's schedule."""
    if key == "lr" and config is not None:
        return LR_NAMES.get(config.get("scheduler", "none"), "learning rate (peak)")
    return SETTING_NAMES.get(key, key.replace("_", " "))


def as_run(record) -> dict:
    """A run record's config as a dict, with the device and precision the run actually used (the
    config may say "auto")."""
    return {**record.config.to_dict(), **{k: record.metrics[k] for k in ("device", "precision") if k in record.metrics}}


def config_table(config, keys: Iterable[str] | None = None) -> pd.DataFrame:
    """Two columns, setting and value, for the hyperparameters a reader needs to replicate a run,
    each named as a reader would name it. ``config``: a mapping, or a run record (then the device and
    precision are the ones it ran with, :func:`as_run`)."""
    config = as_run(config) if hasattr(config, "metrics") else config
    keys = list(keys) if keys is not None else list(config)
    return pd.DataFrame({"setting": [setting_name(k, config) for k in keys],
                         "value": [_fmt_value(config[k]) for k in keys]})


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(_fmt_value, v))
    if isinstance(v, dict):
        return "; ".join(f"{setting_name(k)}: {_fmt_value(x)}" for k, x in v.items()) or "none"
    if isinstance(v, str):
        return VALUE_NAMES.get(v, v)
    if isinstance(v, int):
        return f"{v:,}"
    return "none" if v is None else str(v)


# ---- tables of run records -------------------------------------------------------------------------

def comparison_table(records: Mapping[str, object], label: str = "run", losses: bool = False) -> pd.DataFrame:
    """One row per run (a run record or a ``fit`` Run): parameters, final train and test accuracy in
    percent (the text "diverged" for a diverged run) and the training time; with ``losses`` also the
    final train and test loss (each run's own loss function). A status column appears only when some
    run did not finish normally, and the device goes into the time column's header when all runs share it."""
    rows = []
    for name, item in records.items():
        m = item.metrics
        row = {label: name, "status": run_status(item), "parameters": f"{m.get('params', 0):,}"}
        if losses:
            for split in ("train", "test"):
                value = m.get(f"final_{split}_loss", math.nan)
                ok = run_status(item) != DIVERGED and value is not None and math.isfinite(value)
                row[f"{split} loss"] = f"{value:.4f}" if ok else (DIVERGED if run_status(item) == DIVERGED else "–")
        row.update({"train acc (%)": accuracy_cell(item, "train"), "test acc (%)": accuracy_cell(item, "test"),
                    "time (s)": f"{m.get('wall_s', math.nan):.0f}", "device": m.get("device", "?")})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if (frame["status"] == "finished").all():
        frame = frame.drop(columns="status")
    if frame["device"].nunique() == 1:
        frame = frame.drop(columns="device").rename(
            columns={"time (s)": f"time (s, {hardware(frame['device'].iloc[0])})"})
    return frame


def target_table(records: dict, targets: dict, assignment: float) -> pd.DataFrame:
    """Per model (label -> run records): mean test accuracy over its runs against ``targets``
    (label -> {"test_acc": fraction}; a missing entry: no target) and the assignment's accuracy
    ``assignment`` (a fraction)."""
    rows = []
    for label, recs in records.items():
        acc = sum(r.metrics["final_test_acc"] for r in recs) / len(recs)  # a fraction, as the targets are
        goal = targets.get(label, {})
        rows.append({"model": label, "runs": len(recs), "mean test acc %": round(100 * acc, 2),
                     f"assignment ({100 * assignment:g}%)": _verdict(acc >= assignment),
                     "target test acc %": _pct(goal.get("test_acc")),
                     "met": _verdict(acc >= goal["test_acc"]) if "test_acc" in goal else "-"})
    return pd.DataFrame(rows)


def _verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def _pct(fraction: float | None):
    return "-" if fraction is None else round(100 * fraction, 2)
