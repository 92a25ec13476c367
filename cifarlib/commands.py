"""The ``run`` and ``experiments`` commands of ``python -m cifarlib`` (the face: nothing imports this
module but :mod:`cifarlib.cli`, which dispatches to it)."""

from __future__ import annotations

import json
import math

from cifarlib import experiments, paths, sweep
from cifarlib.errors import CifarlibError, OneLineParser


def list_experiments(argv: list[str]) -> int:
    """``python -m cifarlib experiments [--profile quick|full]``: the named experiments as a table."""
    p = OneLineParser(prog="python -m cifarlib experiments", description="List the named experiments.")
    p.add_argument("--profile", choices=experiments.PROFILES, default="full", help="whose epochs to show")
    args = p.parse_args(argv)
    rows = experiments.table(args.profile)
    cols = ["name", "part", "model", "epochs", "description"]
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols[:-1]}
    print("  ".join(f"{c:<{widths[c]}}" for c in cols[:-1]) + "  description")
    for r in rows:
        print("  ".join(f"{str(r[c]):<{widths[c]}}" for c in cols[:-1]) + "  " + r["description"])
    return 0


def parse_sets(items: list[str]) -> dict:
    """``key=value`` pairs; a value is JSON when it parses (10, 0.5, true, null, "x", {...}), else a string."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CifarlibError(f"malformed --set {item!r}; write --set key=value (e.g. --set epochs=3)")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def run(argv: list[str]) -> int:
    """``python -m cifarlib run NAME [NAME ...]``: train named experiments (or load their finished runs)."""
    p = OneLineParser(prog="python -m cifarlib run",
                           description="Train named experiments (several seeds each, on an executor), or load "
                                       "their finished runs.")
    p.add_argument("names", nargs="+", metavar="NAME", help="experiment name(s) (python -m cifarlib experiments lists them)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (JSON when it parses, else a string); repeatable")
    p.add_argument("--profile", choices=["quick", "full"], default="full")
    p.add_argument("--seeds", type=int, default=1, help="runs per experiment, with seeds SEED, SEED+1, ... (default 1)")
    p.add_argument("--seed", type=int, default=None, help="first model seed (default: the experiment's)")
    p.add_argument("--executor", default=None,
                   help=f"local | serial | dask:ADDRESS | submitit:FOLDER (default: ${sweep.ENV_EXECUTOR}, else local)")
    p.add_argument("--workers", type=int, default=None, help="local executor: worker processes (default: one per core)")
    p.add_argument("--threads", type=int, default=None, help="threads per run (default: the cores shared out)")
    p.add_argument("--data-root", help=f"data set folder (default: ${paths.ENV_DATA} / ${paths.ENV_MNIST})")
    p.add_argument("--runs-dir", help=f"run records folder (default: ${paths.ENV_RUNS}, else ./runs)")
    p.add_argument("--force", action="store_true", help="train even when a finished run exists")
    p.add_argument("--json", action="store_true", help="print one JSON object per run with the results")
    args = p.parse_args(argv)
    sets = parse_sets(args.sets)
    configs = []
    for name in dict.fromkeys(args.names):
        cfg = experiments.config_from(name, args.profile, sets)
        configs += sweep.seeded(cfg, args.seeds, cfg.seed if args.seed is None else args.seed)
    records = sweep.run_many(configs, data_root=args.data_root, runs_dir=args.runs_dir, executor=args.executor,
                             workers=args.workers, threads=args.threads, force=args.force)
    for rec in records:
        summary = rec.summary()
        if args.json:  # strict JSON: a diverged run's NaN losses become null
            print(json.dumps({**{k: None if isinstance(v, float) and not math.isfinite(v) else v
                                 for k, v in summary.items()}, "seed": rec.config.seed}))
        else:
            how = "cached" if rec.cached else f"trained in {summary['wall_s']:.1f} s"
            print(f"{summary['name']} (seed {rec.config.seed}): {summary['status']} after {summary['epochs_run']} "
                  f"epochs, test acc {summary['test_acc']:.4f}, val acc {summary['val_acc']:.4f} "
                  f"({how} on {summary['device']})")
            print(f"run record: {rec.dir}")
    return 0
