"""The training engine: config validation, schedules, losses, and fit() on tiny synthetic data.

Everything runs on the CPU with 16x16 synthetic images (a few hundred of them), so that a fit takes
well under a second or two.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarlib import cli, data, train
from cifarlib.errors import CifarlibError
from cifarlib.train import TrainConfig


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def splits():
    ds = data.synthetic(n_train=600, n_test=200, size=16, seed=0)
    return data.split(ds, val_fraction=0.1, seed=0)


def tiny(**kw) -> TrainConfig:
    base = dict(name="t", dataset="synthetic", epochs=2, batch_size=32, optimizer="adam", lr=1e-3,
                train_eval_size=200, device="cpu")
    return TrainConfig(**{**base, **kw})


def fit(splits, **kw):
    cfg = tiny(**kw)
    return train.fit(train.build(cfg, splits), splits, cfg, progress=False)


# ---- TrainConfig --------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, allowed", [
    ("epochs", 0, ">= 1"),
    ("lr", -1, "> 0"),
    ("lr", math.nan, "> 0"),
    ("optimizer", "rmsprop", "'sgd', 'adam', 'adamw'"),
    ("scheduler", "linear", "'cosine'"),
    ("loss", "hinge", "'mse'"),
    ("precision", "fp8", "'bf16'"),
    ("device", "gpu", "'cuda:N'"),
    ("label_smoothing", 1.0, "label_smoothing < 1"),
    ("batch_size", 0, ">= 1"),
    ("model", "resnet9000", "'baseline'"),
    ("epochs", "3", "int"),
    ("flip", 1, "bool"),
    ("crop_fill", "edge", "'reflect'"),
    ("eval_at", "never", "'epochs', 'end'"),
])
def test_bad_config_value_names_key_value_and_allowed(key, value, allowed):
    with pytest.raises(CifarlibError) as err:
        TrainConfig(**{key: value})
    msg = str(err.value)
    assert "\n" not in msg and f"{key}=" in msg and allowed in msg


def test_from_dict_refuses_unknown_keys_and_lists_known_ones():
    with pytest.raises(CifarlibError, match=r"unknown config key\(s\) epoch; known keys: name, model, .*seed"):
        TrainConfig.from_dict({"epoch": 3})


def test_config_round_trips_and_normalizes_ints_for_floats():
    cfg = TrainConfig(lr=1, epochs=3)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(lr=0.5).lr == 0.5 and cfg.lr == 1.0


def test_cross_field_checks():
    with pytest.raises(CifarlibError, match="nesterov=True needs momentum"):
        TrainConfig(nesterov=True)
    with pytest.raises(CifarlibError, match="early_stop_patience needs a validation split"):
        TrainConfig(val_fraction=0.0, early_stop_patience=3)
    with pytest.raises(CifarlibError, match="flip_alternate=True needs flip=True"):
        TrainConfig(flip_alternate=True)
    with pytest.raises(CifarlibError, match="lookahead=True .* set early_stop_patience=None or lookahead=False"):
        TrainConfig(lookahead=True, early_stop_patience=2)


# ---- schedules and losses ------------------------------------------------------------------------

def test_lr_schedules_per_step():
    spe = 10  # steps per epoch, 4 epochs = 40 steps
    warm = TrainConfig(epochs=4, lr=1.0, scheduler="cosine", warmup_epochs=1)
    assert [train.lr_at(warm, s, spe) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert train.lr_at(warm, 10, spe) == pytest.approx(1.0)  # cosine starts at the peak after warm-up
    assert train.lr_at(warm, 25, spe) == pytest.approx(0.5)  # half-way through the cosine
    assert train.lr_at(warm, 39, spe) < 0.01
    step = TrainConfig(epochs=4, lr=1.0, scheduler="step", step_epochs=2, step_gamma=0.5)
    assert [train.lr_at(step, s, spe) for s in (0, 19, 20, 39)] == pytest.approx([1, 1, 0.5, 0.5])
    one = TrainConfig(epochs=4, lr=1.0, scheduler="onecycle")  # 30% up (12 steps), then down to 0
    lrs = [train.lr_at(one, s, spe) for s in range(40)]
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 11 and lrs[-1] < 0.05
    assert train.lr_at(TrainConfig(lr=0.3), 123, spe) == 0.3


def test_mse_loss_is_softmax_probabilities_against_one_hot():
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    expected = F.mse_loss(logits.softmax(1), F.one_hot(y, 10).float())
    assert train.sample_losses(logits, y, "mse").mean() == pytest.approx(expected.item(), rel=1e-6)
    ce = F.cross_entropy(logits, y, label_smoothing=0.1)
    assert train.sample_losses(logits, y, "cross_entropy", 0.1).mean() == pytest.approx(ce.item(), rel=1e-6)


# ---- model building --------------------------------------------------------------------------------

def test_build_is_seeded_takes_shapes_from_data_and_leaves_global_rng_alone(splits):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = train.build(tiny(seed=1), splits), train.build(tiny(seed=1), splits)
    assert torch.rand(1) == before  # building did not consume the caller's random numbers
    c = train.build(tiny(seed=2), splits)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert a(torch.zeros(2, 3, 16, 16)).shape == (2, 10)  # image_size=16 came from the data


# ---- fit -----------------------------------------------------------------------------------------

def test_fit_learns_synthetic_data_and_records_history(splits):
    run = fit(splits, epochs=3)
    assert run.status == "finished"
    assert [r["epoch"] for r in run.history] == [1.0, 2.0, 3.0]
    assert all(list(r) == train.HISTORY_COLUMNS for r in run.history)
    steps_per_epoch = len(splits.train) // 32  # the incomplete last batch is dropped
    assert [r["step"] for r in run.history] == [steps_per_epoch * k for k in (1, 2, 3)]
    assert run.history[-1]["examples_seen"] == 3 * steps_per_epoch * 32
    assert run.metrics["final_val_acc"] > 0.8 and run.metrics["final_test_acc"] > 0.8  # chance: 0.1
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    m = run.metrics
    assert m["epochs_run"] == 3 and m["params"] == sum(p.numel() for p in run.model.parameters())
    assert m["device"] == "cpu" and m["wall_s"] > 0 and m["status"] == "finished"
    assert m["final_test_acc"] == run.history[-1]["test_acc"]
    best = min(run.history, key=lambda r: r["val_loss"])
    assert m["best_val_loss"] == best["val_loss"] and m["best_epoch"] == best["epoch"]


def test_eval_every_steps_adds_points_within_epochs(splits):
    run = fit(splits, epochs=1, eval_every_steps=5, train_eval_size=0)
    steps = [r["step"] for r in run.history]
    assert steps == [5, 10, 15, 16]  # 16 full batches of 32 per epoch: every 5 steps, plus the epoch end
    assert run.history[0]["epoch"] == pytest.approx(5 / 16)
    assert math.isnan(run.history[0]["train_loss"])  # train_eval_size=0 skips the train-subset evaluation


def test_eval_at_end_evaluates_once_and_trains_the_same_model(splits):
    kw = dict(epochs=3, optimizer="sgd", lr=0.05, momentum=0.9, crop_pad=2, flip=True, tta_flip=True, seed=3)
    every, end = fit(splits, **kw), fit(splits, **kw, eval_at="end")
    assert [r["epoch"] for r in every.history] == [1, 2, 3] and [r["epoch"] for r in end.history] == [3]
    assert all(torch.equal(a, b) for a, b in zip(every.model.state_dict().values(), end.model.state_dict().values()))
    for key in ("train", "val", "test"):  # the same final numbers, from one evaluation instead of three
        assert end.metrics[f"final_{key}_acc"] == every.metrics[f"final_{key}_acc"]
        assert end.metrics[f"final_{key}_loss"] == every.metrics[f"final_{key}_loss"]
    assert end.metrics["steps"] == every.metrics["steps"] and end.metrics["epochs_run"] == 3
    for run in (every, end):
        assert 0 < run.metrics["eval_s"] < run.metrics["wall_s"]
    assert end.metrics["eval_s"] < every.metrics["eval_s"]


@pytest.mark.parametrize("other", [dict(eval_every_steps=5), dict(early_stop_patience=2)])
def test_eval_at_end_refuses_settings_that_need_earlier_evaluations(other):
    with pytest.raises(CifarlibError, match="eval_at='end'.*set eval_at='epochs'"):
        tiny(eval_at="end", **other)


def test_eval_at_end_still_records_a_diverged_run(splits):
    run = fit(splits, epochs=5, optimizer="sgd", lr=1e6, eval_at="end")
    assert run.status == "diverged" and len(run.history) == 1 and run.metrics["epochs_run"] < 5


def _mislabel(s: data.Splits) -> data.Splits:
    """Validation labels shifted by one class: the better the model learns, the higher the val loss."""
    wrong = data.ImageSet(s.val.images, (s.val.labels + 1) % len(s.classes))
    return data.Splits(s.train, wrong, s.test, s.classes, s.mean, s.std, s.identity + "-mislabelled")


@pytest.mark.parametrize("restore", [True, False])
def test_early_stopping_stops_and_restores_the_best_weights(splits, restore):
    bad = _mislabel(splits)
    cfg = tiny(epochs=10, early_stop_patience=2, restore_best=restore)
    run = train.fit(train.build(cfg, bad), bad, cfg, progress=False)
    val_losses = [r["val_loss"] for r in run.history]
    assert run.status == "early_stopped" and run.metrics["epochs_run"] == 3
    assert val_losses[0] == min(val_losses) and run.metrics["best_epoch"] == 1.0
    kept = val_losses[0] if restore else val_losses[-1]
    assert run.metrics["final_val_loss"] == kept and run.metrics["restored_best"] is restore
    loader = data.Loader(bad.val, 500, bad.mean, bad.std)
    loss, _ = train.evaluate(run.model, loader, precision=run.metrics["precision"])
    assert loss == pytest.approx(kept, rel=1e-6)  # the returned weights are those of that evaluation


def test_huge_learning_rate_diverges_without_crashing(splits):
    run = fit(splits, epochs=5, optimizer="sgd", lr=1e6)
    assert run.status == "diverged" and run.metrics["status"] == "diverged"
    assert run.metrics["epochs_run"] < 5
    assert not math.isfinite(run.history[-1]["running_train_loss"])


def test_mse_loss_trains(splits):
    run = fit(splits, epochs=3, loss="mse")
    assert run.status == "finished" and run.metrics["final_val_acc"] > 0.8
    assert run.history[-1]["val_loss"] < 0.03  # mse of a uniform guess over 10 classes is 0.09


def test_same_seed_same_history_other_seed_differs(splits):
    def history(seed):
        run = fit(splits, epochs=1, seed=seed, crop_pad=2, flip=True, eval_every_steps=8)
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in run.history], run.model

    (h1, m1), (h2, m2), (h3, _) = history(0), history(0), history(1)
    assert h1 == h2 and h1 != h3
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_ctrl_c_returns_interrupted_run_with_partial_history(splits, monkeypatch):
    real_step, calls = train.train_step, []

    def step_then_interrupt(*args):
        calls.append(1)
        if len(calls) == 20:  # in the second epoch (17 steps per epoch)
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(train, "train_step", step_then_interrupt)
    run = fit(splits, epochs=3)
    assert run.status == "interrupted" and len(run.history) == 1 and run.metrics["steps"] == 19


def test_optimizers_schedulers_and_options_run(splits):
    run = fit(splits, epochs=1, optimizer="adamw", weight_decay=0.05,
              scheduler="onecycle", label_smoothing=0.1, grad_clip=1.0, cutout=4, tta_flip=True,
              channels_last=False, precision="fp32")
    assert run.status == "finished" and run.metrics["precision"] == "fp32"
    run = fit(splits, epochs=1, optimizer="sgd", lr=0.02, momentum=0.9, nesterov=True, scheduler="cosine",
              warmup_epochs=0.5)
    assert run.status == "finished"


def test_progress_bar_shows_live_loss_and_can_be_switched_off(splits, capsys, monkeypatch):
    cfg = tiny(epochs=1)
    train.fit(train.build(cfg, splits), splits, cfg, progress=True)
    assert "loss=" in capsys.readouterr().err
    monkeypatch.setenv("CIFARLIB_PROGRESS", "0")
    train.fit(train.build(cfg, splits), splits, cfg)
    assert capsys.readouterr().err == ""


# ---- evaluate ------------------------------------------------------------------------------------

class Mirror(nn.Module):
    """Logits = mean of the left half minus mean of the right half, per class-0/1."""

    def forward(self, x):
        left, right = x[..., : x.shape[-1] // 2].mean((1, 2, 3)), x[..., x.shape[-1] // 2:].mean((1, 2, 3))
        return torch.stack([left - right, right - left], dim=1) + 0 * self.w

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))


def test_evaluate_matches_hand_computation_and_tta_flip_averages_mirrored_logits():
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    model = Mirror().train()
    loss, acc = train.evaluate(model, [(x[:4], y[:4]), (x[4:], y[4:])])
    logits = model(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert model.training  # the caller's mode is restored
    tta_loss, _ = train.evaluate(model, [(x, y)], tta_flip=True)
    assert tta_loss == pytest.approx(math.log(2), rel=1e-6)  # this model's mirrored logits cancel exactly


def test_evaluate_of_an_imageset_needs_normalization(splits):
    model = train.build(tiny(), splits)
    with pytest.raises(CifarlibError, match="mean= and std="):
        train.evaluate(model, splits.val)
    loss, acc = train.evaluate(model, splits.val, mean=splits.mean, std=splits.std)
    assert 0 <= acc <= 1 and loss > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(CifarlibError, match="no CUDA GPU"):
        train.resolve_device("cuda")


# ---- bench ---------------------------------------------------------------------------------------

def test_bench_runs_on_synthetic_data_and_reports_speedup(capsys, monkeypatch):
    monkeypatch.delenv("CIFARLIB_DATA", raising=False)
    assert cli.main(["bench", "--steps", "2", "--batch-size", "16", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "synthetic" in out[0] and any("reference" in line for line in out)
    assert out[-1].startswith("speedup: ") and out[-1].endswith("x (median of 3)")
    runs = [float(x.rstrip("x")) for x in out[-2].removeprefix("speedups: ").split(", ")]
    assert len(runs) == 3 and float(out[-1].split()[1][:-1]) == pytest.approx(sorted(runs)[1], abs=0.006)
    assert sum("Table-1 CNN, run" in line for line in out) == 3


def test_bench_profile_shows_where_a_step_goes_and_its_rate_against_matrix_products(capsys, monkeypatch):
    monkeypatch.delenv("CIFARLIB_DATA", raising=False)
    assert cli.main(["bench", "--profile", "--steps", "3", "--batch-size", "16", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "MFLOP a training image" in out and "float32 1024x1024 matrix product" in out and "bfloat16" in out
    rows = out[out.index("where a step's time goes"):].splitlines()[2:]
    shares = [float(line.split()[-3].rstrip("%")) for line in rows if line.strip()]
    assert 1 <= len(shares) <= 15 and shares == sorted(shares, reverse=True) and sum(shares) <= 100.5


@pytest.mark.slow
def test_bench_sweep_times_serial_and_local_side_by_side(capsys, monkeypatch):
    monkeypatch.delenv("CIFARLIB_DATA", raising=False)
    assert cli.main(["bench", "--sweep", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("sweep: 2 runs of Model A") and "serial (1 process" in out[1] and "local (" in out[2]
    assert out[-1].startswith("local executor speedup over serial: ") and float(out[-1].split()[-1][:-1]) > 0


def test_bench_load_prints_each_setting_idle_and_beside_a_competing_process(capsys, monkeypatch, idle_machine):
    import os

    monkeypatch.delenv("CIFARLIB_DATA", raising=False)
    assert cli.main(["bench", "--load", "--steps", "3", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = {line[2:44].strip(): line[44:].split() for line in out[2:-1]}
    assert list(rows) == [label for label, _, _ in __import__("cifarlib.bench").bench.LOAD_SETTINGS]
    assert all(float(cells[0].replace(",", "")) > 0 and float(cells[1].replace(",", "")) > 0 for cells in rows.values())
    assert rows["1 thread"][-1] == "1/1" and rows["2 threads (torch's default)"][-1] == "2/2"
    idle, loaded = map(int, rows["cifarlib: threads from the free cores"][-1].split("/"))
    assert idle == 2 and loaded == (1 if (os.cpu_count() or 1) <= 2 else loaded)  # two cores: one thread beside the job
    assert out[-1].startswith("cifarlib: threads from the free cores: idle ")


def test_warm_up_never_exceeds_the_peak_learning_rate():
    for cfg, steps in ((tiny(lr=0.1, scheduler="onecycle", epochs=3), 1), (tiny(lr=0.1, warmup_epochs=0.5), 781)):
        peak = max(train.lr_at(cfg, s, steps) for s in range(cfg.epochs * steps))
        assert peak == pytest.approx(0.1)


def test_a_last_batch_of_one_image_is_dropped_so_batch_norm_can_train():
    ds = data.synthetic(n_train=65, n_test=20, size=8, seed=0)
    sp = data.split(ds, val_size=0, seed=0)
    assert len(sp.train) % 8 == 1
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    run = train.fit(model, sp, tiny(batch_size=8, epochs=1, train_eval_size=20), progress=False)
    assert run.status == "finished" and run.history[-1]["examples_seen"] == len(sp.train) - 1


@pytest.mark.parametrize("args, message", [
    (["bench", "--device", "gpu0"], "unknown device 'gpu0'"),
    (["run", "baseline", "--set", "profile=quick"], "unknown config key(s) profile"),
    (["bench", "--threads", "0", "--device", "cpu"], "--threads must be at least 1, got 0"),
    (["bench", "--threads", "-3", "--device", "cpu"], "--threads must be at least 1, got -3"),
    (["bench", "--batch-size", "100000", "--steps", "1", "--device", "cpu"], "--batch-size 100000 is larger than"),
])
def test_cli_bad_device_and_clashing_set_keys_are_one_line_errors(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_output_piped_into_a_reader_that_stops_is_not_a_traceback(monkeypatch):
    import os
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`| head`) has gone
    stdout = os.fdopen(write_end, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", stdout)
    assert cli.main(["experiments"]) == 0
    stdout.close()


def test_lookahead_blends_a_slow_copy_with_a_decay_that_grows_cubically():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    look = train.Lookahead(net)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    moved = {k: v.clone() for k, v in net.state_dict().items()}
    look.pull(step=5, total=10)
    d = train.LOOKAHEAD_DECAY * 0.5 ** 3
    first = {}
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            first[k] = d * start[k] + (1 - d) * moved[k]
            torch.testing.assert_close(v, first[k])
        else:
            assert torch.equal(v, start[k])  # the BN step counter is left alone
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    fast = {k: v.clone() for k, v in net.state_dict().items()}
    look.pull(step=10, total=10)  # the slow copy carries the first blend forward
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            want = train.LOOKAHEAD_DECAY * first[k] + (1 - train.LOOKAHEAD_DECAY) * fast[k]
            torch.testing.assert_close(v, want)
    assert 0.77 < train.LOOKAHEAD_DECAY < 0.78


def test_fit_with_lookahead_ends_on_the_slow_weights(splits, monkeypatch):
    pulls, made = [], []
    real_pull, real_init = train.Lookahead.pull, train.Lookahead.__init__
    monkeypatch.setattr(train.Lookahead, "pull",
                        lambda self, step, total: (pulls.append(step), real_pull(self, step, total)))
    monkeypatch.setattr(train.Lookahead, "__init__", lambda self, model: (made.append(self), real_init(self, model))[1])
    sgd = dict(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64)
    run = fit(splits, epochs=2, lookahead=True, **sgd)
    assert run.metrics["steps"] == 16 and pulls == [5, 10, 15, 16]  # 540 // 64 = 8 steps an epoch; every 5, the end
    assert len(made) == 1
    floats = [v for v in run.model.state_dict().values() if v.is_floating_point()]
    assert all(torch.equal(v, s) for v, s in zip(floats, made[0].slow))  # the returned model is the slow copy
    assert run.history[-1]["val_acc"] > 0.3
    plain = fit(splits, epochs=2, **sgd)
    assert not torch.equal(next(run.model.parameters()), next(plain.model.parameters()))


def test_lookahead_copy_is_taken_after_the_first_step():
    """A run of one step ends on the weights of that step: the slow copy starts from them, not from the
    initial weights (which would undo layers set from the first batch, such as Model B's whitening)."""
    ds = data.split(data.synthetic(n_train=80, n_test=20, size=16, seed=0), val_fraction=0.1, seed=0)
    cfg = tiny(model="improved_b", epochs=1, batch_size=64, optimizer="sgd", lr=0.1, momentum=0.9, train_eval_size=0)
    runs = [train.fit(train.build(c, ds), ds, c, progress=False) for c in (cfg, cfg.replace(lookahead=True))]
    assert runs[0].metrics["steps"] == runs[1].metrics["steps"] == 1
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_norm_lr_scale_speeds_up_normalization_parameters_only():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))

    def one_step(scale, wd=0.0, zero_grad=False):
        model = copy.deepcopy(net)
        cfg = tiny(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=wd, norm_lr_scale=scale)
        opt = train.make_optimizer(model, cfg)
        F.cross_entropy(model(x), y).backward()
        if zero_grad:  # only the weight decay moves the weights
            for p in model.parameters():
                p.grad.zero_()
        opt.step()
        return {k: (v - dict(net.named_parameters())[k]).detach() for k, v in model.named_parameters()}

    plain, fast = one_step(1.0), one_step(64.0)
    for name in plain:
        factor = 64.0 if name.startswith("1.") else 1.0  # module 1 is the BatchNorm
        torch.testing.assert_close(fast[name], factor * plain[name])
    plain, fast = one_step(1.0, wd=0.5, zero_grad=True), one_step(64.0, wd=0.5, zero_grad=True)
    for name in plain:  # the decay per step is the same in every group
        torch.testing.assert_close(fast[name], plain[name])
    with pytest.raises(CifarlibError, match="norm_lr_scale"):
        tiny(norm_lr_scale=0)


