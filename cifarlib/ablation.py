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



def discussion(table: pd.DataFrame, ref: dict, noise: float, labels: Mapping[str, str] | None = None,
               why: Mapping[str, str] | None = None, top: int = 3, bottom: int = 2) -> str:
    """The Task 2(e) discussion as Markdown, every claim built from ``table`` (:func:`delta_table`),
    the reference's accuracy ``ref`` (:func:`reference_accuracy`) and the ``noise`` band (points):
    what the noise allows, which changes leave the band, the ranking, and the mechanism (``why``) of
    the changes at both ends."""
    labels, why = labels or {}, why or {}

    def name(change):
        return labels.get(change, change.replace("_", " "))

    def pts(value):
        return f"{value:+.1f}".replace("-", "\u2212")

    deltas = dict(zip(table["change"], table["Δ val (pts)"]))
    if ref["runs"] < 2:
        noise_text = ("With a single reference run there is no measure of the run-to-run noise, so no change "
                      "below can be called a gain or a loss.")
    else:
        noise_text = (f"The reference reaches {ref['val_mean']:.1f} ± {ref['val_std']:.1f} % validation accuracy over "
                      f"{ref['runs']} seeds. Twice that standard deviation, ±{noise:.1f} points, is the band inside which "
                      "one run of a variant cannot be told apart from the reference.")
    helped = [c for c, d in deltas.items() if verdict(d, noise) == "helped"] if ref["runs"] >= 2 else []
    hurt = [c for c, d in deltas.items() if verdict(d, noise) == "hurt"] if ref["runs"] >= 2 else []
    if ref["runs"] < 2:
        band = ""
    elif not helped and not hurt:
        band = (f"None of the {len(deltas)} changes moves the validation accuracy outside this band: on this "
                "evidence no single change, added on its own to this recipe, is a demonstrated gain or loss.")
    else:
        band = " ".join(s for s in (
            f"Outside the band, {_join([f'{name(c)} ({pts(deltas[c])} points)' for c in helped])} helped." if helped else "",
            f"{_upper(_join([f'{name(c)} ({pts(deltas[c])} points)' for c in hurt]))} hurt." if hurt else "",
            _rest(len(deltas) - len(helped) - len(hurt))) if s)
    ranked = list(table["change"])
    gains = [c for c in ranked[:top] if deltas[c] > 0]
    losses = [c for c in ranked[::-1][:bottom] if deltas[c] < 0][::-1]
    order = []
    if gains:
        order.append(f"the largest gains came from {_join([f'{name(c)} ({pts(deltas[c])})' for c in gains])}")
    if losses:
        order.append(f"{', and' if gains else ''} the largest losses from {_join([f'{name(c)} ({pts(deltas[c])})' for c in losses])}")
    ranking = (f"Ranked by their change in validation accuracy (points), {''.join(order).lstrip(', ')}."
               if order else "")
    if ranking and ref["runs"] < 2:
        ranking += " Without a measure of the noise this order is a hint, not a result."
    elif ranking and not helped and not hurt:
        ranking += " Inside the band this order is a hint, not a result."
    elif ranking and any(c not in helped + hurt for c in gains + losses):
        inside = [name(c) for c in gains + losses if c not in helped + hurt]
        ranking += f" Of these, {_join(inside)} {'stays' if len(inside) == 1 else 'stay'} inside the band."
    bullets = [f"- **{_upper(name(c))}** ({pts(deltas[c])}): {why[c]}" for c in gains + losses if c in why]
    return "\n\n".join(p for p in (" ".join(s for s in (noise_text, band) if s), ranking, "\n".join(bullets)) if p)


def _upper(text: str) -> str:
    return text[:1].upper() + text[1:]


def _rest(n: int) -> str:
    return "" if n == 0 else "The other change stays inside it." if n == 1 else f"The other {n} changes stay inside it."


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""
