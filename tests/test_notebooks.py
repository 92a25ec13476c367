"""Every notebook in notebooks/: committed clean (hygiene), and runs top to bottom under nbval on the
quick profile.

nbval runs a notebook's saved defaults (profile "full"), so each test first makes a quick copy with
papermill's prepare-only mode (the same injection ``python -m cifarlib report`` does), then runs
``pytest --nbval-lax --nbval-current-env`` on the copy in a subprocess. Data roots come from the
environment (CIFARLIB_DATA, CIFARLIB_MNIST_DATA) or, without them, are small data sets of the same
layouts made by the ``quick_data`` fixture, so every notebook runs on any machine; figures and run
records go to a temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from cifarlib import paths

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TEMPLATES = sorted((ROOT / "notebooks" / "templates").glob("*.ipynb"))  # copied by users into notebooks/
CHECKED = NOTEBOOKS + TEMPLATES
NBVAL_TIMEOUT_S = 1800  # one notebook on the quick profile takes minutes at most on 2 CPU cores


def tagged(nb, tag: str) -> list:
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def read(path: Path):
    return nbformat.read(path, as_version=4)


# ---- hygiene --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    dirty = [i for i, c in enumerate(read(path).cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; strip them (nbstripout)"


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell_defining_profile(path):
    cells = tagged(read(path), "parameters")
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters'; tag exactly one"
    assert cells[0].cell_type == "code"
    assert "profile" in parameter_names(path), f"{path.name}: the parameters cell must define `profile`"


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.stem)
def test_notebook_starts_with_a_title(path):
    first = read(path).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), \
        f"{path.name}: the first cell must be markdown starting with '# <Part title>'"


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.stem)
def test_notebook_carries_no_papermill_metadata(path):
    nb = read(path)
    stale = "papermill" in nb.metadata or any("papermill" in c.metadata for c in nb.cells)
    assert not stale, f"{path.name}: papermill metadata was committed; strip it (nbstripout --extra-keys)"


# ---- nbval on the quick profile -------------------------------------------------------------------

def parameter_names(path: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(path)))


def quick_parameters(path: Path, roots: dict) -> dict:
    """profile=quick, plus the data roots (``quick_data``), for the parameters the notebook has."""
    wanted = {"profile": "quick", "data_root": roots.get(paths.ENV_DATA), "mnist_root": roots.get(paths.ENV_MNIST)}
    names = parameter_names(path)
    return {k: v for k, v in wanted.items() if v is not None and k in names}


def quick_copy(path: Path, folder: Path, roots: dict) -> Path:
    import papermill

    if len(tagged(read(path), "parameters")) != 1:
        pytest.fail(f"{path.name} has no single cell tagged 'parameters'; nbval cannot run it on the quick profile")
    copy = folder / path.name
    papermill.execute_notebook(str(path), str(copy), parameters=quick_parameters(path, roots), prepare_only=True,
                               kernel_name="python3", progress_bar=False)
    return copy


def kernel_env(figures: Path) -> dict:
    env = dict(os.environ, CIFARLIB_PROGRESS="0", TQDM_DISABLE="1")
    env[paths.ENV_FIGURES] = str(figures)  # never overwrite the report's figures with quick ones
    env[paths.ENV_RUNS] = str(figures.parent / "runs")  # quick runs of made-up data stay out of runs/
    return env


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.slow
@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.stem)
def test_notebook_runs_under_nbval_on_quick_profile(path, tmp_path, quick_data):
    copy = quick_copy(path, tmp_path, quick_data)
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
           "-q", "--rootdir", str(tmp_path), str(copy)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=kernel_env(tmp_path / "figures"), capture_output=True,
                          text=True, timeout=NBVAL_TIMEOUT_S)
    assert proc.returncode == 0, f"nbval failed on {path.name} (quick profile):\n{tail(proc.stdout + proc.stderr)}"


def test_notebook_names_follow_the_pattern_the_report_discovers():
    stray = [p.name for p in (ROOT / "notebooks").glob("*.ipynb") if not re.fullmatch(r"\d\d_\w+\.ipynb", p.name)]
    assert not stray, f"the report runs only notebooks named NN_<name>.ipynb; rename {stray}"
