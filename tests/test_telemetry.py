"""Telemetry: the sampler's arithmetic with a fake NVML, throttle flags, and empty columns without NVML."""
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


def test_energy_per_call_comes_from_the_energy_counter():
    # 10 calls in 0.1 s, 30 J by the counter: 3 J per call, 300 W; 6e12 FLOPs per call -> 2 TFLOP/s per W
    row = summarise(samples(0, 0, 0, power=250.0), calls=10, elapsed_s=0.1, flops=6e12, energy_j=30.0)
    assert row["energy_j"] == pytest.approx(3.0)
    assert row["power_w"] == pytest.approx(300.0)  # the counter wins over the (averaged) power samples
    assert row["tflops_per_w"] == pytest.approx(2.0)
    assert row["sm_clock_mhz"] == 1800.0


def test_without_an_energy_counter_energy_is_mean_power_times_time():
    window = [Sample(0.0, power_w=200.0), Sample(0.05, power_w=300.0), Sample(0.1, power_w=400.0)]
    row = summarise(window, calls=4, elapsed_s=0.2, flops=1e12, energy_j=None)
    assert row["power_w"] == pytest.approx(300.0)
    assert row["energy_j"] == pytest.approx(300.0 * 0.2 / 4)  # 15 J per call
    assert row["tflops_per_w"] == pytest.approx(1e12 / 15 / 1e12)


def test_temperature_is_the_hottest_sample_and_clocks_the_mean():
    window = [Sample(0.0, sm_clock_mhz=1700.0, temp_c=58), Sample(0.1, sm_clock_mhz=1900.0, temp_c=71)]
    row = summarise(window, calls=1, elapsed_s=0.1, flops=1)
    assert row["temp_c"] == 71 and row["sm_clock_mhz"] == 1800.0


@pytest.mark.parametrize("masks, throttled, reason", [
    ((0, 0), False, ""),
    ((IDLE, 0, IDLE), False, ""),  # the GPU idling between launches is not throttling
    ((APP_CLOCKS | IDLE,), False, ""),  # clocks a user pinned: a setting, not a slowdown
    ((0, SW_POWER_CAP, 0), True, "sw_power_cap"),  # one sample is enough
    ((HW_THERMAL, POWER_BRAKE | IDLE), True, "hw_thermal_slowdown;hw_power_brake_slowdown"),
    ((SW_POWER_CAP | HW_SLOWDOWN,), True, "sw_power_cap;hw_slowdown"),
])
def test_throttle_flags_or_every_sample_and_ignore_idle(masks, throttled, reason):
    row = summarise(samples(*masks), calls=1, elapsed_s=0.01, flops=1, energy_j=1.0)
    assert row["throttled"] is throttled
    assert row["throttle_reason"] == reason


def test_no_throttle_reasons_reported_means_unknown_not_false():
    row = summarise([Sample(0.0, power_w=100.0)], calls=1, elapsed_s=0.01, flops=1)
    assert row["throttled"] is None and row["throttle_reason"] is None


def test_decode_reasons_names_every_bit_and_keeps_unknown_ones():
    assert decode_reasons(0) == []
    assert decode_reasons(IDLE | SW_POWER_CAP) == ["gpu_idle", "sw_power_cap"]
    assert decode_reasons(0x200 | 0x400) == ["board_limit", "reliability"]
    assert decode_reasons(0x1000 | HW_SLOWDOWN) == ["hw_slowdown", "0x1000"]


def test_the_window_has_at_least_a_few_calls_and_a_bounded_count():
    assert telemetry.calls_for(250, 100.0) == telemetry.MIN_CALLS
    assert telemetry.calls_for(250, 1.0) == 250
    assert telemetry.calls_for(250, 1e-6) == telemetry.MAX_CALLS
    assert telemetry.calls_for(250, float("nan")) == telemetry.MIN_CALLS


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


def test_measure_with_a_fake_gpu_fills_every_column():
    nvml = FakeNvml(watts=300.0, reasons=IDLE | HW_THERMAL)
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.002)

    row = telemetry.measure(fn, ms_per_call=2.0, flops=3e9, device=NvmlDevice(nvml, 0), window_ms=40,
                            period_ms=2, synchronize=lambda: None)
    assert set(row) == set(COLUMNS)
    assert len(calls) == 20
    assert nvml.reads >= 4  # the background thread sampled during the window, plus one read at each end
    assert row["power_w"] == pytest.approx(300.0, rel=0.1)
    assert 0.55 <= row["energy_j"] <= 3.0  # 300 W for a call of at least 2 ms: 0.6 J and up
    assert row["tflops_per_w"] == pytest.approx(3e9 / row["energy_j"] / 1e12)
    assert row["throttled"] is True and row["throttle_reason"] == "hw_thermal_slowdown"


def test_measure_resets_gradients_before_each_call():
    x = torch.ones(3, requires_grad=True)
    seen = []

    def fn():
        seen.append(x.grad is None)
        x.sum().backward()

    telemetry.measure(fn, 10.0, 1, device=NvmlDevice(FakeNvml(), 0), window_ms=1, synchronize=lambda: None,
                      grad_to_none=[x])
    assert seen and all(seen)


def test_nvml_failing_mid_window_leaves_fields_empty_and_never_raises():
    row = telemetry.measure(lambda: None, 1.0, 1e9, device=NvmlDevice(FakeNvml(missing={"clock", "power", "energy",
                                                                                        "temperature", "reasons"}), 0),
                            window_ms=5, synchronize=lambda: None)
    assert row == telemetry.empty()


# --- no NVML -------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the GPU-less path")
def test_without_a_gpu_the_columns_are_empty_and_fn_is_not_called():
    called = []
    assert telemetry.measure(lambda: called.append(1), 1.0, 1e9) == {c: None for c in COLUMNS}
    assert not called


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

    def throttled(fn, ms, flops, **kwargs):
        return {**telemetry.empty(), "throttled": True, "throttle_reason": "sw_thermal_slowdown"}

    monkeypatch.setattr(telemetry, "measure", throttled)
    result = CliRunner().invoke(app, ["sweep", "--seqlen", "16", "--headdim", "16", "--batch", "1", "--heads", "1",
                                      "--provider", "torch-eager", "--mode", "fwd", "--causal", "off", "--dtype",
                                      "fp32", "--rep-ms", "1", "--warmup-ms", "0", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "1 of 1 ok points ran with the GPU throttled (sw_thermal_slowdown x1)" in " ".join(result.output.split())
    assert results.load_run(tmp_path / "run")["throttled"].astype(str).str.lower().tolist() == ["true"]


# --- on a GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_on_a_gpu_every_column_is_filled():
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    flops = 2 * 4096**3
    row = telemetry.measure(lambda: a @ a, 0.2, flops)
    assert row["sm_clock_mhz"] > 100 and row["power_w"] > 10 and row["temp_c"] > 0
    assert row["energy_j"] > 0 and row["tflops_per_w"] == pytest.approx(flops / row["energy_j"] / 1e12)
    assert row["throttled"] in (True, False) and isinstance(row["throttle_reason"], str)
