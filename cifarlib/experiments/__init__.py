"""Named experiments: a name -> a TrainConfig (as a dict) plus a description and the report part.

CONTRACT:
    register(name, description, part, quick=None, **config)   # quick: overrides for the quick profile; part: "baseline" | "improved" | "transfer" | "mnist"
    get(name) -> Experiment ; names() -> list[str] ; config(name, profile="full", **overrides) -> TrainConfig
Each report part defines its experiments in its own module here (baseline.py, improved.py, transfer.py,
mnist.py), imported at the bottom of this file.

TODO(engine helper): implement.
"""
