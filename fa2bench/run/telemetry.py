"""GPU telemetry over a sweep point's timed calls (NVML): clocks, power, energy, temperature and throttle reasons.

``Window`` brackets the timing itself: while ``timing.bench`` runs the point's timed calls, a background
``Sampler`` thread reads NVML every ``PERIOD_MS`` (SM and memory clocks, power, temperature, clock-event
reasons), and NVML's energy counter is read at both ends. So the row says what the GPU did during *those*
calls, not in a separate window after them (an earlier version ran a back-to-back window for telemetry; it no
longer serves anything the timed window does not, and it described other calls, so it is gone). The window
also holds what the timer does between calls (the plain timer's L2 flush, a few microseconds per call, and
its warm-up): the power is that of the timing as a whole. The columns ``Window.columns`` returns:

- ``sm_clock_mhz`` / ``sm_clock_min_mhz``: mean and lowest SM clock over the samples.
- ``power_w``: mean power over the window, energy / time when the energy counter exists (Volta and later; on
  Ampere and later ``nvmlDeviceGetPowerUsage`` is averaged over about a second, too slow for a short window),
  else the mean of the power samples.
- ``energy_j``: joules per call, mean power x the point's median time per call.
- ``tflops_per_w``: FLOPs per call / joules per call, in TFLOP/s per watt (= TFLOP per joule).
- ``temp_c``: the hottest GPU temperature sample.
- ``throttled`` / ``throttled_frac``: whether any sample, and which fraction of the samples, carried a reason
  that *slows the clocks*: software power cap, hardware slowdown, software or hardware thermal slowdown,
  power-brake slowdown, sync boost, display clock setting, board limit, reliability. Not counted: ``gpu_idle``
  (the GPU between launches) and ``applications_clocks_setting`` (clocks a user pinned; a setting).
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

COLUMNS = ("sm_clock_mhz", "sm_clock_min_mhz", "power_w", "energy_j", "tflops_per_w", "temp_c", "throttled",
           "throttled_frac", "throttle_reason")
PERIOD_MS = 5.0

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


def summarise(samples: Sequence[Sample], elapsed_s: float, ms_per_call: float | None, flops: int | float | None,
              energy_j: float | None = None) -> dict:
    """The telemetry columns of one window of ``elapsed_s`` seconds whose calls took ``ms_per_call`` each,
    ``energy_j`` joules by the energy counter over the window (None where the GPU has none)."""
    power = _mean(s.power_w for s in samples)
    if energy_j is not None and energy_j > 0 and elapsed_s > 0:
        power = energy_j / elapsed_s
    per_call = power * ms_per_call / 1e3 if power is not None and ms_per_call and math.isfinite(ms_per_call) \
        else None
    temps = [s.temp_c for s in samples if s.temp_c is not None]
    clocks = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
    masks = [s.reasons for s in samples if s.reasons is not None]
    seen = 0
    for mask in masks:
        seen |= mask
    names = throttle_reasons(seen)
    slowed = sum(1 for mask in masks if throttle_reasons(mask))
    return {
        "sm_clock_mhz": _mean(clocks),
        "sm_clock_min_mhz": min(clocks) if clocks else None,
        "power_w": power,
        "energy_j": per_call,
        "tflops_per_w": flops / per_call / 1e12 if per_call and flops else None,
        "temp_c": max(temps) if temps else None,
        "throttled": bool(names) if masks else None,
        "throttled_frac": slowed / len(masks) if masks else None,
        "throttle_reason": ";".join(names) if masks else None,
    }


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


class Window:
    """Telemetry over what runs inside ``with Window() as w:`` (the timed calls), then ``w.columns(ms, flops)``.

    ``device`` and ``synchronize`` are for tests (a fake NVML device); by default the current CUDA device,
    and without one the window records nothing and ``columns`` is ``empty()``.
    """

    def __init__(self, device: NvmlDevice | None = None, period_ms: float = PERIOD_MS,
                 synchronize: Callable[[], None] = _cuda_synchronize):
        self.device = device if device is not None else current_device()
        self.period_s = period_ms / 1e3
        self.synchronize = synchronize
        self.samples: list[Sample] = []
        self.elapsed_s = 0.0
        self.energy_j: float | None = None

    def __enter__(self) -> "Window":
        if self.device is None:
            return self
        self.synchronize()
        self._sampler = Sampler(self.device, self.period_s).start()
        self._energy = self.device.energy_mj()  # the counter and the clock bracket exactly the same interval
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device is None:
            return
        try:
            self.synchronize()
            self.elapsed_s = time.perf_counter() - self._start
            end = self.device.energy_mj()
        finally:
            self.samples = self._sampler.stop()
        if self._energy is not None and end is not None and end > self._energy:
            self.energy_j = (end - self._energy) / 1000.0

    def columns(self, ms_per_call: float | None, flops: int | float | None) -> dict:
        """The telemetry columns of the window; ``ms_per_call`` is the median the timing found."""
        if self.device is None:
            return empty()
        return summarise(self.samples, self.elapsed_s, ms_per_call, flops, self.energy_j)


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
