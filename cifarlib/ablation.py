"""Ablation: start from a reference configuration, change one thing at a time, and rank the changes.

A :class:`Change` names one change and the config values it sets (``model_kw`` entries are merged
into the reference's model arguments, everything else replaces the reference value). The variants
are ordinary named experiments (``cifarlib.experiments.improved`` registers them), so each one is a
cached run record like any other; :func:`run_ablation` trains or loads them all and
:func:`delta_table` ranks them by how much they moved validation accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pandas as pd

from cifarlib.errors import CifarlibError


@dataclass(frozen=True)
class Change:
    name: str  # short identifier; the experiment is called "ablation_<name>"
    description: str  # what changed, in words, for the table
    changes: dict  # TrainConfig keys -> values; a "model_kw" dict is merged into the reference's


def apply_change(reference: Mapping, changes: Mapping) -> dict:
    """The reference config (a dict) with ``changes`` applied; ``model_kw`` is merged key by key."""
    out = {**reference, **changes}
    if "model_kw" in changes:
        out["model_kw"] = {**reference.get("model_kw", {}), **changes["model_kw"]}
    return out


def flatten_config(config: Mapping) -> dict:
    """``{"lr": .., "model_kw": {"bn": True}}`` -> ``{"lr": .., "model_kw.bn": True}``."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in flatten_config(value).items()})
        else:
            out[key] = value
    return out


def config_diff(a: Mapping, b: Mapping, ignore: Sequence[str] = ("name",)) -> dict:
    """Keys (flattened) whose values differ between two configs -> (value in a, value in b);
    a key missing on one side shows as None there."""
    fa, fb = flatten_config(a), flatten_config(b)
    keys = [k for k in dict.fromkeys([*fa, *fb]) if k not in ignore]
    return {k: (fa.get(k), fb.get(k)) for k in keys if _norm(fa.get(k)) != _norm(fb.get(k))}


def _norm(value):
    return list(value) if isinstance(value, tuple) else value  # JSON turns tuples into lists


# ---- running ------------------------------------------------------------------------------------

@dataclass
class AblationResult:
    reference: list  # run records (or metrics dicts) of the reference, one per seed
    variants: dict  # change name -> run record (or metrics dict)
    changes: list = field(default_factory=list)  # the Change objects, in the order given


def train_seeds(name: str, profile: str = "full", seeds: int = 1, seed: int = 0, data_root=None, runs_dir=None,
                progress=None, **overrides) -> list:
    """Run records of experiment ``name`` with seeds ``seed``, ``seed + 1``, ... (``seeds`` of them),
    each trained now or read back from its cached record. ``overrides`` apply to every seed."""
    from cifarlib import experiments, runs

    return [runs.train_or_load(experiments.config(name, profile, **{**overrides, "seed": seed + k}),
                               data_root=data_root, runs_dir=runs_dir, progress=progress) for k in range(seeds)]


def run_ablation(changes: Sequence[Change], profile: str = "full", reference: str = "ablation_reference",
                 seed: int = 0, reference_seeds: int = 1, data_root=None, runs_dir=None, progress=None,
                 **overrides) -> AblationResult:
    """Train (or load) the reference with ``reference_seeds`` seeds and each change with ``seed``.
    ``overrides`` (e.g. ``epochs=5, device="cpu"``) apply to every run alike."""
    where = dict(profile=profile, data_root=data_root, runs_dir=runs_dir, progress=progress, **overrides)
    refs = train_seeds(reference, seeds=reference_seeds, seed=seed, **where)
    variants = {c.name: train_seeds(f"ablation_{c.name}", seeds=1, seed=seed, **where)[0] for c in changes}
    return AblationResult(refs, variants, list(changes))


# ---- the table ----------------------------------------------------------------------------------

def _metrics(item) -> Mapping:
    return getattr(item, "metrics", item)


def _acc(item, split: str, prefix: str) -> float:
    value = _metrics(item).get(f"{prefix}_{split}_acc")
    if value is None:
        raise CifarlibError(f"run metrics lack {prefix}_{split}_acc; pass run records or metrics dicts from fit()")
    return 100.0 * value


def reference_accuracy(result: AblationResult, prefix: str = "final") -> dict:
    """Mean and sample std (0 for one seed) of the reference's validation and test accuracy, in %.
    ``prefix``: "final" (after the last epoch) or "best" (at the evaluation with the lowest val loss)."""
    frame = pd.DataFrame([{s: _acc(r, s, prefix) for s in ("val", "test")} for r in result.reference])
    std = frame.std(ddof=1).fillna(0.0)  # one run: no spread to measure
    return {"runs": len(frame), **{f"{s}_mean": frame[s].mean() for s in frame},
            **{f"{s}_std": std[s] for s in frame}}


