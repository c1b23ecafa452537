"""How numbers and tables look: the number formats of the terminal, the report and the figures, and the rich
consoles and tables of the CLI, in one place.

Terminal output has a deterministic width: ``$FA2BENCH_WIDTH`` when set, else the terminal's width, else 200
columns (wide tables when the output is a file or a pipe; the tests set the variable).
"""
from __future__ import annotations

import functools
import math
import os
import shutil
import sys
from typing import Iterable, Sequence

WIDTH_ENV = "FA2BENCH_WIDTH"
PIPE_WIDTH = 200


# --- numbers ---------------------------------------------------------------------------------------------


def finite(value) -> float | None:
    """``value`` as a float, or None when it is missing, not a number, NaN or infinite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def num(value, suffix: str = "") -> str:
    """Terminal tables: one decimal from 10 up, two below; "-" when there is no number."""
    v = finite(value)
    if v is None:
        return "-"
    return f"{v:.1f}{suffix}" if v >= 10 else f"{v:.2f}{suffix}"


def sig(value, suffix: str = "", digits: int = 3) -> str:
    """The report: ``digits`` significant digits, whole numbers from 100 up; "-" when there is no number."""
    v = finite(value)
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}{suffix}"
    return f"{v:.{digits}g}{suffix}"


def bar_value(v: float) -> str:
    """A value printed on a figure's bar or cell: short (3 digits at most), "" when not finite."""
    if not math.isfinite(v):
        return ""
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}" if v < 20 else f"{v:.0f}"
    return f"{v:.2g}" if v >= 0.01 else f"{v:.1e}"


def gb(value) -> str:
    """Bytes as "1.234 GB" (decimal gigabytes, as ncu reports DRAM traffic); "-" when there is no number."""
    v = finite(value)
    return "-" if v is None else f"{v / 1e9:.3f} GB"


def ms(value) -> str:
    """Milliseconds, four significant digits; "-" when there is no number."""
    v = finite(value)
    return "-" if v is None else f"{v:.4g}"


def ratio_label(v: float) -> str:
    """2 -> "2×", 0.25 -> "1/4×", 1/1024 -> "1/1024×" (a whole reciprocal in full), 0.3 -> "0.3×"."""
    if v <= 0 or not math.isfinite(v):
        return ""
    if v >= 1:
        return f"{v:.4g}×" if v < 1e4 else f"{v:.0f}×"
    inverse = 1 / v
    return f"1/{round(inverse)}×" if abs(inverse - round(inverse)) < 1e-6 * inverse else f"{v:.3g}×"


# --- the terminal ----------------------------------------------------------------------------------------


def width() -> int:
    named = os.environ.get(WIDTH_ENV, "")
    if named.isdigit() and int(named) > 0:
        return int(named)
    if sys.stdout is not None and sys.stdout.isatty():
        return shutil.get_terminal_size(fallback=(PIPE_WIDTH, 40)).columns
    return PIPE_WIDTH


def console(stderr: bool = False):
    """A rich console on stdout (or stderr) at ``width()`` columns; made per command, so a test's captured
    stdout and width apply. A reader that stops early (`fa2bench compare A B | head`) closes stdout: the rest of
    the output is dropped quietly and the command ends with its own exit code (rich's default exits 1, which
    `compare` uses for a regression)."""
    from rich.console import Console

    return (Console if stderr else _pipe_console())(stderr=stderr, width=width())


@functools.cache
def _pipe_console():
    from rich.console import Console

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so that Python's flush at exit does not hit the pipe again
            os.close(devnull)

    return PipeConsole


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence], *, left: Iterable[str] = (),
          no_wrap: Iterable[str] = (), fold: bool = False):
    """A rich table: the ``left`` columns left-aligned, the others right-aligned (numbers); ``no_wrap`` columns
    never wrap; ``fold`` folds long cells instead of wrapping at spaces."""
    from rich.table import Table

    left, no_wrap = set(left), set(no_wrap)
    out = Table(title=title)
    for col in columns:
        out.add_column(col, justify="left" if col in left else "right", no_wrap=col in no_wrap,
                       overflow="fold" if fold else "ellipsis")
    for row in rows:
        out.add_row(*(str(cell) for cell in row))
    return out
