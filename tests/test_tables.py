"""Tables for a reader: numbers formatted once, text cells kept as written, settings named in words,
and typography (minus, times, arrows) as print has it."""

from __future__ import annotations

import math

import pandas as pd

from cifarlib import tables


def test_a_text_cell_that_looks_like_a_number_keeps_its_decimals():
    df = pd.DataFrame({"model": ["Model A", "Model B"], "test acc (%)": ["11.00", "85.65 ± 0.19"],
                       "loss": [1.23456, float("nan")], "images": [45000, 8], "ok": [True, False]})
    lines = tables.to_markdown(df).splitlines()
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == ["Model A", "11.00", "1.235", "45,000", "yes"]
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == ["Model B", "85.65 ± 0.19", "–", "8", "no"]
    assert [c.strip()[0] + c.strip()[-1] for c in lines[1].split("|")[1:-1]] == [":-", "-:", "-:", "-:", ":-"]


def test_typeset_uses_true_minus_times_arrow_and_plus_minus():
    assert tables.typeset("-0.72, 3x3, 3 x 32 x 32, C x H x W, 32 -> 30, +-0.2, (F - 1)") == \
        "−0.72, 3×3, 3×32×32, C×H×W, 32 → 30, ±0.2, (F − 1)"
    assert tables.typeset("1e-3, 2-pixel, a x b") == "1e-3, 2-pixel, a x b"


def test_settings_are_named_in_words_not_config_keys():
    table = tables.config_table({"norm_lr_scale": 64.0, "nesterov": True, "optimizer": "sgd", "model": "improved_a",
                                 "model_kw": {"widths": [64, 128]}, "grad_clip": None})
    assert table["setting"].tolist() == ["learning-rate factor of batch-norm parameters", "Nesterov momentum",
                                         "optimizer", "network", "network options", "gradient clipping"]
    assert table["value"].tolist() == ["64", "yes", "SGD", "Model A", "filters per stage: 64, 128", "none"]


def test_accuracies_and_losses_have_the_same_decimals_in_every_table():
    df = pd.DataFrame({"model": ["a"], "train loss": [0.48213], "test acc (%)": [71.96], "time (s)": [23456.7],
                       "Δ val (points)": [-1.5]})
    row = [c.strip() for c in tables.to_markdown(df, floatfmt=".4g").splitlines()[2].split("|")[1:-1]]
    assert row == ["a", "0.482", "71.96", "23,457", "−1.50"]


def test_hardware_in_a_readers_words():
    assert tables.hardware("cpu", "bf16", 2) == "CPU, 2 threads, bfloat16"
    assert tables.hardware("cuda:0", "fp32") == "GPU (cuda:0), float32"
    assert tables.hardware("cpu") == "CPU"


def test_one_accessor_and_one_formatter_for_a_runs_accuracy():
    from types import SimpleNamespace

    finished = SimpleNamespace(status="finished", metrics={"final_test_acc": 0.8125, "best_test_acc": 0.83,
                                                           "final_val_acc": 0.5})
    diverged = SimpleNamespace(status="diverged", metrics={"final_test_acc": 0.1})
    assert tables.accuracy(finished) == 81.25 and tables.accuracy(finished, prefix="best") == 83.0
    assert tables.accuracy({"final_val_acc": 0.5}, "val") == 50.0  # a metrics dict works too
    assert math.isnan(tables.accuracy(finished, "train"))
    assert tables.accuracy(diverged) == 10.0  # the number stays; only its cell says how the run ended
    assert [tables.accuracy_cell(r) for r in (finished, diverged)] == ["81.25", "diverged"]
    assert tables.accuracy_cell(finished, "train") == "–"
    assert tables.mean_accuracy([finished, {"final_test_acc": 0.7875}]) == 80.0


def test_a_value_that_rounds_to_zero_has_no_minus_sign():
    text = tables.to_markdown(pd.DataFrame({"change": ["a", "b", "c"], "points": [-1e-15, -0.004, -0.25]}),
                              floatfmt=".2f")
    cells = [line.split("|")[2].strip() for line in text.splitlines()[2:]]
    assert cells == ["0.00", "0.00", "\u22120.25"]


def test_an_interval_reads_with_true_minus_signs_and_no_negative_zero():
    assert tables.interval(-0.18, 1.126) == "\u22120.18 to +1.13"
    assert tables.interval(-0.004, 0.5) == "+0.00 to +0.50"  # not "-0.00"
    assert tables.interval(float("nan"), 1.0) == "–"


def test_a_settings_table_names_the_learning_rate_by_its_schedule_and_shows_what_the_run_used():
    from types import SimpleNamespace

    from cifarlib.train import TrainConfig

    constant = TrainConfig(name="baseline", model="baseline", lr=0.05, precision="auto", device="auto")
    record = SimpleNamespace(config=constant, metrics={"device": "cpu", "precision": "bf16"})
    table = tables.config_table(record, ["lr", "precision", "device"]).set_index("setting")["value"]
    assert dict(table) == {"learning rate": "0.05", "precision": "bfloat16", "device": "cpu"}
    for scheduler, name in [("onecycle", "learning rate (peak)"), ("cosine", "learning rate (peak)"),
                            ("step", "learning rate (initial)")]:
        assert tables.config_table({"lr": 0.1, "scheduler": scheduler}, ["lr"])["setting"][0] == name
