"""GPU telemetry around a sweep point (NVML): clocks, power, energy, temperature and clock-throttle reasons.

``measure(fn, ms_per_call, flops)`` runs ``fn`` back to back for about ``WINDOW_MS`` (at least ``MIN_CALLS``
calls) while a background ``Sampler`` thread reads NVML every ``PERIOD_MS``: SM and memory clocks, power,
temperature and the clock-event (throttle) reasons. The columns it returns:

- ``sm_clock_mhz``: mean SM clock over the samples.
- ``energy_j``: joules per call, from NVML's total-energy counter (Volta and later: the delta across the
  window over the calls); without the counter, mean sampled power x window time / calls.
- ``power_w``: mean power over the window, energy / time when the counter exists (on Ampere and later,
  ``nvmlDeviceGetPowerUsage`` is averaged over about a second, too slow for a window this short), else the
  mean of the power samples.
- ``tflops_per_w``: FLOPs per call / joules per call, in TFLOP/s per watt (= TFLOP per joule).
- ``temp_c``: the hottest GPU temperature sample.
- ``throttled``: whether any sample carried a reason that *slows the clocks*: software power cap, hardware
  slowdown, software or hardware thermal slowdown, power-brake slowdown, sync boost, display clock setting,
  board limit, reliability. Not counted: ``gpu_idle`` (the GPU between launches) and
  ``applications_clocks_setting`` (clocks a user pinned; a setting, not a slowdown).
- ``throttle_reason``: the counted reasons seen, joined by ";" ("" when not throttled).

Without CUDA, without nvidia-ml-py, or when NVML fails to start, every column is empty (None) and nothing
raises. The arithmetic (``summarise``, ``decode_reasons``) is pure and tested with a fake NVML module.
"""
from __future__ import annotations

import functools
import math
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

COLUMNS = ("sm_clock_mhz", "power_w", "energy_j", "tflops_per_w", "temp_c", "throttled", "throttle_reason")
WINDOW_MS = 150.0  # NVML's energy counter moves in steps of about 10 ms: a short window would be coarse
PERIOD_MS = 5.0
MIN_CALLS = 3
MAX_CALLS = 100_000

# nvmlClocksEventReason* bits (nvml.h); the old nvmlClocksThrottleReason* names carry the same values.
REASON_BITS = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}
NOT_THROTTLING = 0x001 | 0x002  # idle and application-clocks setting: reported, but not a slowdown


@dataclass(frozen=True)
class Sample:
    """One NVML reading; a field is None when the GPU does not report it."""
    t_s: float
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    power_w: float | None = None
    temp_c: float | None = None
    reasons: int | None = None


def empty() -> dict:
    """The columns of a point without telemetry."""
    return {c: None for c in COLUMNS}


def decode_reasons(mask: int) -> list[str]:
    """Names of the bits set in a clock-event-reasons mask (unknown bits as hex)."""
    names = [name for bit, name in REASON_BITS.items() if mask & bit]
    unknown = mask & ~sum(REASON_BITS)
    if unknown:
        names.append(f"0x{unknown:x}")
    return names


def throttle_reasons(mask: int) -> list[str]:
    """The reasons in ``mask`` that count as throttling (everything but idle and application clocks)."""
    return decode_reasons(mask & ~NOT_THROTTLING)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarise(samples: Sequence[Sample], calls: int, elapsed_s: float, flops: int | float | None,
              energy_j: float | None = None) -> dict:
    """The telemetry columns of one window: ``calls`` calls in ``elapsed_s`` seconds, ``energy_j`` joules by
    the energy counter over the window (None where the GPU has none)."""
    power = _mean(s.power_w for s in samples)
    if energy_j is not None and energy_j > 0 and elapsed_s > 0:
        power = energy_j / elapsed_s
        per_call = energy_j / calls
    elif power is not None and elapsed_s > 0:
        per_call = power * elapsed_s / calls
    else:
        per_call = None
    temps = [s.temp_c for s in samples if s.temp_c is not None]
    masks = [s.reasons for s in samples if s.reasons is not None]
    seen = 0
    for mask in masks:
        seen |= mask
    names = throttle_reasons(seen)
    return {
        "sm_clock_mhz": _mean(s.sm_clock_mhz for s in samples),
        "power_w": power,
        "energy_j": per_call,
        "tflops_per_w": flops / per_call / 1e12 if per_call and flops else None,
        "temp_c": max(temps) if temps else None,
        "throttled": bool(names) if masks else None,
        "throttle_reason": ";".join(names) if masks else None,
    }


def calls_for(window_ms: float, ms_per_call: float) -> int:
    """How many calls fill the window (at least MIN_CALLS, at most MAX_CALLS)."""
    if not ms_per_call or not math.isfinite(ms_per_call) or ms_per_call <= 0:
        return MIN_CALLS
    return int(min(MAX_CALLS, max(MIN_CALLS, math.ceil(window_ms / ms_per_call))))


# --- NVML ------------------------------------------------------------------------------------------------