def delta_table(result: AblationResult, prefix: str = "final") -> pd.DataFrame:
    """One row per change: its validation and test accuracy (%) and the change against the reference
    mean (percentage points), sorted by the validation change, largest gain first. Validation ranks
    the changes; test accuracy is shown, not used for the choice. ``prefix`` as in reference_accuracy:
    "best" scores each run where early stopping would have left it (its lowest validation loss)."""
    ref = reference_accuracy(result, prefix)
    rows = []
    for change in result.changes:
        run = result.variants[change.name]
        val, test = _acc(run, "val", prefix), _acc(run, "test", prefix)
        rows.append({"change": change.name, "what changed": change.description, "val acc (%)": val,
                     "Δ val (pts)": val - ref["val_mean"], "test acc (%)": test,
                     "Δ test (pts)": test - ref["test_mean"],
                     "epoch": _metrics(run).get(f"{prefix}_epoch", _metrics(run).get("epochs_run")),
                     "wall (s)": _metrics(run).get("wall_s")})
    frame = pd.DataFrame(rows)
    return frame.sort_values("Δ val (pts)", ascending=False, kind="stable").reset_index(drop=True)


VERDICTS = ("helped", "hurt", "within noise")


def verdict(delta: float, noise: float) -> str:
    """"helped" / "hurt" when the validation change ``delta`` (points) is beyond ``noise``, else "within noise"."""
    return "within noise" if abs(delta) <= noise else ("helped" if delta > 0 else "hurt")


def ranked_summary(table: pd.DataFrame, noise: float) -> str:
    """The ranking as plain lines: change, Δ val, Δ test, and whether |Δ val| exceeds ``noise`` pts."""
    lines = []
    for i, r in table.iterrows():
        lines.append(f"{i + 1:2d}. {r['change']:<16} Δ val {r['Δ val (pts)']:+6.2f}  Δ test {r['Δ test (pts)']:+6.2f}"
                     f"  ({verdict(r['Δ val (pts)'], noise)})")
    return "\n".join(lines)


def check_claims(table: pd.DataFrame, noise: float, claims: Mapping[str, str]) -> pd.DataFrame:
    """Hold a written discussion to the measurements: ``claims`` maps a change to the verdict the text
    gives it ("helped", "hurt" or "within noise"); one row per claim with the measured verdict and
    whether the two agree. A change missing from the table is a one-line error."""
    bad = {k: v for k, v in claims.items() if v not in VERDICTS}
    if bad:
        raise CifarlibError(f"claims must be one of {VERDICTS}; got {bad}")
    deltas = dict(zip(table["change"], table["Δ val (pts)"]))
    missing = sorted(set(claims) - set(deltas))
    if missing:
        raise CifarlibError(f"claims name changes the ablation did not run: {missing}; known: {sorted(deltas)}")
    rows = [{"change": k, "claimed": v, "measured": verdict(deltas[k], noise), "Δ val (pts)": deltas[k]}
            for k, v in claims.items()]
    frame = pd.DataFrame(rows)
    frame["agrees"] = frame["claimed"] == frame["measured"]
    return frame


def plot_deltas(table: pd.DataFrame, noise: float | None = None, title: str | None = None):
    """Horizontal bars: change in validation and test accuracy per change (pts), best at the top;
    a shaded band marks +-``noise`` (e.g. 2 std of the reference over seeds)."""
    import matplotlib.pyplot as plt
    import numpy as np

    y = np.arange(len(table))[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.24 * len(table) + 1.5))
    ax.barh(y + 0.2, table["Δ val (pts)"], height=0.4, color="tab:orange", label="validation")
    ax.barh(y - 0.2, table["Δ test (pts)"], height=0.4, color="tab:green", label="test")
    if noise:
        ax.axvspan(-noise, noise, color="grey", alpha=0.2, label=f"±{noise:.2f} pts (seed noise)")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, table["change"])
    ax.set_xlabel("accuracy change vs reference (percentage points)")
    ax.set_title(title or "Ablation: one change at a time from the Table-1 baseline")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, frameon=False)  # never over a bar
    fig.tight_layout(rect=(0, 0.5 / (0.24 * len(table) + 1.5), 1, 1))
    return fig

