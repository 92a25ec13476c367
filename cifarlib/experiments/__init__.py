"""Named experiments: a name -> a TrainConfig (as a dict) plus a description and the report part.

CONTRACT:
    register(name, description, part, quick=None, **config)   # quick: overrides for the quick profile; part: "baseline" | "improved" | "transfer" | "mnist"
    get(name) -> Experiment ; names() -> list[str] ; config(name, profile="full", **overrides) -> TrainConfig
    notebook_config(name, profile="full", **knobs) -> TrainConfig   # the one path from a notebook's knobs to a run
    config_from(name, profile, overrides: dict) -> TrainConfig       # the CLI's --set (a null there is a value)
    apply_change(reference: dict, changes: dict) -> dict ; Change(name, description, changes)   # recipe variants
The profile rule, the same for every experiment and every caller: the profile chooses the experiment's
own values (full: its config; quick: its config with its quick overrides), and a value given explicitly
(an override, a knob, a --set) always wins, in both profiles. In notebook_config a knob left at None
means "the experiment's own value for this profile"; a knob that is no TrainConfig field is refused
(CifarlibError naming it), None or not.
Each report part defines its experiments in its own module here (baseline.py, improved.py, transfer.py,
mnist.py), imported at the bottom of this file. Nothing here trains or imports the run store
(:mod:`cifarlib.runs` and :mod:`cifarlib.sweep` sit above); a part's helpers that describe its
results (targets, settings tables, sentences) work on the run records they are given.

The config is checked when it is registered (a typo fails at import, not after an hour of training);
the run record folder is named after the experiment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Mapping

from cifarlib.errors import CifarlibError
from cifarlib.train import TrainConfig

PARTS = ("baseline", "improved", "transfer", "mnist")
PROFILES = ("full", "quick")


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str  # one line, shown by `python -m cifarlib experiments`
    part: str  # the report part it belongs to
    config: dict  # TrainConfig fields that differ from the defaults (full profile)
    quick: dict = field(default_factory=dict)  # overrides on top of config for the quick profile


@dataclass(frozen=True)
class Change:
    """One change to a reference config, for the experiments that vary a recipe one ingredient at a time."""

    name: str  # short identifier; the variant experiment is called "<prefix>_<name>"
    description: str  # what changed, in words, for the tables
    changes: dict  # TrainConfig keys -> values; a "model_kw" dict is merged into the reference's


def apply_change(reference: Mapping, changes: Mapping) -> dict:
    """The reference config (a dict) with ``changes`` applied; ``model_kw`` is merged key by key."""
    out = {**reference, **changes}
    if "model_kw" in changes:
        out["model_kw"] = {**reference.get("model_kw", {}), **changes["model_kw"]}
    return out


_EXPERIMENTS: dict[str, Experiment] = {}


def register(name: str, description: str, part: str, quick: dict | None = None, **config) -> Experiment:
    if name in _EXPERIMENTS:
        raise ValueError(f"experiment {name!r} registered twice")
    if part not in PARTS:
        raise ValueError(f"experiment {name!r}: part {part!r} is not one of {PARTS}")
    exp = Experiment(name, description, part, dict(config), dict(quick or {}))
    for profile in PROFILES:  # check both profiles before the experiment becomes visible
        _resolve(exp, profile, {})
    _EXPERIMENTS[name] = exp
    return exp


def names() -> list[str]:
    return list(_EXPERIMENTS)


def get(name: str) -> Experiment:
    if name not in _EXPERIMENTS:
        raise CifarlibError(f"unknown experiment {name!r}; known experiments: {', '.join(names()) or 'none'}")
    return _EXPERIMENTS[name]


def config(name: str, /, profile: str = "full", **overrides) -> TrainConfig:
    """The TrainConfig of experiment ``name``: its config, then (``profile="quick"``) its quick
    overrides, then ``overrides``."""
    return _resolve(get(name), profile, overrides)


def config_from(name: str, profile: str, overrides: dict) -> TrainConfig:
    """:func:`config` with the overrides as a dict, so that any key (even ``name`` or ``profile``) is
    checked as a TrainConfig field rather than clashing with an argument (the CLI's ``--set``)."""
    return _resolve(get(name), profile, overrides)


_CONFIG_KEYS = frozenset(f.name for f in fields(TrainConfig))


def notebook_config(name: str, /, profile: str = "full", **knobs) -> TrainConfig:
    """The TrainConfig of experiment ``name`` for a notebook's knobs (TrainConfig fields, e.g.
    ``epochs=None, seed=0, device="auto"``). A knob left at None is dropped, so it keeps the experiment's
    own value for ``profile``; any other knob wins in both profiles (the quick profile changes only the
    defaults). With every knob None this is ``config(name, profile)``. None is never a value here: to
    set a field to None (``early_stop_patience=None``), use :func:`config`. A knob that is no
    TrainConfig field is refused even when None, so a typo in a parameters cell fails at once."""
    unknown = sorted(set(knobs) - _CONFIG_KEYS)
    if unknown:
        raise CifarlibError(f"unknown knob(s) {', '.join(unknown)}: not a config key; known keys: "
                            f"{', '.join(sorted(_CONFIG_KEYS))}")
    return _resolve(get(name), profile, {k: v for k, v in knobs.items() if v is not None})


def _resolve(exp: Experiment, profile: str, overrides: dict) -> TrainConfig:
    if profile not in PROFILES:
        raise CifarlibError(f"unknown profile {profile!r}; use one of: {', '.join(PROFILES)}")
    quick = exp.quick if profile == "quick" else {}
    return TrainConfig.from_dict({"name": exp.name, **exp.config, **quick, **overrides})


def table(profile: str = "full") -> list[dict]:
    """One row per experiment (plain data, for ``python -m cifarlib experiments``)."""
    rows = []
    for exp in _EXPERIMENTS.values():
        cfg = config(exp.name, profile)
        rows.append({"name": exp.name, "part": exp.part, "model": cfg.model, "epochs": cfg.epochs,
                     "description": exp.description})
    return rows


# Each part registers its experiments on import.
from cifarlib.experiments import baseline, improved, mnist, transfer  # noqa: E402,F401
