"""Report part 3: the improved models, the ablation configs and table, and the evaluation helpers.

All on the CPU with random tensors or a few hundred synthetic images; no real data needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import pytest
import torch
from torch import nn

from cifarlib import ablation, data, evaluation, experiments, plots, runs, studies, sweep, train
from cifarlib.ablation import AblationResult, Change
from cifarlib.errors import CifarlibError
from cifarlib.experiments import improved
from cifarlib.experiments.improved import LOO, LOO_LABELS, LOO_WHY, LOO_WHY_HURTS
from cifarlib.models import build_model, count_params
from cifarlib.models.whitened import PatchWhitening


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


IMPROVED_EXPERIMENTS = [e for e in experiments.names() if experiments.get(e).part == "improved"]


# ---- comparing configs --------------------------------------------------------------------------

def flatten_config(config: Mapping) -> dict:
    """``{"lr": .., "model_kw": {"bn": True}}`` -> ``{"lr": .., "model_kw.bn": True}`` (for comparing configs)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in flatten_config(value).items()})
        else:
            out[key] = value
    return out


def config_diff(a: Mapping, b: Mapping, ignore: Sequence[str] = ("name",)) -> dict:
    """Keys (flattened) whose values differ between two configs -> (value in a, value in b);
    a key missing on one side shows as None there."""
    fa, fb = flatten_config(a), flatten_config(b)
    keys = [k for k in dict.fromkeys([*fa, *fb]) if k not in ignore]
    return {k: (fa.get(k), fb.get(k)) for k in keys if _norm(fa.get(k)) != _norm(fb.get(k))}


def _norm(value):
    return list(value) if isinstance(value, tuple) else value  # JSON turns tuples into lists


# ---- models -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", IMPROVED_EXPERIMENTS)
def test_every_improved_experiment_builds_and_maps_images_to_ten_logits(name):
    cfg = experiments.config(name)
    model = train.build(cfg)
    x = torch.randn(2, 3, 32, 32)
    assert model.eval()(x).shape == (2, 10)
    assert model.train()(x).shape == (2, 10)  # BN with a batch of 2, whitening fitted from it


def test_table1_variant_without_switches_is_the_table1_network():
    base, variant = build_model("baseline"), build_model("table1_variant")
    assert count_params(variant) == count_params(base) == 390_410
    assert [tuple(v.shape) for v in variant.state_dict().values()] == [tuple(v.shape) for v in base.state_dict().values()]
    torch.manual_seed(0)
    variant.load_state_dict(base.state_dict())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(variant(x), base(x))


def test_strided_variant_has_no_pooling_and_same_sides():
    model = build_model("table1_variant", downsample="stride", kernel=3)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.features(torch.zeros(1, 3, 32, 32)).shape == (1, 128, 4, 4)


def test_deeper_and_batchnorm_switches_change_the_layers():
    model = build_model("table1_variant", depth=2, bn=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 and all(c.bias is None for c in convs)  # BN's shift replaces the bias
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 1


@pytest.mark.parametrize("init, std_of", [
    ("xavier", lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
    ("kaiming", lambda fan_in, fan_out: math.sqrt(2 / fan_in)),
])
def test_init_schemes_give_the_textbook_weight_scale_and_zero_biases(init, std_of):
    torch.manual_seed(0)
    conv = build_model("table1_variant", init=init).features[3]  # conv 32 -> 64, 5x5
    fan_in, fan_out = 32 * 25, 64 * 25
    assert conv.weight.std().item() == pytest.approx(std_of(fan_in, fan_out), rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0


@pytest.mark.parametrize("kw", [dict(downsample="avgpool"), dict(kernel=4), dict(dropout=1.0), dict(init="orthogonal"),
                                dict(widths=[])])
def test_bad_switches_are_one_line_errors(kw):
    with pytest.raises(CifarlibError) as err:
        build_model("table1_variant", **kw)
    assert "\n" not in str(err.value)


def test_patch_whitening_decorrelates_the_patches_of_its_first_training_batch():
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.5, 0.3], [0.0, 0.0, 0.2]])
    x = torch.einsum("dc,nchw->ndhw", mix, torch.randn(64, 3, 16, 16))  # correlated channels
    layer = PatchWhitening(3, kernel=2, eps=0.0).train()
    assert not layer.ready
    y = layer(x)[:, :12]  # the first half; the second half is its negative
    flat = y.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(flat.T)
    torch.testing.assert_close(cov, torch.eye(12), atol=2e-2, rtol=0)
    assert layer.ready and not layer.conv.weight.requires_grad
    torch.testing.assert_close(layer(x)[:, 12:], -layer(x)[:, :12])
    frozen = layer.conv.weight.clone()
    layer(x * 3)  # later batches do not refit
    torch.testing.assert_close(layer.conv.weight, frozen)


