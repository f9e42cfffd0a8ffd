"""The ``geotranslate`` command line: parses options and calls the library functions.

Each subcommand (commands.py) is a thin wrapper; the work happens in chips/, train/, predict/,
evaluate.py and render.py, which are usable from Python too. Option handlers shared by the
commands, and the options derived from declared settings, are in options.py. A
GeotranslateError (bad input) is printed as one line, without a traceback, and exits with
status 1; Ctrl-C exits with 130.
"""

from geotranslate.cli.main import _one_line_warnings, cli, main

__all__ = ["_one_line_warnings", "cli", "main"]
