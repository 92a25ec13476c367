"""A user's own network: trained through the engine with one call, keyed by its source code, cached
across kernel restarts, compared with ours, with live curves; all on small synthetic data."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from torch import nn  # noqa: E402

from cifarlib import data, explore, models, plots, train  # noqa: E402
from cifarlib.errors import CifarlibError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

SETTINGS = dict(epochs=1, batch_size=32, train_eval_size=40, device="cpu", precision="fp32")

USER_FILE = '''
from torch import nn


def widen(channels):
    return 2 * channels


def unrelated():
    return "not used by the network"


class TinyNet(nn.Module):
    """A network of the user's own, in a file outside the package."""

    def __init__(self, in_channels=3, num_classes=10, width=4):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widen(width), 3, padding=1)
        self.head = nn.Linear(widen(width), num_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))
'''


@pytest.fixture(scope="module")
def ds():
    return data.synthetic(n_train=160, n_test=40, num_classes=4, size=8, seed=1)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write ``mynets.py`` (optionally edited) and import it afresh, as a user editing their file would."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def load(text: str = USER_FILE):
        (tmp_path / "mynets.py").write_text(text)
        sys.modules.pop("mynets", None)
        importlib.invalidate_caches()
        return importlib.import_module("mynets")

    yield load
    sys.modules.pop("mynets", None)


def test_your_network_from_a_file_is_keyed_by_its_own_code(ds, tmp_path, user_module):
    runs_dir = tmp_path / "runs"

    def run(module):
        return explore.train(module.TinyNet, like="baseline", data=ds, runs_dir=runs_dir, live=False, **SETTINGS)

    first = run(user_module())
    assert first.config.model == "tinynet" and first.config.optimizer == "sgd" and not first.cached
    assert first.config.model_kw == {}  # the baseline's own network arguments are not passed on
    assert run(user_module()).cached  # the same code: the finished run is found
    unrelated_edit = USER_FILE.replace('"not used by the network"', '"edited"')
    assert run(user_module(unrelated_edit)).dir == first.dir  # code the network does not use
    helper_edit = USER_FILE.replace("return 2 * channels", "return 3 * channels")
    widened = run(user_module(helper_edit))
    assert not widened.cached and widened.dir != first.dir  # a function the network calls
    forward_edit = USER_FILE.replace("self.conv(x).mean((2, 3))", "self.conv(x).relu().mean((2, 3))")
    assert run(user_module(forward_edit)).dir not in (first.dir, widened.dir)
    with pytest.raises(CifarlibError, match="has changed since the run"):  # the edited network is registered now
        first.load_model()
    run(user_module())  # the original definition again
    reloaded = first.load_model()
    assert isinstance(reloaded, nn.Module) and reloaded.conv.out_channels == 8


def test_the_registry_decorator_in_your_own_code_also_keys_runs_by_that_code(ds, tmp_path, user_module):
    from cifarlib import experiments, runs

    user_module(USER_FILE + textwrap.dedent('''
        from cifarlib.models import register


        @register("tiny_builder", "a builder of the user's")
        def tiny_builder(num_classes=10):
            return TinyNet(num_classes=num_classes)
    '''))
    assert models.is_user_model("tiny_builder")
    cfg = experiments.config("baseline", model="tiny_builder", name="tiny_builder", **SETTINGS)
    record = runs.train_or_load(cfg, data=ds, runs_dir=tmp_path / "runs")
    assert record.load_model().conv.out_channels == 8
    before = runs.code_version("tiny_builder")
    user_module(USER_FILE.replace("return 2 * channels", "return 4 * channels") + textwrap.dedent('''
        from cifarlib.models import register


        @register("tiny_builder", "a builder of the user's")
        def tiny_builder(num_classes=10):
            return TinyNet(num_classes=num_classes)
    '''))  # the module imported again: the same name registers the new builder
    assert runs.code_version("tiny_builder") != before


KEYED = '''
import functools

from torch import nn

WIDTH = 4
SCALE = (1, 2)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)


def make(block):
    def build(num_classes=10):
        return nn.Sequential(block(WIDTH), nn.Flatten(), nn.LazyLinear(num_classes))
    return build


class WithDefault(nn.Module):
    def __init__(self, num_classes=10, block=Block):
        super().__init__()
        self.body = block(WIDTH)