def test_whitening_state_survives_a_state_dict_round_trip():
    model = build_model("improved_b").train()
    model(torch.randn(8, 3, 32, 32))
    fresh = build_model("improved_b")
    fresh.load_state_dict(model.state_dict())
    assert fresh.whiten.ready
    torch.testing.assert_close(fresh.whiten.conv.weight, model.whiten.conv.weight)


def test_forward_macs_of_the_table1_network_match_the_hand_count():
    by_hand = 32 * 32 * 32 * 3 * 25 + 16 * 16 * 64 * 32 * 25 + 8 * 8 * 128 * 64 * 25 + 2048 * 64 + 64 * 10
    assert evaluation.forward_macs(build_model("baseline")) == by_hand == 28_803_712


# ---- ablation configs ---------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["full", "quick"])
@pytest.mark.parametrize("change", LOO, ids=lambda c: c.name)
def test_each_leave_one_out_config_differs_from_the_reference_in_exactly_its_change(change, profile):
    ref = experiments.config("loo_reference", profile).to_dict()
    variant = experiments.config(f"loo_{change.name}", profile).to_dict()
    diff = config_diff(ref, variant)
    assert {k: v[1] for k, v in diff.items()} == flatten_config(change.changes)


def test_leave_one_out_changes_are_distinct_and_named_once_with_labels_and_mechanisms():
    names = [c.name for c in LOO]
    assert len(set(names)) == len(names) == len(LOO_LABELS) and set(LOO_WHY) == set(names)
    assert set(LOO_WHY_HURTS) <= set(names)
    assert len({repr(sorted(flatten_config(c.changes).items())) for c in LOO}) == len(LOO)


def test_leave_one_out_reference_is_model_a_on_a_short_budget():
    ref, model_a = experiments.config("loo_reference"), experiments.config("improved_a")
    shapes = [(k, tuple(v.shape)) for k, v in build_model(ref.model, **ref.model_kw).state_dict().items()]
    assert shapes == [(k, tuple(v.shape)) for k, v in build_model(model_a.model).state_dict().items()]
    diff = config_diff(model_a.to_dict(), ref.to_dict())
    assert set(diff) == {"model", "model_kw.widths", "model_kw.depth", "model_kw.kernel", "model_kw.bn",
                         "model_kw.downsample", "model_kw.dropout", "model_kw.hidden", "model_kw.init", "epochs",
                         "warmup_epochs", "train_per_class", "val_fraction", "train_eval_size", "eval_at"}
    assert ref.early_stop_patience is None and ref.epochs < model_a.epochs


def test_apply_change_merges_model_kw_and_config_diff_ignores_tuple_vs_list():
    ref = {"lr": 0.1, "model_kw": {"bn": False, "widths": (1, 2)}}
    out = experiments.apply_change(ref, {"model_kw": {"bn": True}})
    assert out == {"lr": 0.1, "model_kw": {"bn": True, "widths": (1, 2)}}
    assert ref["model_kw"]["bn"] is False  # the reference is not modified
    assert config_diff({"w": (1, 2)}, {"w": [1, 2]}) == {}
    assert config_diff({"a": 1}, {"a": 1, "model_kw": {"k": 3}}) == {"model_kw.k": (None, 3)}


