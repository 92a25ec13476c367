"""Result tables: plain pandas DataFrames, rendered as Markdown so they are real tables in Jupyter
and in the LaTeX PDF (a bare DataFrame prints as monospace text there).

Accuracies are stored as fractions (0..1) in run records and shown in percent here.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import pandas as pd

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4g", index: bool = False, intfmt: str = ",") -> str:
    """GitHub-style Markdown (needs ``tabulate``); integers with thousands separators by default."""
    return df.to_markdown(index=index, floatfmt=floatfmt, intfmt=intfmt)


def show(df: pd.DataFrame, caption: str | None = None, floatfmt: str = ".4g", index: bool = False,
         intfmt: str = ",") -> None:
    """Display ``df`` as a Markdown table (with an optional caption line above it)."""
    from IPython.display import Markdown, display

    text = to_markdown(df, floatfmt=floatfmt, index=index, intfmt=intfmt)
    display(Markdown(f"*{caption}*\n\n{text}" if caption else text))


def _metrics_of(item) -> Mapping:
    """Accept a run record (has .metrics), a fit() Run (has .metrics) or a plain metrics dict."""
    return getattr(item, "metrics", item)


def final_metrics_row(metrics: Mapping, prefix: str = "final") -> dict:
    """``{"train loss": .., "train acc (%)": .., ...}`` from ``final_train_loss``-style keys."""
    row = {}
    for split in SPLITS:
        row[f"{SPLIT_NAMES[split]} loss"] = metrics.get(f"{prefix}_{split}_loss", float("nan"))
        acc = metrics.get(f"{prefix}_{split}_acc", float("nan"))
        row[f"{SPLIT_NAMES[split]} acc (%)"] = 100.0 * acc
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


def config_table(config: Mapping, keys: Iterable[str] | None = None) -> pd.DataFrame:
    """Two columns, setting and value, for the hyperparameters a reader needs to replicate a run."""
    keys = list(keys) if keys is not None else list(config)
    return pd.DataFrame({"setting": keys, "value": [_fmt_value(config[k]) for k in keys]})


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt_value(x)}" for k, x in v.items()) or "-"
    return "-" if v is None else str(v)


def provenance(record) -> str:
    """One line that traces a run record's numbers: folder, status, epochs, wall time, device, torch,
    git commit, seed, and whether it was trained now or loaded from the cache."""
    m, env, cfg = record.metrics, record.env, record.config
    dirty = {True: " (uncommitted changes)", None: " (changes unknown)"}.get(env.get("git_dirty"), "")
    commit = (env.get("git_commit") or "unknown")[:10] + dirty
    wall = m.get("wall_s", env.get("wall_s"))
    wall_text = f"{wall:.0f} s" if isinstance(wall, (int, float)) else "unknown time"
    return (f"run {record.dir.name}: {record.status}, {m.get('epochs_run', '?')} epochs in {wall_text} on "
            f"{env.get('device_name') or env.get('device', '?')}; torch {env.get('torch', '?')}, commit {commit}, "
            f"seed {cfg.seed}; {'loaded from the run cache' if record.cached else 'trained now'}")
