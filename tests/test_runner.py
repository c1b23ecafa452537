"""The runner: every outcome of a point becomes a row with a status, and the sweep goes on."""
import math

import pytest
import torch

from fa2bench.core import providers
from fa2bench.core.presets import Point, Shape
from fa2bench.core.reference import attention_ref
from fa2bench.run.point import RunOptions, run_point, timed_call

SHAPE = Shape(batch=1, heads=2, kv_heads=1, seqlen_q=33, seqlen_k=40, headdim=16, causal=True)
OPTS = RunOptions(device="cpu", rep_ms=5, warmup_ms=0)


def _fake(monkeypatch, name, fn, **kwargs):
    provider = providers.Provider(name=name, label=name, color="k", kind="baseline", description="test double",
                                  make=lambda shape: (lambda q, k, v: fn(q, k, v, shape)),
                                  devices=frozenset({"cpu", "cuda"}), **kwargs)
    monkeypatch.setitem(providers.REGISTRY, name, provider)
    return name


def _right(q, k, v, shape):
    return attention_ref(q, k, v, causal=shape.causal, upcast=False)


def test_a_correct_provider_is_ok_with_timing_and_flops(monkeypatch):
    row = run_point(Point(_fake(monkeypatch, "good", _right), "fwd_bwd", "fp32", SHAPE), OPTS, {})
    assert row["status"] == "ok", row["error"]
    assert row["ms_p20"] <= row["ms"] <= row["ms_p80"]
    assert row["flops"] > 0 and row["tflops"] > 0
    assert row["max_rel_error"] < 1e-5
    assert row["pct_a100_peak"] == pytest.approx(100 * row["tflops"] / 312.0)
    assert math.isnan(row["pct_device_peak"])  # no GPU, no device peak


def test_every_row_says_how_long_its_point_took_in_all(monkeypatch):
    """point_s covers the whole point (check, compile, timing, telemetry): at least the time a slow provider
    spent, whatever its status."""
    import time

    def slow(q, k, v, shape):
        time.sleep(0.05)
        return _right(q, k, v, shape)

    def slow_boom(q, k, v, shape):
        time.sleep(0.05)
        raise RuntimeError("late failure")

    ok = run_point(Point(_fake(monkeypatch, "slow", slow), "fwd", "fp32", SHAPE), OPTS, {})
    failed = run_point(Point(_fake(monkeypatch, "slowboom", slow_boom), "fwd", "fp32", SHAPE), OPTS, {})
    assert ok["status"] == "ok" and ok["point_s"] >= 0.05 * 3  # the check, the first call, timing (>= 1 rep)
    assert failed["status"] == "error" and 0.05 <= failed["point_s"] < 5


def test_a_timed_point_splits_its_time_into_set_up_and_timing(monkeypatch):
    """setup_s holds the check and the first call (where compilation happens), timing_s the timed calls; the
    two are within point_s (which also holds the registry look-up and the clean-up after). A point failing during
    set-up has neither."""
    import time

    calls = []

    def compiles_once(q, k, v, shape):
        calls.append(1)
        if len(calls) <= 2:  # the check's call and the first call: a slow compilation
            time.sleep(1.0)
        return _right(q, k, v, shape)

    row = run_point(Point(_fake(monkeypatch, "compiling", compiles_once), "fwd", "fp32", SHAPE), OPTS, {})
    assert row["status"] == "ok"
    assert row["setup_s"] >= 2.0 and row["timing_s"] < row["setup_s"]
    assert row["setup_s"] + row["timing_s"] <= row["point_s"]
    failed = run_point(Point(_fake(monkeypatch, "boom", lambda *a: 1 / 0), "fwd", "fp32", SHAPE), OPTS, {})
    assert failed["status"] == "error" and "setup_s" not in failed and "timing_s" not in failed


def test_a_wrong_provider_is_recorded_wrong_and_not_timed(monkeypatch):
    wrong = _fake(monkeypatch, "wrong", lambda q, k, v, s: attention_ref(q, k, v, causal=not s.causal, upcast=False))
    row = run_point(Point(wrong, "fwd", "fp32", SHAPE), OPTS, {})
    assert row["status"] == "wrong"
    assert "rel err" in row["error"]
    assert "ms" not in row


def test_gradients_are_checked_in_backward_modes(monkeypatch):
    def detached_v(q, k, v, shape):  # right output, but no gradient flows to v
        return _right(q, k, v.detach(), shape) + 0 * v.sum()

    name = _fake(monkeypatch, "nograd", detached_v)
    assert run_point(Point(name, "fwd", "fp32", SHAPE), OPTS, {})["status"] == "ok"
    row = run_point(Point(name, "bwd", "fp32", SHAPE), OPTS, {})
    assert row["status"] == "wrong" and "dv" in row["error"]


