"""The GPU check (``python -m cifarlib gpu-check``): its refusal without CUDA, its steps, its table and
``timings.json``, and the stand-in data sets it shares with the notebook tests."""

from __future__ import annotations

import json

import pytest
import torch

from cifarlib import cli, data, devcheck, paths, report


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_check_stops_in_one_line_naming_the_remedies(capsys, tmp_path):
    assert cli.main(["gpu-check", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err and "--device cpu" in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_stand_in_data_sets_load_as_the_real_layouts(tmp_path):
    roots = devcheck.stand_in_data(tmp_path)
    cifar = data.load("cifar10", root=roots[paths.ENV_DATA])
    assert cifar.classes == list(devcheck.CIFAR_CLASSES) and len(cifar.train) == 1100 and len(cifar.test) == 500
    assert tuple(cifar.train.images.shape[1:]) == (3, 32, 32)
    mnist = data.load("mnist", root=roots[paths.ENV_MNIST])
    assert roots[paths.ENV_MNIST].endswith(".tar.gz") and len(mnist.train) == 600 and len(mnist.test) == 200
    assert tuple(mnist.train.images.shape[1:]) == (1, 28, 28)


def test_the_plan_trains_fresh_and_builds_without_imagenet_weights_when_there_are_none(tmp_path):
    plan = dict(devcheck.steps("cuda", tmp_path, full=False, pretrained=False))
    assert list(plan) == ["bench (Table-1 CNN, 200 steps)", "Model B, one epoch", "quick report"]
    model_b = plan["Model B, one epoch"]
    assert "--force" in model_b and str(tmp_path / "runs") in model_b and "device=cuda" in model_b
    assert plan["quick report"][-2:] == ["--param", "04_transfer:pretrained=False"]
    full = dict(devcheck.steps("cuda", tmp_path, full=True, pretrained=True))
    assert "--param" not in full["full report"] and full["full report"][:3] == ["report", "--profile", "full"]
    for name in ("quick report", "full report"):  # the report command takes every option the check passes
        args = report.parse_args({**plan, **full}[name][1:])
        assert args.device == "cuda" and args.out.startswith(str(tmp_path))


def test_the_full_report_is_refused_in_one_line_without_the_real_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(devcheck, "_downloaded", lambda env: False)
    monkeypatch.setenv(paths.ENV_DATA, str(tmp_path))
    monkeypatch.delenv(paths.ENV_MNIST, raising=False)
    assert cli.main(["gpu-check", "--device", "cpu", "--full", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and paths.ENV_MNIST in err and "--mnist-root" in err
    assert not (tmp_path / "out").exists()


def test_every_step_runs_is_timed_and_a_failed_one_does_not_hide_the_others(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(devcheck, "steps", lambda device, out, full, pretrained: [
        ("list", ["experiments"]), ("broken", ["run", "no_such_experiment"]), ("list again", ["experiments"])])
    monkeypatch.setattr(devcheck, "_weights_at_hand", lambda: False)
    monkeypatch.setattr(devcheck, "_downloaded", lambda env: False)
    for env in (paths.ENV_DATA, paths.ENV_MNIST):
        monkeypatch.delenv(env, raising=False)
    (tmp_path / "runs" / "improved_b-0123456789").mkdir(parents=True)  # a finished run of an earlier check
    assert cli.main(["gpu-check", "--device", "cpu", "--out", str(tmp_path)]) == 1
    assert not (tmp_path / "runs").exists()  # emptied: every timing starts from scratch
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "timings.json").read_text())
    assert [(r["step"], r["status"]) for r in saved["steps"]] == [("list", "ok"), ("broken", "failed (2)"),
                                                                   ("list again", "ok")]
    assert all(r["seconds"] > 0 for r in saved["steps"]) and saved["facts"]["device"] == "cpu"
    assert "stand-in data" in saved["data"] and (tmp_path / "stand-in-data" / "mnist-like.tar.gz").is_file()
    assert "no_such_experiment" in (tmp_path / "logs" / "2.log").read_text()  # each step's output kept
    table = out[out.index("step "):].splitlines()
    assert table[1].startswith("list ") and table[2].split()[-2:] == ["failed", "(2)"]
