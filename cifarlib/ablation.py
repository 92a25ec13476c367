"""Ablation: take a recipe apart one ingredient at a time, with several seeds, and say with a confidence
interval what each ingredient is worth.

A :class:`cifarlib.experiments.Change` names one change and the config values it sets (``model_kw`` entries are merged
into the reference's model arguments, everything else replaces the reference value). The variants
are ordinary named experiments (``cifarlib.experiments.improved`` registers the leave-one-out set
``loo_<change>`` against ``loo_reference``), so each one is a cached run record like any other.
:func:`run_paired` trains the reference and every variant with the same seeds in one sweep;
:func:`paired_effects` compares each variant with the reference seed by seed and gives the mean
difference with a 95 % confidence interval (Student's t on the paired differences).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pandas as pd

from cifarlib import experiments, sweep, tables
from cifarlib.errors import CifarlibError
from cifarlib.experiments import Change


# ---- running ------------------------------------------------------------------------------------

@dataclass
class AblationResult:
    reference: list  # run records (or metrics dicts) of the reference, one per seed
    variants: dict  # change name -> list of run records (or metrics dicts), one per seed, same seeds
    changes: list = field(default_factory=list)  # the Change objects, in the order given


def paired_configs(changes: Sequence[Change], reference: str = "loo_reference", prefix: str = "loo",
                   profile: str = "full", seeds: int = 5, seed: int = 0, **knobs) -> list:
    """The configs :func:`run_paired` trains: ``reference`` and every ``<prefix>_<change>`` with seeds
    ``seed`` .. ``seed + seeds - 1``, in that order. A caller may put them into a larger sweep (Task 2
    trains them beside Models A and B, so that two workers stay busy to the end); :func:`run_paired`
    then reads them back."""
    return [cfg for name in _names(changes, reference, prefix)
            for cfg in sweep.seeded(experiments.notebook_config(name, profile, **knobs), seeds, seed)]


def _names(changes: Sequence[Change], reference: str, prefix: str) -> list[str]:
    return [reference] + [f"{prefix}_{c.name}" for c in changes]


def run_paired(changes: Sequence[Change], reference: str = "loo_reference", prefix: str = "loo",
               profile: str = "full", seeds: int = 5, seed: int = 0, data_root=None, runs_dir=None,
               executor=None, **knobs) -> AblationResult:
    """Train (or load) experiment ``reference`` and every ``<prefix>_<change>`` with seeds ``seed`` ..
    ``seed + seeds - 1``, all in one sweep on ``executor``. ``knobs`` (e.g. ``device="cpu"``; None: the
    experiment's own, see :func:`cifarlib.experiments.notebook_config`) apply to every run alike."""
    configs = paired_configs(changes, reference, prefix, profile, seeds, seed, **knobs)
    records = sweep.run_many(configs, data_root=data_root, runs_dir=runs_dir, executor=executor)
    per = {name: records[i * seeds:(i + 1) * seeds] for i, name in enumerate(_names(changes, reference, prefix))}
    return AblationResult(per[reference], {c.name: per[f"{prefix}_{c.name}"] for c in changes}, list(changes))


# ---- statistics -----------------------------------------------------------------------------------

# Two-sided 95 % quantiles of Student's t, t(0.975; df) for df = 1..30 (beyond: a Cornish-Fisher expansion).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise CifarlibError(f"a t quantile needs at least 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def paired_ci(differences: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of its 95 % confidence interval) of paired differences; the half-width is
    NaN for fewer than two pairs (no spread to measure)."""
    values = [float(v) for v in differences]
    if not values:
        raise CifarlibError("no paired differences to summarize; the ablation needs finished runs")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, t975(len(values) - 1) * sd / math.sqrt(len(values))


def seeds_needed(half_width: float, runs: int, target: float = 1.0) -> int:
    """How many paired seeds a 95 % interval of ``half_width`` from ``runs`` pairs would need to
    shrink to ±``target``, if the differences kept the spread they showed (the smallest n with
    t(0.975; n − 1) · sd / √n ≤ target); ``runs`` when it is narrow enough already."""
    if not target > 0:
        raise CifarlibError(f"the target half-width must be a positive number of points, got {target}")
    if runs < 2 or not math.isfinite(half_width):
        raise CifarlibError("the seeds an interval needs can only be estimated from an interval of two or more pairs")
    sd = half_width * math.sqrt(runs) / t975(runs - 1)
    n = max(2, runs if half_width <= target else math.ceil((1.959964 * sd / target) ** 2))
    while t975(n - 1) * sd / math.sqrt(n) > target:
        n += 1
    return n


def _metrics(item) -> Mapping:
    return getattr(item, "metrics", item)


def _seed(item) -> int:
    config = getattr(item, "config", None)
    return config.seed if config is not None else _metrics(item)["seed"]


def _acc(item, split: str) -> float:
    value = tables.accuracy(item, split)
    if math.isnan(value) and f"final_{split}_acc" not in _metrics(item):
        raise CifarlibError(f"run metrics lack final_{split}_acc; pass run records or metrics dicts from fit()")
    return value


def verdict(low: float, high: float) -> str:
    """"helps" when the whole interval of an ingredient's contribution is above zero, "hurts" when below,
    else "cannot tell" (also without an interval)."""
    if math.isnan(low) or math.isnan(high):
        return "cannot tell"
    return "helps" if low > 0 else "hurts" if high < 0 else "cannot tell"


def paired_effects(result: AblationResult) -> pd.DataFrame:
    """One row per change: the contribution of the ingredient it removes, i.e. the reference's accuracy
    minus the variant's, seed by seed (a positive contribution: the ingredient helps). Mean and 95 %
    confidence interval of the validation contribution, the mean test contribution, the variant's mean
    accuracy and the verdict of :func:`verdict`; sorted by the validation contribution, largest first.
    Validation decides; test accuracy is shown, not used."""
    ref = {_seed(r): r for r in result.reference}
    rows = []
    for change in result.changes:
        pairs = [(ref[_seed(v)], v) for v in result.variants[change.name] if _seed(v) in ref]
        if not pairs:
            raise CifarlibError(f"change {change.name!r} shares no seed with the reference; run both with the same seeds")
        val, half = paired_ci([_acc(r, "val") - _acc(v, "val") for r, v in pairs])
        test, _ = paired_ci([_acc(r, "test") - _acc(v, "test") for r, v in pairs])
        rows.append({"change": change.name, "ingredient removed": change.description, "runs": len(pairs),
                     "val acc without (%)": sum(_acc(v, "val") for _, v in pairs) / len(pairs),
                     "val acc without, lowest (%)": _extreme(min, [_acc(v, "val") for _, v in pairs]),
                     "val acc without, highest (%)": _extreme(max, [_acc(v, "val") for _, v in pairs]),
                     "contribution (val, points)": val, "ci low": val - half, "ci high": val + half,
                     "contribution (test, points)": test, "verdict": verdict(val - half, val + half)})
    frame = pd.DataFrame(rows)
    return frame.sort_values("contribution (val, points)", ascending=False, kind="stable").reset_index(drop=True)


def _extreme(pick, values: list[float]) -> float:
    """``pick`` (min or max) of the finite ``values``; NaN when a run has none (it diverged)."""
    return math.nan if any(math.isnan(v) for v in values) else pick(values)


def reference_accuracy(result: AblationResult) -> dict:
    """Mean, sample standard deviation (0 for one seed), lowest and highest of the reference's validation
    and test accuracy, in %."""
    frame = pd.DataFrame([{s: _acc(r, s) for s in ("val", "test")} for r in result.reference])
    std = frame.std(ddof=1).fillna(0.0)
    return {"runs": len(frame), **{f"{s}_mean": frame[s].mean() for s in frame}, **{f"{s}_std": std[s] for s in frame},
            **{f"{s}_min": frame[s].min() for s in frame}, **{f"{s}_max": frame[s].max() for s in frame}}


def discussion(table: pd.DataFrame, ref: dict, labels: Mapping[str, str] | None = None,
               why: Mapping[str, str] | None = None, why_hurts: Mapping[str, str] | None = None,
               precision: float = 1.0) -> str:
    """The Task 2(e) discussion as Markdown, every claim built from ``table`` (:func:`paired_effects`)
    and the reference's accuracy ``ref`` (:func:`reference_accuracy`): which ingredients demonstrably
    help or hurt (their interval excludes zero), which the data cannot tell apart from nothing (each
    with its own interval), the largest estimated contribution, and the mechanism (``why``) of those
    with a verdict (``why_hurts`` for those whose removal helped), and, for intervals wider than
    ±``precision`` points, how far the runs without the ingredient scatter and how many seeds that
    precision would take."""
    labels, why, why_hurts = labels or {}, why or {}, why_hurts or {}
    if not precision > 0:
        raise CifarlibError(f"precision must be a positive number of points, got {precision}")
    if table.empty:
        return "No ingredient was measured, so there is nothing to discuss."

    def name(change):
        return labels.get(change, change.replace("_", " "))

    def interval(row):
        return f"95 % CI {tables.interval(row['ci low'], row['ci high'])} points"

    def ci(row):
        return f"{tables.signed(row['contribution (val, points)'])} points, {interval(row)}"

    rows = {r["change"]: r for _, r in table.sort_values("contribution (val, points)", ascending=False).iterrows()}
    measured = {c: r for c, r in rows.items() if not math.isnan(r["ci low"])}
    lo, hi = int(table["runs"].min()), int(table["runs"].max())
    seeds = f"{lo} seeds" if lo == hi else f"{lo} to {hi} seeds"
    spread = (f"{ref['val_mean']:.1f} ± {ref['val_std']:.1f} % (mean ± standard deviation)" if ref["runs"] > 1
              else f"{ref['val_mean']:.1f} %")
    intro = (f"The reference reaches {spread} validation accuracy over {ref['runs']} seed{'s' if ref['runs'] != 1 else ''}. "
             "Each ingredient's contribution is the reference's accuracy minus that of the run without it, with the "
             f"same seed, averaged over {seeds}.")
    parts = [intro]
    single = [c for c in rows if c not in measured and int(rows[c]["runs"]) < 2]
    if single:
        parts.append(f"{tables.upper_first(_join([name(c) for c in single]))} ran with one seed, which gives no measure of the "
                     "noise, so nothing is claimed about " + ("it." if len(single) == 1 else "them."))
    failed = [c for c in rows if c not in measured and c not in single]
    if failed:
        parts.append(f"Without {_join([name(c) for c in failed], 'or')} at least one run ended without a validation "
                     "accuracy (its loss diverged), so no mean and no interval can be given for "
                     + ("it." if len(failed) == 1 else "them."))
    helps = [c for c, r in measured.items() if r["verdict"] == "helps"]
    hurts = [c for c, r in measured.items() if r["verdict"] == "hurts"]
    unclear = [c for c, r in measured.items() if r["verdict"] == "cannot tell"]
    if helps:
        parts.append(f"The largest estimated contribution among the ingredients shown to help is that of "
                     f"{name(helps[0])} ({ci(rows[helps[0]])}).")
        if len(helps) > 1:
            parts.append(f"{tables.upper_first(_join([f'{name(c)} ({ci(rows[c])})' for c in helps[1:]]))} "
                         f"{'helps' if len(helps) == 2 else 'help'} as well: without "
                         f"{'it' if len(helps) == 2 else 'any one of them'} the model is worse beyond the noise.")
    elif measured:
        parts.append("No ingredient's removal costs accuracy beyond the noise of these runs.")
    if hurts:
        parts.append(f"Removing {_join([f'{name(c)} ({ci(rows[c])})' for c in hurts], 'or')}"
                     f"{' (each on its own)' if len(hurts) > 1 else ''} gives a better model on this budget.")
    if unclear:
        listed = _join([f"{name(c)} ({interval(rows[c])})" for c in unclear])
        parts.append(f"For {listed} the data cannot tell: "
                     f"{'its interval includes' if len(unclear) == 1 else 'each interval includes'} zero.")
    if len(measured) > 1 and helps + hurts:
        parts.append(f"For an ingredient without any effect, a 95 % interval still excludes zero in one case in twenty; "
                     f"among these {tables.say_count(len(measured))} intervals, a verdict whose interval ends close to zero is the least "
                     "certain.")
    half = {c: (r["ci high"] - r["ci low"]) / 2 for c, r in measured.items()}
    wide = {c: r for c, r in measured.items() if round(half[c], 2) > precision}  # wider as printed
    if wide:
        unit = f"±{precision:g} point{'s' if precision != 1 else ''}"
        each = [f"{name(c)} (±{half[c]:.2f} points; the runs without it end between "
                f"{r['val acc without, lowest (%)']:.1f} and {r['val acc without, highest (%)']:.1f} %; {unit} would "
                f"take about {seeds_needed(half[c], int(r['runs']), precision)} seeds)"
                for c, r in wide.items()]
        within = len(measured) - len(wide)
        if len(measured) == 1:
            lead = f"The interval of {each[0]} is wider than {unit}."
        else:
            count = "None" if within == 0 else tables.upper_first(tables.say_count(within))
            lead = (f"{count} of the {tables.say_count(len(measured))} intervals {'is' if within <= 1 else 'are'} within {unit}. "
                    f"Wider {'is that' if len(wide) == 1 else 'are those'} of {_join(each)}.")
        reference = (f" The reference's own runs end between {ref['val_min']:.1f} and {ref['val_max']:.1f} %."
                     if "val_min" in ref else "")
        settled = [c for c in wide if c not in unclear]
        parts.append(lead + reference
                     + (f" The verdict on {_join([name(c) for c in settled])} holds all the same: "
                        f"{'its interval excludes' if len(settled) == 1 else 'each of these intervals excludes'} zero."
                        if settled else ""))
    reasons = {**{c: why[c] for c in helps if c in why}, **{c: why_hurts[c] for c in hurts if c in why_hurts}}
    bullets = [f"- **{tables.upper_first(name(c))}** ({tables.signed(rows[c]['contribution (val, points)'])} points): {reasons[c]}"
               for c in helps + hurts if c in reasons]
    return "\n\n".join(p for p in (" ".join(parts), "\n".join(bullets)) if p)


def _join(items: list[str], word: str = "and") -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} " + items[-1] if items else ""
