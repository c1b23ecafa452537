"""What an e2e results folder holds: its rows' columns, their identity, and how meta.json marks the run.

Rows carry the sweep's key columns (``presets.KEY_COLUMNS``: the attention shape of the model's layers, mode
``train``) so that ``results.load_run``, ``compare`` and notebooks read an e2e folder as they read a sweep; the
step time is in ``ms``/``ms_p20``/``ms_p80`` and the model TFLOP/s in ``tflops``. Pure: nothing here imports
torch, a provider or the runner, so plots and reports can import it.
"""
from __future__ import annotations

from fa2bench.run import telemetry
from fa2bench.core.presets import KEY_COLUMNS

KIND = "e2e"  # meta.json's "kind": how report and plot recognise an e2e run
MODE = "train"  # the ``mode`` column of e2e rows
SINGLE = "none"  # the ``parallel`` column of a one-process run
PARALLEL = ("ddp", "fsdp")  # data parallelism over ranks (``fa2bench e2e --gpus N --parallel ...``)
# Per GPU: micro_batch, tokens_per_step, tokens_per_s, flops, tflops, peak_mem_mb; global_tokens_per_s is all
# GPUs' (gpus x tokens_per_s).
E2E_COLUMNS = KEY_COLUMNS + (
    "model", "layers", "hidden", "params", "gpus", "parallel", "micro_batch", "grad_accum", "tokens_per_step",
    "checkpointing", "warmup", "steps", "status", "error", "note", "ms", "ms_p20", "ms_p80", "samples", "spread",
    "timer", "noisy", "tokens_per_s",
    "global_tokens_per_s", "flops", "tflops", "pct_a100_peak", "pct_device_peak", "peak_mem_mb", "loss_first",
    "loss_last", "max_rel_error", "energy_per_token_j",
) + telemetry.COLUMNS


def _given(value, default):
    """A cell of a row, or ``default`` where the row (a folder written before the column existed) has none."""
    return default if value is None or value != value or value == "" else value


def e2e_key(row: dict) -> tuple:
    """The identity of an e2e row for --resume: (model, seqlen, provider, gpus, parallel); rows written before
    data-parallel runs existed are one-process rows."""
    return (str(row["model"]), int(row["seqlen_q"]), str(row["provider"]), int(_given(row.get("gpus"), 1)),
            str(_given(row.get("parallel"), SINGLE)))
