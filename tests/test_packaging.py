"""environment.yml (conda users) and pyproject.toml (pip users) must list the same packages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def normalize(requirement: str) -> tuple[str, str]:
    """('package-name', 'specifier') with PEP 503 name normalization and no spaces."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*", requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    return name, match.group(3).replace(" ", "")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def conda_env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))


def conda_pip_list(env: dict) -> list[str]:
    pip = [entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict) and "pip" in entry]
    assert len(pip) == 1, "environment.yml should have exactly one pip: section"
    return pip[0]


def test_environment_pip_list_matches_pyproject_dependencies_and_test_extra():
    project = pyproject()["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    listed = [r for r in conda_pip_list(conda_env()) if not r.startswith("-e")]
    assert sorted(map(normalize, listed)) == sorted(map(normalize, wanted))
    assert len(set(map(normalize, wanted))) == len(wanted), "a package is listed twice in pyproject.toml"


def test_environment_installs_the_package_itself_editable():
    assert "-e ." in conda_pip_list(conda_env())


def test_python_version_floor_agrees():
    conda_python = [d for d in conda_env()["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert conda_python == [f"python{pyproject()['project']['requires-python']}"]


def test_normalize_catches_differences():
    assert normalize("Torch_Vision >= 0.16") == normalize("torch-vision>=0.16")
    assert normalize("torch>=2.1") != normalize("torch>=2.2")