closure = make(Block)
partial = functools.partial(WithDefault, num_classes=3)
'''


@pytest.mark.parametrize("edit", [
    ("self.conv = nn.Conv2d(c, c, 3, padding=1)", "self.conv = nn.Conv2d(c, c, 5, padding=2)"),  # a captured class
    ("WIDTH = 4", "WIDTH = 8"),  # a plain value the network reads
    ("num_classes=3)", "num_classes=4)"),  # a partial's argument
])
@pytest.mark.parametrize("builder", ["closure", "partial"])
def test_the_key_follows_closures_defaults_partials_and_plain_values(user_module, builder, edit):
    from cifarlib import runs

    def key(text):
        module = user_module(text)
        explore.register(getattr(module, builder), name=f"keyed_{builder}")
        return runs.code_version(f"keyed_{builder}")

    before = key(KEYED)
    assert key(KEYED + "\n\ndef unrelated():\n    return 1\n") == before  # other code: the same key
    changed = key(KEYED.replace(*edit))
    touches = not (builder == "closure" and edit[0].startswith("num_classes"))  # the closure has no partial
    assert (changed != before) == touches


def test_your_network_takes_its_arguments_and_seeds(ds, tmp_path, user_module):
    module = user_module()
    records = explore.train(module.TinyNet, like="baseline", seeds=2, seed=5, data=ds, runs_dir=tmp_path / "runs",
                            live=False, model_kw={"width": 3}, **SETTINGS)
    assert [r.config.seed for r in records] == [5, 6] and len({r.dir for r in records}) == 2
    assert records[0].load_model().conv.out_channels == 6


def test_a_name_of_ours_is_refused_and_a_typo_in_the_recipe_is_named(ds, tmp_path, user_module):
    module = user_module()
    with pytest.raises(CifarlibError, match="belongs to one of the report's models"):
        explore.train(module.TinyNet, name="baseline", data=ds, runs_dir=tmp_path, live=False, **SETTINGS)
    with pytest.raises(CifarlibError, match="unknown knob"):
        explore.train(module.TinyNet, data=ds, runs_dir=tmp_path, live=False, epoch=1)
    with pytest.raises(CifarlibError, match="not a built model"):
        explore.train(module.TinyNet(), data=ds, runs_dir=tmp_path, live=False)
    assert "baseline" in models.model_names() and not models.is_user_model("baseline")


def test_live_curves_redraw_after_every_evaluation_and_a_broken_one_does_not_stop_training(ds, tmp_path):
    splits = data.split(ds, val_fraction=0.25)
    cfg = train.TrainConfig(name="live", model="baseline", dataset="synthetic", eval_every_steps=1, epochs=2,
                            batch_size=40, train_eval_size=40, device="cpu", optimizer="adam", lr=1e-3)
    curves = plots.LiveCurves("live")
    run = train.fit(train.build(cfg, splits), splits, cfg, progress=False, callback=curves)
    assert curves.draws == len(run.history) >= 4
    assert [ax.get_title() for ax in curves.fig.axes] == ["Loss", "Accuracy"]
    assert len(curves.fig.axes[0].get_lines()[0].get_xdata()) == len(run.history)
    curves.close()

    def broken(history):
        raise ValueError("no display")

    with pytest.warns(UserWarning, match="no display"):
        run = train.fit(train.build(cfg, splits), splits, cfg, progress=False, callback=broken)
    assert run.status == "finished"


def test_compare_puts_yours_next_to_ours_with_the_same_seeds(ds, tmp_path, user_module):
    module = user_module()
    runs_dir = tmp_path / "runs"
    mine = explore.train(module.TinyNet, like="baseline", seeds=2, data=ds, runs_dir=runs_dir, live=False, **SETTINGS)
    result = explore.compare({"my net": mine, "Table-1 net": "baseline"}, data=ds, runs_dir=runs_dir, **SETTINGS)
    table = result.table
    assert list(table["model"]) == ["my net", "Table-1 net"] and list(table["runs"]) == [2, 2]
    assert all("±" in cell for cell in table["test acc (%)"])
    assert [r.config.seed for r in result.runs["Table-1 net"]] == [r.config.seed for r in mine] == [0, 1]
    labels = [line.get_label() for line in result.figure.axes[0].get_lines()]
    assert labels == ["my net (validation)", "Table-1 net (validation)"]


NOTEBOOK_CELLS = [
    "import os\nos.environ['CIFARLIB_PROGRESS'] = '1'",
    "from torch import nn\nfrom cifarlib import data, explore",
    textwrap.dedent('''
        class CellNet(nn.Module):
            def __init__(self, in_channels=3, num_classes=10):
                super().__init__()
                self.conv = nn.Conv2d(in_channels, 6, 3, padding=1)
                self.head = nn.Linear(6, num_classes)

            def forward(self, x):
                return self.head(self.conv(x).mean((2, 3)))
    '''),
    "ds = data.synthetic(n_train=160, n_test=40, num_classes=4, size=8, seed=1)",
    "rec = explore.train(CellNet, like='baseline', data=ds, runs_dir=RUNS, epochs=1, batch_size=32, "
    "train_eval_size=40, device='cpu', precision='fp32')",
    "print(rec.dir.name, rec.cached)",
]


def run_notebook(cells: list[str], runs_dir) -> list:
    """Execute ``cells`` in a fresh Jupyter kernel (a kernel restart between calls); return the cells."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.replace("RUNS", repr(str(runs_dir))))
                                         for c in cells])
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    return nb.cells


def test_a_network_defined_in_a_notebook_cell_is_found_again_after_a_kernel_restart(tmp_path):
    first = run_notebook(NOTEBOOK_CELLS, tmp_path / "runs")
    name, cached = first[-1].outputs[0]["text"].split()
    assert name.startswith("cellnet-") and cached == "False"
    live = [o for o in first[-2].outputs if o["output_type"] == "display_data" and "image/png" in o["data"]]
    assert len(live) == 1  # one figure, redrawn in place (beside it: the progress bar)
    again = run_notebook(NOTEBOOK_CELLS, tmp_path / "runs")  # a new kernel: the cell is run again
    assert again[-1].outputs[0]["text"].split() == [name, "True"]
    assert not [o for o in again[-2].outputs if "image/png" in o.get("data", {})]  # read back: no empty figure
    edited = [c.replace("nn.Conv2d(in_channels, 6, 3", "nn.Conv2d(in_channels, 5, 3").replace("Linear(6", "Linear(5")
              for c in NOTEBOOK_CELLS]
    other, cached = run_notebook(edited, tmp_path / "runs")[-1].outputs[0]["text"].split()
    assert other != name and cached == "False"
    assert json.loads((tmp_path / "runs" / name / "config.json").read_text())["model"] == "cellnet"
    from cifarlib import runs

    elsewhere = runs.load_run(tmp_path / "runs" / name)  # this process never defined CellNet (the report's case)
    assert elsewhere.config.model == "cellnet" and elsewhere.finished
    with pytest.raises(CifarlibError, match="run that definition"):
        elsewhere.load_model()
