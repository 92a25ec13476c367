"""``python -m cifarlib report``: run the notebooks, merge them into one report, export PDF and HTML.

    notebooks/NN_*.ipynb --papermill--> report/build/NN_*.ipynb --merge--> report/build/report.ipynb
                         --nbconvert--> report/report.pdf (LaTeX route, xelatex) + report/report.html

The notebooks are discovered (``notebooks/[0-9][0-9]_*.ipynb``), never listed here. Each gets the
shared parameters its ``parameters`` cell defines (profile, data roots, device, seed, runs/figures
folders) plus per-notebook overrides (``--param 03_improved:seeds=3`` or a YAML ``--params-file``).
The report hides code, numbers the parts, starts each on a new page, captions figures and ends with
a provenance table built from the run records. Heavy imports (papermill, nbconvert, torch) happen
inside the functions that need them, so ``import cifarlib.report`` stays cheap.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import datetime
import html
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import yaml

from cifarlib import atomic, paths, provenance
from cifarlib.errors import CifarlibError, OneLineParser, first_line

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
KERNEL_ENV = {paths.ENV_PROGRESS: "0", "TQDM_DISABLE": "1"}  # no progress bars in the PDF
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]  # console noise at start-up and shutdown; cell errors still surface
KERNEL = "python3"
# Saves ~2.5 s per notebook: papermill writes the output once at the end (and on an error) instead of
# after every cell, and the kernel is stopped at once when its last cell is done, not asked to exit.
FAST_PAPERMILL = {"request_save_on_cell_execute": False, "shutdown_kernel": "immediate"}
ENV_RUN_LOG = paths.ENV_RUN_LOG  # cifarlib.runs appends each run folder a kernel trains or loads here
RUN_LOG = "runs-used.txt"  # in <out>/build/: the provenance section lists these runs
TITLE = "CNN experiments on CIFAR-10 and MNIST"
COURSE = "TDT4265 Assignment 3 and Technion 046746 Homework 2"
# Title-page fields set like parameters (``--param author="A. Student"``, or under ``all:``/``report:`` in
# ``--params-file``); they go to the title page, not to the notebooks.
TITLE_FIELDS = ("title", "author", "course")
TEX_INSTALL = "apt-get install texlive-xetex texlive-fonts-recommended texlive-plain-generic pandoc"
TEMPLATES = Path(__file__).resolve().parent / "templates"
LATEX_PASSES = 2  # the second pass fills the table of contents; body pages are numbered after it
DROP_TAGS = {"parameters", "injected-parameters", "papermill-error-cell-tag", "remove-cell"}
IMAGE_TYPES = ("application/pdf", "image/png", "image/jpeg", "image/svg+xml")
# What a plotting call returns, echoed by Jupyter: `<Figure size ...>`, `[<Line2D ...>]`, `Text(0.5, 1.0, 'x')`
OBJECT_REPR = re.compile(r"^\[?(<[\w.]+[ >].*>|Text\(.*\))\]?$", re.S)


@dataclass
class Part:
    """One report part: a source notebook, what it was run with, and how it went."""

    source: Path
    params: dict = field(default_factory=dict)
    executed: Path | None = None  # the executed copy in <out>/build/
    seconds: float = 0.0
    error: str | None = None  # one line: the failing cell and the error

    @property
    def name(self) -> str:
        return self.source.stem


# ---- finding and selecting notebooks --------------------------------------------------------------

def default_notebooks_dir() -> Path:
    return (paths.project_root() or Path.cwd()) / "notebooks"


def discover(nb_dir: Path) -> list[Path]:
    found = sorted(Path(nb_dir).glob(NOTEBOOK_GLOB))
    if not found:
        raise CifarlibError(f"no notebooks named NN_<name>.ipynb in {nb_dir}; point --notebooks at the folder")
    return found


def planned_parts(nb_dir: Path) -> list[str]:
    """Part names the notebooks README lists (its table names `NN_name.ipynb`), in order."""
    readme = Path(nb_dir) / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    return list(dict.fromkeys(re.findall(r"`(\d\d_\w+)\.ipynb`", text)))


def match(notebooks: list[Path], key: str, where: str) -> Path:
    """The notebook ``key`` names: its stem (``03_improved``) or its number (``03``)."""
    hits = [p for p in notebooks if key in (p.stem, p.stem.split("_", 1)[0])]
    if len(hits) != 1:
        names = ", ".join(p.stem for p in notebooks)
        raise CifarlibError(f"unknown notebook {key!r} in {where}; choose from: {names}")
    return hits[0]


def select(notebooks: list[Path], only: str | None) -> list[Path]:
    if not only:
        return notebooks
    chosen = {match(notebooks, key.strip(), "--only") for key in only.split(",") if key.strip()}
    if not chosen:
        raise CifarlibError(f"--only {only!r} names no notebook; give numbers or names separated by commas, "
                            f"e.g. --only 01,03_improved")
    return [p for p in notebooks if p in chosen]


# ---- parameters -----------------------------------------------------------------------------------

def declared_parameters(path: Path) -> set[str]:
    """Names the notebook's one ``parameters`` cell assigns (papermill's own inspection)."""
    import nbformat
    import papermill

    try:
        cells = nbformat.read(path, as_version=4).cells
    except Exception as err:  # not JSON, not a notebook, unreadable
        raise CifarlibError(f"{path} is not a readable notebook ({first_line(err)}); fix or remove it, or point "
                            f"--notebooks at another folder") from None
    tagged = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise CifarlibError(f"{path.name} has {len(tagged)} cells tagged 'parameters'; tag exactly one "
                            f"(see notebooks/README.md)")
    return set(papermill.inspect_notebook(str(path)))


def parse_param(text: str) -> tuple[str, str, object]:
    """``[NOTEBOOK:]NAME=VALUE`` -> (scope, name, value); the value is a Python literal when it reads as
    one (3, 1e-3, True, None, [1, 2], 'x'), true/false/null as in YAML, else the plain string."""
    key, sep, raw = text.partition("=")
    scope, _, name = key.rpartition(":")
    if not sep or not name.isidentifier():
        raise CifarlibError(f"bad --param {text!r}; write NAME=VALUE or NOTEBOOK:NAME=VALUE, "
                            f"e.g. 03_improved:seeds=3")
    return scope or "all", name, literal(raw)


def literal(raw: str):
    words = {"true": True, "false": False, "null": None, "none": None}
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        return words.get(raw.strip().lower(), raw)


def _yaml_number(value):
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; a notebook wants the float."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def read_params_file(path: str | None) -> list[tuple[str, str, object]]:
    """``{all: {NAME: VALUE}, 03_improved: {NAME: VALUE}}`` -> [(scope, name, value), ...]."""
    if not path:
        return []
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise CifarlibError(f"cannot read --params-file {path} ({err.strerror}); check the path") from None
    except UnicodeDecodeError:
        raise CifarlibError(f"--params-file {path} is not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise CifarlibError(f"--params-file {path} is not valid YAML ({first_line(err)}); fix it") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CifarlibError(f"--params-file {path} must map 'all' or a notebook to NAME: VALUE pairs, "
                            f"e.g. {{all: {{seed: 1}}, 03_improved: {{seeds: 3}}}}")
    return [(str(scope), str(name), _yaml_number(value))
            for scope, values in data.items() for name, value in values.items()]


def shared_parameters(args: argparse.Namespace) -> dict:
    """The shared values every notebook gets when its parameters cell defines them."""
    shared = {"profile": args.profile, "device": args.device,
              "runs_dir": str(paths.runs_dir().resolve()), "figures_dir": str(paths.figures_dir().resolve())}
    if args.data_root:
        shared["data_root"] = str(Path(args.data_root).expanduser().resolve())
    if args.mnist_root:
        shared["mnist_root"] = str(Path(args.mnist_root).expanduser().resolve())
    return shared


def plan_parameters(selected: list[Path], notebooks: list[Path], shared: dict, overrides) -> dict[Path, dict]:
    """Parameters per selected notebook: the shared ones it defines, then the overrides in order.
    An override naming a parameter no targeted notebook defines is an error."""
    declared = {p: declared_parameters(p) for p in selected}
    plan = {p: {k: v for k, v in shared.items() if k in declared[p]} for p in selected}
    for scope, name, value in overrides:
        targets = selected if scope == "all" else [match(notebooks, scope, "--param")]
        targets = [p for p in targets if p in declared]  # a notebook not selected: nothing to pass
        hits = [p for p in targets if name in declared[p]]
        if targets and not hits:
            raise CifarlibError(_unknown_parameter(name, targets, declared))
        if name in PATH_PARAMETERS and isinstance(value, str) and value:
            value = str(Path(value).expanduser().resolve())  # the kernels run in the notebooks' folder
        for p in hits:
            plan[p][name] = value
    return plan


PATH_PARAMETERS = ("data_root", "mnist_root", "weights_path", "runs_dir", "figures_dir", "image_file")
PATH_VARIABLES = (paths.ENV_DATA, paths.ENV_MNIST, paths.ENV_WEIGHTS, paths.ENV_CACHE, paths.ENV_RUNS,
                  paths.ENV_FIGURES)


def absolute_path_variables() -> dict:
    """The path variables set to a relative path, made absolute from here: the notebook kernels run in
    the notebooks' folder, where a relative path would point somewhere else."""
    out = {}
    for name in PATH_VARIABLES:
        value = os.environ.get(name)
        if value and not Path(value).expanduser().is_absolute():
            out[name] = str(Path(value).expanduser().resolve())
    return out


