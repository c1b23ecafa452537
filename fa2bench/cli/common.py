"""What every command shares: the Typer app, the choices and options declared once, and the one-line error."""
from __future__ import annotations

import dataclasses
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from fa2bench.read import display

from fa2bench.core import providers
from fa2bench.e2e.configs import MODELS as E2E_MODELS
from fa2bench.e2e.schema import PARALLEL as E2E_PARALLEL
from fa2bench.core.flops import MODES
from fa2bench.core.presets import DTYPES, PRESETS, SpecError

app = typer.Typer(no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
                  help="Benchmark and profile attention kernels around FlashAttention-2.")


def choices(name: str, values) -> type[Enum]:
    """A str Enum of ``values`` (Typer lists them in --help and completes them)."""
    return Enum(name, {v: v for v in values}, type=str)


Preset = choices("Preset", PRESETS)
Causal = choices("Causal", ("off", "on", "both"))
ProviderName = choices("ProviderName", providers.names())
Mode = choices("Mode", MODES)
Dtype = choices("Dtype", DTYPES)
ExportFormat = choices("ExportFormat", ("github-benchmark",))
Metric = choices("Metric", ("ms", "tflops"))

# --- options shared by the commands, declared once -------------------------------------------------------

SHAPE, RUN, OUTPUT = "Shape", "Run", "Output"


def option(kind, help: str, panel: str):
    """An optional option of type ``kind`` in the help panel ``panel`` (Typer names it after the parameter)."""
    return Annotated[Optional[kind], typer.Option(help=help, rich_help_panel=panel)]


Seqlen = option(str, "Sequence lengths: 512,1024, 512..16384 (doubling) or 64:256:64.", SHAPE)
SeqlenK = option(str, "Key/value lengths for cross-attention (default: = seqlen).", SHAPE)
Headdim = option(str, "Head dimensions, e.g. 64,128.", SHAPE)
Batch = option(str, "Batch sizes (instead of --tokens).", SHAPE)
Tokens = option(int, "Tokens per batch: batch = tokens // seqlen.", SHAPE)
Heads = option(str, "Query heads (instead of --hidden).", SHAPE)
Hidden = option(int, "Hidden size: heads = hidden // headdim.", SHAPE)
KvHeads = option(str, "Key/value heads for GQA/MQA (default: = heads).", SHAPE)
CausalOption = option(Causal, "Causal masking: off, on or both.", SHAPE)
OneMode = Annotated[Mode, typer.Option(help="Pass to run.", rich_help_panel=SHAPE)]
OneDtype = Annotated[Dtype, typer.Option(help="Input dtype.", rich_help_panel=SHAPE)]
RunDir = Annotated[Path, typer.Argument(help="A results folder (written by `fa2bench sweep`).")]
Formats = Annotated[str, typer.Option("--format", help="Comma-separated figure formats: png, svg, pdf.",
                                      rich_help_panel=OUTPUT)]


def shape_options(**given) -> dict:
    """The shape options the user gave (None: not given), keyed as ``fa2bench.core.config`` fields."""
    return {k: v for k, v in given.items() if v is not None}


def out(stderr: bool = False):
    return display.console(stderr)


def fail(message: str, code: int = 2) -> None:
    """One clear line on stderr and a non-zero exit (2: usage error)."""
    out(stderr=True).print(f"[bold red]fa2bench: error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    out(stderr=True).print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def no_gpu(console, what: str) -> None:
    """The loud panel of a run without a GPU: ``what`` runs instead, and its timings are no GPU's."""
    from rich.panel import Panel

    console.print(Panel(f"No CUDA GPU: {what}.\nThese timings are NOT GPU performance; they only prove the "
                        "pipeline works.", title="NO GPU", style="bold red"))


def has_cuda() -> bool:
    from fa2bench.core import device
    return device.has_cuda()
