"""``python -m cifarlib report``: parameters, notebook selection, failures, the merged report, the PDF.

Most tests run tiny stand-in notebooks (a heading, a parameters cell, a figure, a Markdown table) so
they take seconds; one slow test builds the real quick report from notebooks/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from cifarlib import cli, paths, report
from cifarlib.errors import CifarlibError

ROOT = Path(__file__).resolve().parent.parent
HAVE_TEX = shutil.which("xelatex") is not None and shutil.which("pandoc") is not None
NO_TEX = "xelatex/pandoc not installed (apt-get install texlive-xetex texlive-fonts-recommended " \
         "texlive-plain-generic pandoc)"

PARAMETERS = '''profile = "full"  # "quick" shrinks everything
seed = 0  # random seed
device = "auto"
runs_dir = None
figures_dir = None
points = 4  # points on the curve'''

FIGURE = '''import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(4, 2.5))
ax.plot(range(points), [i * i for i in range(points)])
ax.set_title("squares")'''

TABLE = '''import pandas as pd
from IPython.display import Markdown, display
display(Markdown(pd.DataFrame({"model": ["a", "b"], "accuracy (%)": [91.2, 92.5]}).to_markdown(index=False)))
print(f"profile={profile} seed={seed} points={points}")'''


def notebook(title: str, extra: list | None = None, parameters: bool = True):
    new_md, new_code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    cells = [new_md(f"# {title}\n\nWhat this part shows."), new_code(PARAMETERS),
             new_md("## 1(a) A curve\n\nThe curve is $y = x^2$."), new_code(FIGURE),
             new_md("## 1(b) A table"), new_code(TABLE), *(extra or [])]
    if parameters:
        cells[1].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def failing_notebook(title: str):
    cell = nbformat.v4.new_code_cell("x = 1\nraise ValueError('boom on purpose')")
    return notebook(title, [cell, nbformat.v4.new_markdown_cell("## 1(c) Never reached")])


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Run records and figures in tmp_path, no progress bars."""
    monkeypatch.setenv(paths.ENV_RUNS, str(tmp_path / "runs"))
    monkeypatch.setenv(paths.ENV_FIGURES, str(tmp_path / "figures"))
    monkeypatch.setenv(paths.ENV_PROGRESS, "0")
    return tmp_path


@pytest.fixture
def nb_dir(isolated):
    folder = isolated / "notebooks"
    folder.mkdir()
    nbformat.write(notebook("Alpha part"), folder / "01_alpha.ipynb")
    nbformat.write(failing_notebook("Beta part"), folder / "02_beta.ipynb")
    return folder


