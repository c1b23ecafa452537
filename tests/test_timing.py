"""Timing repeats a point until its spread is small or a time cap is reached, and records how many
measurements it took (nvbench's stopping criterion)."""
import itertools

import pytest

from fa2bench.run import timing
from fa2bench.core.presets import Point, Shape
from fa2bench.run.point import RunOptions, run_point


class FakeClock:
    def __init__(self, step_s):
        self.now, self.step = 0.0, step_s

    def __call__(self):
        self.now += self.step
        return self.now


def batches(*spreads):
    """Batches of 10 measurements around 1 ms, each batch as wide as the next value of ``spreads``."""
    it = itertools.chain(spreads, itertools.repeat(spreads[-1]))

    def batch():
        w = next(it)
        return [1 + w * (i / 9 - 0.5) for i in range(10)]

    return batch


def test_a_steady_point_stops_after_one_batch():
    t = timing.until_stable(batches(0.01), target_spread=0.03, max_ms=1000, clock=FakeClock(0.001))
    assert t.reps == 10 and t.spread <= 0.03
    assert t.ms_p20 <= t.ms <= t.ms_p80


def test_a_noisy_point_repeats_until_the_spread_settles():
    t = timing.until_stable(batches(0.5, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01), target_spread=0.1, max_ms=10_000,
                            clock=FakeClock(0.001))
    assert 20 <= t.reps < 100 and t.spread <= 0.1


def test_a_point_that_never_settles_stops_at_the_time_cap():
    t = timing.until_stable(batches(0.5), target_spread=0.01, max_ms=125, clock=FakeClock(1 / 64))
    assert t.reps == 80 and t.spread > 0.01  # 8 batches of 15.625 ms each, then the cap


def test_summarise_matches_linear_quantiles():
    t = timing.summarise([float(i) for i in range(11)])
    assert (t.ms, t.ms_p20, t.ms_p80, t.reps) == (5.0, 2.0, 8.0, 11)
    assert t.spread == pytest.approx(6 / 5)


def test_rows_record_their_repetitions():
    shape = Shape(batch=1, heads=1, kv_heads=1, seqlen_q=16, seqlen_k=16, headdim=16, causal=False)
    row = run_point(Point("torch-eager", "fwd", "fp32", shape), RunOptions(device="cpu", rep_ms=2, warmup_ms=0), {})
    assert row["status"] == "ok" and row["reps"] >= 3
