"""The fa2bench command line: thin Typer commands over the library (``fa2bench.api`` and the stage packages),
one module per group of commands, options declared once (``common``), terminal output in one place (``render``).
Importing it imports no torch: ``fa2bench --help`` is quick. Bad input is one line on stderr and exit code 2.
"""
# each registers its commands, in this order
from fa2bench.cli import sweep, info, profile, runs, train  # noqa: F401, I001
from fa2bench.cli.common import app

__all__ = ["app"]