def tagged_source(path: Path, tag: str) -> str:
    nb = nbformat.read(path, as_version=4)
    return "\n".join(c.source for c in nb.cells if tag in c.metadata.get("tags", []))


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["report", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def pdf_text(path: Path) -> str:
    """The PDF's text with ligatures undone, hyphenated line ends joined and whitespace collapsed."""
    from pypdf import PdfReader

    text = "\n".join(page.extract_text() for page in PdfReader(path).pages)
    return " ".join(unicodedata.normalize("NFKC", text).replace("-\n", "").split())


def pdf_figures(path: Path) -> int:
    """Images and embedded vector figures (form XObjects: matplotlib PDFs) on all pages."""
    from pypdf import PdfReader

    count = 0
    for page in PdfReader(path).pages:
        xobjects = page.get("/Resources", {}).get("/XObject", {})
        count += sum(xobjects[k].get_object().get("/Subtype") in ("/Image", "/Form") for k in xobjects)
    return count


# ---- parameters and selection (no kernel) ---------------------------------------------------------

def test_param_values_are_read_as_literals():
    assert report.parse_param("03_improved:seeds=3") == ("03_improved", "seeds", 3)
    assert report.parse_param("seed=1") == ("all", "seed", 1)
    assert report.parse_param("lr=1e-3") == ("all", "lr", 0.001)
    assert report.parse_param("model=resnet18") == ("all", "model", "resnet18")
    assert report.parse_param("augment=true") == ("all", "augment", True)
    assert report.parse_param("data_root=null") == ("all", "data_root", None)
    with pytest.raises(CifarlibError, match="NAME=VALUE"):
        report.parse_param("seeds3")


def test_params_file_scopes_and_yaml_numbers(tmp_path):
    path = tmp_path / "p.yml"
    path.write_text("all: {seed: 1}\n03_improved: {seeds: 3, lr: 1e-3}\n")
    assert report.read_params_file(str(path)) == [("all", "seed", 1), ("03_improved", "seeds", 3),
                                                  ("03_improved", "lr", 0.001)]
    path.write_text("- just a list\n")
    with pytest.raises(CifarlibError, match="must map"):
        report.read_params_file(str(path))
    path.write_bytes(b"all: {seed: \xff}\n")  # not UTF-8
    with pytest.raises(CifarlibError, match="is not UTF-8 text"):
        report.read_params_file(str(path))


def test_only_passes_parameters_a_notebook_defines(nb_dir):
    notebooks = report.discover(nb_dir)
    extra = nb_dir / "03_gamma.ipynb"
    nb = notebook("Gamma")
    nb.cells[1].source = 'profile = "full"\nseeds = 1'
    nbformat.write(nb, extra)
    notebooks = report.discover(nb_dir)
    shared = {"profile": "quick", "device": "cpu", "data_root": "/d"}
    plan = report.plan_parameters(notebooks, notebooks, shared,
                                  [("all", "seed", 5), ("03", "seeds", 3), ("01_alpha", "points", 9)])
    assert plan[nb_dir / "01_alpha.ipynb"] == {"profile": "quick", "device": "cpu", "seed": 5, "points": 9}
    assert plan[extra] == {"profile": "quick", "seeds": 3}


def test_select_by_number_or_name(nb_dir):
    notebooks = report.discover(nb_dir)
    assert [p.stem for p in report.select(notebooks, "02,01_alpha")] == ["01_alpha", "02_beta"]
    assert report.select(notebooks, None) == notebooks


def test_planned_parts_come_from_the_notebooks_readme(tmp_path):
    (tmp_path / "README.md").write_text("| `01_theory.ipynb` | x |\n| `02_baseline.ipynb` | y |\n")
    assert report.planned_parts(tmp_path) == ["01_theory", "02_baseline"]


# ---- CLI errors: exit 2 with one line -------------------------------------------------------------

def assert_one_line_error(code, err, *words):
    assert code == 2, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    for word in words:
        assert word in err


def test_unknown_notebook_in_only(nb_dir, capsys):
    code, _, err = run_cli(capsys, "--notebooks", nb_dir, "--only", "01,07")
    assert_one_line_error(code, err, "'07'", "--only", "01_alpha, 02_beta")


def test_only_that_names_no_notebook(nb_dir, capsys):
    code, _, err = run_cli(capsys, "--notebooks", nb_dir, "--only", ",")
    assert_one_line_error(code, err, "--only ','", "names no notebook")


def test_a_notebook_that_is_not_json_is_named(nb_dir, capsys):
    (nb_dir / "03_broken.ipynb").write_text("{ this is not json")
    code, _, err = run_cli(capsys, "--notebooks", nb_dir)
    assert_one_line_error(code, err, "03_broken.ipynb", "not a readable notebook")


def test_a_second_build_into_the_same_folder_stops_at_once(nb_dir, isolated, capsys):
    import fcntl

    out = isolated / "out"
    out.mkdir()
    with open(out / ".report.lock", "a+") as held:  # a build in progress
        fcntl.flock(held, fcntl.LOCK_EX)
        code, _, err = run_cli(capsys, "--notebooks", nb_dir, "--only", "01", "--out", out, "--no-pdf")
    assert_one_line_error(code, err, "another report build is writing to", "--out")
    assert not (out / "report.html").exists()


def test_a_full_disk_during_the_export_is_one_line_and_keeps_no_partial_file(nb_dir, isolated, capsys, monkeypatch):
    import errno

    real_fsync = os.fsync

    def full_for_the_report(fd):
        if "report.html" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_for_the_report)
    out = isolated / "out"
    code, _, err = run_cli(capsys, "--notebooks", nb_dir, "--only", "01", "--out", out, "--no-pdf")
    assert_one_line_error(code, err, str(out / "report.html"), "No space left on device")
    assert not list(out.glob("*report.html*"))


def test_unknown_executor_fails_before_anything_runs(nb_dir, capsys):
    code, _, err = run_cli(capsys, "--notebooks", nb_dir, "--executor", "slurm")
    assert_one_line_error(code, err, "unknown executor 'slurm'")


def test_unknown_parameter_for_a_notebook(nb_dir, capsys):
    code, _, err = run_cli(capsys, "--notebooks", nb_dir, "--param", "01_alpha:epochs=3")
    assert_one_line_error(code, err, "01_alpha", "'epochs'", "points")
    code, _, err = run_cli(capsys, "--notebooks", nb_dir, "--param", "epochs=3")
    assert_one_line_error(code, err, "'epochs'")


def test_unknown_notebook_in_param(nb_dir, capsys):
    code, _, err = run_cli(capsys, "--notebooks", nb_dir, "--param", "09:seed=3")
    assert_one_line_error(code, err, "'09'", "--param")