def test_an_exception_is_an_error_row(monkeypatch):
    def boom(q, k, v, shape):
        raise RuntimeError("kernel exploded\nsecond line")

    row = run_point(Point(_fake(monkeypatch, "boom", boom), "fwd", "fp32", SHAPE), OPTS, {})
    assert row["status"] == "error"
    assert row["error"] == "RuntimeError: kernel exploded"


def test_out_of_memory_is_an_oom_row(monkeypatch):
    def oom(q, k, v, shape):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    row = run_point(Point(_fake(monkeypatch, "oom", oom), "fwd", "fp32", SHAPE), OPTS, {})
    assert row["status"] == "oom" and "8.00 GiB" in row["error"]


def test_declared_limits_make_unsupported_rows_without_running(monkeypatch):
    def never(q, k, v, shape):
        raise AssertionError("must not run")

    name = _fake(monkeypatch, "fp16only", never, dtypes=frozenset({"fp16"}), max_headdim=8)
    row = run_point(Point(name, "fwd", "fp32", SHAPE), OPTS, {})
    assert row["status"] == "unsupported" and "fp32" in row["error"]
    cuda_only = run_point(Point("sdpa-flash", "fwd", "fp16", SHAPE), OPTS, {})
    assert cuda_only["status"] == "unsupported" and "CUDA" in cuda_only["error"]


def test_unsupported_raised_by_a_provider(monkeypatch):
    def refuse(q, k, v, shape):
        raise providers.Unsupported("no bottom-right causal")

    row = run_point(Point(_fake(monkeypatch, "refuse", refuse), "fwd", "fp32", SHAPE), OPTS, {})
    assert row == {**row, "status": "unsupported", "error": "no bottom-right causal"}


def test_a_pinned_sdpa_backends_refusal_is_unsupported_with_the_checks_that_failed():
    import warnings

    from fa2bench.run.point import classify

    at = "(Triggered internally at /pytorch/aten/src/ATen/native/transformers/cuda/sdp_utils.cpp:986.)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn(f"Memory efficient kernel not used because: {at}")
        warnings.warn("For dense inputs, both fused kernels require query, key and value to have the same num_heads. "
                      f"Query.sizes(1): 16, Key.sizes(1): 8 {at}")
        warnings.warn("an unrelated warning")
    row = classify(RuntimeError("No available kernel. Aborting execution."), caught)
    assert row == {"status": "unsupported", "error": "Memory efficient kernel not used because: For dense inputs, "
                   "both fused kernels require query, key and value to have the same num_heads. Query.sizes(1): 16, "
                   "Key.sizes(1): 8"}


def test_bwd_times_backward_alone_and_resets_grads():
    q, k, v = (torch.randn(1, 1, 8, 16, requires_grad=True) for _ in range(3))
    calls = []

    def fn(q, k, v):
        calls.append("fwd")
        return attention_ref(q, k, v, upcast=False)

    call, grads = timed_call(fn, q, k, v, "bwd")
    assert calls == ["fwd"] and grads == [q, k, v]
    call()
    call()  # retain_graph: the same forward graph serves every timed backward
    assert calls == ["fwd"] and q.grad is not None


def test_git_state_comes_from_the_environment_when_there_is_no_checkout(monkeypatch):
    import subprocess

    from fa2bench.run import runner
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.delenv("FA2BENCH_GIT_COMMIT", raising=False)
    state = runner.git_state()
    assert state["commit"] is None and state["dirty"] is None and len(state["tree_hash"]) == 64
    monkeypatch.setenv("FA2BENCH_GIT_COMMIT", "abc123")
    monkeypatch.setenv("FA2BENCH_GIT_DIRTY", "1")
    state = runner.git_state()  # the commit cannot be checked here: dirty unknown, the launcher's word kept apart
    assert state["commit"] == "abc123" and state["dirty"] is None and state["dirty_claimed"] is True
    assert state["source"] == "FA2BENCH_GIT_COMMIT"


def test_git_state_from_the_environment_wins_over_a_checkout(monkeypatch):
    """A GPU machine's copy may carry a stale .git naming another commit: the commit passed in is recorded."""
    from fa2bench.run import runner
    monkeypatch.setenv("FA2BENCH_GIT_COMMIT", "cd9205e")
    monkeypatch.setenv("FA2BENCH_GIT_DIRTY", "0")
    state = runner.git_state()
    assert state["commit"] == "cd9205e" and state["source"] == "FA2BENCH_GIT_COMMIT"
    # FA2BENCH_GIT_DIRTY=0 is not believed: where git knows the commit, the tree is compared with it
    assert state["dirty"] is (True if state["verified"] else None)  # the tree has moved on since cd9205e
