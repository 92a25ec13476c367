"""Many runs at once: the executor contract (same records from every executor), failures, a killed
worker, two sweeps racing on one run folder, the progress line and the CLI; and damaged records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from cifarlib import runs, sweep
from cifarlib.errors import CifarlibError
from cifarlib.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
ROOT = Path(__file__).resolve().parent.parent


def tiny(seed: int = 0, **kw) -> TrainConfig:
    base = dict(name="tiny", dataset="synthetic", model="table1_variant", epochs=1, batch_size=64, optimizer="adam",
                lr=1e-3, train_per_class=30, test_per_class=10, train_eval_size=50, device="cpu", seed=seed)
    return TrainConfig(**{**base, **kw})


CONFIGS = [tiny(0), tiny(1), tiny(0, lr=3e-3)]


def _summary(records):
    return [(r.dir.name, r.metrics["final_val_acc"], r.metrics["final_test_loss"]) for r in records]


@pytest.fixture(scope="module")
def serial_records(tmp_path_factory):
    return _summary(sweep.run_many(CONFIGS, runs_dir=tmp_path_factory.mktemp("serial"), executor="serial",
                                   threads=1, progress=False))


# ---- the executor contract ------------------------------------------------------------------------

@pytest.mark.slow
def test_local_pool_gives_the_serial_records(serial_records, tmp_path):
    got = sweep.run_many(CONFIGS, runs_dir=tmp_path, executor="local", workers=2, threads=1, progress=False)
    assert _summary(got) == serial_records and not any(r.cached for r in got)
    again = sweep.run_many(CONFIGS, runs_dir=tmp_path, executor="local", progress=False)
    assert _summary(again) == serial_records and all(r.cached for r in again)  # nothing trains twice


def test_any_futures_executor_plugs_in(serial_records, tmp_path):
    with ThreadPoolExecutor(max_workers=1) as pool:
        got = sweep.run_many(CONFIGS, runs_dir=tmp_path, executor=pool, threads=1, progress=False)
    assert _summary(got) == serial_records


@pytest.mark.slow
def test_dask_distributed_cluster_gives_the_serial_records(serial_records, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        got = sweep.run_many(CONFIGS, runs_dir=tmp_path, executor=f"dask:{cluster.scheduler_address}", threads=1,
                             progress=False)
        assert _summary(got) == serial_records
        with distributed.Client(cluster) as client:  # a Client object works as well
            again = sweep.run_many(CONFIGS, runs_dir=tmp_path, executor=client, progress=False, force=True)
    assert _summary(again) == serial_records


@pytest.mark.slow
def test_submitit_job_array_gives_the_serial_records(serial_records, tmp_path):
    submitit = pytest.importorskip("submitit")
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=10)
    got = sweep.run_many(CONFIGS, runs_dir=tmp_path / "runs", executor=executor, threads=1, progress=False)
    assert _summary(got) == serial_records


# ---- failures ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("executor", ["serial", "threads"])
def test_one_failing_run_is_reported_and_the_others_keep_their_results(tmp_path, executor, capsys):
    bad = tiny(0, name="broken", model_kw={"depth": 0})  # accepted as a config, refused by the model builder
    configs = [tiny(0), bad, tiny(1)]
    pool = ThreadPoolExecutor(max_workers=1) if executor == "threads" else "serial"
    with pytest.raises(sweep.SweepError, match=r"1 of 3 runs failed \(broken seed 0: .*depth") as err:
        sweep.run_many(configs, runs_dir=tmp_path, executor=pool, threads=1, progress=False)
    assert len(str(err.value).splitlines()) == 1 and [f.config for f in err.value.failures] == [bad]
    assert "failed: broken seed 0" in capsys.readouterr().err
    assert sorted(r.config.seed for r in runs.find_runs("tiny", tmp_path)) == [0, 1]  # both others finished


def test_bad_executor_and_worker_counts_are_one_line_errors(tmp_path):
    with pytest.raises(CifarlibError, match="unknown executor 'slurm'; use one of: local, serial"):
        sweep.run_many([tiny()], runs_dir=tmp_path, executor="slurm")
    with pytest.raises(CifarlibError, match="unknown executor 'dask'"):
        sweep.resolve_executor("dask")
    with pytest.raises(CifarlibError, match="has no submit"):
        sweep.resolve_executor(object())
    with pytest.raises(CifarlibError, match="workers must be a whole number of at least 1, got 0"):
        sweep.plan(3, workers=0)
    with pytest.raises(CifarlibError, match="seeds must be a whole number"):
        sweep.seeded(tiny(), 0)


def test_dask_scheduler_that_is_not_there_fails_in_seconds(tmp_path):
    pytest.importorskip("distributed")
    start = time.monotonic()
    with pytest.raises(CifarlibError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        sweep.run_many([tiny()], runs_dir=tmp_path, executor="dask:tcp://127.0.0.1:9", progress=False)
    assert time.monotonic() - start < 60


def test_the_plan_shares_cores_and_gpus_out():
    assert sweep.plan(30, cpus=2, gpus=0) == (2, 1)  # two 1-thread workers beat one 2-thread process
    assert sweep.plan(1, cpus=2, gpus=0) == (1, 2)
    assert sweep.plan(30, cpus=16, gpus=4) == (4, 4)  # one worker per GPU
    assert sweep.plan(30, threads=4, cpus=16, gpus=0) == (4, 4)
    assert sweep.plan(30, workers=3, cpus=16, gpus=0) == (3, 5)


def test_env_variable_chooses_the_default_executor(monkeypatch):
    monkeypatch.setenv(sweep.ENV_EXECUTOR, "serial")
    assert sweep.resolve_executor(None) == "serial"
    monkeypatch.delenv(sweep.ENV_EXECUTOR)
    assert sweep.resolve_executor(None) == "local"


# ---- progress -----------------------------------------------------------------------------------

def test_one_progress_line_for_the_whole_sweep(tmp_path, capsys):
    sweep.run_many([tiny(0)], runs_dir=tmp_path, executor="serial", progress=False)
    sweep.run_many([tiny(0), tiny(1)], runs_dir=tmp_path, executor="serial", progress=True)
    err = capsys.readouterr().err
    assert "runs: " in err and "2/2" in err and "1 cached, 1 to train" in err


# ---- processes sharing one run folder -------------------------------------------------------------

SCRIPT = """
import json, sys
from cifarlib import sweep
from cifarlib.train import TrainConfig
if __name__ == "__main__":
    configs = [TrainConfig(name="tiny", dataset="synthetic", model="table1_variant", epochs={epochs}, batch_size=64,
                           optimizer="adam", lr=1e-3, train_per_class=30, test_per_class=10, train_eval_size=50,
                           device="cpu", seed=s) for s in range({n})]
    records = sweep.run_many(configs, runs_dir=sys.argv[1], executor=sys.argv[2], threads=1, progress=False)
    print(json.dumps([[r.dir.name, r.cached] for r in records]))