def test_unwritable_output_folder(nb_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(capsys, "--notebooks", nb_dir, "--out", blocker / "report")
    assert_one_line_error(code, err, "cannot write to output folder", "--out")


def test_notebook_without_parameters_cell(isolated, capsys):
    folder = isolated / "nbs"
    folder.mkdir()
    nbformat.write(notebook("No params", parameters=False), folder / "01_x.ipynb")
    code, _, err = run_cli(capsys, "--notebooks", folder)
    assert_one_line_error(code, err, "01_x.ipynb", "parameters")


def test_no_notebooks(isolated, capsys):
    code, _, err = run_cli(capsys, "--notebooks", isolated)
    assert_one_line_error(code, err, "no notebooks")


# ---- running: failures ----------------------------------------------------------------------------

def test_failing_notebook_is_named_with_its_cell(nb_dir, isolated, capsys):
    code, out, err = run_cli(capsys, "--notebooks", nb_dir, "--out", isolated / "out")
    assert code == 1
    assert "02_beta" in err and "cell 6" in err and "'x = 1'" in err and "ValueError: boom on purpose" in err
    assert "01_alpha" in out and " s  ok" in out  # the wall time of the part that ran
    assert (isolated / "out" / "build" / "02_beta.ipynb").is_file()  # the executed copy, with its error
    assert not (isolated / "out" / "report.html").exists()


@pytest.fixture(scope="module")
def failed_build(tmp_path_factory):
    """One build of [01_alpha ok, 02_beta failing] with --continue-on-error, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("failed_build")
    folder = tmp / "notebooks"
    folder.mkdir()
    nbformat.write(notebook("Alpha part"), folder / "01_alpha.ipynb")
    nbformat.write(failing_notebook("Beta part"), folder / "02_beta.ipynb")
    env = dict(os.environ, **{paths.ENV_RUNS: str(tmp / "runs"), paths.ENV_FIGURES: str(tmp / "figures")})
    cmd = [sys.executable, "-m", "cifarlib", "report", "--notebooks", str(folder), "--out", str(tmp / "out"),
           "--profile", "quick", "--param", "01:points=7", "--continue-on-error"]
    if not HAVE_TEX:
        cmd.append("--no-pdf")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return SimpleNamespace(proc=proc, out=tmp / "out")


def test_continue_on_error_builds_and_marks_the_failed_part(failed_build):
    assert failed_build.proc.returncode == 1, failed_build.proc.stderr
    html = (failed_build.out / "report.html").read_text()
    assert "Part failed." in html and "ValueError: boom on purpose" in html
    assert "Never reached" not in html  # the part stops where it failed


def test_html_has_title_contents_page_breaks_and_captions(failed_build):
    html = (failed_build.out / "report.html").read_text()
    assert '<h1 class="cifarlib-title">' in html and '<nav class="cifarlib-toc">' in html  # not escaped
    assert html.count('<div class="cifarlib-newpage">') == 3  # before each part and the provenance
    assert '<a href="#1(a)-A-curve">' in html and 'id="1(a)-A-curve"' in html
    assert "<strong>Figure 1:</strong> 1(a) A curve" in html
    assert "\\newpage" not in html and "\\clearpage" not in html  # LaTeX-only cells stay out


def test_parameters_reach_the_executed_notebooks(failed_build):
    injected = tagged_source(failed_build.out / "build" / "01_alpha.ipynb", "injected-parameters")
    assert 'profile = "quick"' in injected and "points = 7" in injected and 'device = "auto"' in injected
    assert "points=7" in (failed_build.out / "report.html").read_text()  # the print in the table cell


def test_merged_notebook_hides_code_and_has_unique_ids(failed_build):
    nb = nbformat.read(failed_build.out / "build" / "report.ipynb", as_version=4)
    ids = [c.id for c in nb.cells]
    assert len(ids) == len(set(ids))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs for c in code)  # cells without output (imports, parameters) are gone
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    headings = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("# ")]
    assert headings == ["# 1 Alpha part", "# 2 Beta part", "# 3 Provenance"]
    assert not any("Text(" in str(c.outputs) for c in code)  # echoed plot objects are dropped


@pytest.mark.skipif(not HAVE_TEX, reason=NO_TEX)
def test_pdf_has_sections_figures_and_failure_box(failed_build):
    text = pdf_text(failed_build.out / "report.pdf")
    for heading in ("Contents", "1 Alpha part", "1(a) A curve", "1(b) A table", "2 Beta part", "3 Provenance",
                    "Figure 1", "Part failed", "boom on purpose", "accuracy (%)"):
        assert heading in text, heading
    assert pdf_figures(failed_build.out / "report.pdf") >= 2


@pytest.mark.skipif(not HAVE_TEX, reason=NO_TEX)
def test_greek_letters_typed_as_text_reach_the_pdf(tmp_path):
    """Latin Modern's text font has no Greek: without the template's mapping to math symbols, xelatex
    drops γ and β from prose and table cells with only a line in its log."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## The scale γ\n\nProse: the scale γ and the shift β."),  # a heading: a bookmark
                nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output(
                    "display_data", data={"text/markdown": "| step | value |\n|---|---|\n| y = γ·x + β | 1 |"})])]
    report.export_pdf(nb, tmp_path / "greek.pdf", tmp_path)
    text = pdf_text(tmp_path / "greek.pdf")
    assert "scale γ and the shift β" in text and "y = γ·x + β" in text and "The scale γ" in text, text


def test_missing_tex_is_one_line_and_html_is_still_written(nb_dir, isolated, capsys, monkeypatch):
    which = shutil.which
    monkeypatch.setattr(report.shutil, "which", lambda tool: None if tool == "xelatex" else which(tool))
    code, _, err = run_cli(capsys, "--notebooks", nb_dir, "--only", "01", "--out", isolated / "out")
    assert_one_line_error(code, err, "xelatex", report.TEX_INSTALL)
    assert (isolated / "out" / "report.html").is_file()
    assert not (isolated / "out" / "report.pdf").exists()