# ---- faults from the probe (issue 18) --------------------------------------------------------------

@pytest.mark.parametrize("key", ["seed", "split_seed"])
@pytest.mark.parametrize("value", [2**64, 2**63, -1])
def test_seeds_beyond_63_bits_or_negative_are_refused(key, value):
    with pytest.raises(CifarlibError) as excinfo:
        tiny(**{key: value})
    message = str(excinfo.value)
    assert "\n" not in message and f"{key}={value}" in message and "2**63 - 1" in message
    assert tiny(**{key: 2**63 - 1}).to_dict()[key] == 2**63 - 1


def test_images_too_small_for_the_model_are_one_line(splits):
    one_pixel = data.Splits(*(data.ImageSet(s.images[:, :, :1, :1].contiguous(), s.labels)
                              for s in (splits.train, splits.val, splits.test)),
                            splits.classes, splits.mean, splits.std, "1x1")
    cfg = tiny(model="baseline")
    with pytest.raises(CifarlibError) as excinfo:
        train.fit(train.build(cfg, one_pixel), one_pixel, cfg, progress=False)
    message = str(excinfo.value)
    assert "\n" not in message and "1x1" in message and "baseline" in message


def test_training_on_a_single_class_is_refused(splits):
    only = splits.train.labels == 0
    one_class = data.Splits(data.ImageSet(splits.train.images[only], splits.train.labels[only]), splits.val,
                            splits.test, splits.classes[:1], splits.mean, splits.std, "one")
    cfg = tiny()
    with pytest.raises(CifarlibError, match="at least 2 classes"):
        train.fit(train.build(cfg, one_class), one_class, cfg, progress=False)


