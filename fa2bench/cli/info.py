"""`fa2bench providers` and `fa2bench info`."""

from __future__ import annotations

import math
from typing import Annotated, Optional

import typer

from fa2bench.cli.common import app, out, fail, DTYPES, display, providers


# --- providers, info -----------------------------------------------------------------------------------


@app.command("providers")
def list_providers():
    """Every provider, whether it is available here, and why not."""
    from fa2bench.core import device
    where = device.name()
    rows = []
    for name in providers.names():
        p = providers.get(name)
        why = p.availability(where)
        rows.append((name, p.kind, "yes" if why is None else f"no: {why}", ",".join(sorted(p.dtypes)),
                     str(p.max_headdim) if p.max_headdim < 1 << 20 else "any", p.description))
    cols = ("name", "kind", "available", "dtypes", "max head dim", "description")
    out().print(display.table(f"Providers (device: {where})", cols, rows, left=cols, no_wrap=("name", "kind")))


@app.command()
def info(
    measure: Annotated[bool, typer.Option(help="Time a large matmul and a large copy: achievable ceilings.")] = False,
    peak_tflops: Annotated[Optional[float], typer.Option(help="Override this GPU's peak TFLOP/s.")] = None,
):
    """GPU(s), driver, versions, and the peak fa2bench uses for this GPU."""
    from fa2bench.run import hardware
    if peak_tflops is not None and not (peak_tflops > 0 and math.isfinite(peak_tflops)):
        fail(f"--peak-tflops must be a positive number, got {peak_tflops}")
    console = out()
    versions = hardware.software_versions()
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), highlight=False)
    gpus = hardware.gpu_info()
    if not gpus:
        if measure:
            fail("--measure times the GPU's matmul and copy ceilings: no CUDA GPU here")
        console.print("No CUDA GPU found. `fa2bench sweep` will run the smoke preset through Triton's CPU "
                      "interpreter; its timings are not GPU performance.")
        return
    for g in gpus:
        console.print(", ".join(f"{k}={v}" for k, v in g.items()), highlight=False)
    for d in DTYPES:
        peak = hardware.device_peak(gpus[0]["name"], d, peak_tflops)
        console.print(f"peak {d}: {peak.tflops or 'unknown'} TFLOP/s, {peak.matched or ''} ({peak.source})",
                      highlight=False)
    hbm = hardware.hbm_bandwidth(gpus[0]["name"])
    if hbm:
        console.print(f"HBM bandwidth: {hbm[0]} TB/s ({hbm[1]})", highlight=False)
    console.print(f"A100 yardstick: {hardware.A100_PEAK_TFLOPS} TFLOP/s fp16/bf16")
    if measure:
        for k, v in hardware.measure_ceilings().items():
            console.print(f"measured {k}: {v:.1f}", highlight=False)