# ---- paired statistics ------------------------------------------------------------------------------

def test_paired_ci_matches_a_hand_computation():
    diffs = [1.2, 0.4, 0.9, 1.5, 0.5]
    mean = 4.5 / 5  # 0.9
    sd = math.sqrt(((0.3 ** 2) + (0.5 ** 2) + 0 + (0.6 ** 2) + (0.4 ** 2)) / 4)  # sqrt(0.86 / 4)
    got_mean, half = ablation.paired_ci(diffs)
    assert got_mean == pytest.approx(mean) and half == pytest.approx(2.776 * sd / math.sqrt(5), rel=1e-4)
    assert half == pytest.approx(0.5757, abs=1e-3)
    assert math.isnan(ablation.paired_ci([2.0])[1])
    with pytest.raises(CifarlibError, match="no paired differences"):
        ablation.paired_ci([])


def test_t_quantiles_are_students():
    assert ablation.t975(1) == pytest.approx(12.706) and ablation.t975(4) == pytest.approx(2.776)
    assert ablation.t975(60) == pytest.approx(2.000, abs=2e-3) and ablation.t975(1000) == pytest.approx(1.962, abs=1e-3)
    with pytest.raises(CifarlibError):
        ablation.t975(0)


def _run(val, test, seed):
    return {"final_val_acc": val, "final_test_acc": test, "seed": seed}


def _result() -> AblationResult:
    """Reference seeds 0-2 at 80/81/82 % val. Without a: 5 points worse each seed (helps). Without b:
    about 1 point better (hurts). Without c: +-3 points (cannot tell). d ran one seed only."""
    ref = [_run(0.80 + k / 100, 0.79, k) for k in range(3)]
    return AblationResult(ref, {
        "a": [_run(0.75 + k / 100, 0.74, k) for k in range(3)],
        "b": [_run(0.81 + k / 100 + e, 0.80, k) for k, e in enumerate((0.0, 0.001, -0.001))],
        "c": [_run(0.80 + k / 100 + e, 0.79, k) for k, e in enumerate((0.03, -0.03, 0.0))],
        "d": [_run(0.70, 0.70, 7), _run(0.79, 0.78, 0)]},  # seed 7 has no reference: left out
        [Change(n, n.upper(), {}) for n in "abcd"])


def test_paired_effects_pairs_by_seed_ranks_and_gives_verdicts():
    table = ablation.paired_effects(_result())
    assert list(table["change"]) == ["a", "d", "c", "b"]
    rows = table.set_index("change")
    assert rows.loc["a", "contribution (val, points)"] == pytest.approx(5.0)
    assert rows.loc["a", "ci low"] == pytest.approx(5.0) and rows.loc["a", "verdict"] == "helps"  # no spread
    assert rows.loc["b", "contribution (val, points)"] == pytest.approx(-1.0) and rows.loc["b", "verdict"] == "hurts"
    assert rows.loc["c", "verdict"] == "cannot tell" and rows.loc["c", "ci low"] < 0 < rows.loc["c", "ci high"]
    assert rows.loc["d", "runs"] == 1 and rows.loc["d", "verdict"] == "cannot tell" and math.isnan(rows.loc["d", "ci low"])
    assert rows.loc["a", "contribution (test, points)"] == pytest.approx(5.0)
    assert rows.loc["a", "val acc without (%)"] == pytest.approx(76.0)


