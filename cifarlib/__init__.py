"""cifarlib: reproducible CNN experiments on CIFAR-10 and MNIST.

The library computes; the notebooks in ``notebooks/`` call it; ``python -m cifarlib report``
runs them and exports one PDF. Modules, in the order data flows:

- :mod:`cifarlib.data`        find, decode, cache, split and batch a data set
- :mod:`cifarlib.models`      model registry: ``build_model(name, **kw)``
- :mod:`cifarlib.train`       ``TrainConfig`` and ``fit(model, splits, cfg) -> Run``
- :mod:`cifarlib.runs`        run records on disk and ``train_or_load(cfg)`` (one run, locked, published by rename)
- :mod:`cifarlib.sweep`       ``run_many(configs, executor=...)``: many runs on a local pool, Dask or SLURM
- :mod:`cifarlib.ablation`    leave-one-out ablation with paired seeds and confidence intervals
- :mod:`cifarlib.experiments` named configurations (``python -m cifarlib experiments``)
- :mod:`cifarlib.theory`      hand computations checked against torch
- :mod:`cifarlib.plots`, :mod:`cifarlib.tables`  views of results
- :mod:`cifarlib.report`      papermill + nbconvert report build
"""

__version__ = "0.1.0"

from cifarlib.errors import CifarlibError  # noqa: F401  (the one exception type users catch)
