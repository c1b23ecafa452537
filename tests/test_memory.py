"""Sizes: absurd ones are refused at parse time; a point whose estimated memory exceeds what the device has
free is recorded `oom` without being tried."""
import pytest
from typer.testing import CliRunner

from fa2bench.core import memory, providers
from fa2bench.cli import app
from fa2bench.core.presets import Point, Shape, SpecError
from fa2bench.run.point import RunOptions, run_point
from fa2bench.run.results import load_run

runner = CliRunner()
OPTS = RunOptions(device="cpu", rep_ms=1, warmup_ms=0)


def shape(n, d=64, b=1, h=2):
    return Shape(batch=b, heads=h, kv_heads=h, seqlen_q=n, seqlen_k=n, headdim=d, causal=False)


@pytest.mark.parametrize("args, message", [
    # --batch: without it a GPU's default preset derives the batch from --tokens and refuses that first
    (["--seqlen", "1099511627776", "--batch", "1"], "--seqlen 1099511627776 is beyond what any GPU can hold"),
    (["--seqlen", "1048576", "--batch", "4096", "--heads", "4096"], "beyond what any GPU can run"),
])
def test_absurd_sizes_are_refused_at_parse_time(tmp_path, args, message):
    result = runner.invoke(app, ["sweep", *args, "--headdim", "64", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_materialising_providers_need_quadratic_memory_streaming_ones_linear():
    small, large = shape(1024), shape(65536)
    naive, fa2 = providers.get("naive").workspace_bytes, providers.get("fa2").workspace_bytes
    assert naive(large, "fp16", "fwd") / naive(small, "fp16", "fwd") == 64**2
    assert fa2(large, "fp16", "fwd") / fa2(small, "fp16", "fwd") == 64
    assert naive(large, "fp16", "fwd") == 2 * 2 * 2 * 65536**2  # S and P of 2 heads in fp16
    assert providers.get("torch-eager").workspace_bytes is memory.EAGER_WORKSPACE
    assert providers.get("sdpa-flash").workspace_bytes is memory.streaming_workspace
    bwd, fwd = (memory.point_bytes(small, "fp16", m, fa2) for m in ("bwd", "fwd"))
    assert bwd > fwd  # gradients and dO


def test_a_point_that_cannot_fit_is_oom_without_being_tried(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 2**30)  # an 8 GiB machine
    made = []
    monkeypatch.setitem(providers.REGISTRY, "naive-spy", providers.Provider(
        name="naive-spy", label="spy", color="k", kind="baseline", description="test double",
        make=lambda s: made.append(s), devices=frozenset({"cpu", "cuda"}),
        workspace_bytes=memory.NAIVE_WORKSPACE))
    row = run_point(Point("naive-spy", "fwd", "fp32", shape(65536, d=16)), OPTS, {})
    assert row["status"] == "oom" and "only 8.0 GiB is free" in row["error"] and "not run" in row["error"]
    assert made == []
    assert run_point(Point("torch-eager", "fwd", "fp32", shape(64, d=16)), OPTS, {})["status"] == "ok"


def test_seqlen_1m_with_naive_is_an_oom_row_and_the_parquet_is_written(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["sweep", "--seqlen", "1048576", "--headdim", "16", "--batch", "1", "--heads", "2",
                                 "--provider", "naive", "--mode", "fwd", "--causal", "off", "--dtype", "fp32",
                                 "--out", str(out), "--no-isolate"])
    assert result.exit_code == 0, result.output
    frame = load_run(out)
    assert list(frame["status"]) == ["oom"] and "estimated" in frame["error"].iloc[0]
    assert (out / "results.parquet").exists()


def test_check_sizes_accepts_the_paper_sweep():
    from fa2bench.core.presets import SweepSpec

    memory.check_sizes(SweepSpec.from_name("paper").shapes())
    with pytest.raises(SpecError):
        memory.check_sizes([shape(2**31)])


def test_estimates_stay_under_what_the_h100_paper_sweep_measured():
    """A lower bound: no point that ran in the committed H100 run is estimated above its measured footprint
    (peak_mem_mb beyond the inputs) plus its tensors (fwd and fwd_bwd: a bwd call's peak_mem_mb leaves out the
    forward graph it keeps); the eager points that ran out of memory are estimated above 64 GiB."""
    from fa2bench.run.results import load_run
    from tests.synthetic import REPO

    run = REPO / "results" / "h100-paper-fp16"
    if not run.exists():
        pytest.skip("the committed H100 run is not in this checkout")
    frame = load_run(run)
    for r in frame[(frame["status"] == "ok") & (frame["mode"] != "bwd")].to_dict("records"):
        s, p = Shape.from_row(r), providers.get(r["provider"])
        estimate = memory.point_bytes(s, r["dtype"], r["mode"], p.workspace_bytes, check=False)
        assert estimate <= r["peak_mem_mb"] * 2**20 + memory.tensor_bytes(s, r["dtype"], r["mode"]), r
    for r in frame[frame["status"] == "oom"].to_dict("records"):
        s = Shape.from_row(r)
        assert memory.point_bytes(s, r["dtype"], r["mode"], memory.EAGER_WORKSPACE) > 64 * 2**30, r