def test_the_discussion_names_exactly_what_the_intervals_show():
    result = _result()
    table, ref = ablation.paired_effects(result), ablation.reference_accuracy(result)
    labels, why = {"a": "alpha", "b": "beta", "c": "gamma", "d": "delta"}, {"a": "Alpha because.", "b": "Beta because.",
                                                                            "c": "Gamma because."}
    text = ablation.discussion(table[table["change"] != "d"], ref, labels, why)
    assert ("The largest estimated contribution among the ingredients shown to help is that of alpha "
            "(+5.00 points, 95 % CI +5.00 to +5.00 points).") in text
    assert "Removing beta (−1.00 points, 95 % CI" in text and "gives a better model on this budget" in text
    c = table.set_index("change").loc["c"]
    assert f"For gamma (95 % CI {c['ci low']:+.2f} to {c['ci high']:+.2f} points".replace("-", "−") in text
    assert "the data cannot tell: its interval includes zero." in text
    assert "- **Alpha** (+5.00 points): Alpha because." in text and "Beta because." not in text
    hurt = ablation.discussion(table[table["change"] != "d"], ref, labels, why, {"b": "Beta costs because."})
    assert "- **Beta** (−1.00 points): Beta costs because." in hurt
    assert "Gamma because." not in text  # no mechanism offered for an effect that was not shown
    assert "averaged over 3 seeds" in text and "one case in twenty" in text
    one = ablation.discussion(table[table["change"] == "d"], ref, labels, why)
    assert "Delta ran with one seed" in one and "nothing is claimed about it" in one and "helps" not in one
    mixed = ablation.discussion(table, ref, labels, why)
    assert "averaged over 1 to 3 seeds" in mixed and "Delta ran with one seed" in mixed and "alpha (+5.00" in mixed


def test_seeds_needed_for_a_narrower_interval_match_a_hand_computation():
    # differences with sd 3 over 3 seeds: half-width t(0.975; 2) * 3 / sqrt(3) = 7.45. For ±1 point:
    # n = 37 gives 2.0281 * 3 / sqrt(37) = 1.0003 (too wide), n = 38 gives 2.0262 * 3 / sqrt(38) = 0.9861.
    half = ablation.t975(2) * 3 / math.sqrt(3)
    assert ablation.seeds_needed(half, 3) == 38
    assert ablation.seeds_needed(half, 3, target=2.0) == 12  # 2.201 * 3 / sqrt(12) = 1.906; at 11: 2.228 * 3 / sqrt(11) = 2.015
    assert ablation.seeds_needed(0.5, 5) == 5  # narrow enough already
    with pytest.raises(CifarlibError, match="two or more pairs"):
        ablation.seeds_needed(1.5, 1)


def test_the_discussion_says_which_intervals_are_too_wide_and_what_would_narrow_them():
    result = _result()
    table, ref = ablation.paired_effects(result), ablation.reference_accuracy(result)
    text = ablation.discussion(table[table["change"] != "d"], ref, {"c": "gamma"})
    assert ("Two of the three intervals are within ±1 point. Wider is that of gamma (±7.45 points; the runs "
            "without it end between 78.0 and 83.0 %; ±1 point would take about 38 seeds). The reference's own runs "
            "end between 80.0 and 82.0 %.") in text
    assert "holds all the same" not in text  # gamma's verdict is "cannot tell"
    result.variants["c"] = [_run(0.70 + k / 100 + e, 0.79, k) for k, e in enumerate((0.03, -0.03, 0.0))]
    text = ablation.discussion(ablation.paired_effects(result), ablation.reference_accuracy(result), {"c": "gamma"})
    assert "The verdict on gamma holds all the same: its interval excludes zero." in text
    assert "within ±1 point" not in ablation.discussion(table[table["change"] == "a"], ref)  # nothing too wide
    alone = ablation.discussion(table[table["change"] == "c"], ref, {"c": "gamma"})
    assert "The interval of gamma (±7.45 points; the runs without it end between 78.0 and 83.0 %; ±1 point would " \
           "take about 38 seeds) is wider than ±1 point." in alone
    one = ablation.discussion(table[table["change"].isin(["a", "c"])], ref, {"c": "gamma"})
    assert "One of the two intervals is within ±1 point. Wider is that of gamma" in one
    wide_b = table.assign(**{"ci low": table["ci low"] - 2 * (table["change"] == "b")})  # b's interval ±1.25
    none = ablation.discussion(wide_b[wide_b["change"].isin(["b", "c"])], ref, {"b": "beta", "c": "gamma"})
    assert "None of the two intervals is within ±1 point. Wider are those of gamma (±7.45 points;" in none
    assert "and beta (±1.25 points;" in none
    with pytest.raises(CifarlibError, match="positive"):
        ablation.discussion(table, ref, precision=0)
    with pytest.raises(CifarlibError, match="positive"):
        ablation.seeds_needed(2.0, 5, target=0)


