"""Named experiments: a name -> a TrainConfig (as a dict) plus a description and the report part.

CONTRACT:
    register(name, description, part, quick=None, **config)   # quick: overrides for the quick profile; part: "baseline" | "improved" | "transfer" | "mnist"
    get(name) -> Experiment ; names() -> list[str] ; config(name, profile="full", **overrides) -> TrainConfig
Each report part defines its experiments in its own module here (baseline.py, improved.py, transfer.py,
mnist.py), imported at the bottom of this file.

The config is checked when it is registered (a typo fails at import, not after an hour of training);
the run record folder is named after the experiment.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

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


def _resolve(exp: Experiment, profile: str, overrides: dict) -> TrainConfig:
    if profile not in PROFILES:
        raise CifarlibError(f"unknown profile {profile!r}; use one of: {', '.join(PROFILES)}")
    quick = exp.quick if profile == "quick" else {}
    return TrainConfig.from_dict({"name": exp.name, **exp.config, **quick, **overrides})


def table(profile: str = "full") -> list[dict]:
    """One row per experiment (plain data, for the CLI and the report)."""
    rows = []
    for exp in _EXPERIMENTS.values():
        cfg = config(exp.name, profile)
        rows.append({"name": exp.name, "part": exp.part, "model": cfg.model, "epochs": cfg.epochs,
                     "description": exp.description})
    return rows


def cli(argv: list[str]) -> int:
    """``python -m cifarlib experiments [--profile quick|full]``: the named experiments as a table."""
    from cifarlib.cli import OneLineParser

    p = OneLineParser(prog="python -m cifarlib experiments", description="List the named experiments.")
    p.add_argument("--profile", choices=PROFILES, default="full", help="whose epochs to show")
    args = p.parse_args(argv)
    rows = table(args.profile)
    cols = ["name", "part", "model", "epochs", "description"]
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols[:-1]}
    print("  ".join(f"{c:<{widths[c]}}" for c in cols[:-1]) + "  description")
    for r in rows:
        print("  ".join(f"{str(r[c]):<{widths[c]}}" for c in cols[:-1]) + "  " + r["description"])
    return 0


# Each part registers its experiments on import. Parts written later may not exist yet: skip exactly
# those, and let any other import error (a bug inside a part) surface.
for _part in ("baseline", "improved", "transfer", "mnist"):
    _module = f"{__name__}.{_part}"
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as _err:
        if _err.name != _module:
            raise
