"""Timing: at least MIN_SAMPLES samples, more while the spread is above the target and the budget allows, a
noisy flag when it stays above; auto's choice of the graph timer; and on a GPU, graph capture and how far the
plain and graph timers disagree."""
import itertools
import math

import pytest
import torch

from fa2bench.run import timing
from fa2bench.core.presets import Point, Shape
from fa2bench.run.point import RunOptions, run_point


class FakeClock:
    def __init__(self, step_s):
        self.now, self.step = 0.0, step_s

    def __call__(self):
        self.now += self.step
        return self.now


def batches(*spreads, size=10):
    """Batches of ``size`` samples around 1 ms, each batch as wide as the next value of ``spreads``; the
    batcher records the hints it was given."""
    it = itertools.chain(spreads, itertools.repeat(spreads[-1]))

    def batch(at_least):
        batch.hints.append(at_least)
        w = next(it)
        n = max(size, at_least)
        return [1 + w * (i / max(n - 1, 1) - 0.5) for i in range(n)]

    batch.hints = []
    return batch


def test_a_steady_point_stops_after_one_batch():
    t = timing.until_stable(batches(0.01), target_spread=0.03, max_ms=1000, clock=FakeClock(0.001))
    assert t.samples == 10 and t.spread <= 0.03 and not t.noisy
    assert t.ms_p20 <= t.ms <= t.ms_p80


def test_a_noisy_point_repeats_until_the_spread_settles():
    t = timing.until_stable(batches(0.5, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01), target_spread=0.1, max_ms=10_000,
                            clock=FakeClock(0.001))
    assert 20 <= t.samples < 100 and t.spread <= 0.1 and not t.noisy


def test_a_point_that_never_settles_stops_at_the_time_cap_and_is_noisy():
    t = timing.until_stable(batches(0.5), target_spread=0.01, max_ms=125, clock=FakeClock(1 / 64))
    assert t.samples == 80 and t.spread > 0.01  # 8 batches of 15.625 ms each, then the cap
    assert t.noisy and t.row()["noisy"] is True


def test_a_long_point_is_never_one_sample_even_past_the_cap():
    """A call longer than the whole budget: one sample per batch, yet five samples before the rule may stop
    (a single sample has spread 0 and would 'meet' any target)."""
    times = iter([10.0, 10.5, 9.8, 10.2, 10.1, 10.0])
    t = timing.until_stable(lambda n: [next(times)], target_spread=0.5, max_ms=1, clock=FakeClock(1.0))
    assert t.samples == timing.MIN_SAMPLES and t.reps == timing.MIN_SAMPLES


def test_the_batcher_is_asked_for_the_samples_still_missing():
    batch = batches(0.001, size=1)
    timing.until_stable(batch, target_spread=0.5, max_ms=1000, clock=FakeClock(0.001))
    assert batch.hints[0] == timing.MIN_SAMPLES


def test_an_empty_batch_is_an_error_not_a_silent_loop():
    with pytest.raises(RuntimeError, match="no samples"):
        timing.until_stable(lambda n: [], clock=FakeClock(0.001))


def test_summarise_matches_linear_quantiles_and_counts_calls_per_sample():
    t = timing.summarise([float(i) for i in range(11)], calls_per_sample=8, timer="graph")
    assert (t.ms, t.ms_p20, t.ms_p80, t.samples, t.reps, t.timer) == (5.0, 2.0, 8.0, 11, 88, "graph")
    assert t.spread == pytest.approx(6 / 5)


def test_too_few_samples_or_a_wide_spread_is_noisy():
    assert timing.summarise([1.0]).noisy  # whatever its spread of 0 says
    assert timing.summarise([1.0, 1.0, 1.0, 1.0]).noisy
    assert not timing.summarise([1.0] * 5, target_spread=0.03).noisy
    assert timing.summarise([1.0, 1.0, 1.2, 1.4, 1.4], target_spread=0.03).noisy


@pytest.mark.parametrize("ms, graph", [(0.01, True), (0.099, True), (0.1, False), (5.0, False),
                                       (math.nan, False), (math.inf, False)])