def test_an_interval_that_prints_as_one_point_is_not_called_wider():
    table = ablation.paired_effects(_result())
    just = table.assign(**{"ci low": table["contribution (val, points)"] - 1.004,
                           "ci high": table["contribution (val, points)"] + 1.004})
    assert "within ±1 point" not in ablation.discussion(just[just["change"] == "a"], ablation.reference_accuracy(_result()))


def test_a_variant_whose_run_diverged_is_named_as_such_not_as_a_single_seed():
    result = _result()
    result.variants["c"][1] = {"final_val_acc": None, "final_test_acc": None, "seed": 1}
    table = ablation.paired_effects(result)
    row = table.set_index("change").loc["c"]
    assert row["runs"] == 3 and math.isnan(row["contribution (val, points)"]) and math.isnan(row["val acc without, lowest (%)"])
    text = ablation.discussion(table[table["change"] != "d"], ablation.reference_accuracy(result), {"c": "gamma"})
    assert "Without gamma at least one run ended without a validation accuracy (its loss diverged)" in text
    assert "gamma ran with one seed" not in text.lower()


def test_several_hurting_ingredients_are_each_said_to_hurt_on_their_own():
    result = _result()
    result.variants["c"] = [_run(0.82 + k / 100, 0.80, k) for k in range(3)]  # 2 points better each seed
    text = ablation.discussion(ablation.paired_effects(result), ablation.reference_accuracy(result))
    assert "Removing b (−1.00 points" in text and " or c (−2.00 points" in text and "(each on its own)" in text


def test_missing_metrics_and_unpaired_changes_are_errors():
    result = AblationResult([_run(0.5, 0.5, 0)], {"a": [{"seed": 0}]}, [Change("a", "A", {})])
    with pytest.raises(CifarlibError, match="final_val_acc"):
        ablation.paired_effects(result)
    result = AblationResult([_run(0.5, 0.5, 0)], {"a": [_run(0.5, 0.5, 1)]}, [Change("a", "A", {})])
    with pytest.raises(CifarlibError, match="shares no seed"):
        ablation.paired_effects(result)


def test_plot_effects_draws_one_bar_per_change_with_intervals():
    table = ablation.paired_effects(_result())
    fig = plots.plot_effects(table)
    ax = fig.axes[0]
    assert len(ax.patches) == 4
    height = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}
    assert height["a"] > height["b"]  # the largest contribution at the top
    assert [p.get_facecolor()[:3] for p in ax.patches][0] != [p.get_facecolor()[:3] for p in ax.patches][2]


def test_run_paired_trains_reference_and_variants_with_the_same_seeds(tmp_path, monkeypatch):
    changes = [Change("x", "X", {})]
    monkeypatch.setattr(experiments, "_EXPERIMENTS", dict(experiments._EXPERIMENTS))  # registered for this test only
    experiments.register("pairtest_reference", "test", part="improved", **TINY_SYNTHETIC)
    experiments.register("pairtest_x", "test", part="improved", **{**TINY_SYNTHETIC, "lr": 3e-3})
    result = ablation.run_paired(changes, reference="pairtest_reference", prefix="pairtest", seeds=2, seed=3,
                                 runs_dir=tmp_path, executor="serial")
    assert [r.config.seed for r in result.reference] == [3, 4] == [r.config.seed for r in result.variants["x"]]
    assert result.variants["x"][0].config.lr == pytest.approx(3e-3)
    assert len(ablation.paired_effects(result)) == 1


