"""Telemetry over the timed calls: the sampler's arithmetic with a fake NVML, throttle flags and their
fraction, the window around timing, and empty columns without NVML."""
import sys
import time
import types

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fa2bench.run import results, telemetry
from fa2bench.run.telemetry import COLUMNS, NvmlDevice, Sample, decode_reasons, summarise, throttle_summary

IDLE, APP_CLOCKS, SW_POWER_CAP, HW_SLOWDOWN, HW_THERMAL, POWER_BRAKE = 0x1, 0x2, 0x4, 0x8, 0x40, 0x80


class NVMLError(Exception):
    pass


class FakeNvml:
    """The few pynvml functions telemetry calls, scripted: a GPU at ``watts`` whose energy counter runs on the
    wall clock, with ``reasons`` as its clock-event mask. ``missing`` names functions that raise."""
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0
    NVMLError = NVMLError

    def __init__(self, watts=300.0, sm_mhz=1755, mem_mhz=2619, temp=60, reasons=0, missing=(), new_names=True):
        self.watts, self.sm_mhz, self.mem_mhz, self.temp, self.reasons = watts, sm_mhz, mem_mhz, temp, reasons
        self.missing = set(missing)
        self.t0 = time.perf_counter()
        self.reads = 0
        if new_names:
            self.nvmlDeviceGetCurrentClocksEventReasons = self._reasons
        else:
            self.nvmlDeviceGetCurrentClocksThrottleReasons = self._reasons

    def _check(self, name):
        if name in self.missing:
            raise NVMLError(f"{name}: Not Supported")

    def nvmlDeviceGetClockInfo(self, handle, clock):
        self._check("clock")
        self.reads += 1
        return self.sm_mhz if clock == self.NVML_CLOCK_SM else self.mem_mhz

    def nvmlDeviceGetPowerUsage(self, handle):
        self._check("power")
        return int(self.watts * 1000)  # mW

    def nvmlDeviceGetTemperature(self, handle, sensor):
        self._check("temperature")
        return self.temp

    def _reasons(self, handle):
        self._check("reasons")
        return self.reasons

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        self._check("energy")
        return int(self.watts * (time.perf_counter() - self.t0) * 1000)  # mJ


def samples(*masks, power=300.0, sm=1800.0, temp=60):
    return [Sample(t_s=i * 0.005, sm_clock_mhz=sm, mem_clock_mhz=2619.0, power_w=power, temp_c=temp, reasons=m)
            for i, m in enumerate(masks)]


# --- the arithmetic -------------------------------------------------------------------------------------


def test_energy_per_call_is_window_power_times_the_median_call():
    # 30 J by the counter over 0.1 s: 300 W; a call of 10 ms takes 3 J; 6e12 FLOPs per call -> 2 TFLOP/s per W
    row = summarise(samples(0, 0, 0, power=250.0), elapsed_s=0.1, ms_per_call=10.0, flops=6e12, energy_j=30.0)
    assert row["power_w"] == pytest.approx(300.0)  # the counter wins over the (averaged) power samples
    assert row["energy_j"] == pytest.approx(3.0)
    assert row["tflops_per_w"] == pytest.approx(2.0)
    assert row["sm_clock_mhz"] == 1800.0


def test_without_an_energy_counter_power_is_the_mean_sample():
    window = [Sample(0.0, power_w=200.0), Sample(0.05, power_w=300.0), Sample(0.1, power_w=400.0)]
    row = summarise(window, elapsed_s=0.2, ms_per_call=50.0, flops=1e12, energy_j=None)
    assert row["power_w"] == pytest.approx(300.0)
    assert row["energy_j"] == pytest.approx(300.0 * 0.05)  # 15 J per call
    assert row["tflops_per_w"] == pytest.approx(1e12 / 15 / 1e12)


def test_temperature_is_the_hottest_sample_and_clocks_the_mean_and_the_lowest():
    window = [Sample(0.0, sm_clock_mhz=1700.0, temp_c=58), Sample(0.1, sm_clock_mhz=1900.0, temp_c=71)]
    row = summarise(window, elapsed_s=0.1, ms_per_call=1.0, flops=1)
    assert row["temp_c"] == 71 and row["sm_clock_mhz"] == 1800.0 and row["sm_clock_min_mhz"] == 1700.0