def _unknown_parameter(name: str, targets: list[Path], declared: dict) -> str:
    if len(targets) == 1:
        known = ", ".join(sorted(declared[targets[0]]))
        return f"notebook {targets[0].stem} has no parameter {name!r}; its parameters are: {known}"
    return f"no selected notebook has a parameter {name!r}; check the name (see each notebook's parameters cell)"


# ---- running the notebooks ------------------------------------------------------------------------

@contextlib.contextmanager
def kernel_env(extra: dict):
    """Environment variables the kernels inherit, restored afterwards."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(part: Part, build: Path) -> None:
    """Run one notebook with papermill into ``build/``; a failure is recorded on ``part``, not raised.
    The executed copy (with its error, if any) replaces the old one in a single rename."""
    import papermill

    out = build / part.source.name
    tmp = build / f".{part.source.stem}.partial.ipynb"
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(part.source), str(tmp), parameters=part.params, kernel_name=KERNEL,
                                   cwd=str(part.source.parent), progress_bar=False, log_output=False,
                                   extra_arguments=KERNEL_ARGS, **FAST_PAPERMILL)
    except papermill.PapermillExecutionError as err:
        part.error = describe_failure(err, part)
    except Exception as err:  # the kernel died or could not start: still a failed part, not a crash
        part.error = f"{type(err).__name__}: {first_line(str(err))}"
    finally:
        part.seconds = time.perf_counter() - start
        if tmp.exists():
            os.replace(tmp, out)
            part.executed = out


def describe_failure(err, part: Part) -> str:
    """``cell 7 ("x = model(batch)") raised ValueError: ...``, with the cell index in the source notebook
    (papermill counts its injected-parameters cell, which sits right after the parameters cell)."""
    import nbformat

    cells = nbformat.read(part.source, as_version=4).cells
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    injected_at = tagged[0] + 1 if tagged and part.params else None
    index = err.cell_index - 1 if injected_at is not None and err.cell_index > injected_at else err.cell_index
    line = first_line(err.source)
    return f"cell {index} ({line!r}) raised {err.ename}: {first_line(err.evalue)}"


def preflight(selected: list[Path], plan: dict, profile: str) -> dict[Path, list[str]]:
    """What each selected part needs and cannot have, found in seconds before anything runs: its data
    sets (present, or downloadable) and, for a part trained from ImageNet weights, the weights. Prints
    where each input will come from; returns the problems per part (one-line messages with remedies)."""
    from cifarlib import data

    seen, problems = {}, {p: [] for p in selected}

    def check(key, what, fn, *args):
        if key not in seen:
            try:
                seen[key] = (fn(*args), None)
                print(f"{what}: {seen[key][0]}")
            except CifarlibError as err:
                seen[key] = (None, str(err))
        return seen[key][1]

    for p in selected:
        declared = declared_parameters(p)
        for name, key in data.ROOT_PARAMETERS.items():
            if key in declared:
                problems[p].append(check((name, plan[p].get(key)), "data", data.check_source, name, plan[p].get(key)))
        if "pretrained" in declared:
            from cifarlib.experiments import transfer
            from cifarlib.models.transfer import check_weights

            kw = transfer.notebook_config(profile, pretrained=plan[p].get("pretrained"),
                                          weights_path=plan[p].get("weights_path")).model_kw
            if kw.get("pretrained"):
                missing = check(("weights", kw.get("weights_path")), "weights", check_weights, kw.get("weights_path"))
                data_ok = not any(problems[p])  # else the run cannot be looked up (nor trained)
                finished = finished_transfer_run(p, plan[p], profile) if missing and data_ok else None
                if finished is not None:  # the weights are only needed to train it
                    print(f"weights: not needed, the transfer run is finished ({finished})")
                    missing = None
                problems[p].append(missing)
    return {p: [m for m in msgs if m] for p, msgs in problems.items()}


def notebook_values(path: Path, overrides: dict) -> dict:
    """The values of the notebook's parameters for this build: its parameters cell's literal defaults
    (an expression that is no literal is left out), then ``overrides``."""
    import ast

    import papermill

    values = {}
    for name, info in papermill.inspect_notebook(str(path)).items():
        try:
            values[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError, TypeError):
            pass
    return {**values, **overrides}


def finished_transfer_run(path: Path, overrides: dict, profile: str) -> Path | None:
    """The folder of the finished transfer run the notebook at ``path`` would read back (its config
    from the notebook's parameters, as its training cell builds it), or None; never trains."""
    from cifarlib import runs
    from cifarlib.experiments import transfer

    values = notebook_values(path, overrides)
    knobs = {k: values.get(k) for k in ("pretrained", "weights_path", "resolution", "epochs", "seed", "device")}
    try:
        cfg = transfer.notebook_config(profile, **knobs)
        record = runs.find_finished(cfg, data_root=values.get("data_root"), runs_dir=values.get("runs_dir"))
    except CifarlibError:  # no data, a bad value: the notebook itself will say so
        return None
    return record.dir if record is not None else None


def run_notebooks(parts: list[Part], build: Path, keep_going: bool, executor: str | None = None) -> None:
    """Run the parts in order, printing each one's wall time; stop at the first failure unless
    ``keep_going``. ``executor``: where the notebooks' runs train (see cifarlib.sweep)."""
    width = max(len(p.name) for p in parts)
    (build / RUN_LOG).unlink(missing_ok=True)
    preload()
    extra = {paths.ENV_EXECUTOR: executor} if executor else {}
    with kernel_env({**KERNEL_ENV, **absolute_path_variables(), ENV_RUN_LOG: str((build / RUN_LOG).resolve()),
                     **extra}):
        for part in parts:
            if part.error:  # the preflight found what it needs missing
                continue
            prefix = f"  {part.name:<{width}}  "
            print(prefix, end="", flush=True)
            with ticking(prefix):
                execute(part, build)
            status = "ok" if part.error is None else f"FAILED: {part.error}"
            print(f"{part.seconds:7.1f} s  {status}", flush=True)
            if part.error and not keep_going:
                return


@contextlib.contextmanager
def ticking(prefix: str, stream=None, every: float = 1.0):
    """While the block runs, show on a terminal how long it has been running, after ``prefix`` on
    the current line (a part can train for hours); the line is left as ``prefix`` for the result.
    Not on a log file or pipe: there the finished line is all that is written."""
    stream = stream or sys.stdout
    if not stream.isatty():
        yield
        return
    stop, start, shown = threading.Event(), time.perf_counter(), [False]

    def tick() -> None:
        while not stop.wait(every):
            minutes, seconds = divmod(int(time.perf_counter() - start), 60)
            text = f"running {minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
            shown[0] = True
            stream.write(f"\r\x1b[K{prefix}{text}")  # cleared first: a worker may have written on the line
            stream.flush()

    thread = threading.Thread(target=tick, name="cifarlib-clock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if shown[0]:
            stream.write(f"\r\x1b[K{prefix}")
            stream.flush()


def preload() -> None:
    """Import what the title page and the provenance need (torch, cifarlib.runs: seconds) in the
    background while the kernels run; the report process mostly waits on them meanwhile."""
    def work():
        with contextlib.suppress(Exception):
            import cifarlib.runs  # noqa: F401

    threading.Thread(target=work, name="cifarlib-preload", daemon=True).start()


# ---- the report notebook --------------------------------------------------------------------------

def git_state(where: Path) -> str:
    """The checkout holding ``where``, as the title page and the provenance table show it."""
    return provenance.commit_label(*provenance.checkout(where))


def torch_and_device(requested: str) -> tuple[str, str]:
    """torch's version, and the device ``requested`` resolves to here (``cpu (requested: auto)``)."""
    import torch

    from cifarlib.train import resolve_device

    if requested != "auto":
        return torch.__version__, requested
    device = resolve_device("auto")
    name = f"cuda, {torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type
    return torch.__version__, f"{name} (requested: auto)"


def build_info(args: argparse.Namespace, argv: list[str]) -> dict:
    torch_version, device = torch_and_device(args.device)
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"title": TITLE, "course": COURSE, "author": None, **getattr(args, "title_page", {}),
            "date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": git_state(Path(args.notebooks)),
            "device": device, "profile": args.profile, "torch": torch_version,
            "command": " ".join(["python -m cifarlib report", *argv])}


def md_table(header: list[str], rows: list[list]) -> str:
    """A pipe table (pandoc and Jupyter both render it); ``|`` in cells is escaped."""
    def cell(v):
        return str(v).replace("|", r"\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def raw(source: str, mimetype: str):
    """A raw cell only one output format includes (``text/latex`` or ``text/html``)."""
    import nbformat

    return nbformat.v4.new_raw_cell(source, metadata={"raw_mimetype": mimetype})


def page_break() -> list:
    return [raw(r"\clearpage", "text/latex"), raw('<div class="cifarlib-newpage"></div>', "text/html")]


def title_cells(info: dict, parts: list[Part]) -> list:
    """The title page: title, course, author and date; a smoke build says in large type that its
    numbers are not results, and a build with a failed part says which. Machine facts go to the
    Provenance section."""
    lines = [info.get("course"), info.get("author"), info["date"]]
    title = (f'<h1 class="cifarlib-title">{html.escape(info["title"])}</h1>'
             + "".join(f'<p class="cifarlib-subtitle">{html.escape(str(x))}</p>' for x in lines if x))
    latex = ("\\begin{center}\\vspace*{3cm}{\\Huge\\bfseries " + _tex(info["title"]) + "\\par}\\vspace{1.5cm}"
             + "".join("{\\Large " + _tex(str(x)) + "\\par}\\vspace{0.5cm}" for x in lines if x) + "\\end{center}")
    cells = [raw(title, "text/html"), raw(latex, "text/latex")]
    warnings = []
    if info.get("profile") == "quick":
        warnings.append("Smoke run: every model was trained for a few steps on a small subset. "
                        "The numbers in this document test the pipeline; they are not results.")
    failed = [part_title(p.source) for p in parts if p.error]
    if failed:
        warnings.append("Incomplete: " + "; ".join(failed) + (" was" if len(failed) == 1 else " were")
                        + " not built (see the section itself).")
    for text in warnings:
        cells += [raw("\\vspace{1cm}\\begin{center}\\fcolorbox{red}{red!6}{\\parbox{0.85\\linewidth}{\\centering"
                      "\\Large\\bfseries " + _tex(text) + "}}\\end{center}", "text/latex"),
                  raw(f'<div class="cifarlib-failed cifarlib-banner">{html.escape(text)}</div>', "text/html")]
    return cells + [raw("\\clearpage\n\\tableofcontents\n\\clearpage\n\\pagenumbering{arabic}", "text/latex")]


def _tex(text: str) -> str:
    from nbconvert.filters import escape_latex

    return escape_latex(text)


def toc_cell(cells: list):
    """The HTML table of contents: links to the level-1 and level-2 headings (LaTeX makes its own)."""
    items = []
    for cell in cells:
        if cell.cell_type != "markdown":
            continue
        for level, text in re.findall(r"^(#{1,2}) +(.+?) *#*$", cell.source, re.M):
            anchor = quote(_plain(text).replace(" ", "-"), safe="?/:@!$&'()*+,;=")
            items.append(f'<li class="toc-{len(level)}"><a href="#{anchor}">{html.escape(_plain(text))}</a></li>')
    return raw('<nav class="cifarlib-toc"><h2>Contents</h2><ul>' + "".join(items) + "</ul></nav>", "text/html")


def _plain(markdown: str) -> str:
    """Heading text as nbconvert's HTML anchor sees it (emphasis and code marks removed)."""
    return re.sub(r"[*_`]", "", markdown).strip()


def part_cells(part: Part, number: int) -> list:
    """The part's cells for the report: numbered heading, failure box if it failed, its prose and
    outputs (no code, no parameters, no stderr), captioned figures."""
    import nbformat

    nb = nbformat.read(part.executed or part.source, as_version=4)
    cells = [copy.deepcopy(c) for c in nb.cells if not DROP_TAGS & set(c.metadata.get("tags", []))]
    if part.error:
        cells = _until_error(cells) if part.executed else cells[:1]
    cells = [c for c in (_clean(c) for c in cells) if c is not None]
    _number_heading(cells, number, part.name)
    if part.error:
        cells[1:1] = failure_box(part)
    return cells


def _until_error(cells: list) -> list:
    for i, cell in enumerate(cells):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return cells[:i]
    return cells


def _clean(cell):
    """A code cell keeps only what a reader wants (None when nothing is left); other cells as they are."""
    if cell.cell_type != "code":
        return cell
    plotting = any(_is_figure(o) for o in cell.outputs)
    cell.outputs = [o for o in cell.outputs if _keep_output(o, plotting)]
    return cell if cell.outputs else None


def _is_figure(output) -> bool:
    return any(t in output.get("data", {}) for t in IMAGE_TYPES)


def _keep_output(output, plotting: bool) -> bool:
    """Not stderr (warnings, progress), errors (the failure box says it), widgets (frozen progress bars),
    echoed plot objects, nor a plotting cell's last-expression echo."""
    kind = output.get("output_type")
    if kind == "stream":
        return output.get("name") == "stdout" and output.get("text", "").strip() != ""
    if kind == "error":
        return False
    data = output.get("data", {})
    if "application/vnd.jupyter.widget-view+json" in data:
        return False
    if set(data) <= {"text/plain"}:
        echo = kind == "execute_result" and plotting
        return not (echo or OBJECT_REPR.match(data.get("text/plain", "").strip()))
    return True


def _number_heading(cells: list, number: int, name: str) -> None:
    """``# Title`` of the part's first cell becomes ``# <number> Title`` (a missing one is made)."""
    import nbformat

    first = cells[0] if cells and cells[0].cell_type == "markdown" else None
    if first is None or not first.source.startswith("# "):
        first = nbformat.v4.new_markdown_cell(f"# {name}")
        cells.insert(0, first)
    heading, _, rest = first.source.partition("\n")
    first.source = f"# {number} {_title(heading)}\n{rest}"


def _title(heading: str) -> str:
    """``# 2. Baseline`` -> ``Baseline``: the report numbers the parts itself."""
    return re.sub(r"^\d+[.:)]?\s+", "", heading.lstrip("#").strip())


def part_title(path: Path) -> str:
    """The title a notebook's part gets in the report (without its number)."""
    import nbformat

    cells = nbformat.read(path, as_version=4).cells
    first = cells[0].source if cells and cells[0].cell_type == "markdown" else ""
    return _title(first.partition("\n")[0]) if first.startswith("# ") else Path(path).stem


def failure_box(part: Part) -> list:
    """A box in both formats saying that the part failed, where and why."""
    from nbconvert.filters import escape_latex

    if part.executed:
        text = f"This part failed to build: {part.error}. The output up to the failure follows."
    else:
        text = "This part was not built: an input it needs was missing when the document was made (see Provenance)."
    latex = ("\\begin{center}\\fcolorbox{red}{red!6}{\\parbox{0.92\\linewidth}{\\textbf{Part failed.} "
             + escape_latex(text) + "}}\\end{center}")
    box = f'<div class="cifarlib-failed"><strong>Part failed.</strong> {html.escape(text)}</div>'
    return [raw(latex, "text/latex"), raw(box, "text/html")]


CITATION = re.compile(r"@(fig|tab):([\w-]+)")
KINDS = {"fig": "Figure", "tab": "Table"}
# Spaces a line must not break at: between a number and its %, around ± (pandoc writes U+00A0 as ~);
# never inside math or code, whose spaces mean something else.
UNBREAKABLE = re.compile(r"(?<=\d) (?=%|±)|(?<=±) (?=\d)")
VERBATIM = re.compile(r"```.*?```|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]*\$", re.S)


def bind_numbers(markdown: str) -> str:
    """``markdown`` with a non-breaking space between a number and its ``%`` and around ``±``,
    outside math and code."""
    out, at = [], 0
    for found in VERBATIM.finditer(markdown):
        out += [UNBREAKABLE.sub("\u00a0", markdown[at:found.start()]), found[0]]
        at = found.end()
    return "".join(out + [UNBREAKABLE.sub("\u00a0", markdown[at:])])


def number_floats(cells: list) -> list[str]:
    """Number every figure and table of the report in order and give it its caption, then replace
    each citation ``@fig:<label>`` / ``@tab:<label>`` in the text by ``Figure N`` / ``Table N``, with
    a space no line breaks at.

    A figure's or table's caption and label come from the metadata that ``plots.show`` and
    ``tables.show`` attach to the output (a figure without it falls back to the cell's ``caption``
    metadata, then to the heading above it). Returns the citations that name no figure or table."""
    heading, count, labels = "", {"fig": 0, "tab": 0}, {}
    for cell in cells:
        if cell.cell_type == "markdown":
            found = re.findall(r"^#{1,6} +(.+?) *#*$", cell.source, re.M)
            heading = found[-1] if found else heading
            continue
        for k, output in enumerate(o for o in cell.get("outputs", []) if _is_figure(o) or _is_table(o)):
            kind = "fig" if _is_figure(output) else "tab"
            given = output.get("metadata", {}).get("cifarlib") or {}
            count[kind] += 1
            if kind == "tab":
                _caption_table(output, count[kind], given.get("caption"))
            else:
                output.metadata["caption"] = given.get("caption") or _cell_caption(cell, k) or heading
                output.metadata["figure_number"] = count[kind]
            if given.get("label"):
                if (kind, given["label"]) in labels:
                    raise CifarlibError(f"two {KINDS[kind].lower()}s have the label {given['label']!r}; give each its own")
                labels[(kind, given["label"])] = f"{KINDS[kind]} {count[kind]}"
    unresolved = []

    def cite(found: re.Match) -> str:
        key = (found[1], found[2])
        if key not in labels:
            unresolved.append(found[0])
        return labels.get(key, f"{KINDS[found[1]]} ?").replace(" ", "\u00a0")

    rewrite_markdown(cells, lambda text: CITATION.sub(cite, text))
    return unresolved


def rewrite_markdown(cells: list, change) -> None:
    """Apply ``change`` (text -> text) to every Markdown text of ``cells``: Markdown cells and the
    Markdown outputs of code cells (prose and tables written by the notebooks)."""
    for cell in cells:
        if cell.cell_type == "markdown":
            cell.source = change(cell.source)
        for output in cell.get("outputs", []):
            if "text/markdown" in output.get("data", {}):
                output.data["text/markdown"] = change(output.data["text/markdown"])


def summary_cells(cells: list) -> list:
    """Take the headline results (``tables.headline``) out of the parts and return the summary
    section that lists them, each with the section it comes from (empty when there are none)."""
    import nbformat

    part, rows = "", []
    for cell in cells:
        if cell.cell_type == "markdown":
            found = re.match(r"# (\d+) ", cell.source)
            part = found[1] if found else part
            continue
        kept = []
        for output in cell.get("outputs", []):
            line = (output.get("metadata", {}).get("cifarlib") or {}).get("headline")
            if line:
                rows.append([line["item"], line["result"], line["value"], f"Section {part}"])
            else:
                kept.append(output)
        cell.outputs = kept
    if not rows:
        return []
    text = ("# Summary of results\n\nThe headline numbers of this document; each section gives the method, "
            "the figures and tables behind them, and the discussion.\n\n"
            + md_table(["question", "result", "value", "where"], rows))
    return page_break() + [nbformat.v4.new_markdown_cell(text)]


def _is_table(output) -> bool:
    return "text/markdown" in output.get("data", {}) and "caption" in (output.get("metadata", {}).get("cifarlib") or {})


def _cell_caption(cell, k: int) -> str | None:
    given = cell.metadata.get("caption")
    text = given[k] if isinstance(given, list) and k < len(given) else given
    return text if isinstance(text, str) else None


def _caption_table(output, number: int, caption: str | None) -> None:
    """The table's caption line (``*caption*`` from ``tables.show``) becomes ``**Table N:** caption``;
    the LaTeX export moves it into the table's own title (see :func:`caption_tables`)."""
    text = output.data["text/markdown"]
    if caption and text.startswith(f"*{caption}*"):
        text = text[len(caption) + 2:].lstrip("\n")
    output.data["text/markdown"] = f"**Table {number}:** {caption or ''}".rstrip() + "\n\n" + text


TABLE_TITLE = re.compile(r"\A\*\*Table (\d+):\*\*(.*?)\n\n(?=\|)", re.S)


def caption_tables(markdown: str) -> str:
    """For pandoc: a ``**Table N:** caption`` paragraph right above a pipe table becomes the table's
    own caption (``Table: ...`` after it), so that LaTeX keeps the title with its table."""
    found = TABLE_TITLE.match(markdown)
    if not found:
        return markdown
    title = f"**Table {found[1]}:**{found[2]}".replace("\n", " ")
    return markdown[found.end():].rstrip("\n") + f"\n\nTable: {title}\n"


# ---- provenance -----------------------------------------------------------------------------------

def used_runs(runs_dir: Path, log: Path) -> tuple[list, str]:
    """The run records this build used, and a phrase saying where they come from: the run folders
    the kernels logged to ``log`` (when cifarlib.runs logs them), else the finished records in
    ``runs_dir`` made by the current training code (records of older code are not reused)."""
    try:
        from cifarlib import runs
    except ImportError:
        return [], "available (cifarlib.runs is missing)"
    logged = [d for d in dict.fromkeys(log.read_text(encoding="utf-8").split("\n")) if d] if log.is_file() else []
    try:
        if logged:
            return [runs.load_run(d) for d in logged if runs.is_finished(d)], "logged by this build's notebooks"
        found = [r for r in runs.find_runs(runs_dir=runs_dir)
                 if r.env.get("code_version") == runs.code_version(r.config.model)]
        return found[::-1], f"of the current training code found in `{runs_dir}`"  # oldest (first made) first
    except Exception as err:  # an unreadable record must not sink the report
        print(f"warning: could not read the run records: {first_line(str(err))}", file=sys.stderr)
        return [], f"could be read ({first_line(str(err))})"


def _as_dict(obj) -> dict:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return dict(vars(obj)) if hasattr(obj, "__dict__") else {}


def run_row(rec) -> list:
    config, env, metrics = _as_dict(rec.config), _as_dict(rec.env), _as_dict(rec.metrics)
    name, _, digest = Path(rec.dir).name.rpartition("-")
    commit = provenance.commit_mark(env.get("git_commit"), env.get("git_dirty"))  # one line wide in print
    wall = env.get("wall_s", metrics.get("wall_s"))
    return [f"`{name or config.get('name', '?')}`", f"`{digest}`", config.get("seed", "?"), commit,
            env.get("torch", "?"), env.get("device", metrics.get("device", "?")),
            f"{float(wall):.1f} s" if isinstance(wall, (int, float)) else "?"]


def provenance_cells(parts: list[Part], runs: list, source: str, number: int, info: dict) -> list:
    import nbformat

    part_rows = [[p.name, ", ".join(f"{k}={v}" for k, v in sorted(p.params.items())
                                    if k not in ("runs_dir", "figures_dir")) or "(defaults)",
                  f"{p.seconds:.1f} s", "failed" if p.error else "ok"] for p in parts]
    facts = [["built", info["date"]], ["command", f"`{info['command']}`"], ["git commit", info["commit"]],
             ["device", info["device"]], ["profile", info["profile"]], ["torch", info["torch"]]]
    text = [f"# {number} Provenance",
            "How this document was made, for a reader who wants to rebuild it or trace a number to the "
            "training run it comes from.",
            md_table(["", ""], facts),
            "Each section was computed by one notebook, run with these parameters:",
            md_table(["notebook", "parameters", "wall time", "status"], part_rows)]
    if runs:
        text += [f"Run records {source} (config hash: the suffix of the run's folder; git commit: the code's "
                 "version, with an asterisk when it had uncommitted changes; wall time: the training time when the run "
                 "was made).",
                 md_table(["run", "config hash", "seed", "git commit", "torch", "device", "wall time"],
                          [run_row(r) for r in runs])]
    else:
        text.append(f"No run records {source}.")
    return page_break() + [nbformat.v4.new_markdown_cell("\n\n".join(text))]


def assemble(parts: list[Part], info: dict, runs: list, source: str):
    """One notebook: title page, contents, the parts (each on a new page), provenance; fresh cell ids."""
    import nbformat

    body = []
    for number, part in enumerate(parts, 1):
        body += page_break() + part_cells(part, number)
    body += provenance_cells(parts, runs, source, len(parts) + 1, info)
    summary = summary_cells(body)
    failed = {p.name.split("_", 1)[0] for p in parts if p.error}  # their figures were never drawn
    unresolved = [c for c in number_floats(body) if c.split(":", 1)[-1].split("_", 1)[0] not in failed]
    if unresolved:
        raise CifarlibError(f"the report cites {', '.join(sorted(set(unresolved)))} but no figure or table has "
                            f"that label; fix the citation or the label")
    nb = nbformat.v4.new_notebook(metadata={"title": info["title"], "date": info["date"], "cifarlib": info})
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.cells = title_cells(info, parts) + [toc_cell(body)] + summary + body
    rewrite_markdown(summary + body, bind_numbers)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:04d}"  # merged cells would otherwise share ids
    return nb


# ---- export ---------------------------------------------------------------------------------------

LONGTABLE = re.compile(r"\\begin\{longtable\}\[\]\{(?P<spec>.*?)\}\n(?P<body>.*?)\\end\{longtable\}", re.S)
TABLE_MARKERS = ("\\endhead", "\\endfirsthead", "\\endfoot", "\\endlastfoot", "\\caption")
RULES = TABLE_MARKERS + ("\\toprule", "\\midrule", "\\bottomrule")
TEXT_WIDTH_PT = 465.0  # A4 less the template's margins (2 x 2.3 cm)
BODY_PT = 11.0  # the document's type size: a table left alone is set in it
FONTS = (("\\small", 10.0), ("\\footnotesize", 9.0), ("\\scriptsize", 8.0))  # sizes in an 11pt document
CHAR_EM = 0.5  # an average character (a digit is exactly 0.5 em)
GAP_EM = 1.2  # the space between two columns
WRAP_CHARS = 24  # cells longer than this may wrap at spaces first; shorter ones only as a last resort
NUMERIC = re.compile(r"[\d.,+\-−±~% ]+")  # a number, a mean ± deviation, a percentage
SHORT_CHARS = 18  # body cells this short ("Model A", "ResNet18 transfer") never wrap
KEEP_ROWS = 20  # a table this short is one block that never breaks across pages (no lone rows)
BOXED_ROWS = 30  # a table too wide even when wrapped is scaled down in a box if it is this short


def fit_tables(latex: str) -> str:
    """Pandoc's natural-width tables made to fit the text width: a table too wide wraps its headers
    and long cells, in a smaller type if need be (numbers never wrap); one still too wide is scaled
    down in a box. Without this a wide table runs off the page (or, with pandoc's own wrapped
    columns, overprints itself). Tables pandoc already wraps (``p{}`` columns) are left alone."""
    return LONGTABLE.sub(_fit_table, latex)


def _fit_table(found: re.Match) -> str:
    table, spec, lines = found.group(0), found["spec"], found["body"].splitlines()
    wrapped = "p{" in table.split("\\toprule", 1)[0]
    split_rows = not all(line.startswith(RULES) or line.endswith("\\\\") for line in lines)
    if wrapped or split_rows:
        return table  # pandoc wrapped the columns itself, or wrote rows over several lines
    rows = sum(line.endswith("\\\\") for line in lines)
    layout = _layout(spec, lines)
    if layout is None:  # fits: a short table is kept on one page, a long one breaks across pages
        return _boxed(lines, spec, "") if rows <= KEEP_ROWS else table
    font, columns, fits = layout
    if (fits and rows > KEEP_ROWS) or rows > BOXED_ROWS:
        return f"{{{font}\n" + table.replace(f"[]{{{spec}}}", f"[]{{{columns}}}", 1) + "\n}"
    return _boxed(lines, columns, font)


def _layout(spec: str, lines: list[str]) -> tuple[str, str, bool] | None:
    """(font, column spec, whether it fits) for a table too wide for the page; None when it fits as
    it is. Tried in order: long cells wrap, at three type sizes; then every cell may wrap."""
    align = re.fullmatch(r"@\{\}([lcr]+)@\{\}", spec)
    columns = _column_widths(lines)
    if not align or len(columns) != len(align[1]):
        return None
    natural = [c[0] for c in columns]
    if sum(natural) <= _room(BODY_PT, len(columns)):
        return None
    tries = [(font, 1) for font in FONTS] + [(font, 2) for font in FONTS[1:]]
    for (font, size), level in tries:
        least, room = [c[level] for c in columns], _room(size, len(columns))
        if sum(least) <= room:
            return font, _wrapping_spec(align[1], natural, least, room), True
    return font, _wrapping_spec(align[1], natural, least, sum(least)), False


def _room(size_pt: float, n_columns: int) -> float:
    """Characters that fit across the text width at this type size, less the gaps between columns."""
    return (TEXT_WIDTH_PT / size_pt - GAP_EM * (n_columns - 1)) / CHAR_EM


def _wrapping_spec(align: str, natural: list[int], least: list[int], room: float) -> str:
    """Columns of at least ``least`` characters; those that want more share what is left of ``room``."""
    spare, want = max(0.0, room - sum(least)), [max(0, n - m) for n, m in zip(natural, least)]
    widths = [m + min(w, spare * w / max(1, sum(want))) for m, w in zip(least, want)]
    edge = {"l": "\\raggedright", "r": "\\raggedleft", "c": "\\centering"}
    return "@{}" + "".join(f">{{{edge[a]}\\arraybackslash}}p{{{w * CHAR_EM:.2f}em}}"
                           for a, w in zip(align, widths)) + "@{}"


def _column_widths(lines: list[str]) -> list[tuple[int, int, int]]:
    """Per column, in characters: the longest cell; the least width when headers and long cells
    wrap at spaces; the least width when every cell may wrap."""
    # the header, written twice when the table has a caption (first page, then continuation pages)
    head_end = next((i for i, line in enumerate(lines) if line.startswith("\\endhead")), None)
    if head_end is None:
        head_end = next((i for i, line in enumerate(lines) if line.startswith("\\midrule")), 0)
    columns: list[list[tuple[int, int, int]]] = []
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("\\\\"):
            continue
        for k, cell in enumerate(line.rstrip().rstrip("\\").split(" & ")):
            text = re.sub(r"\\[a-zA-Z]+|[{}\\]", "", cell).strip()
            word = max(map(len, text.split()), default=0)
            wraps = i < head_end or len(text) > WRAP_CHARS
            columns += [[] for _ in range(k + 1 - len(columns))]
            short = i >= head_end and len(text) <= SHORT_CHARS  # a name like "Model A" never breaks; a header may
            # capitals are wider than the average character; digits are exactly the average
            least = (len(text) + sum(map(text.count, "±−+%")) if NUMERIC.fullmatch(text) else len(text) + 2) \
                if short else word  # (those four signs are about 0.8 em, not 0.5)
            columns[k].append((len(text), word if wraps and not short else least, least))
    return [tuple(max(c[j] for c in col) for j in range(3)) for col in columns]


def _boxed(lines: list[str], columns: str, font: str) -> str:
    """The longtable's rows as a tabular in a box, scaled down to the text width if wider."""
    if "\\endfirsthead" in lines:  # the head repeated on continuation pages: one box has none
        lines = lines[: lines.index("\\endfirsthead")] + lines[lines.index("\\endhead"):]
    foot = []
    if "\\endlastfoot" in lines:  # pandoc 3 declares the foot before the body
        head_end, foot_end = lines.index("\\endhead"), lines.index("\\endlastfoot")
        foot, lines = lines[head_end + 1:foot_end], lines[: head_end + 1] + lines[foot_end + 1:]
    caption = [ln.replace("\\tabularnewline", "").replace("\\caption", "\\captionof{table}", 1)
               for ln in lines if ln.startswith("\\caption")]
    rows = [ln for ln in lines if not ln.startswith(TABLE_MARKERS)] + foot
    # A minipage: the title never ends a page with its table on the next one.
    return "\n".join(["\\par\\medskip\\noindent\\begin{minipage}{\\linewidth}", f"\\centering{font}", *caption,
                      "\\begin{adjustbox}{max width=\\linewidth}", f"\\begin{{tabular}}{{{columns}}}", *rows,
                      "\\end{tabular}", "\\end{adjustbox}", "\\end{minipage}\\par\\medskip"])


def _exporter(kind: str):
    from nbconvert import HTMLExporter, PDFExporter

    cls, template = (PDFExporter, "cifarlib_latex") if kind == "pdf" else (HTMLExporter, "cifarlib_html")
    exporter = cls(template_name=template, extra_template_basedirs=[str(TEMPLATES)],
                   filters={"fit_tables": fit_tables, "caption_tables": caption_tables})
    exporter.raw_mimetypes = ["text/latex"] if kind == "pdf" else ["text/html"]  # each gets its raw cells
    exporter.exclude_input = exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    return exporter


def export_html(nb, target: Path, nb_dir: Path) -> None:
    exporter = _exporter("html")
    exporter.embed_images = True  # a single self-contained file
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"path": str(nb_dir), "name": "report"}})
    atomic.write_text(target, body)


