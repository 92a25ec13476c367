"""cifarlib: reproducible CNN experiments on CIFAR-10 and MNIST.

The library computes; the notebooks in ``notebooks/`` call it; ``python -m cifarlib report`` runs them
and exports one PDF. The layers, lowest first (ARCHITECTURE.md draws them; a test keeps it true):

- base: :mod:`~cifarlib.errors`, :mod:`~cifarlib.paths`, :mod:`~cifarlib.provenance`,
  :mod:`~cifarlib.tables`, :mod:`~cifarlib.atomic`, :mod:`~cifarlib.plots`
- :mod:`cifarlib.data`        data sets in memory, batches on the device, files on disk and the cache
- :mod:`cifarlib.models`      model registry: ``build_model(name, **kw)``
- :mod:`cifarlib.train`       ``TrainConfig`` and ``fit(model, splits, cfg) -> Run``
- :mod:`cifarlib.experiments` named configurations; ``notebook_config(name, profile, **knobs)``
- :mod:`cifarlib.runs`        run records on disk and ``train_or_load(cfg)`` (one run, locked, published by rename)
- :mod:`cifarlib.sweep`       ``run_many(configs, executor=...)``: many runs on a local pool, Dask or SLURM
- analyses: :mod:`~cifarlib.studies`, :mod:`~cifarlib.ablation`, :mod:`~cifarlib.evaluation`,
  :mod:`~cifarlib.visualize`, :mod:`~cifarlib.theory`
- face: :mod:`~cifarlib.cli`, :mod:`~cifarlib.commands`, :mod:`~cifarlib.bench`, :mod:`~cifarlib.report`
"""

__version__ = "0.1.0"

from cifarlib.errors import CifarlibError  # noqa: F401  (the one exception type users catch)