def test_the_throttled_fraction_counts_samples_that_slowed_the_clocks():
    row = summarise(samples(0, SW_POWER_CAP, IDLE, HW_THERMAL | IDLE), elapsed_s=0.02, ms_per_call=1.0, flops=1)
    assert row["throttled"] is True and row["throttled_frac"] == pytest.approx(0.5)
    assert summarise(samples(0, IDLE), elapsed_s=0.01, ms_per_call=1.0, flops=1)["throttled_frac"] == 0.0


@pytest.mark.parametrize("masks, throttled, reason", [
    ((0, 0), False, ""),
    ((IDLE, 0, IDLE), False, ""),  # the GPU idling between launches is not throttling
    ((APP_CLOCKS | IDLE,), False, ""),  # clocks a user pinned: a setting, not a slowdown
    ((0, SW_POWER_CAP, 0), True, "sw_power_cap"),  # one sample is enough
    ((HW_THERMAL, POWER_BRAKE | IDLE), True, "hw_thermal_slowdown;hw_power_brake_slowdown"),
    ((SW_POWER_CAP | HW_SLOWDOWN,), True, "sw_power_cap;hw_slowdown"),
])
def test_throttle_flags_or_every_sample_and_ignore_idle(masks, throttled, reason):
    row = summarise(samples(*masks), elapsed_s=0.01, ms_per_call=1.0, flops=1, energy_j=1.0)
    assert row["throttled"] is throttled
    assert row["throttle_reason"] == reason


def test_no_throttle_reasons_reported_means_unknown_not_false():
    row = summarise([Sample(0.0, power_w=100.0)], elapsed_s=0.01, ms_per_call=1.0, flops=1)
    assert row["throttled"] is None and row["throttle_reason"] is None and row["throttled_frac"] is None


def test_decode_reasons_names_every_bit_and_keeps_unknown_ones():
    assert decode_reasons(0) == []
    assert decode_reasons(IDLE | SW_POWER_CAP) == ["gpu_idle", "sw_power_cap"]
    assert decode_reasons(0x200 | 0x400) == ["board_limit", "reliability"]
    assert decode_reasons(0x1000 | HW_SLOWDOWN) == ["hw_slowdown", "0x1000"]


# --- the NVML device and the sampler -------------------------------------------------------------------


def test_device_reads_convert_units_and_missing_fields_stay_empty():
    nvml = FakeNvml(watts=412.5, missing={"temperature", "energy"})
    device = NvmlDevice(nvml, handle="gpu0")
    s = device.read()
    assert (s.sm_clock_mhz, s.mem_clock_mhz, s.power_w, s.temp_c, s.reasons) == (1755, 2619, 412.5, None, 0)
    assert device.energy_mj() is None


def test_older_drivers_throttle_reason_name_is_used_when_the_new_one_is_absent_or_fails():
    device = NvmlDevice(FakeNvml(reasons=SW_POWER_CAP, new_names=False), handle=0)
    assert device.read().reasons == SW_POWER_CAP
    nvml = FakeNvml(reasons=HW_SLOWDOWN)  # the binding has the new name, the driver does not
    nvml.nvmlDeviceGetCurrentClocksThrottleReasons = nvml._reasons
    nvml.nvmlDeviceGetCurrentClocksEventReasons = lambda handle: (_ for _ in ()).throw(NVMLError("Function Not Found"))
    device = NvmlDevice(nvml, handle=0)
    assert device.read().reasons == HW_SLOWDOWN and device.read().reasons == HW_SLOWDOWN


def test_the_window_samples_while_the_timed_calls_run():
    """NVML is read by the background thread during what runs inside the window (the timing itself), and the
    row describes that window: a GPU that throttles during the calls is throttled in the row."""
    nvml = FakeNvml(watts=300.0, reasons=IDLE | HW_THERMAL)
    reads_inside = []
    with telemetry.Window(NvmlDevice(nvml, 0), period_ms=2, synchronize=lambda: None) as window:
        for _ in range(20):
            time.sleep(0.002)
        reads_inside.append(nvml.reads)
    row = window.columns(ms_per_call=2.0, flops=3e9)
    assert set(row) == set(COLUMNS)
    assert reads_inside[0] >= 2 * 3  # the thread sampled during the calls (two clock reads per sample)
    assert row["power_w"] == pytest.approx(300.0, rel=0.1)
    assert row["energy_j"] == pytest.approx(0.6, rel=0.1)  # 300 W x 2 ms
    assert row["tflops_per_w"] == pytest.approx(3e9 / row["energy_j"] / 1e12)
    assert row["throttled"] is True and row["throttled_frac"] == 1.0
    assert row["throttle_reason"] == "hw_thermal_slowdown"


