"""Report part 5, the MNIST study: the two networks, the named experiments, the MSE loss on
1x28x28 images, and the comparison table's handling of a diverged run."""

import pytest

from cifarlib.errors import CifarlibError
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
    table = tables.comparison_table({"ok": good, "too large lr": bad}, label="lr").set_index("lr")
    assert table.loc["too large lr", "test acc (%)"] == "diverged"
    assert table.loc["too large lr", "status"] == "diverged"
    assert float(table.loc["ok", "test acc (%)"]) == pytest.approx(100 * good.metrics["final_test_acc"], abs=0.01)


def test_run_group_trains_once_then_reads_the_records(tmp_path):
    group = {"small net": "mnist_small"}
    knobs = dict(profile="quick", runs_dir=tmp_path, dataset="synthetic", device="cpu", progress=False)
    first = studies.run_group(group, **knobs)["small net"]
    again = studies.run_group(group, **knobs)["small net"]
    assert (first.cached, again.cached) == (False, True) and again.dir == first.dir
    assert again.status == "finished" and len(again.history) == 3  # quick: 3 full batches of 128 of the 450 digits, an evaluation after each
    assert tables.comparison_table({"small net": again}).loc[0, "parameters"] == f"{first.metrics['params']:,}"


def test_an_empty_seed_list_is_refused_before_anything_trains(tmp_path):
    with pytest.raises(CifarlibError, match="seeds is empty"):
        studies.run_seeds({"small net": "mnist_small"}, seeds=[], runs_dir=tmp_path)


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
    assert plots.epoch_ends(history)["epoch"].tolist() == [1.0, 2.0]


# --- the report's generated sentences and figures, on made-up records --------------------------------------

import math
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pandas as pd

from cifarlib import plots


def _record(val_accs, test_acc, train_acc=None, loss="cross_entropy", train_loss=0.1, lr=0.01, status="finished",
            params=61_706, seed=0, per_epoch=50_000, points_per_epoch=2):
    """A run-record look-alike: evaluations every half epoch with the given validation accuracies."""
    n = len(val_accs)
    epochs = [(i + 1) / points_per_epoch for i in range(n)]
    history = pd.DataFrame({"epoch": epochs, "examples_seen": [int(e * per_epoch) for e in epochs],
                            "val_acc": val_accs, "train_acc": val_accs, "test_acc": val_accs,
                            "train_loss": [train_loss] * n, "val_loss": [train_loss] * n, "test_loss": [train_loss] * n})
    metrics = {"final_test_acc": test_acc, "final_val_acc": val_accs[-1],
               "final_train_acc": val_accs[-1] if train_acc is None else train_acc, "final_train_loss": train_loss,
               "final_test_loss": train_loss, "examples_seen": int(epochs[-1] * per_epoch), "epochs_run": epochs[-1],
               "params": params, "wall_s": 12.0, "device": "cpu", "status": status}
    return SimpleNamespace(config=SimpleNamespace(loss=loss, lr=lr, seed=seed), metrics=metrics, history=history,
                           status=status)


def test_uniform_guess_losses():
    assert studies.uniform_loss("cross_entropy") == pytest.approx(math.log(10))
    assert studies.uniform_loss("mse") == pytest.approx(0.09)


def test_examples_to_reach_the_first_evaluation_at_a_level():
    rec = _record([0.5, 0.91, 0.96, 0.97], 0.97)
    assert studies.examples_to_reach(rec, 0.9) == 50_000 and studies.examples_to_reach(rec, 0.95) == 75_000
    assert studies.examples_to_reach(rec, 0.99) is None


def test_describe_main_quotes_the_numbers_and_reads_the_trend():
    text = studies.describe_main(_record([0.5, 0.91, 0.96, 0.975], 0.9712, train_acc=0.98))
    assert "**97.12 %**" in text and "98.00 %" in text and "97.50 %" in text
    assert "passes 90 % after 50,000 examples (1 epoch)" in text and "95 % after 75,000 examples (1.5 epochs)" in text
    assert "+6.50 points" in text and "still improving" in text and "no sign of overfitting" in text
    overfit = studies.describe_main(_record([0.9, 0.9, 0.9, 0.9], 0.9, train_acc=0.99))
    assert "9.0 points above validation" in overfit and "levelled off" in overfit