def missing_tex() -> list[str]:
    return [tool for tool in ("xelatex", "pandoc") if shutil.which(tool) is None]


def export_pdf(nb, target: Path, nb_dir: Path) -> None:
    from nbconvert.exporters.pdf import LatexFailed

    exporter = _exporter("pdf")
    exporter.latex_count = LATEX_PASSES
    try:
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"path": str(nb_dir), "name": "report"}})
    except LatexFailed as err:
        log = target.parent / "build" / "report.latex.log"
        atomic.write_text(log, err.output or "")
        first = next((ln for ln in (err.output or "").splitlines() if ln.startswith("! ")), "! unknown error")
        raise CifarlibError(f"xelatex failed on the report ({first[2:]}); see {log} for where "
                            f"(the HTML report was written)") from None
    with atomic.atomic_path(target) as tmp:
        tmp.write_bytes(body)


# ---- command line ---------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = OneLineParser(prog="python -m cifarlib report", description="Run the notebooks with "
                      "papermill, merge them into one report, export report.pdf and report.html.")
    p.add_argument("--profile", choices=("quick", "full"), default="full",
                   help="full (default) or quick: a smoke run of every notebook in minutes")
    p.add_argument("--data-root", help=f"CIFAR-10 root (default: ${paths.ENV_DATA})")
    p.add_argument("--mnist-root", help=f"MNIST root (default: ${paths.ENV_MNIST})")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    p.add_argument("--only", help="comma-separated notebooks to run, by number or name: 01,03_improved")
    p.add_argument("--param", action="append", default=[], metavar="[NB:]NAME=VALUE",
                   help="set a notebook parameter (all notebooks that define it, or NB only), or the title "
                        "page's title, author or course; repeatable")
    p.add_argument("--params-file", help="YAML: {all: {NAME: VALUE}, 03_improved: {NAME: VALUE}}")
    p.add_argument("--out", default=str(paths.report_dir()), help="output folder (default: report/)")
    p.add_argument("--notebooks", default=str(default_notebooks_dir()), help="notebook folder (default: notebooks/)")
    p.add_argument("--continue-on-error", action="store_true", help="build the other parts when one fails")
    p.add_argument("--no-pdf", action="store_true", help="write the HTML report only")
    p.add_argument("--executor", default=None, help="where training runs go: local (worker processes, the default) | "
                   "serial | dask:ADDRESS | submitit:FOLDER")
    return p.parse_args(argv)