def test_the_window_stops_its_thread_when_the_timing_raises():
    window = telemetry.Window(NvmlDevice(FakeNvml(), 0), period_ms=1, synchronize=lambda: None)
    with pytest.raises(RuntimeError):
        with window:
            raise RuntimeError("the point failed")
    assert not window._sampler._thread.is_alive()


def test_nvml_failing_mid_window_leaves_fields_empty_and_never_raises():
    dead = FakeNvml(missing={"clock", "power", "energy", "temperature", "reasons"})
    with telemetry.Window(NvmlDevice(dead, 0), period_ms=1, synchronize=lambda: None) as window:
        time.sleep(0.005)
    row = window.columns(1.0, 1e9)
    assert row == telemetry.empty()


# --- no NVML -------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the GPU-less path")
def test_without_a_gpu_the_columns_are_empty():
    with telemetry.Window() as window:
        pass
    assert window.columns(1.0, 1e9) == {c: None for c in COLUMNS}


def test_missing_nvidia_ml_py_or_a_failing_init_means_no_nvml(monkeypatch):
    telemetry.nvml.cache_clear()
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert telemetry.nvml() is None
    telemetry.nvml.cache_clear()

    def fail():
        raise NVMLError("Driver Not Loaded")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=fail))
    assert telemetry.nvml() is None
    telemetry.nvml.cache_clear()


def test_the_results_table_carries_the_telemetry_columns():
    assert set(COLUMNS) <= set(results.COLUMNS)


# --- the sweep's warning -------------------------------------------------------------------------------


def frame_of(*rows):
    return pd.DataFrame([{"status": s, "throttled": t, "throttle_reason": r} for s, t, r in rows])


def test_throttle_summary_counts_ok_points_and_their_reasons():
    frame = frame_of(("ok", True, "sw_power_cap"), ("ok", "True", "sw_power_cap;hw_slowdown"), ("ok", False, ""),
                     ("error", True, "sw_power_cap"), ("ok", None, None))
    note = throttle_summary(frame)
    assert note.startswith("2 of 4 ok points ran with the GPU throttled")
    assert "sw_power_cap x2" in note and "hw_slowdown x1" in note


@pytest.mark.parametrize("frame", [
    frame_of(("ok", False, ""), ("ok", "False", "")),
    frame_of(("ok", None, None)),  # no NVML: empty columns
    pd.DataFrame({"status": ["ok"]}),
    pd.DataFrame(),
])
def test_throttle_summary_is_silent_when_nothing_was_throttled(frame):
    assert throttle_summary(frame) is None


def test_the_sweep_warns_when_points_were_throttled(tmp_path, monkeypatch):
    from fa2bench.cli import app

    def throttled(self, ms, flops):
        return {**telemetry.empty(), "throttled": True, "throttle_reason": "sw_thermal_slowdown"}

    monkeypatch.setattr(telemetry.Window, "columns", throttled)
    result = CliRunner().invoke(app, ["sweep", "--seqlen", "16", "--headdim", "16", "--batch", "1", "--heads", "1",
                                      "--provider", "torch-eager", "--mode", "fwd", "--causal", "off", "--dtype",
                                      "fp32", "--rep-ms", "1", "--warmup-ms", "0", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "1 of 1 ok points ran with the GPU throttled (sw_thermal_slowdown x1)" in " ".join(result.output.split())
    assert results.load_run(tmp_path / "run")["throttled"].astype(str).str.lower().tolist() == ["true"]


# --- on a GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_on_a_gpu_every_column_is_filled_from_the_timed_window():
    from fa2bench.run import timing

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    flops = 2 * 4096**3
    with telemetry.Window() as window:
        measured = timing.bench(lambda: a @ a, timer="plain")
    row = window.columns(measured.ms, flops)
    assert row["sm_clock_min_mhz"] <= row["sm_clock_mhz"] and 0 <= row["throttled_frac"] <= 1
    assert row["sm_clock_mhz"] > 100 and row["power_w"] > 10 and row["temp_c"] > 0
    assert row["energy_j"] > 0 and row["tflops_per_w"] == pytest.approx(flops / row["energy_j"] / 1e12)
    assert row["throttled"] in (True, False) and isinstance(row["throttle_reason"], str)