def test_task2_records_trains_the_ablation_configs_in_its_own_sweep(monkeypatch):
    calls = []
    monkeypatch.setattr(sweep, "run_many", lambda configs, **kw: calls.append(list(configs)) or
                        [f"record {c.name} {c.seed}" for c in calls[-1]])
    loo = ablation.paired_configs(improved.LOO[:2], profile="quick", seeds=2, seed=5)
    assert [(c.name, c.seed) for c in loo] == [("loo_reference", 5), ("loo_reference", 6),
                                              (f"loo_{improved.LOO[0].name}", 5), (f"loo_{improved.LOO[0].name}", 6),
                                              (f"loo_{improved.LOO[1].name}", 5), (f"loo_{improved.LOO[1].name}", 6)]
    records = studies.task2_records(profile="quick", seed=5, also=loo)
    assert len(calls) == 1 and calls[0][-6:] == loo  # one sweep: two workers stay busy to the end
    assert records == {label: [f"record {name} 5"] for label, name in improved.MODELS.items()}


def test_only_the_plotted_seed_of_each_model_evaluates_after_every_epoch(monkeypatch):
    calls = []
    monkeypatch.setattr(sweep, "run_many", lambda configs, **kw: calls.append(list(configs)) or list(calls[-1]))
    records = studies.task2_records(seed=4, seeds=3)
    for label, name in improved.MODELS.items():
        cfgs = records[label]
        assert [(c.seed, c.eval_at) for c in cfgs] == [(4, "epochs"), (5, "end"), (6, "end")]
        assert cfgs[0].name == name and cfgs[0].replace(seed=5, eval_at="end") == cfgs[1]  # nothing else differs
    stopping = train.TrainConfig(name="s", dataset="synthetic", early_stop_patience=2)
    assert [c.eval_at for c in studies.curves_for_first([stopping, stopping.replace(seed=1)])] == ["epochs"] * 2


def test_leave_one_out_runs_evaluate_once_at_the_end():
    assert {c.eval_at for c in ablation.paired_configs(improved.LOO, seeds=2)} == {"end"}


TINY_SYNTHETIC = dict(dataset="synthetic", model="table1_variant", epochs=1, batch_size=64, optimizer="adam", lr=1e-3,
                      train_per_class=20, test_per_class=10, train_eval_size=50, device="cpu")


# ---- evaluation helpers on a tiny synthetic run -------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = train.TrainConfig(name="tiny", dataset="synthetic", model="table1_variant",
                            model_kw={"widths": [8, 16, 16], "kernel": 3, "bn": True}, epochs=2, batch_size=32,
                            optimizer="adam", lr=3e-3, train_per_class=40, test_per_class=20,
                            train_eval_size=100, device="cpu", precision="fp32")
    return runs.train_or_load(cfg, runs_dir=tmp_path_factory.mktemp("runs"), progress=False)


def test_predictions_reproduce_the_recorded_test_accuracy(tiny_run):
    p = evaluation.predict_run(tiny_run)
    assert len(p.labels) == 200 and p.probs.shape == (200, 10)
    torch.testing.assert_close(p.probs.sum(dim=1), torch.ones(200))
    assert p.accuracy == pytest.approx(tiny_run.metrics["final_test_acc"], abs=1 / 200 + 1e-9)
    assert 0.1 < p.accuracy < 1.0  # learned something, and there are mistakes to show