def test_auto_uses_the_graph_timer_below_100_us(ms, graph):
    assert timing.use_graph(ms) is graph


@pytest.mark.parametrize("ms, host_ms, graph", [(0.3, 0.25, True), (0.3, 0.15, True), (0.3, 0.1, False),
                                                (5.0, 0.3, False), (5.0, 4.0, True), (math.nan, 1.0, False)])
def test_auto_uses_the_graph_timer_when_the_host_cannot_keep_up(ms, host_ms, graph):
    """A call the host issues more slowly than half its plain median is host-bound under the plain timer."""
    assert timing.use_graph(ms, host_ms) is graph


@pytest.mark.parametrize("inputs, l2, copies", [
    (0, 50 << 20, 1),  # unknown size: no rotation
    (200 << 20, 50 << 20, 2),  # inputs larger than L2: one other copy already evicts
    (10 << 20, 50 << 20, 11),  # 10 other copies = 100 MiB = twice L2
    (1024, 50 << 20, timing.GRAPH_CALLS_MAX),  # tiny inputs: bounded
])
def test_rotation_copies_exceed_twice_the_l2(inputs, l2, copies):
    assert timing.rotation_copies(inputs, l2) == copies


def test_an_unknown_timer_is_refused():
    with pytest.raises(ValueError, match="timer must be one of auto, plain, graph"):
        timing.bench(lambda: None, timer="fast")


def test_a_python_call_costs_well_under_the_graph_threshold():
    """The floor of per-call host overhead, measured here: the 100 us threshold is far above it, so the plain
    timer's calls above it are dominated by the GPU, not by a Python call."""
    assert timing.launch_overhead_us() < timing.GRAPH_BELOW_MS * 1e3 / 10


def test_rows_record_samples_spread_timer_and_noisy():
    shape = Shape(batch=1, heads=1, kv_heads=1, seqlen_q=16, seqlen_k=16, headdim=16, causal=False)
    row = run_point(Point("torch-eager", "fwd", "fp32", shape), RunOptions(device="cpu", rep_ms=2, warmup_ms=0), {})
    assert row["status"] == "ok" and row["samples"] >= timing.MIN_SAMPLES and row["reps"] >= row["samples"]
    assert row["timer"] == "cpu" and row["noisy"] in (True, False)
    assert row["spread"] == pytest.approx((row["ms_p80"] - row["ms_p20"]) / row["ms"])


