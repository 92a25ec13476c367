"""Run records on disk, and ``train_or_load``: train once, reuse the finished run afterwards.

CONTRACT (other modules rely on these names; keep them):

    rec = train_or_load(cfg, data=None, data_root=None, runs_dir=None, force=False, progress=None)
        # data: a cifarlib.data.Dataset (loaded from cfg.dataset + data_root when None)
    rec.dir            Path runs/<name>-<hash>/ with config.json history.csv metrics.json model.pt env.json DONE
    rec.config         TrainConfig
    rec.history        pandas.DataFrame (columns = train.HISTORY_COLUMNS)
    rec.metrics        dict
    rec.env            dict (git commit + dirty flag, torch/torchvision versions, device, threads, wall_s, date)
    rec.status         str
    rec.cached         bool: True when loaded from disk rather than trained now
    rec.load_model()   nn.Module with the saved weights (weights_only=True)
    find_runs(name=None, runs_dir=None) -> list[RunRecord]   finished runs, newest first
    load_run(path) -> RunRecord

TODO(engine helper): implement.
"""