def test_an_old_pdf_never_stays_beside_a_new_html(nb_dir, isolated, capsys, monkeypatch):
    out = isolated / "out"
    (out / "build").mkdir(parents=True)
    (out / "report.pdf").write_text("the PDF of an earlier build")
    code, _, _ = run_cli(capsys, "--notebooks", nb_dir, "--only", "01", "--out", out, "--no-pdf")
    assert code == 0 and (out / "report.html").is_file() and not (out / "report.pdf").exists()
    assert (out / "build" / "previous" / "report.pdf").read_text() == "the PDF of an earlier build"


# ---- assembly details (no kernel) -----------------------------------------------------------------

def test_provenance_row_from_a_run_record():
    rec = SimpleNamespace(dir=Path("runs/baseline-3f2a9c01de"), config={"name": "baseline", "seed": 2},
                          metrics={"wall_s": 12.5}, env={"git_commit": "0123456789abcdef", "git_dirty": True,
                                                         "torch": "2.5.1", "device": "cuda:0", "wall_s": 61.25})
    assert report.run_row(rec) == ["`baseline`", "`3f2a9c01de`", 2, "0123456789*", "2.5.1", "cuda:0", "61.2 s"]
    rec.env.update(git_dirty=False)
    assert report.run_row(rec)[3] == "0123456789"
    rec.env.pop("git_commit")
    assert report.run_row(rec)[3] == "–"


def test_figures_get_numbered_captions():
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    fig = nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})
    given = code("", outputs=[fig])
    given.metadata["caption"] = "Loss against epochs"
    cells = [md("## 2(a) Curves"), code("", outputs=[nbformat.from_dict(dict(fig))]), given]
    assert report.number_floats(cells) == []
    meta = [c.outputs[0].metadata for c in cells[1:]]
    assert [(m["figure_number"], m["caption"]) for m in meta] == [(1, "2(a) Curves"), (2, "Loss against epochs")]


def _figure(label: str, caption: str):
    return nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"},
                                  metadata={"cifarlib": {"label": label, "caption": caption}})


def _table(label: str, caption: str):
    return nbformat.v4.new_output("display_data", data={"text/markdown": f"*{caption}*\n\n| a |\n|---|\n| 1 |"},
                                  metadata={"cifarlib": {"label": label, "caption": caption}})


def test_figures_and_tables_are_numbered_apart_and_citations_resolve():
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    text = md("@fig:loss and @fig:acc rest on @tab:metrics.")
    cells = [text, code("", outputs=[_table("metrics", "Final metrics"), _figure("loss", "Loss per epoch")]),
             code("", outputs=[_figure("acc", "Accuracy per epoch")])]
    assert report.number_floats(cells) == []
    assert text.source == "Figure\u00a01 and Figure\u00a02 rest on Table\u00a01."  # never split at a line end
    table = cells[1].outputs[0].data["text/markdown"]
    assert table.startswith("**Table 1:** Final metrics\n\n| a |") and "*Final metrics*" not in table
    assert [cells[1].outputs[1].metadata["figure_number"], cells[2].outputs[0].metadata["figure_number"]] == [1, 2]
    assert cells[2].outputs[0].metadata["caption"] == "Accuracy per epoch"


def test_a_citation_of_a_missing_label_is_reported():
    cells = [nbformat.v4.new_markdown_cell("see @fig:nowhere"),
             nbformat.v4.new_code_cell("", outputs=[_figure("here", "A figure")])]
    assert report.number_floats(cells) == ["@fig:nowhere"]
    assert cells[0].source == "see Figure\u00a0?"


def test_a_long_part_shows_its_running_time_on_a_terminal_and_nothing_in_a_log():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen, log = Terminal(), io.StringIO()
    for stream in (screen, log):
        with report.ticking("  04_transfer  ", stream=stream, every=0.01):
            waited = time.perf_counter()
            while "running" not in screen.getvalue() and time.perf_counter() - waited < 10:
                time.sleep(0.01)  # until the clock has been drawn once (a busy machine may be slow to run it)
    assert "\r\x1b[K  04_transfer  running 0:00:00" in screen.getvalue()
    assert screen.getvalue().endswith("\r\x1b[K  04_transfer  ")  # the result goes right after the name
    assert log.getvalue() == ""


def test_a_number_stays_on_one_line_with_its_percent_sign_and_its_interval_but_math_and_code_keep_their_spaces():
    text = "ends at 98.18 % after 8 epochs; 85.49 ± 0.27 % over 3 seeds, 5 of 10"
    assert report.bind_numbers(text) == \
        "ends at 98.18\u00a0% after 8 epochs; 85.49\u00a0±\u00a00.27\u00a0% over 3 seeds, 5 of 10"
    kept = "$3 ± 1$ and `x = 5 % 3` and\n```\ny = 2 % 1\n```\n$$4 ± 2$$"
    assert report.bind_numbers(kept + " then 7 %") == kept + " then 7\u00a0%"


