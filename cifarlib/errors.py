"""The exception users see. Its message is one line: the problem, then the remedy."""

import argparse
import re


class CifarlibError(Exception):
    """A problem the user can fix. ``str(err)`` names what is wrong and what to do about it.

    The CLI prints it as ``error: <message>`` and exits with status 2, with no traceback.
    """


class WriteError(CifarlibError, OSError):
    """A file could not be written (disk full, no permission, ...): one line naming the file and the
    cause (``reason``, e.g. "No space left on device"). Also an OSError, so that code which tolerates a
    failed write (a cache) keeps doing so."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


def first_line(text, limit: int = 160) -> str:
    """The first non-blank line of ``text`` (any object: str() of it; an exception without text gives
    its type's name), cut to ``limit`` characters with "..." so that an error message built from it
    stays on one line. urllib's ``<urlopen error REASON>`` is reduced to REASON."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    url_error = re.search(r"<urlopen error (.*?)>", line)
    line = url_error.group(1) if url_error else line
    if not line and isinstance(text, BaseException):
        line = type(text).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises a one-line CifarlibError instead of printing usage and exiting."""

    def error(self, message):
        raise CifarlibError(f"{message}; see `python -m cifarlib {self.prog.split()[-1]} --help`")
