"""GPU telemetry around a sweep point (NVML): placeholder interface, filled in by the profiling issue."""
from __future__ import annotations

COLUMNS = ("sm_clock_mhz", "power_w", "energy_j", "tflops_per_w", "temp_c", "throttled", "throttle_reason")


def measure(fn, ms_per_call: float, flops: int) -> dict:
    """Telemetry columns for repeated calls of ``fn``; empty values where NVML is absent."""
    return {}