def prepare_out(out: Path) -> Path:
    """``out/build`` exists and ``out`` is writable, or a one-line error."""
    atomic.writable_dir(out, what="to output folder", remedy="choose another with --out")
    atomic.writable_dir(out / "build", what="to output folder", remedy="choose another with --out")
    return out


def announce(notebooks: list[Path], selected: list[Path], nb_dir: Path) -> None:
    missing = [name for name in planned_parts(nb_dir) if name not in {p.stem for p in notebooks}]
    print(f"running {len(selected)} of {len(notebooks)} notebooks in {nb_dir}:")
    if missing:
        print(f"  not built yet (no notebook): {', '.join(missing)}")


def cli(argv: list[str]) -> int:
    args = parse_args(argv)
    out, nb_dir = Path(args.out).expanduser(), Path(args.notebooks).expanduser()
    notebooks = discover(nb_dir)
    selected = select(notebooks, args.only)
    overrides = read_params_file(args.params_file) + [parse_param(t) for t in args.param]
    args.title_page = {name: (str(value) if value not in (None, "") else None) for scope, name, value in overrides
                       if scope in ("all", "report") and name in TITLE_FIELDS}
    overrides = [o for o in overrides if not (o[0] in ("all", "report") and o[1] in TITLE_FIELDS)]
    if args.executor is not None:
        from cifarlib.sweep import resolve_executor

        resolve_executor(args.executor)  # a typo fails now, not when the first sweep starts
    plan = plan_parameters(selected, notebooks, shared_parameters(args), overrides)
    problems = preflight(selected, plan, args.profile)
    failing = {p: msgs for p, msgs in problems.items() if msgs}
    if failing and not args.continue_on_error:
        needed = {}  # each problem once, with the parts it stops
        for p, msgs in failing.items():
            for m in msgs:
                needed.setdefault(m, []).append(p.stem)
        if len(needed) == 1:
            raise CifarlibError(next(iter(needed)))
        listed = "\n".join(f"  {', '.join(names)}: {m}" for m, names in needed.items())
        raise CifarlibError(f"{len(needed)} problems stop this build before anything runs; fix them, or pass "
                            f"--continue-on-error to build the other parts:\n{listed}")
    if not args.no_pdf and missing_tex():
        print(f"pdf: no {' or '.join(missing_tex())} on PATH: only the HTML report will be written; "
              f"install TeX for the PDF: {TEX_INSTALL}")
    prepare_out(out)
    with build_lock(out):
        return build(args, argv, out, nb_dir, notebooks, selected, plan, problems)