"""


def _start(tmp_path, executor, n=3, epochs=1):
    script = tmp_path / "sweep_script.py"
    script.write_text(SCRIPT.format(n=n, epochs=epochs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "runs"), executor], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


@pytest.mark.slow
def test_two_sweeps_racing_on_one_run_folder_train_each_run_once(tmp_path):
    first, second = _start(tmp_path, "serial", epochs=30), _start(tmp_path, "serial", epochs=30)
    results = [p.communicate(timeout=600) for p in (first, second)]
    outs = [json.loads(out) for out, _ in results]
    assert [d for d, _ in outs[0]] == [d for d, _ in outs[1]] and len(outs[0]) == 3
    trained = [d for out in outs for d, cached in out if not cached]
    assert sorted(trained) == sorted(d for d, _ in outs[0])  # every run trained exactly once, by one of them
    assert any("waiting: another process is training tiny-" in err for _, err in results)  # they did collide
    for name, _ in outs[0]:
        assert runs.damage(tmp_path / "runs" / name) is None  # each record's files come from one training


@pytest.mark.slow
def test_a_killed_sweep_leaves_nothing_that_passes_for_finished(tmp_path):
    proc = _start(tmp_path, "local", n=4, epochs=40)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "runs").glob(".*.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list((tmp_path / "runs").glob(".*.partial-*")), "no run started training"
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, mid-run
    proc.wait(timeout=30)
    folders = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    visible = [d for d in folders if not d.name.startswith(".")]
    assert len(visible) < 4 and all(runs.is_finished(d) and runs.damage(d) is None for d in visible)
    assert any(d.name.startswith(".") and ".partial-" in d.name for d in folders)  # the half-trained runs, hidden
    again = _start(tmp_path, "serial", n=4, epochs=40)  # the next sweep trains only what is missing, and tidies up
    out = json.loads(again.communicate(timeout=600)[0])
    assert sum(not cached for _, cached in out) == 4 - len(visible)
    assert not list((tmp_path / "runs").glob(".*.partial-*"))


# ---- the CLI ------------------------------------------------------------------------------------------

def test_run_cli_trains_several_experiments_and_seeds_in_one_sweep(tmp_path, capsys):
    from cifarlib import cli

    argv = ["run", "mnist_small", "mnist_main", "--profile", "quick", "--seeds", "2", "--seed", "5", "--executor",
            "serial", "--set", "dataset=synthetic", "--set", "train_per_class=20", "--set", "device=cpu",
            "--runs-dir", str(tmp_path), "--json"]
    assert cli.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["name"], r["seed"]) for r in lines] == [("mnist_small", 5), ("mnist_small", 6), ("mnist_main", 5),
                                                        ("mnist_main", 6)]
    assert cli.main(["run", "nope", "--runs-dir", str(tmp_path)]) == 2


# ---- damaged records --------------------------------------------------------------------------------

def test_a_garbage_model_file_is_found_and_the_run_trained_again(tmp_path, capsys):
    first = runs.train_or_load(tiny(), runs_dir=tmp_path, progress=False)
    (first.dir / "model.pt").write_bytes(b"not a checkpoint")
    assert runs.damage(first.dir) == "model.pt changed after the run finished"
    again = runs.train_or_load(tiny(), runs_dir=tmp_path, progress=False)
    assert not again.cached and runs.damage(again.dir) is None and "is damaged (model.pt changed" in capsys.readouterr().err
    torch.load(again.dir / "model.pt", weights_only=True)


@pytest.mark.parametrize("damage", ["truncate metrics", "empty history", "truncate env"])
def test_a_damaged_record_is_named_and_skipped_by_listings(tmp_path, capsys, damage):
    rec = runs.train_or_load(tiny(), runs_dir=tmp_path, progress=False)
    other = runs.train_or_load(tiny(1), runs_dir=tmp_path, progress=False)
    target = {"truncate metrics": "metrics.json", "empty history": "history.csv", "truncate env": "env.json"}[damage]
    text = (rec.dir / target).read_text()
    (rec.dir / target).write_text(text[: len(text) // 3] if "truncate" in damage else "")
    assert [r.dir for r in runs.find_runs(runs_dir=tmp_path)] == [other.dir]
    assert f"skipping run record {rec.dir}" in capsys.readouterr().err
    (rec.dir / runs.DONE).write_text("finished\n")  # an old-style marker: no checksums to compare
    with pytest.raises(CifarlibError, match=f"damaged run record {rec.dir}.*--force"):
        runs.load_run(rec.dir)


def test_the_weights_file_of_a_pretrained_run_is_part_of_its_key(tmp_path, monkeypatch):
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"first weights")
    cfg = TrainConfig(name="t", model="resnet18_transfer", model_kw={"pretrained": True, "weights_path": str(weights)})
    first = runs.run_hash(cfg, "data")
    assert runs.run_hash(cfg, "data") == first
    os.utime(weights, ns=(0, 0))  # the digest is kept per (path, size, mtime) ...
    assert runs.run_hash(cfg, "data") == first
    weights.write_bytes(b"first weighs!")  # ... so new contents of the same size are found too
    assert runs.run_hash(cfg, "data") != first
    monkeypatch.setenv("CIFARLIB_RESNET18_WEIGHTS", str(weights))  # the variable is followed the same way
    from_env = TrainConfig(name="t", model="resnet18_transfer", model_kw={"pretrained": True})
    before = runs.run_hash(from_env, "data")
    weights.write_bytes(b"third weights")
    assert runs.run_hash(from_env, "data") != before
    scratch = TrainConfig(name="t", model="resnet18_transfer", model_kw={"pretrained": False})
    assert runs.weights_identity(scratch) is None


def test_a_full_disk_while_saving_is_one_line_and_the_trained_model_is_kept(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    monkeypatch.setattr(runs.torch, "save", full_disk)
    with pytest.raises(CifarlibError) as err:
        runs.train_or_load(tiny(), runs_dir=tmp_path, progress=False)
    message = str(err.value)
    assert "\n" not in message and "cannot save the run record in" in message and "free space" in message
    assert isinstance(err.value.run.model, torch.nn.Module)  # the weights are still in memory for a retry
    assert runs.find_runs(runs_dir=tmp_path) == []  # and nothing passes for finished
