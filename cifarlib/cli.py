"""``python -m cifarlib <command> ...`` — the commands the README and the Makefile call.

This file only dispatches: each command is a function ``f(argv) -> exit status`` in a face module
(``commands``, ``data.command``, ``bench``, ``report``, ``devcheck``), imported when called, so that
``python -m cifarlib data`` does not pay for importing the report machinery and vice versa.
Nothing in the package imports this module.
"""

from __future__ import annotations

import importlib
import os
import sys

from cifarlib.errors import CifarlibError

# command -> (module, function, one-line help). The function takes argv (list[str]) and
# returns an exit status.
COMMANDS = {
    "data": ("cifarlib.data.command", "main", "show what data set a data root holds, with load times"),
    "experiments": ("cifarlib.commands", "list_experiments", "list the named experiments"),
    "run": ("cifarlib.commands", "run", "train named experiments (or load their cached runs)"),
    "bench": ("cifarlib.bench", "cli", "training throughput: cifarlib vs a reference pipeline"),
    "report": ("cifarlib.report", "cli", "run the notebooks and export the PDF/HTML report"),
    "gpu-check": ("cifarlib.devcheck", "cli", "run and time the bench, Model B and the report on a GPU"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m cifarlib <command> [options]   (<command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print escaped, never as a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except CifarlibError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (`| head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        return 0