def test_confusion_matrix_and_per_class_table_agree_with_the_predictions(tiny_run):
    p = evaluation.predict_run(tiny_run)
    cm = evaluation.confusion_matrix(p.labels, p.preds, 10)
    assert cm.sum() == 200 and cm.trace().item() == int((p.preds == p.labels).sum())
    assert cm.sum(dim=1).tolist() == [20] * 10
    table = evaluation.per_class_table(cm, p.classes)
    assert table["accuracy (%)"].tolist() == pytest.approx((100 * cm.diag() / 20).tolist())


def test_confusion_matrix_by_hand():
    cm = evaluation.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    table = evaluation.per_class_table(cm, ["a", "b", "c"])
    assert table["most confused with"].tolist() == ["b (1)", "-", "a (1)"]
    cm = evaluation.confusion_matrix([0, 0, 0, 1, 2, 2, 2, 2], [1, 1, 0, 1, 0, 2, 2, 1], 3)
    top = evaluation.top_confusions(cm, ["a", "b", "c"], k=5)
    assert top[["true", "predicted", "images"]].values.tolist() == [["a", "b", 2], ["c", "a", 1], ["c", "b", 1]]
    assert top["% of true class"].tolist() == pytest.approx([200 / 3, 25.0, 25.0])


def test_misclassified_gallery_shows_the_most_confident_mistakes_first(tiny_run):
    p = evaluation.predict_run(tiny_run)
    idx = evaluation.misclassified(p, k=6)
    assert len(idx) == min(6, int((p.preds != p.labels).sum()))
    assert bool((p.preds[idx] != p.labels[idx]).all())
    conf = p.probs[idx, p.preds[idx]]
    assert bool((conf[:-1] >= conf[1:]).all())
    titles = evaluation.gallery_titles(p, idx)
    assert titles[0].startswith(f"said {p.classes[int(p.preds[idx[0]])]}")
    assert titles[0].endswith(f"is {p.classes[int(p.labels[idx[0]])]}")
    fig = evaluation.plot_misclassified(p, k=6, ncols=3)
    assert [ax.get_title() for ax in fig.axes[:len(idx)]] == titles


def test_cost_table_separates_training_time_from_evaluation_time(tiny_run):
    m = tiny_run.metrics
    assert len(tiny_run.history) == 2 and 0 < m["eval_s"] < m["wall_s"]
    row = evaluation.cost_table({"tiny": [tiny_run, tiny_run]}).iloc[0]
    assert row["training per run (min)"] == pytest.approx((m["wall_s"] - m["eval_s"]) / 60)
    assert row["s per epoch"] == pytest.approx((m["wall_s"] - m["eval_s"]) / 2)
    assert row["s per evaluation"] == pytest.approx(m["eval_s"] / 2)
    assert row["runs"] == 2 and row["parameters"] == m["params"]


def test_predict_keeps_the_order_of_the_images():
    ds = data.synthetic(n_train=50, n_test=30, size=32, seed=1)
    model = build_model("table1_variant", widths=[4, 4, 4], kernel=3)
    preds, probs = evaluation.predict(model, ds.test, mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=7)
    x = (ds.test.images.float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        torch.testing.assert_close(probs, model.eval()(x).softmax(dim=1), atol=1e-5, rtol=1e-4)
    assert preds.tolist() == probs.argmax(dim=1).tolist()


def test_model_b_convs_start_as_identities_and_train_only_bn_shifts():
    from cifarlib.models.whitened import ConvGroup

    torch.manual_seed(0)
    group = ConvGroup(8, 16, residual=False, bn_scale=False, dirac=True)
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(group.conv1(x)[:, :8], x)  # the first 8 of 16 filters pass their channel on
    h = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(group.conv2(h), h)  # 16 -> 16: all identities at the start
    assert not group.bn1.weight.requires_grad and group.bn1.bias.requires_grad
    model = build_model("improved_b")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"whiten.conv.weight"} | {f"groups.{g}.bn{i}.weight" for g in range(3) for i in (1, 2)}


