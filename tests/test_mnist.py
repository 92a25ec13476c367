"""Report part 5, the MNIST study: the two networks, the named experiments, the MSE loss on
1x28x28 images, and the comparison table's handling of a diverged run."""

import pytest
import torch

from cifarlib import data, experiments, studies, tables, train
from cifarlib.experiments import mnist as mnist_experiments
from cifarlib.models import build_model, count_params

MNIST_EXPERIMENTS = ["mnist_main", "mnist_lr_0.1", "mnist_lr_0.0001", "mnist_mse", "mnist_small"]


def conv_params(c_in, c_out, k=5):
    return c_out * c_in * k * k + c_out


def dense_params(n_in, n_out):
    return n_out * n_in + n_out


# mnist_lenet: conv 6 padded (28 -> 28, pool -> 14), conv 16 valid (14 -> 10, pool -> 5): 16 * 5 * 5 = 400.
# mnist_small: two valid convs (28 -> 24 -> 12 -> 8 -> 4): 8 * 4 * 4 = 128.
EXPECTED_PARAMS = {
    "mnist_lenet": conv_params(1, 6) + conv_params(6, 16) + dense_params(16 * 5 * 5, 120) + dense_params(120, 84)
    + dense_params(84, 10),
    "mnist_small": conv_params(1, 4) + conv_params(4, 8) + dense_params(8 * 4 * 4, 10),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_network_output_shape_and_parameter_count(name):
    model = build_model(name)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert count_params(model) == EXPECTED_PARAMS[name]


def test_parameter_counts_by_formula_match_the_documented_ones():
    assert EXPECTED_PARAMS == {"mnist_lenet": 61_706, "mnist_small": 2_202}


def test_small_network_is_much_smaller():
    assert EXPECTED_PARAMS["mnist_small"] * 20 < EXPECTED_PARAMS["mnist_lenet"]


def test_every_mnist_experiment_is_registered_under_part_mnist():
    assert sorted(n for n in experiments.names() if experiments.get(n).part == "mnist") == sorted(MNIST_EXPERIMENTS)


@pytest.mark.parametrize("profile", ["full", "quick"])
@pytest.mark.parametrize("name", MNIST_EXPERIMENTS)
def test_experiment_builds_a_valid_config_and_its_model(name, profile):
    cfg = experiments.config(name, profile=profile)
    assert isinstance(cfg, train.TrainConfig) and cfg.dataset == "mnist"
    assert cfg.optimizer == "sgd" and cfg.momentum == 0.5 and cfg.batch_size == 128
    model = build_model(cfg.model, **cfg.model_kw)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    if profile == "full":
        assert (cfg.epochs, cfg.val_size, cfg.train_per_class) == (8, 10_000, None)
    else:
        assert cfg.epochs == 1 and cfg.train_per_class <= 100


def test_variants_differ_from_the_main_config_in_one_setting_only():
    main = experiments.config("mnist_main").to_dict()
    expected = {"mnist_lr_0.1": {"lr": 0.1}, "mnist_lr_0.0001": {"lr": 1e-4}, "mnist_mse": {"loss": "mse"},
                "mnist_small": {"model": "mnist_small"}}
    for name, change in expected.items():
        cfg = experiments.config(name).to_dict()
        diff = {k: v for k, v in cfg.items() if main[k] != v and k != "name"}
        assert diff == change, name
    assert (main["model"], main["lr"], main["loss"]) == ("mnist_lenet", 0.01, "cross_entropy")


def test_notebook_epochs_apply_to_the_full_profile_only():
    assert mnist_experiments.notebook_overrides("full", epochs=3, device="cpu", seed=None) == {"epochs": 3, "device": "cpu"}
    knobs = mnist_experiments.notebook_overrides("quick", epochs=3, seed=1)
    assert knobs == {"seed": 1} and experiments.config("mnist_main", "quick", **knobs).epochs == 1


def test_study_groups_name_registered_experiments():
    for group in (mnist_experiments.LR_SWEEP, mnist_experiments.LOSSES, mnist_experiments.NETWORKS):
        assert "mnist_main" in group.values() and set(group.values()) <= set(MNIST_EXPERIMENTS)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def digits_like():
    """Synthetic 1x28x28 images in 10 classes, split like a tiny MNIST."""
    ds = data.synthetic(n_train=500, n_test=200, num_classes=10, channels=1, size=28, seed=0)
    return data.split(ds, val_size=100, seed=0)


def _fit(splits, **kw):
    cfg = train.TrainConfig(**{"name": "t", "dataset": "synthetic", "epochs": 3, "batch_size": 32,
                               "train_eval_size": 200, "device": "cpu", "precision": "fp32", **kw})
    return train.fit(train.build(cfg, splits), splits, cfg, progress=False)


def test_mse_loss_on_softmax_learns_above_chance(digits_like):
    run = _fit(digits_like, model="mnist_small", loss="mse", optimizer="adam", lr=2e-3, epochs=8, batch_size=8)
    assert run.status == "finished"
    assert run.metrics["final_test_acc"] > 0.6  # chance is 0.1; seeds 0-4 gave 0.985-1.0
    assert 0 < run.metrics["final_train_loss"] < 0.03  # a uniform softmax scores 0.09 (= 0.9 / 10)


def test_diverged_run_reads_diverged_in_the_comparison_table(digits_like):
    good = _fit(digits_like, model="mnist_small", optimizer="adam", lr=3e-3, epochs=1)
    bad = _fit(digits_like, model="mnist_lenet", lr=1e30, momentum=0.5, epochs=1)  # weights overflow to inf
    assert bad.status == "diverged"
    table = studies.comparison_table({"ok": good, "too large lr": bad}, label="lr").set_index("lr")
    assert table.loc["too large lr", "test acc (%)"] == "diverged"
    assert table.loc["too large lr", "status"] == "diverged"
    assert float(table.loc["ok", "test acc (%)"]) == pytest.approx(100 * good.metrics["final_test_acc"], abs=0.01)
    lines = studies.comparison_lines({"ok": good, "too large lr": bad}, reference="ok")
    assert lines == [lines[0]] and "diverged" in lines[0]


def test_run_group_trains_once_then_reads_the_records(tmp_path):
    group = {"small net": "mnist_small"}
    knobs = dict(profile="quick", runs_dir=tmp_path, dataset="synthetic", device="cpu", progress=False)
    first = studies.run_group(group, **knobs)["small net"]
    again = studies.run_group(group, **knobs)["small net"]
    assert (first.cached, again.cached) == (False, True) and again.dir == first.dir
    assert again.status == "finished" and len(again.history) == 3  # quick: 3 full batches of 128 of the 450 digits, an evaluation after each
    assert studies.comparison_table({"small net": again}).loc[0, "params"] == f"{first.metrics['params']:,}"


def test_run_seeds_groups_one_record_per_seed(tmp_path):
    knobs = dict(profile="quick", runs_dir=tmp_path, dataset="synthetic", device="cpu", progress=False, seed=7)
    groups = studies.run_seeds({"small net": "mnist_small"}, seeds=(0, 1), **knobs)
    assert [r.config.seed for r in groups["small net"]] == [0, 1]
    assert len({r.dir for r in groups["small net"]}) == 2
    assert tables.mean_std_table(groups).loc[0, "runs"] == 2


def test_l2_gradient_at_a_uniform_softmax_is_fifty_times_smaller():
    # d/dz_y: cross-entropy p_y - 1 = -0.9; L2 (2/10) * p_y * (p_y - 1) = -0.018 (the notebook quotes the ratio)
    ce, l2 = studies.start_gradients()
    assert ce == pytest.approx(-0.9) and l2 == pytest.approx(-0.018)
    assert ce / l2 == pytest.approx(50)


def test_epoch_ends_keep_whole_epochs_only():
    history = [{"epoch": e, "step": int(e * 4)} for e in (0.5, 1.0, 1.5, 2.0)]
    assert studies.epoch_ends(history)["epoch"].tolist() == [1.0, 2.0]
