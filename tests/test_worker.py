"""Process isolation: a point that aborts the process or hangs is recorded (error / timeout) and the rest of
the sweep completes in a restarted worker; on the GPU, so does one whose kernel corrupts the CUDA context."""
import os

import pytest
import torch

from fa2bench.core.presets import Point, Shape
from fa2bench.run.results import RunWriter, load_run
from fa2bench.run.runner import run_sweep
from fa2bench.run.point import RunOptions
from fa2bench.run.worker import Worker, WorkerError

SHAPE = Shape(batch=1, heads=2, kv_heads=2, seqlen_q=16, seqlen_k=16, headdim=16, causal=False)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPTS = RunOptions(device=DEVICE, rep_ms=1, warmup_ms=0, isolate=True, point_timeout_s=20,
                  plugins=("tests.fault_providers",))


def sweep(tmp_path, names, opts=OPTS, dtype="fp32"):
    writer = RunWriter(tmp_path / "run")
    points = [Point(name, "fwd", dtype, SHAPE) for name in names]
    seen = []
    run_sweep(points, writer, opts, {}, on_point=lambda p, row: seen.append(row["status"]))
    writer.finish()
    return load_run(tmp_path / "run"), seen


@pytest.mark.slow
def test_an_aborting_and_a_hanging_point_do_not_end_the_sweep(tmp_path):
    opts = RunOptions(**{**OPTS.__dict__, "point_timeout_s": 4})
    frame, seen = sweep(tmp_path, ["torch-eager", "fault-abort", "torch-eager", "fault-hang", "sdpa-math"], opts)
    assert seen == ["ok", "error", "ok", "timeout", "ok"]
    assert "died (signal SIGABRT)" in frame["error"].iloc[1]
    assert "--point-timeout 4" in frame["error"].iloc[3]
    assert frame["ms"].iloc[[0, 2, 4]].notna().all()


def test_a_worker_is_reused_across_points():
    with Worker(OPTS.plugins) as worker:
        rows = [worker.run(Point("torch-eager", "fwd", "fp32", SHAPE), OPTS, {}, 60) for _ in range(3)]
        assert worker.starts == 1 and worker.alive
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert not worker.alive


def test_a_worker_that_cannot_start_is_one_clear_error():
    with pytest.raises(WorkerError, match="No module named 'no_such_plugin'"):
        Worker(("no_such_plugin",)).run(Point("torch-eager", "fwd", "fp32", SHAPE), OPTS, {}, 60)


@pytest.mark.gpu
def test_an_illegal_memory_access_is_recorded_and_later_points_run(tmp_path):
    frame, seen = sweep(tmp_path, ["fa2", "fault-oob", "fa2", "torch-eager"], dtype="fp16")
    assert seen[1] == "error" and seen[0] == seen[2] == seen[3] == "ok", frame[["provider", "status", "error"]]
    assert "illegal" in frame["error"].iloc[1].lower() or "died" in frame["error"].iloc[1]
