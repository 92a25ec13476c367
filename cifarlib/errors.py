"""The exception users see. Its message is one line: the problem, then the remedy."""


class CifarlibError(Exception):
    """A problem the user can fix. ``str(err)`` names what is wrong and what to do about it.

    The CLI prints it as ``error: <message>`` and exits with status 2, with no traceback.
    """