def test_a_noisy_point_stays_ok_but_the_sweep_and_the_report_say_so(tmp_path, monkeypatch):
    """A point that stopped at the time cap above the target is never silently ok: the sweep ends with a
    warning, report.md names it, and the row keeps its noisy flag."""
    import dataclasses

    from typer.testing import CliRunner

    from fa2bench.cli import app
    from fa2bench.read.markdown import write_report
    from fa2bench.run.results import load_run

    real = timing.bench
    monkeypatch.setattr(timing, "bench", lambda *a, **k: dataclasses.replace(real(*a, **k), noisy=True))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["sweep", "--seqlen", "16,32", "--headdim", "16", "--batch", "1", "--heads", "1",
                                      "--provider", "torch-eager", "--mode", "fwd", "--causal", "off", "--dtype",
                                      "fp32", "--rep-ms", "1", "--warmup-ms", "0", "--no-isolate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    said = "2 of 2 ok points are noisy: their spread (p80 - p20) / median stayed above the target"
    assert said in " ".join(result.output.split())
    frame = load_run(out)
    assert (frame["status"] == "ok").all() and frame["noisy"].astype(str).str.lower().eq("true").all()
    assert said in write_report(out).read_text()


def test_a_run_without_noisy_points_has_no_note(tmp_path):
    from fa2bench.read.summary import noisy_note

    import pandas as pd

    quiet = pd.DataFrame({"status": ["ok", "error"], "noisy": [False, True], "spread": [0.01, 0.5]})
    assert noisy_note(quiet) is None and noisy_note(quiet.drop(columns="noisy")) is None
    assert noisy_note(quiet.assign(status="ok")).startswith("1 of 2 ok points are noisy")
    assert "(up to 50%)" in noisy_note(quiet.assign(status="ok"))


# --- on a GPU --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.alone  # another worker's kernels on the same GPU would land inside one timer's window
@pytest.mark.parametrize("n", [256, 1024, 4096])
def test_on_a_gpu_plain_and_graph_timers_agree_where_calls_are_long_and_graph_is_faster_where_short(n):
    """Prints how far the timers disagree (run with -s). A long matmul: within 10%. The graph timer never
    reads slower than the plain one by more than its noise (it removes host gaps, adds nothing)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    fn = (lambda: a @ a)
    fn()
    copies = [(lambda b=torch.randn_like(a): b @ b, None) for _ in range(timing.GRAPH_CALLS_MAX)]
    plain = timing.bench(fn, timer="plain")
    graph = timing.bench(fn, timer="graph", rotate=lambda k: copies[:k], input_bytes=a.numel() * 2)
    print(f"\nmatmul {n}: plain {plain.ms * 1e3:.1f} us ({plain.samples} samples, spread {plain.spread:.1%}), "
          f"graph {graph.ms * 1e3:.1f} us ({graph.samples} samples, {graph.timer}), ratio {plain.ms / graph.ms:.2f}")
    assert plain.samples >= timing.MIN_SAMPLES and graph.samples >= timing.MIN_SAMPLES
    assert graph.timer == "graph" and graph.reps >= 8 * graph.samples
    assert graph.ms <= plain.ms * (1 + 3 * max(plain.spread, graph.spread, 0.03))
    if n == 4096:
        assert graph.ms == pytest.approx(plain.ms, rel=0.10)


@pytest.mark.gpu
def test_on_a_gpu_a_call_that_cannot_be_captured_falls_back_to_plain():
    a = torch.randn(256, 256, device="cuda")

    def sync_inside():
        b = a @ a
        b.sum().item()  # a host synchronisation: not capturable

    stream = torch.cuda.current_stream()
    t = timing.bench(sync_inside, timer="graph")
    assert t.timer == "plain" and t.samples >= timing.MIN_SAMPLES
    # and the process is as before: the same current stream, random numbers drawn (a failed capture left the
    # generators in capture mode once, and every later point of the sweep failed)
    assert torch.cuda.current_stream() == stream
    assert torch.randn(4, device="cuda").isfinite().all()


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["sdpa-flash", "fa2", "fa1"])
def test_on_a_gpu_auto_graph_times_a_short_backward(provider):
    """A backward is captured, not silently timed plain: its forward runs on the capture stream."""
    shape = Shape(batch=1, heads=2, kv_heads=2, seqlen_q=128, seqlen_k=128, headdim=64, causal=True)
    row = run_point(Point(provider, "bwd", "fp16", shape), RunOptions(device="cuda"), {})
    assert row["status"] == "ok", row["error"]
    assert row["timer"] in ("graph", "graph-warm") and row["samples"] >= timing.MIN_SAMPLES
    assert row["sm_clock_mhz"] is None or row["sm_clock_mhz"] > 100


@pytest.mark.gpu
@pytest.mark.alone  # another worker's kernels on the same GPU would land inside one timer's window
def test_on_a_gpu_the_timers_agree_on_a_backward_long_enough_for_the_host():
    """The graph holds no work the plain timer does not time. Its repeated backwards once added their gradients to
    the last ones (captured add kernels): 9% slower at 1k tokens, 26% at 512."""
    shape = Shape(batch=16, heads=16, kv_heads=16, seqlen_q=1024, seqlen_k=1024, headdim=128, causal=False)
    rows = {t: run_point(Point("fa2", "bwd", "fp16", shape), RunOptions(device="cuda", timer=t), {})
            for t in ("plain", "graph")}
    assert rows["graph"]["timer"] == "graph", rows["graph"]["error"]
    print(f"\nfa2 bwd b16 s1024 d128: plain {rows['plain']['ms']:.4f} ms, graph {rows['graph']['ms']:.4f} ms")
    assert rows["graph"]["ms"] == pytest.approx(rows["plain"]["ms"], rel=0.04)