def test_the_summary_and_the_body_get_unbreakable_numbers(tmp_path):
    part = report.Part(source=tmp_path / "01_alpha.ipynb")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Alpha\n\nIt ends at 85.49 ± 0.27 %."),
                nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output(
                    "display_data", data={"text/markdown": "**1(a), accuracy:** 72.0 %"},
                    metadata={"cifarlib": {"headline": {"item": "1(a)", "result": "accuracy", "value": "72.0 %"}}})])]
    part.executed = tmp_path / "01_alpha.ipynb"
    nbformat.write(nb, part.executed)
    info = {"title": "T", "date": "today", "profile": "full", "author": "", "course": "", "command": "c",
            "commit": "abc", "device": "cpu", "torch": "2"}
    merged = report.assemble([part], info, [], "none")
    text = "\n".join(c.source for c in merged.cells if c.cell_type == "markdown")
    assert "85.49\u00a0±\u00a00.27\u00a0%" in text and "72.0\u00a0%" in text and "72.0 %" not in text


def test_table_title_becomes_the_pandoc_caption_so_it_stays_with_its_table():
    out = report.caption_tables("**Table 4:** Final metrics\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert out == "| a | b |\n|---|---|\n| 1 | 2 |\n\nTable: **Table 4:** Final metrics\n"
    assert report.caption_tables("no table here") == "no table here"


def test_title_fields_go_to_the_title_page_not_the_notebooks(nb_dir, isolated, monkeypatch):
    seen = {}
    monkeypatch.setattr(report, "run_notebooks", lambda parts, build, keep, executor=None: seen.update(params=[p.params for p in parts]))
    monkeypatch.setattr(report, "build_report", lambda parts, args, argv, out, nb: seen.update(info=report.build_info(args, argv)))
    report.cli(["--notebooks", str(nb_dir), "--out", str(isolated / "out"), "--no-pdf",
                "--param", "author=A. Student", "--param", "course=TDT4265"])
    assert seen["info"]["author"] == "A. Student" and seen["info"]["course"] == "TDT4265"
    assert all("author" not in p and "course" not in p for p in seen["params"])


def test_quick_build_says_on_its_title_page_that_it_is_a_smoke_run():
    info = {"title": "T", "course": "C", "author": "A", "date": "today", "profile": "quick"}
    latex = "".join(c.source for c in report.title_cells(info, []) if c.metadata.get("raw_mimetype") == "text/latex")
    assert "Smoke run" in latex and "not results" in latex and "A" in latex and "C" in latex
    full = "".join(c.source for c in report.title_cells({**info, "profile": "full"}, []))
    assert "Smoke run" not in full


# ---- the real report ------------------------------------------------------------------------------

REAL = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.slow
@pytest.mark.skipif(not REAL, reason="no notebooks in notebooks/ yet")
def test_real_quick_report(tmp_path, quick_data):
    """The real notebooks on the quick profile (real data where the variables point at it, else small
    data sets of the same layouts): PDF with every part's heading and figures, and HTML; a body
    written for its reader, numbered and captioned floats, legible figures."""
    out = tmp_path / "report"
    env = dict(os.environ, **quick_data, **{paths.ENV_FIGURES: str(tmp_path / "figures"),
                                            paths.ENV_RUNS: str(tmp_path / "runs")})
    cmd = [sys.executable, "-m", "cifarlib", "report", "--profile", "quick", "--out", str(out)]
    proc = subprocess.run(cmd + ([] if HAVE_TEX else ["--no-pdf"]), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "report.html").stat().st_size > 10_000
    if not HAVE_TEX:
        pytest.skip(f"PDF checks skipped: {NO_TEX}")
    text = pdf_text(out / "report.pdf")
    for number, path in enumerate(REAL, 1):
        title = report.part_title(path)
        assert f"{number} {title}" in text, f"section heading of {path.name} missing from the PDF"
    assert "Provenance" in text
    assert pdf_figures(out / "report.pdf") >= 1
    body = text[:text.rindex("Provenance")]  # the appendix may name commands, commits and runs
    leaks = sorted({m.group(0) for pattern in NEVER_IN_BODY for m in re.finditer(pattern, body)})
    assert not leaks, f"the report's body speaks of things its reader cannot see: {leaks}"
    assert "Figure ?" not in body and "Table ?" not in body
    assert_floats_are_numbered_captioned_and_legible(nbformat.read(out / "build" / "report.ipynb", as_version=4))


# What the body of the report never says: code, files, tooling, parameters, development history.
NEVER_IN_BODY = [r"cifarlib", r"[Nn]otebook", r"papermill", r"nbconvert", r"runs/", r"tests?/", r"test_\w+",
                 r"\w*Error:", r"Traceback", r"\b(the|this) cell\b", r"\bcell (below|above)", r"\bTrue\b", r"\bFalse\b",
                 r"\bprofile\b", r"run record", r"\b\w+_\w+ ?=", r"ablation_epochs", r"eval_every_steps",
                 r"weights_path", r"data_root", r"runs_dir", r"model_kw", r"norm_lr_scale", r"improved_[ab]",
                 r"mnist_(lenet|small|main)", r"garbled", r"OCR", r"reports? 00\d", r"development", r"between builds",
                 r"->", r"\+-", r"\bpart [2-5]\b", r"WARNING", r"DISAGREE", r"\b(bf16|fp32|fp16)\b"]


def assert_floats_are_numbered_captioned_and_legible(nb) -> None:
    """Every figure carries its own caption and label and no print problem; every table a caption;
    no two captions alike; no section label twice."""
    figures, captions = [], []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("cifarlib")
            if any(t in output.get("data", {}) for t in report.IMAGE_TYPES):
                figures.append(meta)
                assert meta and meta.get("caption") and meta.get("label"), f"a figure without its caption: {meta}"
                assert meta["print_problems"] == [], f"{meta['label']}: {meta['print_problems']}"
            if meta:
                captions.append(meta["caption"])
    assert figures, "no figures in the report"
    repeated = sorted({c for c in captions if captions.count(c) > 1})
    assert not repeated, f"captions used twice: {repeated}"
    headings = [h for c in nb.cells if c.cell_type == "markdown" for h in re.findall(r"^##? +(.+)$", c.source, re.M)]
    twice = sorted({h for h in headings if headings.count(h) > 1})
    assert not twice, f"section headings used twice: {twice}"


def longtable(header: list[str], rows: list[list[str]], pandoc3: bool = False, caption: str = "") -> str:
    """A table as pandoc 2 or 3 writes a pipe table: natural-width columns, text left, numbers right."""
    spec = "@{}" + "".join("r" if cell[:1].isdigit() else "l" for cell in rows[0]) + "@{}"
    rule = "\\noalign{}" if pandoc3 else ""
    head = [f"\\toprule{rule}", " & ".join(header) + " \\\\", f"\\midrule{rule}"]
    body = [" & ".join(r) + " \\\\" for r in rows]
    lines = [f"\\caption{{{caption}}}\\tabularnewline"] if caption else []
    lines += head + (["\\endfirsthead"] + head if caption else []) + ["\\endhead"]
    if pandoc3:
        lines += [f"\\bottomrule{rule}", "\\endlastfoot", *body]
    else:
        lines += [*body, "\\bottomrule"]
    return "\n".join([f"\\begin{{longtable}}[]{{{spec}}}", *lines, "\\end{longtable}"])


def test_a_short_table_that_fits_is_kept_on_one_page_and_a_long_one_breaks():
    short = longtable(["model", "acc"], [["a", "91.2"]])
    latex = report.fit_tables(short)
    assert "longtable" not in latex and "\\begin{tabular}{@{}lr@{}}" in latex and "a & 91.2 \\\\" in latex
    long = longtable(["model", "acc"], [["a", "91.2"]] * (report.KEEP_ROWS + 1))
    assert report.fit_tables("x\n" + long + "\ny") == "x\n" + long + "\ny"


def test_a_long_text_column_wraps_within_the_width():
    words = "the conv biases are left out, so the count is short by the number of filters, 224 in all"
    for rows in (3, report.KEEP_ROWS + 1):
        latex = report.fit_tables(longtable(["total", "mistake", "explanation"], [["390186", "no bias", words]] * rows))
        widths = [float(w) for w in re.findall(r"p\{([\d.]+)em\}", latex)]
        assert len(widths) == 3 and widths[2] > widths[0] >= 6 * report.CHAR_EM  # numbers keep their width
        assert sum(widths) <= report.TEXT_WIDTH_PT / 10  # the text width in em of small (10 pt) type
    assert latex.startswith("{\\small\n\\begin{longtable}")  # a long one still breaks across pages


@pytest.mark.parametrize("pandoc3", [False, True], ids=["pandoc2", "pandoc3"])
def test_a_table_too_wide_even_wrapped_is_boxed_and_scaled(pandoc3):
    header = [f"metric{i}" for i in range(16)]
    table = longtable(header, [["0.123456"] * 16, ["0.654321"] * 16], pandoc3=pandoc3, caption="results")
    latex = report.fit_tables("before\n" + table + "\nafter")
    assert "longtable" not in latex and "\\begin{adjustbox}{max width=\\linewidth}" in latex
    assert latex.startswith("before\n") and latex.endswith("\nafter")
    body = latex[latex.index("\\begin{tabular}"):latex.index("\\end{tabular}")].splitlines()[1:]
    assert [ln.split("\\noalign")[0][:11] for ln in body] == \
        ["\\toprule", "metric0 & m", "\\midrule", "0.123456 & ", "0.654321 & ", "\\bottomrule"]
    assert "\\captionof{table}{results}" in latex


def test_tables_pandoc_wraps_stay_as_they_are():
    wrapped = "\\begin{longtable}[]{@{}\n  >{\\raggedright\\arraybackslash}p{(\\columnwidth) * \\real{0.5}}@{}}\n" \
              "\\toprule\na \\\\\n\\bottomrule\n\\end{longtable}"
    assert report.fit_tables(wrapped) == wrapped


def test_tables_with_rows_over_several_lines_stay_as_they_are():
    split = longtable(["setting", "value"], [["command", "python -m cifarlib report"]]).replace(" & ", " &\n")
    assert report.fit_tables(split) == split


def test_headlines_move_into_a_summary_that_names_their_section():
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    line = nbformat.v4.new_output("display_data", data={"text/markdown": "**Task 1(b), test accuracy:** 61.0 %"},
                                  metadata={"cifarlib": {"headline": {"item": "Task 1(b)", "result": "test accuracy",
                                                                      "value": "61.0 %"}}})
    other = _figure("loss", "Loss per epoch")
    cells = [md("# 1 Theory"), md("# 2 Task 1: baseline"), code("", outputs=[line, other])]
    summary = report.summary_cells(cells)
    text = summary[-1].source
    assert text.startswith("# Summary of results") and "| Task 1(b) | test accuracy | 61.0 % | Section 2 |" in text
    assert cells[2].outputs == [other]  # taken out of the body
    assert report.summary_cells([md("# 1 Theory")]) == []


# ---- the preflight: what every part needs, checked before anything runs --------------------------

@pytest.fixture
def offline_machine(tmp_path, isolated, monkeypatch, stand_in_notebook):
    """No data set at its default place, no ImageNet weights cached, no server reachable; notebook
    runs and the export are recorded, not done."""
    import torch

    from cifarlib import data

    monkeypatch.setenv(paths.ENV_CACHE, str(tmp_path / "cache"))
    for env in (paths.ENV_DATA, paths.ENV_MNIST, paths.ENV_WEIGHTS):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    asked = []
    monkeypatch.setattr(data.sources, "probe", lambda url, timeout=None: asked.append(url) or "offline (stand-in)")
    folder = tmp_path / "nbs"
    folder.mkdir()
    stand_in_notebook(folder / "01_plain.ipynb", 'profile = "full"\nseed = 0')
    stand_in_notebook(folder / "02_cifar.ipynb", 'profile = "full"\ndata_root = None')
    stand_in_notebook(folder / "03_transfer.ipynb", 'profile = "full"\ndata_root = None\npretrained = None\nweights_path = None')
    ran = []
    monkeypatch.setattr(report, "run_notebooks", lambda parts, build, keep, executor=None: ran.append(
        [p.name for p in parts if not p.error]))
    monkeypatch.setattr(report, "build_report", lambda parts, *a: ran.append([p.name for p in parts if p.error]))
    return SimpleNamespace(folder=folder, ran=ran, asked=asked, out=tmp_path / "out")


def test_preflight_lists_every_missing_input_with_its_remedy_before_anything_runs(offline_machine, capsys):
    from cifarlib.cli import main

    m = offline_machine
    code = main(["report", "--notebooks", str(m.folder), "--out", str(m.out)])
    err = capsys.readouterr().err
    assert code == 2 and m.ran == [] and not m.out.exists()
    assert err.startswith("error: 2 problems stop this build before anything runs")
    assert "\n  02_cifar, 03_transfer: CIFAR-10 is not in" in err  # one line per problem, naming the parts
    assert "\n  03_transfer: no ImageNet weights for ResNet18" in err and "pretrained=False" in err
    assert len(m.asked) == 2  # the data server once, the weights server once


def test_preflight_needs_no_weights_for_a_transfer_run_that_is_finished(offline_machine, capsys, monkeypatch,
                                                                      stand_in_notebook):
    from types import SimpleNamespace

    from cifarlib import data, runs
    from cifarlib.cli import main

    m = offline_machine
    (m.folder / "01_plain.ipynb").unlink()
    (m.folder / "02_cifar.ipynb").unlink()
    stand_in_notebook(m.folder / "03_transfer.ipynb", 'profile = "full"\ndata_root = None\npretrained = None\n'
                                                      'weights_path = None\nseed = 7\nepochs = 3\ndevice = "cpu"')
    monkeypatch.setattr(data, "check_source", lambda name, root=None: f"{name}: stand-in")
    asked = []

    def finished(cfg, data=None, data_root=None, runs_dir=None):
        asked.append(cfg)
        return SimpleNamespace(dir=Path("runs") / "transfer_resnet18-0123456789")

    monkeypatch.setattr(runs, "find_finished", finished)
    code = main(["report", "--notebooks", str(m.folder), "--out", str(m.out), "--param", "03_transfer:seed=4"])
    out = capsys.readouterr().out
    assert code == 0 and m.ran == [["03_transfer"], []]
    assert "weights: not needed, the transfer run is finished (runs/transfer_resnet18-0123456789)" in out
    [cfg] = asked
    assert cfg.model_kw["pretrained"] is True and cfg.seed == 4  # the build's parameter wins
    assert cfg.epochs == 3 and cfg.device == "auto"  # the notebook's default; the report's --device default


def test_relative_paths_are_taken_from_where_the_command_runs_not_the_notebook_folder(tmp_path, monkeypatch,
                                                                                     stand_in_notebook):
    folder = tmp_path / "nbs"
    folder.mkdir()
    stand_in_notebook(folder / "01_x.ipynb", 'profile = "full"\nweights_path = None\nimage_file = None\nseeds = 3')
    monkeypatch.chdir(tmp_path)
    plan = report.plan_parameters([folder / "01_x.ipynb"], [folder / "01_x.ipynb"], {},
                                  [("all", "weights_path", "w/resnet18.pth"), ("all", "image_file", "~/cat.png"),
                                   ("all", "seeds", 3)])
    values = plan[folder / "01_x.ipynb"]
    assert values["weights_path"] == str(tmp_path / "w" / "resnet18.pth")
    assert values["image_file"] == str(Path("~/cat.png").expanduser()) and values["seeds"] == 3
    monkeypatch.setenv(paths.ENV_DATA, "data/cifar")
    monkeypatch.setenv(paths.ENV_CACHE, "/abs/cache")
    env = report.absolute_path_variables()
    assert env[paths.ENV_DATA] == str(tmp_path / "data" / "cifar") and paths.ENV_CACHE not in env


def test_continue_on_error_skips_the_parts_that_cannot_run_and_builds_the_rest(offline_machine, tmp_path, capsys):
    from cifarlib.cli import main

    m = offline_machine
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"not checked here, only present")
    code = main(["report", "--notebooks", str(m.folder), "--out", str(m.out), "--continue-on-error",
                 "--param", f"03_transfer:weights_path={weights}"])
    out = capsys.readouterr().out
    assert code == 1 and m.ran == [["01_plain"], ["02_cifar", "03_transfer"]]
    assert "02_cifar: will not be built: CIFAR-10 is not in" in out
    assert f"weights: ImageNet weights from {weights}" in out