# ---- threads on a shared CPU (issue 16) ----------------------------------------------------------

def test_other_processes_busy_cores_are_measured_without_our_own(idle_machine):
    import subprocess
    import sys
    import time as clock

    import threading

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # another process: one core
    stop = threading.Event()

    def spin():  # this process keeps a core busy too: that must not count
        while not stop.is_set():
            pass

    ours = threading.Thread(target=spin)
    try:
        clock.sleep(0.5)
        ours.start()
        others = train.busy_elsewhere(0.5)
    finally:
        stop.set()
        ours.join()
        spinner.kill()
        spinner.wait()
    assert others is not None and 0.6 <= others <= 1.5


@pytest.mark.parametrize("others, current, expected", [(2.0, 2, 1), (1.0, 2, 1), (0.3, 2, 2), (None, 2, 2),
                                                        (0.0, 1, 1), (5.0, 8, 8 - 5)])
def test_threads_follow_the_cores_other_processes_leave_free(monkeypatch, others, current, expected):
    import os

    monkeypatch.setattr(train, "busy_elsewhere", lambda window=None: others)
    cores = max(current, 2)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert train.threads_for_load(current) == (expected if current > 1 else current)


def test_fit_trains_with_fewer_threads_on_a_busy_cpu_and_restores_torchs_setting(splits, monkeypatch):
    from cifarlib import paths

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(paths.ENV_THREADS, raising=False)
    monkeypatch.setattr(train, "busy_elsewhere", lambda window=None: 2.0)
    monkeypatch.setattr(train, "_usable_cpus", lambda: {0, 1})
    torch.set_num_threads(2)
    try:
        run = fit(splits, epochs=1)
        assert run.metrics["threads"] == 1 and torch.get_num_threads() == 2
        monkeypatch.setenv(paths.ENV_THREADS, "2")  # the user fixes the count: the load is not asked
        monkeypatch.setattr(train, "busy_elsewhere", lambda window=None: pytest.fail("the load was measured"))
        assert fit(splits, epochs=1).metrics["threads"] == 2
        monkeypatch.setenv(paths.ENV_THREADS, "two")
        with pytest.raises(CifarlibError, match="CIFARLIB_THREADS='two' is not a whole number"):
            fit(splits, epochs=1)
    finally:
        torch.set_num_threads(1)
