"""Where a number came from: the state of the git checkout, in one format for run records and the report."""

from __future__ import annotations

import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def git(*args: str, where: Path | None = None) -> str | None:
    """``git ARGS`` run in ``where`` (default: this package's folder): its output, or None when git is
    missing, fails or takes over 10 s."""
    try:
        out = subprocess.run(["git", *args], cwd=where or PACKAGE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def checkout(where: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, uncommitted changes?) of the checkout holding ``where``; (None, None) outside one."""
    commit = git("rev-parse", "HEAD", where=where)
    if commit is None:
        return None, None
    return commit, bool(git("status", "--porcelain", "--untracked-files=no", where=where))


def commit_label(commit: str | None, dirty: bool | None) -> str:
    """``0123456789`` or ``0123456789 (modified)`` (the checkout had uncommitted changes); "not a git
    checkout" without a commit."""
    if not commit:
        return "not a git checkout"
    return commit[:10] + (" (modified)" if dirty else "")


def commit_mark(commit: str | None, dirty: bool | None) -> str:
    """The compact form for a table column: ``0123456789``, ``0123456789*`` (uncommitted changes), "–"."""
    return f"{commit[:10]}{'*' if dirty else ''}" if commit else "–"