def test_a_part_without_imagenet_weights_needs_none(offline_machine, capsys):
    from cifarlib.cli import main

    m = offline_machine
    main(["report", "--notebooks", str(m.folder), "--out", str(m.out), "--only", "03",
          "--param", "03_transfer:pretrained=False"])
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR-10 is not in") and "ImageNet" not in err


@pytest.mark.parametrize("name", ["Model A", "ResNet18 transfer"])
def test_a_short_name_column_is_never_narrower_than_the_name(name):
    header, rows = ["model", "a long header that wraps"] + ["value"] * 9, [[name] + ["0.123456789"] * 10]
    latex = report.fit_tables(longtable(header, rows))
    first = re.search(r"p\{([\d.]+)em\}", latex)
    assert first and float(first[1]) >= len(name) * report.CHAR_EM + 0.5


def test_a_table_of_means_and_deviations_is_set_in_script_size_not_scaled_below_it():
    header = ["model", "runs", "train loss", "train acc (%)", "validation loss", "validation acc (%)", "test loss",
              "test acc (%)"]
    row = ["Model A", "3", "0.358~±~0.002", "92.10~±~0.23", "0.489~±~0.005", "85.91~±~0.29", "0.501~±~0.003",
           "85.49~±~0.27"]
    latex = report.fit_tables(longtable(header, [row, row], caption="Final metrics"))
    assert "\\centering\\scriptsize\n" in latex and "\\begin{tabular}{@{}>" in latex
    widths = [float(w) for w in re.findall(r"p\{([\d.]+)em\}", latex)]
    assert (sum(widths) + report.GAP_EM * (len(widths) - 1)) * 8 <= report.TEXT_WIDTH_PT  # at 8 pt, gaps too: no scaling


