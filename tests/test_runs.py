"""Run records: train once, reuse afterwards; no half-written run ever passes for finished; the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cifarlib import cli, commands, data, paths, runs, train
from cifarlib.errors import CifarlibError
from cifarlib.models import build_model
from cifarlib.train import TrainConfig


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def ds():
    return data.synthetic(n_train=300, n_test=100, size=16, seed=0)


def tiny(**kw) -> TrainConfig:
    base = dict(name="tiny", dataset="synthetic", epochs=1, batch_size=32, optimizer="adam", lr=1e-3,
                train_eval_size=100, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_train_then_cache_hit_with_all_files(ds, tmp_path):
    first = runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path, progress=False)
    assert not first.cached and first.finished and first.status == "finished"
    assert first.dir.parent == tmp_path and first.dir.name.startswith("tiny-")
    assert sorted(p.name for p in first.dir.iterdir()) == sorted([*runs.FILES, runs.DONE])
    assert list(first.history.columns) == train.HISTORY_COLUMNS and len(first.history) == 1
    assert json.loads((first.dir / "config.json").read_text()) == tiny().to_dict()
    env = first.env
    assert env["torch"] == torch.__version__ and env["threads"] == 1 and env["device"] == "cpu"
    assert {"git_commit", "git_dirty", "torchvision", "python", "device_name", "wall_s", "date"} <= set(env)

    again = runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path, progress=False)
    assert again.cached and again.dir == first.dir and again.metrics == first.metrics
    model = again.load_model()
    x = torch.randn(4, 3, 16, 16)
    fresh = train.build(tiny(), runs.prepare_splits(tiny(), ds))  # untrained: different outputs
    assert not torch.allclose(model.eval()(x), fresh.eval()(x))
    assert [r.dir for r in runs.find_runs(runs_dir=tmp_path)] == [first.dir]


def test_run_log_lists_each_run_used_trained_or_cached(ds, tmp_path, monkeypatch):
    log = tmp_path / "used.txt"
    monkeypatch.setenv(paths.ENV_RUN_LOG, str(log))
    trained = runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path / "runs", progress=False)
    cached = runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path / "runs", progress=False)
    assert not trained.cached and cached.cached
    assert log.read_text().splitlines() == [str(trained.dir.resolve())] * 2


def test_config_or_data_change_misses_the_cache(ds, tmp_path):
    base = runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path, progress=False)
    other_lr = runs.train_or_load(tiny(lr=2e-3), data=ds, runs_dir=tmp_path, progress=False)
    other_data = runs.train_or_load(tiny(), data=data.synthetic(n_train=300, n_test=100, size=16, seed=1),
                                    runs_dir=tmp_path, progress=False)
    assert not other_lr.cached and not other_data.cached
    assert len({base.dir, other_lr.dir, other_data.dir}) == 3
    forced = runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path, force=True, progress=False)
    assert not forced.cached and forced.dir == base.dir
    assert [r.config.lr for r in runs.find_runs("tiny", runs_dir=tmp_path)][0] == 1e-3  # newest first
    assert len(runs.find_runs("tiny", runs_dir=tmp_path)) == 3 and runs.find_runs("other", tmp_path) == []


def test_code_version_covers_the_engine_and_the_models_own_module(tmp_path, monkeypatch):
    pkg = tmp_path / "cifarlib"
    shutil.copytree(runs.PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runs, "PACKAGE", pkg)
    before = {m: runs.code_version(m) for m in ("baseline", "improved_b", None)}
    assert before["baseline"] != before["improved_b"]
    (pkg / "plots.py").write_text("# an edit outside the training code\n")
    (pkg / "experiments" / "baseline.py").write_text("# a description edit\n")
    assert {m: runs.code_version(m) for m in before} == before
    cifar = pkg / "models" / "cifar.py"
    source = cifar.read_text()
    cifar.write_text(source.replace('"""', '"""Reworded. ', 1) + "\n# a comment\n")  # docs only: same code
    assert {m: runs.code_version(m) for m in before} == before
    cifar.write_text(source.replace("padding=2", "padding=1", 1))  # an edit to what the baseline computes
    after = {m: runs.code_version(m) for m in before}
    assert after["baseline"] != before["baseline"] and after[None] != before[None]
    assert after["improved_b"] == before["improved_b"]  # defined in whitened.py: its runs stay cached
    train_py = pkg / "train.py"
    train_py.write_text(train_py.read_text().replace("CHECK_EVERY = 25", "CHECK_EVERY = 26"))
    assert all(runs.code_version(m) != after[m] for m in after)  # the engine: every model
    engine = {m: runs.code_version(m) for m in before}
    (pkg / "data" / "command.py").write_text("# the data command line: decides no result\n")
    assert {m: runs.code_version(m) for m in before} == engine
    loader = pkg / "data" / "loader.py"
    loader.write_text(loader.read_text().replace("chunk: int = 8192", "chunk: int = 4096"))
    assert all(runs.code_version(m) != engine[m] for m in engine)  # the data package is the engine too


def test_a_run_without_the_done_marker_is_never_taken_as_finished(ds, tmp_path):
    rec = runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path, progress=False)
    (rec.dir / runs.DONE).unlink()  # as if the process died just before the last write
    assert not runs.is_finished(rec.dir) and runs.find_runs(runs_dir=tmp_path) == []
    assert not runs.load_run(rec.dir).finished
    again = runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path, progress=False)
    assert not again.cached and again.finished


def test_a_crash_while_saving_keeps_the_old_run_and_leaves_nothing_that_passes_for_finished(ds, tmp_path, monkeypatch):
    rec = runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path, progress=False)
    before = (rec.dir / "model.pt").read_bytes()

    def killed(*args, **kwargs):
        raise SystemExit("killed while writing model.pt")

    monkeypatch.setattr(runs.torch, "save", killed)
    with pytest.raises(SystemExit):  # a forced retrain of a finished run dies half-way through saving
        runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path, force=True, progress=False)
    assert runs.is_finished(rec.dir) and (rec.dir / "model.pt").read_bytes() == before  # the old run is intact
    (stage,) = tmp_path.glob(".*.partial-*")  # the half-written new one is hidden and unfinished
    assert not runs.is_finished(stage) and [r.dir for r in runs.find_runs(runs_dir=tmp_path)] == [rec.dir]
    monkeypatch.undo()
    again = runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path, force=True, progress=False)
    assert not again.cached and not list(tmp_path.glob(".*.partial-*")) and not list(again.dir.glob(".*.tmp"))


def test_ctrl_c_in_a_forced_retrain_keeps_the_finished_run(ds, tmp_path, monkeypatch):
    rec = runs.train_or_load(tiny(epochs=2), data=ds, runs_dir=tmp_path, progress=False)
    before = (rec.dir / "model.pt").read_bytes()
    real_step = train.train_step

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        runs.train_or_load(tiny(epochs=2), data=ds, runs_dir=tmp_path, force=True, progress=False)
    assert runs.is_finished(rec.dir) and runs.damage(rec.dir) is None
    assert (rec.dir / "model.pt").read_bytes() == before
    monkeypatch.setattr(train, "train_step", real_step)


@pytest.mark.parametrize("marker", ["", "garbage", '{"sha256": {}}', '{"sha256": ["model.pt"]}'])
def test_a_done_marker_that_vouches_for_nothing_is_damaged(ds, tmp_path, marker):
    rec = runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path, progress=False)
    (rec.dir / runs.DONE).write_text(marker)
    assert runs.damage(rec.dir) == "its DONE marker is damaged"
    (rec.dir / runs.DONE).write_text("finished\n")  # the marker of records made before checksums
    assert runs.damage(rec.dir) is None


def test_ctrl_c_saves_the_partial_run_unfinished_and_stops(ds, tmp_path, monkeypatch):
    real_step, calls = train.train_step, []

    def step_then_interrupt(*args):
        calls.append(1)
        if len(calls) == 12:  # second epoch (9 steps per epoch)
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(train, "train_step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        runs.train_or_load(tiny(epochs=3), data=ds, runs_dir=tmp_path, progress=False)
    (run_dir,) = [d for d in tmp_path.iterdir() if not d.name.startswith(".")]
    partial = runs.load_run(run_dir)
    assert partial.status == "interrupted" and not partial.finished and len(partial.history) == 1
    monkeypatch.undo()
    rec = runs.train_or_load(tiny(epochs=3), data=ds, runs_dir=tmp_path, progress=False)
    assert rec.dir == run_dir and not rec.cached and rec.status == "finished" and len(rec.history) == 3


def test_weights_of_another_architecture_are_a_clear_error(ds, tmp_path):
    rec = runs.train_or_load(tiny(), data=ds, runs_dir=tmp_path, progress=False)
    other = build_model("mnist_small")
    with pytest.raises(CifarlibError) as err:
        rec.load_model(other)
    msg = str(err.value)
    assert "'baseline'" in msg and type(other).__name__ in msg and "\n" not in msg


def test_unwritable_runs_dir_is_a_clear_error(ds, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CifarlibError, match=r"cannot write run records to .*a-file/runs.*--runs-dir"):
        runs.train_or_load(tiny(), data=ds, runs_dir=blocker / "runs", progress=False)


def test_prepare_splits_applies_subset_val_size_and_memoizes(ds):
    cfg = tiny(train_per_class=20, test_per_class=5, val_size=40)
    sp = runs.prepare_splits(cfg, ds)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (160, 40, 50)
    assert runs.prepare_splits(cfg, ds) is sp
    assert runs.prepare_splits(cfg.replace(split_seed=1), ds).identity != sp.identity


def test_parse_sets():
    assert commands.parse_sets(["epochs=3", "lr=1e-3", "flip=true", "name=abc", "val_size=null", "model_kw={}"]) == {
        "epochs": 3, "lr": 1e-3, "flip": True, "name": "abc", "val_size": None, "model_kw": {}}


# ---- python -m cifarlib run ----------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown experiment 'nope'; known experiments: baseline"),
    (["baseline", "--set", "epochs"], "malformed --set 'epochs'"),
    (["baseline", "--set", "epochs=0"], "epochs=0 is not allowed"),
    (["baseline", "--set", "lr=-1"], "lr=-1.0 is not allowed"),
    (["baseline", "--set", "optimizer=rmsprop"], "optimizer='rmsprop' is not allowed"),
    (["baseline", "--set", "epoch=3"], "unknown config key(s) epoch"),
    (["baseline", "--profile", "slow"], "invalid choice: 'slow'"),
])
def test_run_cli_errors_are_one_line_and_exit_2(args, message, capsys):
    assert cli.main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_run_cli_unwritable_runs_dir(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert cli.main(["run", "baseline", "--runs-dir", str(tmp_path / "f" / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write run records") and err.count("\n") == 1


def test_run_cli_trains_then_loads_and_prints_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CIFARLIB_PROGRESS", "0")
    argv = ["run", "baseline", "--profile", "quick", "--set", "dataset=synthetic", "--set", "device=cpu",
            "--set", "train_per_class=10", "--set", "test_per_class=10", "--runs-dir", str(tmp_path), "--json"]
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    keys = {"name", "status", "epochs_run", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
            "test_acc", "params", "wall_s", "device", "run_dir", "cached"}
    assert keys <= set(first) and first["cached"] is False and first["status"] == "finished"
    assert first["params"] == 390_410 and first["epochs_run"] == 1
    assert cli.main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["cached"] is True and second["run_dir"] == first["run_dir"]
    assert cli.main(argv[:-1]) == 0
    assert "cached" in capsys.readouterr().out