class NvmlDevice:
    """One GPU through an NVML module (``pynvml``, or a fake with the same functions). Reads never raise."""

    def __init__(self, nvml, handle):
        self.nvml = nvml
        self.handle = handle
        # the newer name first; a driver older than 535 lacks it (FunctionNotFound), so the old one follows
        self._reasons = [f for f in (getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None),
                                     getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)) if f]

    def _try(self, fn, *args):
        try:
            return fn(self.handle, *args)
        except Exception:  # NVMLError_NotSupported and friends: that field stays empty
            return None

    def read(self) -> Sample:
        n = self.nvml
        power_mw = self._try(n.nvmlDeviceGetPowerUsage)
        return Sample(
            t_s=time.perf_counter(),
            sm_clock_mhz=self._try(n.nvmlDeviceGetClockInfo, n.NVML_CLOCK_SM),
            mem_clock_mhz=self._try(n.nvmlDeviceGetClockInfo, n.NVML_CLOCK_MEM),
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            temp_c=self._try(n.nvmlDeviceGetTemperature, n.NVML_TEMPERATURE_GPU),
            reasons=self._read_reasons(),
        )

    def _read_reasons(self) -> int | None:
        while self._reasons:
            mask = self._try(self._reasons[0])
            if mask is not None or len(self._reasons) == 1:
                return mask
            self._reasons.pop(0)  # this name does not work here: use the next one from now on
        return None

    def energy_mj(self) -> float | None:
        """The total-energy counter in millijoules, None where the GPU has none."""
        fn = getattr(self.nvml, "nvmlDeviceGetTotalEnergyConsumption", None)
        return self._try(fn) if fn else None


class Sampler:
    """Reads ``device`` every ``period_s`` in a background thread, from ``start()`` until ``stop()``; one
    reading is taken at each end, so a window always has at least two samples."""

    def __init__(self, device: NvmlDevice, period_s: float = PERIOD_MS / 1e3):
        self.device = device
        self.period_s = period_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fa2bench-nvml", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.samples.append(self.device.read())

    def start(self) -> "Sampler":
        self.samples.append(self.device.read())
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.device.read())
        return self.samples


@functools.cache
def nvml():
    """pynvml, initialised once for the process (telemetry and ``hardware.gpu_info`` share it); None without
    nvidia-ml-py or when NVML cannot start (no driver, no GPU)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def nvml_index(cuda_index: int) -> int:
    """NVML's index of CUDA device ``cuda_index`` (they differ under CUDA_VISIBLE_DEVICES)."""
    import torch

    try:
        return torch.cuda._get_nvml_device_index(cuda_index)
    except Exception:
        return cuda_index


@functools.cache
def current_device() -> NvmlDevice | None:
    """The NVML view of the current CUDA device, or None (no CUDA, no NVML)."""
    import torch

    if not torch.cuda.is_available():
        return None
    module = nvml()
    if module is None:
        return None
    try:
        handle = module.nvmlDeviceGetHandleByIndex(nvml_index(torch.cuda.current_device()))
    except Exception:
        return None
    return NvmlDevice(module, handle)


def _cuda_synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], ms_per_call: float, flops: int | float | None, *,
            device: NvmlDevice | None = None, window_ms: float = WINDOW_MS, period_ms: float = PERIOD_MS,
            grad_to_none: Sequence | None = None, synchronize: Callable[[], None] = _cuda_synchronize) -> dict:
    """Telemetry columns for ``fn`` called back to back for ``window_ms``; empty where NVML is absent.

    ``ms_per_call`` (the timing just measured) sizes the window; ``grad_to_none`` tensors get ``.grad = None``
    before each call, as in timing. ``device`` and ``synchronize`` are for tests (a fake NVML device).
    """
    device = device if device is not None else current_device()
    if device is None:
        return empty()
    calls = calls_for(window_ms, ms_per_call)
    synchronize()
    sampler = Sampler(device, period_ms / 1e3).start()
    try:
        energy_start = device.energy_mj()  # the counter and the clock bracket exactly the same interval
        start = time.perf_counter()
        for _ in range(calls):
            for t in grad_to_none or ():
                t.grad = None
            fn()
        synchronize()
        elapsed = time.perf_counter() - start
        energy_end = device.energy_mj()
    finally:
        samples = sampler.stop()
    energy = None
    if energy_start is not None and energy_end is not None and energy_end > energy_start:
        energy = (energy_end - energy_start) / 1000.0
    return summarise(samples, calls, elapsed, flops, energy)


# --- the sweep's warning ---------------------------------------------------------------------------------


def _flag(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0", "yes")


def throttle_summary(frame) -> str | None:
    """One line on the throttled points of a results frame, or None when no ok point was throttled."""
    if "throttled" not in frame or not len(frame):
        return None
    ok = frame["status"] == "ok" if "status" in frame else frame["throttled"].notna()
    flagged = frame["throttled"].map(_flag) & ok
    count = int(flagged.sum())
    if not count:
        return None
    reasons: Counter = Counter()
    for text in frame.loc[flagged, "throttle_reason"] if "throttle_reason" in frame else ():
        reasons.update(r for r in str(text).split(";") if r and r != "nan" and r != "<NA>")
    detail = ", ".join(f"{name} x{n}" for name, n in reasons.most_common())
    return (f"{count} of {int(ok.sum())} ok points ran with the GPU throttled"
            f"{f' ({detail})' if detail else ''}: their timings may be low; plots can filter on the "
            "throttled column")
