"""The exception users see. Its message is one line: the problem, then the remedy."""


class CifarlibError(Exception):
    """A problem the user can fix. ``str(err)`` names what is wrong and what to do about it.

    The CLI prints it as ``error: <message>`` and exits with status 2, with no traceback.
    """


def first_line(text, limit: int = 160) -> str:
    """The first non-blank line of ``text`` (any object: str() of it), cut to ``limit`` characters with
    "..." so that an error message built from it stays on one line."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."