def build_lock(out: Path):
    """One build at a time per output folder: a second one stops at once instead of replacing the
    first one's files (the lock is released by the system if the process dies)."""
    return atomic.locked(out / ".report.lock", busy=f"another report build is writing to {out}; wait for it to "
                                                     "finish, or pass another --out")


def build(args, argv, out, nb_dir, notebooks, selected, plan, problems) -> int:
    announce(notebooks, selected, nb_dir)
    parts = [Part(p, plan[p], error="; ".join(problems[p]) or None) for p in selected]
    for part in parts:
        if part.error:
            print(f"  {part.name}: will not be built: {part.error}")
    run_notebooks(parts, out / "build", args.continue_on_error, args.executor)
    failed = [p for p in parts if p.error]
    if failed and not args.continue_on_error:
        print(f"error: notebook {failed[0].name} failed: {failed[0].error} "
              f"(see {failed[0].executed or 'the log above'}; --continue-on-error builds the rest)", file=sys.stderr)
        return 1
    build_report(parts, args, argv, out, nb_dir)
    return 1 if failed else 0


def set_aside_previous(out: Path) -> None:
    """Move the previous build's report.pdf and report.html into build/previous/, so that a PDF left
    beside a new HTML (an export that failed or was killed, a build without TeX) is never taken for
    the new build's."""
    for name in ("report.pdf", "report.html"):
        if (out / name).is_file():
            (out / "build" / "previous").mkdir(parents=True, exist_ok=True)
            os.replace(out / name, out / "build" / "previous" / name)


def build_report(parts: list[Part], args, argv: list[str], out: Path, nb_dir: Path) -> None:
    """Merge, then one HTML and one PDF export (the PDF only with TeX installed)."""
    start = time.perf_counter()
    runs_dir = paths.runs_dir(parts[0].params.get("runs_dir") if parts else None)
    runs, source = used_runs(runs_dir, out / "build" / RUN_LOG)
    nb = assemble(parts, build_info(args, argv), runs, source)
    import nbformat

    atomic.write_text(out / "build" / "report.ipynb", nbformat.writes(nb))
    set_aside_previous(out)
    export_html(nb, out / "report.html", nb_dir)
    print(f"  html: {out / 'report.html'} ({time.perf_counter() - start:.1f} s)")
    if args.no_pdf:
        return
    if missing_tex():
        raise CifarlibError(f"no {' or '.join(missing_tex())} on PATH, so no PDF (the HTML report was written); "
                            f"install TeX: {TEX_INSTALL}")
    start = time.perf_counter()
    export_pdf(nb, out / "report.pdf", nb_dir)
    print(f"  pdf:  {out / 'report.pdf'} ({time.perf_counter() - start:.1f} s)")
