"""ARCHITECTURE.md's layer table holds for the code: every module is in it, and every import inside
the package points to the importer's layer or one below it; nothing imports the face."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cifarlib"


def layers_from_map(text: str) -> dict[str, tuple[int, str]]:
    """module -> (layer number, layer name) from the rows ``| 3 engine | `train` | ... |``."""
    layers = {}
    for number, name, cell in re.findall(r"^\| (\d+) (\w+) \| ([^|]+) \|", text, flags=re.MULTILINE):
        for module in re.findall(r"`([\w.]+)`", cell):
            assert module not in layers, f"{module} is listed twice in ARCHITECTURE.md"
            layers[module] = (int(number), name)
    return layers


def package_modules() -> dict[str, Path]:
    """module name relative to the package ("data.sources", "experiments") -> file."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            out[name] = path
    return out


def imports_of(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, anywhere in the file (relative to the package),
    relative imports (``from .sets import x``) included."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return imports_in(path.read_text(encoding="utf-8"), list(parts[:-1]))


def imports_in(source: str, package: list[str]) -> set[str]:
    """:func:`imports_of` for the text of a module that lives in ``package`` (e.g. ["data"])."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            anchor = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            module = ".".join(["cifarlib", *anchor, *([node.module] if node.module else [])])
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
        else:
            module = None
        if module is not None and module.split(".")[0] == "cifarlib":
            base = module[len("cifarlib."):] if module != "cifarlib" else ""
            for alias in node.names:  # `from cifarlib import data` imports a module; `from x import name` its module
                candidate = f"{base}.{alias.name}".lstrip(".")
                found.add(candidate if candidate in package_modules() else base)
        elif isinstance(node, ast.Import):
            found |= {a.name[len("cifarlib."):] for a in node.names if a.name.startswith("cifarlib.")}
    return {m for m in found if m}


LAYERS = layers_from_map((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))
MODULES = package_modules()


def test_every_module_is_on_the_map_and_the_map_names_only_modules():
    assert sorted(set(MODULES) - set(LAYERS)) == [], "add these modules to ARCHITECTURE.md's layer table"
    assert sorted(set(LAYERS) - set(MODULES)) == [], "ARCHITECTURE.md lists modules that do not exist"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_to_the_same_layer_or_below(module):
    if module == "__main__":
        return
    level, _ = LAYERS[module]
    upward = {m: LAYERS[m] for m in imports_of(MODULES[module]) if m in LAYERS and LAYERS[m][0] > level}
    assert not upward, f"{module} (layer {level}) imports from higher layers: {upward}"


def test_nothing_imports_the_face():
    face = {m for m, (_, name) in LAYERS.items() if name == "face"}
    importers = {m: sorted(imports_of(p) & face) for m, p in MODULES.items() if m not in face}
    assert {m: f for m, f in importers.items() if f} == {}


def test_the_checker_sees_an_upward_import():
    """The checks above can fail: a data module that imported the runner, or its sibling relatively."""
    source = "from .loader import Loader\nfrom cifarlib import sweep\nfrom cifarlib.errors import CifarlibError\n"
    assert imports_in(source, ["data"]) == {"data.loader", "sweep", "errors"}
    assert LAYERS["sweep"][0] > LAYERS["data.sets"][0]
