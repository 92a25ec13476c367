"""Named experiments: registration, profiles, overrides, errors and the listing command."""

from __future__ import annotations

import pytest

from cifarlib import cli, experiments
from cifarlib.errors import CifarlibError


def test_baseline_is_the_assignment_configuration():
    cfg = experiments.config("baseline")
    assert (cfg.name, cfg.model, cfg.optimizer, cfg.lr, cfg.momentum, cfg.batch_size) == (
        "baseline", "baseline", "sgd", 5e-2, 0.0, 64)
    assert (cfg.val_fraction, cfg.early_stop_patience, cfg.epochs, cfg.precision) == (0.1, 4, 10, "auto")
    assert (cfg.crop_pad, cfg.flip, cfg.cutout) == (0, False, 0)
    assert experiments.get("baseline").part == "baseline"


def test_quick_profile_shrinks_and_overrides_win():
    quick = experiments.config("baseline", profile="quick")
    assert quick.epochs == 1 and quick.train_per_class == 100 and quick.test_per_class == 50
    assert quick.lr == experiments.config("baseline").lr  # only the size changes
    assert experiments.config("baseline", "quick", epochs=2, seed=3).epochs == 2


def test_unknown_name_profile_or_key_are_clear_errors():
    with pytest.raises(CifarlibError, match=r"unknown experiment 'nope'; known experiments: baseline"):
        experiments.config("nope")
    with pytest.raises(CifarlibError, match="unknown profile 'slow'; use one of: full, quick"):
        experiments.config("baseline", profile="slow")
    with pytest.raises(CifarlibError, match=r"unknown config key\(s\) epoch"):
        experiments.config("baseline", epoch=3)


def test_register_checks_both_profiles_before_the_name_is_taken():
    with pytest.raises(CifarlibError, match="lr=0.0 is not allowed"):
        experiments.register("broken-test-exp", "x", part="baseline", quick=dict(lr=0.0))
    assert "broken-test-exp" not in experiments.names()
    with pytest.raises(ValueError, match="registered twice"):
        experiments.register("baseline", "again", part="baseline")
    with pytest.raises(ValueError, match="part 'extra'"):
        experiments.register("other-test-exp", "x", part="extra")


def test_every_registered_experiment_resolves_in_both_profiles():
    for name in experiments.names():
        for profile in experiments.PROFILES:
            assert experiments.config(name, profile).name == name


def test_experiments_command_lists_a_table(capsys):
    assert cli.main(["experiments"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "part", "model", "epochs", "description"]
    row = next(line for line in lines if line.startswith("baseline "))
    assert row.split()[:4] == ["baseline", "baseline", "baseline", "10"] and "SGD lr 5e-2" in row
    assert len(lines) == 1 + len(experiments.names())
    assert cli.main(["experiments", "--profile", "quick"]) == 0
    assert next(x for x in capsys.readouterr().out.splitlines() if x.startswith("baseline ")).split()[3] == "1"


# ---- notebook_config: the one path from a notebook's knobs to a config ------------------------------

NOTEBOOK_KNOBS = ("epochs", "seed", "device", "lr", "train_per_class")  # what parameter cells pass, and more


@pytest.mark.parametrize("profile", experiments.PROFILES)
def test_notebook_config_with_every_knob_none_is_the_experiments_own(profile):
    for name in experiments.names():
        cfg = experiments.notebook_config(name, profile, **dict.fromkeys(NOTEBOOK_KNOBS))
        assert cfg == experiments.config(name, profile), name


@pytest.mark.parametrize("profile", experiments.PROFILES)
def test_an_explicit_knob_wins_in_both_profiles(profile):
    for name in experiments.names():
        own = experiments.config(name, profile)
        epochs = max(own.epochs, experiments.config(name, "full").epochs) + 2  # neither profile's value
        cfg = experiments.notebook_config(name, profile=profile, epochs=epochs, seed=own.seed + 1, device="cpu")
        assert (cfg.epochs, cfg.seed, cfg.device) == (epochs, own.seed + 1, "cpu"), name
        assert cfg == own.replace(epochs=epochs, seed=own.seed + 1, device="cpu"), name  # nothing else moves


def test_the_quick_profile_changes_only_the_defaults():
    full, quick = experiments.config("baseline"), experiments.config("baseline", "quick")
    assert quick.epochs < full.epochs  # the quick budget is the default ...
    assert experiments.notebook_config("baseline", "quick", epochs=None).epochs == quick.epochs
    assert experiments.notebook_config("baseline", "quick", epochs=full.epochs).epochs == full.epochs  # ... not a cap


def test_notebook_config_refuses_an_unknown_knob_by_name_even_when_none():
    for value in (3, None):
        with pytest.raises(CifarlibError, match=r"^unknown knob\(s\) epoch: not a config key; known keys: ") as err:
            experiments.notebook_config("baseline", "full", epoch=value)
        assert "\n" not in str(err.value)
    with pytest.raises(CifarlibError, match="unknown profile 'slow'"):
        experiments.notebook_config("baseline", "slow")
    with pytest.raises(CifarlibError, match="unknown experiment 'nope'"):
        experiments.notebook_config("nope")