def test_whitening_runs_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    layer = PatchWhitening(3)
    x = torch.randn(16, 3, 8, 8)
    layer.train()(x)  # sets the filters from this batch
    want = layer.eval()(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


def test_target_table_holds_the_seed_means_to_each_models_targets():
    from types import SimpleNamespace

    from cifarlib.experiments.improved import ASSIGNMENT_TEST_ACC, TARGETS
    from cifarlib.tables import target_table

    def recs(*pairs):
        return [SimpleNamespace(metrics={"final_test_acc": acc, "wall_s": wall}) for acc, wall in pairs]

    table = target_table({"Model A": recs((0.86, 250.0), (0.85, 370.0)), "Model B": recs((0.901, 1200.0), (0.897, 1.0)),
                          "other": recs((0.70, 5.0),)}, TARGETS, ASSIGNMENT_TEST_ACC).set_index("model")
    assert table.loc["Model A", "mean test acc %"] == 85.5 and table.loc["Model A", "met"] == "yes"
    assert not any("wall" in column for column in table.columns)  # time: the cost table, beside its hardware
    assert table.loc["Model B", "mean test acc %"] == 89.9 and table.loc["Model B", "met"] == "NO"
    assert table.loc["Model B", "assignment (75%)"] == "yes"
    assert table.loc["other", "assignment (75%)"] == "NO" and table.loc["other", "target test acc %"] == "-"
    assert list(table["runs"]) == [2, 2, 1]


def test_task2_records_logged_reads_the_runs_this_build_used(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from cifarlib import paths, runs

    made = {}
    for folder in ("improved_a-aaa", "improved_b-bbb", "improved_b-ccc", "baseline-ddd"):
        (tmp_path / folder).mkdir()
        made[folder] = SimpleNamespace(name=folder)
    log = tmp_path / "runs-used.txt"
    log.write_text("\n".join(str(tmp_path / f) for f in made) + f"\n{tmp_path / 'improved_b-bbb'}\n")
    monkeypatch.setattr(runs, "is_finished", lambda d: True)
    monkeypatch.setattr(runs, "load_run", lambda d: made[Path(d).name])
    monkeypatch.setenv(paths.ENV_RUN_LOG, str(log))
    found = studies.task2_records_logged()
    assert {k: [r.name for r in v] for k, v in found.items()} == {
        "Model A": ["improved_a-aaa"], "Model B": ["improved_b-bbb", "improved_b-ccc"]}
    monkeypatch.delenv(paths.ENV_RUN_LOG)
    assert studies.task2_records_logged() == {}


def test_replication_settings_show_what_the_runs_used():
    from types import SimpleNamespace

    from cifarlib import experiments
    from cifarlib.experiments import improved

    cfg = experiments.notebook_config("improved_a", "full")
    records = [SimpleNamespace(config=cfg.replace(seed=s), env={"threads": 1},
                               metrics={"device": "cpu", "precision": "bf16", "steps": 3510, "epochs_run": 10})
               for s in (0, 1, 2)]
    settings = improved.replication_settings(records)
    assert settings["precision"] == "bf16" and settings["seeds"] == "0, 1, 2" and settings["steps per epoch"] == 351
    assert settings["initialisation"].startswith("conv and dense weights Kaiming")
    assert settings["trained on"] == "CPU, 1 thread, bfloat16"


def test_the_targets_sentence_says_met_or_how_far_short():
    from cifarlib.experiments import improved

    text = improved.targets_sentence({"Model A": 85.49, "Model B": 89.59})
    assert text == "Model A meets its 85 % target; Model B falls 0.41 points short of its 90 %."
    assert improved.targets_sentence({"other": 70.0}) == "" and improved.targets_sentence({"Model A": math.nan}) == ""
    assert improved.targets_sentence({"Model B": 89.998}) == "Model B falls just short of its 90 % (by less than 0.01 points)."