def test_headers_wrap_before_the_type_shrinks():
    """Task 1(b)'s one-row table: its headers are longer than its numbers; wrapped, they fit in small
    type (they had been kept whole, which shrank the whole table to script size)."""
    header = ["model", "train loss", "train acc (%)", "validation loss", "validation acc (%)", "test loss",
              "test acc (%)"]
    latex = report.fit_tables(longtable(header, [["Table-1 baseline", "0.482", "82.94", "0.823", "72.72", "0.823",
                                                  "71.96"]], caption="Final numbers"))  # pandoc: header twice
    assert "\\centering\\small\n" in latex, latex.splitlines()[1]


def test_a_failed_part_excuses_only_citations_of_its_own_figures(tmp_path):
    import unittest.mock as mock

    info = {"title": "T", "date": "d", "profile": "full", "command": "c", "commit": "x", "device": "cpu", "torch": "2"}
    for name in ("01_x", "02_y"):
        nbformat.write(notebook(f"Part {name}"), tmp_path / f"{name}.ipynb")
    ok = report.Part(tmp_path / "01_x.ipynb")
    failed = report.Part(tmp_path / "02_y.ipynb", error="cell 3 raised ValueError")
    cells = {"01_x": [nbformat.v4.new_markdown_cell("see @fig:02_curves")],  # a figure the failed part never drew
             "02_y": [nbformat.v4.new_markdown_cell("# y")]}
    with mock.patch.object(report, "part_cells", side_effect=lambda part, number: cells[part.name]):
        report.assemble([ok, failed], info, [], "")
        cells["01_x"] = [nbformat.v4.new_markdown_cell("see @fig:01_typo")]  # a typo in a part that ran
        with pytest.raises(CifarlibError, match="@fig:01_typo"):
            report.assemble([ok, failed], info, [], "")


def test_a_citation_without_its_figure_fails_the_build_and_labels_are_unique():
    cells = [nbformat.v4.new_markdown_cell("see @fig:gone")]
    part = report.Part(Path("01_x.ipynb"))
    import unittest.mock as mock

    with mock.patch.object(report, "part_cells", return_value=cells):
        with pytest.raises(CifarlibError, match="@fig:gone"):
            report.assemble([part], {"title": "T", "date": "d", "profile": "full", "command": "c", "commit": "x",
                                     "device": "cpu", "torch": "2"}, [], "")
    twice = [nbformat.v4.new_code_cell("", outputs=[_figure("same", "One"), _figure("same", "Two")])]
    with pytest.raises(CifarlibError, match="label 'same'"):
        report.number_floats(twice)