def test_describe_main_near_chance_says_so():
    text = studies.describe_main(_record([0.1, 0.11], 0.11, train_loss=2.30))
    assert "still close to chance" in text and "practically the 2.303 of a uniform guess" in text
    assert "%**" not in text


def test_describe_lr_sweep_names_the_best_rate_and_the_diverged_run():
    runs = {"lr 0.1": _record([0.95, 0.98], 0.981, lr=0.1), "lr 0.01": _record([0.8, 0.92], 0.95, lr=0.01),
            "lr 0.0001": _record([0.1, 0.11], 0.11, lr=1e-4, train_loss=2.3),
            "lr 10": _record([0.1], math.nan, lr=10, status="diverged")}
    text = studies.describe_lr_sweep(runs)
    assert "At learning rate 0.1 the network ends at 98.10 % test accuracy, reaching 90 % validation accuracy " \
           "after 25,000 examples" in text
    assert "At learning rate 0.0001" in text and "hardly moved" in text
    assert "At learning rate 10 the loss stopped being a finite number" in text and "1 of the 4 runs diverged" in text
    assert "comes from learning rate 0.1, 3.10 points ahead" in text


def test_describe_losses_compares_each_loss_with_its_uniform_guess():
    runs = {"cross-entropy": _record([0.9, 0.97], 0.97, train_loss=0.2303),
            "L2": _record([0.1, 0.3], 0.30, loss="mse", train_loss=0.0855)}
    text = studies.describe_losses(runs, reference="cross-entropy")
    assert "cross-entropy run ends at 97.00 %" in text and "90 % below the 2.303 of a uniform guess" in text
    assert "L2 run ends at 30.00 %" in text and "practically the 0.09 of a uniform guess" in text
    assert "67.00 points below the cross-entropy run's" in text


def test_describe_networks_reads_the_seed_spread():
    big = [_record([0.85, 0.98], a) for a in (0.980, 0.982, 0.984)]
    small = [_record([0.95, 0.97], a, params=2_202) for a in (0.975, 0.983, 0.970)]
    text = studies.describe_networks({"LeNet-5": big[0], "small": small[0]}, {"LeNet-5": big, "small": small},
                                     reference="LeNet-5")
    assert "2,202 parameters, 28 times fewer than the 61,706" in text
    assert "The small network passes 90 % validation accuracy first, after 25,000 examples against 50,000" in text
    assert "the LeNet-5 network averages 98.20 % and the small network 97.60 %" in text
    assert "either order" in text
    apart = studies.describe_networks({"LeNet-5": big[0], "small": small[2]}, {"LeNet-5": big, "small": small[2:]},
                                      reference="LeNet-5")
    assert "averages" not in apart  # one seed of the small network: no spread to quote


def test_comparison_table_hides_constant_columns():
    runs = {"cross-entropy": _record([0.9], 0.97, train_loss=0.2303),
            "L2": _record([0.3], 0.30, loss="mse", train_loss=0.0855)}
    table = tables.comparison_table(runs, label="loss", losses=True)
    assert list(table.columns) == ["loss", "parameters", "train loss", "test loss", "train acc (%)", "test acc (%)",
                                   "time (s, CPU)"]
    assert table.loc[1, "train loss"] == "0.0855" and table.loc[0, "train loss"] == "0.2303"  # 4 decimals: L2 losses are small


@pytest.mark.parametrize("x", ["epoch", "examples_seen"])
def test_loss_per_run_gives_each_loss_its_own_panel_and_prints_legibly(x):
    runs = {"cross-entropy": _record([0.9, 0.95, 0.97, 0.98], 0.97, train_loss=0.2303),
            "L2 (softmax vs one-hot)": _record([0.1, 0.2, 0.25, 0.3], 0.30, loss="mse", train_loss=0.0855)}
    plt.rcParams.update(plots.STYLE)
    fig = plots.plot_comparison(runs, "Cross-entropy against L2", x=x, loss_per_run=True, epoch_ends_only=x == "epoch",
                                loss_levels=studies.uniform_losses(runs))
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == ["Cross-entropy loss", "L2 loss", "Accuracy"]
        assert len(fig.axes[0].get_lines()) == 3 and fig.axes[0].get_lines()[-1].get_ydata()[0] == pytest.approx(2.3026, abs=1e-4)
        assert "loss of a uniform guess" in [t.get_text() for t in fig.legends[0].get_texts()]
        assert plots.print_problems(fig) == []
    finally:
        plt.close(fig)
