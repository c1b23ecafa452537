"""fa2bench.distributed on the CPU: sharded sweeps (plan, merge, resume) and context-parallel attention.

The ring tests run real process groups: gloo at world size 2 (and 3), spawned once per module, with the
PyTorch block kernel in float64 (so the ring must equal one-process attention to rounding) and fa2bench's
Triton kernel through the interpreter in float32. Sharded sweeps run end to end under torchrun.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from fa2bench.core import providers
from fa2bench.distributed import blocks, launch, ring, shard
from fa2bench.core.flops import attended_pairs
from fa2bench.core.presets import Point, Shape, SweepSpec
from fa2bench.core.reference import attention_ref
from fa2bench.run.results import RunWriter, load_run, row_key

ROOT = Path(__file__).resolve().parent.parent


# --- the plan ----------------------------------------------------------------------------------------------


def _points(n_seqlens=6):
    spec = SweepSpec(seqlens=tuple(512 * 2**i for i in range(n_seqlens)), headdims=(64, 128), batch=(1,),
                     heads=(8,), modes=("fwd", "bwd"))
    return spec.points(("fa2", "torch-eager"))


def test_every_point_goes_to_exactly_one_rank_in_sweep_order():
    points = _points()
    shares = shard.assign(points, 3)
    assert sorted(p.key() for s in shares for p in s) == sorted(p.key() for p in points)
    for share in shares:
        order = [points.index(p) for p in share]
        assert order == sorted(order)
    assert shard.assign(points, 3) == shares  # deterministic: every rank computes the same plan


def test_the_plan_balances_estimated_cost_within_lpt_bound():
    points = _points()
    costs = [shard.estimated_seconds(p) for p in points]
    for world in (2, 3, 4):
        loads = [sum(map(shard.estimated_seconds, s)) for s in shard.assign(points, world)]
        best_possible = max(sum(costs) / world, max(costs))
        assert max(loads) <= 4 / 3 * best_possible + 1e-9


def test_cost_grows_with_flops_and_unsupported_points_cost_nothing():
    small = Point("fa2", "fwd", "fp16", Shape(1, 8, 8, 1024, 1024, 64, False))
    big = Point("fa2", "fwd", "fp16", Shape(1, 8, 8, 8192, 8192, 64, False))
    assert shard.estimated_seconds(big) > shard.estimated_seconds(small) > 0
    too_wide = Point("fa2", "fwd", "fp16", Shape(1, 8, 8, 1024, 1024, 512, False))  # head dim > 256
    assert shard.estimated_seconds(too_wide) == 0.0


# --- merge and resume --------------------------------------------------------------------------------------


def _row(point, status="ok", ms=1.0):
    return {**point.fields(), "status": status, "error": "" if status == "ok" else "boom", "ms": ms}


def _sharded_folder(tmp_path, points, world, lost=()):
    """A run folder as ranks leave it: plan.csv, meta.json, each rank's rows (but ``lost`` points)."""
    shares = shard.assign(points, world)
    shard.write_plan(tmp_path, points, shares, set())
    (tmp_path / "meta.json").write_text("{}")
    for r, share in enumerate(shares):
        writer = RunWriter(shard.rank_dir(tmp_path, r), resume=True)
        for p in share:
            if p.key() not in lost:
                writer.append(_row(p))
    return shares


def test_merge_gives_one_row_per_point_with_its_rank(tmp_path):
    points = _points(2)
    shares = _sharded_folder(tmp_path, points, 2)
    report = shard.merge(tmp_path)
    assert report.rows == len(points) and not report.missing and report.duplicates == 0
    frame = load_run(tmp_path)
    assert len(frame) == len(points)
    owner = {p.key(): r for r, s in enumerate(shares) for p in s}
    for row in frame.to_dict("records"):
        assert row["rank"] == owner[row_key(row)]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["complete"] and meta["distributed"]["merge"]["missing"] == 0
    assert shard.merge(tmp_path).rows == len(points)  # merging again changes nothing


def test_a_dead_ranks_lost_point_is_named_and_only_it_is_planned_on_resume(tmp_path):
    points = _points(2)
    shares = shard.assign(points, 2)
    lost = shares[1][-1]  # rank 1 died while running its last point
    _sharded_folder(tmp_path, points, 2, lost={lost.key()})
    report = shard.merge(tmp_path)
    assert report.missing == (f"{lost.provider} {lost.mode} {lost.dtype} {lost.shape.label()}",)
    assert len(pd.read_csv(tmp_path / "missing.csv")) == 1
    assert not json.loads((tmp_path / "meta.json").read_text())["complete"]
    # resume on a different number of ranks: only the lost point is left to run
    done = shard.done_keys(tmp_path)
    remaining = [p for p in points if p.key() not in done]
    assert remaining == [lost]
    assert [len(s) for s in shard.assign(remaining, 3)] in ([1, 0, 0], [0, 1, 0], [0, 0, 1])


def test_merge_of_a_folder_without_rank_results_is_a_clear_error(tmp_path):
    with pytest.raises(shard.ShardError, match="holds no results of any rank"):
        shard.merge(tmp_path)


def test_manual_merge_command_exits_1_when_points_are_missing(tmp_path, capsys):
    points = _points(1)
    _sharded_folder(tmp_path, points, 2, lost={points[0].key()})
    assert shard.main([str(tmp_path)]) == 1
    assert "1 planned points are missing" in capsys.readouterr().out
    assert shard.main([str(tmp_path / "nowhere")]) == 2


# --- launching ---------------------------------------------------------------------------------------------


def test_gpus_option_is_stripped_and_multicast_stays_off():
    assert launch.strip_option(["sweep", "--gpus", "4", "--resume"], "--gpus") == ["sweep", "--resume"]
    assert launch.strip_option(["sweep", "--gpus=all"], "--gpus") == ["sweep"]
    env = launch.child_env({"NCCL_NVLS_ENABLE": "1"})
    assert env["NCCL_NVLS_ENABLE"] == "0" and env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert env["NVSHMEM_DISABLE_NVLS"] == "1"
    argv = launch.torchrun_argv(2, ["sweep"])
    assert argv[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "fa2bench",
                        "sweep"]


@pytest.mark.parametrize("text, available, message", [
    ("all", 0, "no CUDA GPU"), ("0", 4, "at least 1"), ("eight", 4, "a number or 'all'"), ("8", 4, "only 4")])
def test_bad_gpu_counts_are_usage_errors(text, available, message):
    with pytest.raises(launch.LaunchError, match=message):
        launch.resolve_gpus(text, available)
    assert launch.resolve_gpus("all", 4) == 4 and launch.resolve_gpus("2", 0) == 2


def _cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "fa2bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=launch.child_env({"OMP_NUM_THREADS": "1"}))


@pytest.mark.slow
def test_sweep_on_two_ranks_equals_one_process_point_for_point(tmp_path):
    args = ["sweep", "--preset", "smoke", "--provider", "torch-eager,sdpa-math", "--rep-ms", "2", "--warmup-ms", "0"]
    sharded = _cli(*args, "--gpus", "2", "--out", str(tmp_path / "two"))
    assert sharded.returncode == 0, sharded.stdout[-2000:] + sharded.stderr[-2000:]
    single = _cli(*args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-2000:]
    two, one = load_run(tmp_path / "two"), load_run(tmp_path / "one")
    key = ["provider", "mode", "dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim", "causal"]
    joined = one.merge(two, on=key, suffixes=("_one", "_two"), how="outer", indicator=True)
    assert (joined["_merge"] == "both").all() and len(joined) == len(one) == 16
    assert (joined["status_one"] == joined["status_two"]).all()
    assert set(two["rank"]) == {0, 1}
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["distributed"]["world_size"] == 2 and len(meta["distributed"]["ranks"]) == 2
    assert all({"host", "gpu", "points"} <= set(r) for r in meta["distributed"]["ranks"])


@pytest.mark.slow
def test_a_sharded_folder_refuses_a_rerun_and_resumes_on_another_rank_count(tmp_path):
    args = ["sweep", "--preset", "smoke", "--provider", "torch-eager", "--rep-ms", "2", "--warmup-ms", "0"]
    first = _cli(*args, "--gpus", "2", "--out", str(tmp_path / "two"))
    assert first.returncode == 0, first.stderr[-2000:]
    # a second run into the same folder without --resume is refused in one line; with it, nothing is left
    again = _cli(*args, "--gpus", "2", "--out", str(tmp_path / "two"))
    assert again.returncode != 0 and "--resume" in again.stdout + again.stderr
    resumed = _cli(*args, "--gpus", "1", "--out", str(tmp_path / "two"), "--resume")
    assert resumed.returncode == 0 and "0 of 0 points (8 done before)" in resumed.stdout


# --- zig-zag sharding and the ring schedule (no processes) --------------------------------------------------


def test_zigzag_shards_reassemble_and_balance_causal_work():
    x = torch.arange(48).view(1, 1, 48, 1)
    for world in (1, 2, 3):
        shards = [ring.zigzag_shard(x, r, world) for r in range(world)]
        assert torch.equal(ring.zigzag_unshard(shards), x)
        # causal pairs per rank: row i sees i + 1 keys; zig-zag gives each rank the same count
        work = {int(sum(i + 1 for i in s.flatten().tolist())) for s in shards}
        assert len(work) == 1
    with pytest.raises(ValueError, match="not a multiple of 2 x 5"):
        ring.zigzag_shard(x, 0, 5)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_ring_steps_cover_every_attended_pair_exactly_once(world, causal):
    n = 8 * world  # chunks of 4
    positions = torch.arange(n).view(1, 1, n, 1)
    local = [ring.zigzag_shard(positions, r, world).flatten() for r in range(world)]
    covered = torch.zeros(n, n, dtype=torch.int64)
    for rank in range(world):
        for step in range(world):
            src = (rank - step) % world
            block = ring._step_block(step, src, rank, causal, len(local[rank]))
            if block is None:
                continue
            rows, cols, blk_causal = block
            qpos, kpos = local[rank][rows], local[src][cols]
            allowed = torch.ones(len(qpos), len(kpos), dtype=torch.bool)
            if blk_causal:
                allowed = torch.ones_like(allowed).tril(len(kpos) - len(qpos))
            covered[qpos[:, None], kpos[None, :]] += allowed.long()
    expected = torch.ones(n, n, dtype=torch.int64)
    if causal:
        expected = expected.tril()
        assert int(covered.sum()) == attended_pairs(n, n, True)
    assert torch.equal(covered, expected)


# --- blocks: (o, lse) and the merge ------------------------------------------------------------------------


@pytest.mark.parametrize("impl", blocks.IMPLS)
def test_two_halves_merged_by_lse_equal_attention_over_both(impl):
    q, k, v = torch.randn(1, 2, 24, 16), torch.randn(1, 1, 40, 16), torch.randn(1, 1, 40, 16)
    scale = 16 ** -0.5
    o1, l1 = blocks.forward(q, k[:, :, :17], v[:, :, :17], False, scale, impl)
    o2, l2 = blocks.forward(q, k[:, :, 17:], v[:, :, 17:], False, scale, impl)
    o, lse = o1.float(), l1.clone()
    blocks.merge(o, lse, o2, l2)
    _, l_full = blocks.forward(q, k, v, False, scale, "ref")
    assert torch.allclose(o, attention_ref(q, k, v).float(), atol=2e-5)
    assert torch.allclose(lse, l_full, atol=2e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_fa2_block_backward_with_the_final_lse_matches_the_reference(causal):
    q, k, v = torch.randn(1, 4, 32, 16), torch.randn(1, 2, 48, 16), torch.randn(1, 2, 48, 16)
    do = torch.randn_like(q)
    o, lse = blocks.forward(q, k, v, causal, 0.25, "ref")
    part = slice(8, 32)  # a row slice: non-contiguous o, lse and dO, as the ring passes them
    got = blocks.backward(q[:, :, part], k, v, o[:, :, part], lse[:, :, part], do[:, :, part], causal, 0.25, "fa2")
    want = blocks.backward(q[:, :, part], k, v, o[:, :, part], lse[:, :, part], do[:, :, part], causal, 0.25, "ref")
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5), (g - w).abs().max()


# --- process groups: ring attention, the all-gather baseline, the benchmark ---------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from fa2bench.distributed import ringcalls, ringcheck

    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    gen = torch.Generator().manual_seed(7)
    cases = [(m, impl, causal, kv) for m in ("ring", "allgather") for impl in ("ref", "fa2")
             for causal in (False, True) for kv in (4, 2) if impl == "ref" or kv == 2]  # the interpreter: GQA
    for method, impl, causal, kv in cases:
        dtype = torch.float64 if impl == "ref" else torch.float32
        n = 16 * world
        q = torch.randn(1, 4, n, 16, generator=gen, dtype=dtype)
        k, v = (torch.randn(1, kv, n, 16, generator=gen, dtype=dtype) for _ in range(2))
        do = torch.randn(1, 4, n, 16, generator=gen, dtype=dtype)
        full = [t.clone().requires_grad_() for t in (q, k, v)]
        attention_ref(*full, causal=causal).backward(do)
        local = [ring.zigzag_shard(t, rank, world).requires_grad_() for t in (q, k, v)]
        fn = ring.ring_attention if method == "ring" else ring.allgather_attention
        o = fn(*local, causal=causal, impl=impl)
        o.backward(ring.zigzag_shard(do, rank, world))
        got = [ring.gather_zigzag(o.detach())] + [ring.gather_zigzag(t.grad) for t in local]
        want = [attention_ref(q, k, v, causal=causal)] + [t.grad for t in full]
        results[f"{method} {impl} causal={causal} kv={kv}"] = [
            ((g - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want)]
    if world == 2:
        results["bench"] = [
            ringcalls.run_point(Point("ring-fa2", "fwd_bwd", "fp32", Shape(1, 2, 1, 64, 64, 16, True)), "ref", 2, 1),
            ringcalls.run_point(Point("allgather-fa2", "fwd", "fp32", Shape(1, 2, 2, 64, 64, 16, False)), "ref", 2, 1),
            ringcalls.run_point(Point("cp-sdpa", "fwd", "fp32", Shape(1, 2, 2, 64, 64, 16, False)), "ref", 2, 1)]
        results["check"] = ringcheck.check_gradients(Point("ring-fa2", "fwd_bwd", "fp32",
                                                           Shape(1, 4, 2, 64, 64, 16, True)), "fa2")
    if rank == 0:
        Path(out).write_text(json.dumps(results, default=str))
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, pytest.param(3, marks=pytest.mark.slow)])
def gloo_run(request, tmp_path_factory):
    import torch.multiprocessing as mp

    world = request.param
    out = tmp_path_factory.mktemp(f"gloo{world}") / "results.json"
    mp.spawn(_gloo_worker, args=(world, _free_port(), str(out)), nprocs=world)
    return world, json.loads(out.read_text())


@pytest.mark.slow
def test_ring_and_allgather_equal_one_process_attention_forward_and_backward(gloo_run):
    world, results = gloo_run
    cases = [name for name in results if " causal=" in name]
    assert len(cases) == 12
    for name in cases:
        tol = 1e-12 if " ref " in name else 5e-6  # float64 PyTorch blocks; float32 Triton interpreter
        errors = dict(zip(("o", "dq", "dk", "dv"), results[name]))
        assert all(e <= tol for e in errors.values()), f"world {world}, {name}: {errors}"


@pytest.mark.slow
def test_ring_benchmark_rows_are_checked_timed_and_report_hidden_communication(gloo_run):
    world, results = gloo_run
    if world != 2:
        pytest.skip("the benchmark rows run at world size 2")
    ring_row, gather_row, cp_row = results["bench"]
    assert ring_row["status"] == "ok" and gather_row["status"] == "ok", (ring_row["error"], gather_row["error"])
    assert ring_row["world_size"] == 2 and ring_row["ms"] > 0 and ring_row["tflops_per_gpu"] > 0
    assert ring_row["max_rel_error"] <= 2 * ring_row["baseline_rel_error"] + 2 * 2.0**-10
    assert 0.0 <= ring_row["comm_hidden_pct"] <= 100.0 and ring_row["ms_comm"] > 0
    assert cp_row["status"] == "unsupported" and "CUDA" in cp_row["error"]
    assert results["check"]["status"] == "ok", results["check"]["detail"]


RING_JOB = dict(seqlen="64,66", heads=2, kv_heads=1, headdim=16, dtype="fp32", mode="fwd,fwd_bwd",
                method="ring-fa2,allgather-fa2,cp-sdpa", reps=1, warmup=0, impl="ref")


def _ring_job(rank, world, port, out):
    """One world size's job of ``fa2bench ring`` as torchrun's ranks run it (``plan_ring`` under torchrun)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    from fa2bench.distributed import ringbench

    lines = []
    plan = ringbench.plan_ring(None, out, **RING_JOB)
    assert plan.rank == launch.Rank(rank, world, rank)
    assert ringbench.execute_ring(plan, echo=lines.append) == 0
    if rank == 0:
        with Path(out, f"log{world}.txt").open("a") as log:
            log.write("".join(line + "\n" for line in lines) + "--\n")


def test_ring_points_run_through_the_runner_into_one_folder_and_report(tmp_path):
    """Jobs at 1 and 2 ranks (gloo) run the ring's points through ``runner.run_points`` into one ring.csv: a point
    that cannot run is a row with its status, a job run again skips the points its world size holds, and the
    folder reports through ``api.report`` like any run."""
    import torch.multiprocessing as mp

    from fa2bench import api
    from fa2bench.distributed import ringbench

    for world in (1, 2, 2):
        mp.spawn(_ring_job, args=(world, _free_port(), str(tmp_path)), nprocs=world)
    rows = pd.read_csv(tmp_path / "ring.csv", keep_default_na=False, na_values=[""])
    assert list(rows.columns) == list(ringbench.COLUMNS)
    # 2 seqlens x 2 modes x (3 methods at 2 ranks, 2 at 1: all-gather is ring-fa2 on one GPU), each point once
    assert len(rows) == 2 * 2 * (3 + 2) and not rows.duplicated(list(ringbench.KEY)).any()
    status = rows.groupby(["provider", "world_size", "seqlen_q"])["status"].agg(set).to_dict()
    assert status[("ring-fa2", 1, 66)] == {"ok"} and status[("ring-fa2", 2, 66)] == {"unsupported"}
    assert status[("allgather-fa2", 2, 64)] == {"ok"} and status[("cp-sdpa", 2, 64)] == {"unsupported"}
    ok = rows[rows["status"] == "ok"]
    assert (ok["ms"] > 0).all() and (ok["tflops_per_gpu"] > 0).all()
    assert ok[(ok["provider"] == "ring-fa2") & (ok["world_size"] == 2)]["ms_comm"].gt(0).all()
    assert (tmp_path / "log2.txt").read_text().split("--\n")[1] == ""  # the second job found every point done
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["kind"] == "ring" and [r["world_size"] for r in meta["runs"]] == [1, 2, 2]
    api.report(tmp_path)
    table = pd.read_csv(tmp_path / "scaling.csv")
    assert set(table["world_size"]) == {1, 2} and table["scaling_efficiency_pct"].notna().all()


def test_ring_report_computes_scaling_efficiency_against_one_gpu(tmp_path):
    from fa2bench import api
    from fa2bench.distributed import ringbench, ringreport

    point = Point("ring-fa2", "fwd", "bf16", Shape(1, 16, 16, 65536, 65536, 128, True))
    writer = ringbench.open_store(tmp_path, 1)
    for world, ms, hidden in ((1, 100.0, None), (2, 55.0, 80.0), (4, 31.25, 60.0)):
        writer.append({**point.fields(), "world_size": world, "status": "ok", "error": "", "gpu": "H100",
                       "flops": 1e15, "ms": ms, "tflops_per_gpu": 1e15 / (ms * 1e-3) / 1e12 / world,
                       "comm_hidden_pct": hidden})
    writer.release()
    assert ringreport.is_ring(tmp_path)
    assert api.report(tmp_path) == tmp_path / "report.md"  # the report path of every kind of run
    table = pd.read_csv(tmp_path / "scaling.csv")
    assert table["scaling_efficiency_pct"].round(1).tolist() == [100.0, 90.9, 80.0]
    assert (tmp_path / "scaling.png").stat().st_size > 0
    assert "| ring-fa2 | fwd | 65536 | 4 |" in (tmp_path / "report.md").read_text()
    for world in (2, 8):  # the next world size's job continues the folder and skips only its own points
        again = ringbench.open_store(tmp_path, world)
        assert again.done == ({point.key()} if world == 2 else set()) and not again.dropped
        again.release()


def test_a_ring_run_is_listed_as_a_ring_run_and_plotted_by_the_plot_command(tmp_path):
    """``list_runs`` finds a ring folder (its rows are ring.csv) under its own kind and never as a sweep, and
    ``fa2bench plot`` draws its scaling figure into RUN_DIR/figures instead of failing on a missing results.csv."""
    from typer.testing import CliRunner

    from fa2bench import api
    from fa2bench.cli import app
    from fa2bench.distributed import ringbench

    ring, sweep = tmp_path / "ring", tmp_path / "sweep"
    point = Point("ring-fa2", "fwd", "bf16", Shape(1, 16, 16, 65536, 65536, 128, True))
    writer = ringbench.open_store(ring, 1, options={"seqlens": [65536]})  # meta.json as a ring job writes it
    for world, ms in ((1, 100.0), (2, 55.0)):
        writer.append({**point.fields(), "world_size": world, "status": "ok", "error": "", "gpu": "H100",
                       "flops": 1e15, "ms": ms, "tflops_per_gpu": 1e15 / (ms * 1e-3) / 1e12 / world})
    writer.release()
    sweep.mkdir()
    (sweep / "meta.json").write_text('{"started_utc": "2020-01-01T00:00:00+00:00"}')
    (sweep / "results.csv").write_text("")
    assert api.list_runs(tmp_path) == [sweep] and api.list_runs(tmp_path, kind="ring") == [ring]
    assert set(api.list_runs(tmp_path, kind=None)) == {ring, sweep}
    result = CliRunner().invoke(app, ["plot", str(ring)])
    assert result.exit_code == 0, result.output
    assert "scaling:" in result.output and (ring / "figures" / "scaling.png").stat().st_size > 0


def test_cli_gpu_options_fail_in_one_line_without_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from fa2bench.cli import app

    runner = CliRunner()
    if not torch.cuda.is_available():
        result = runner.invoke(app, ["sweep", "--preset", "smoke", "--gpus", "all", "--out", str(tmp_path / "a")])
        assert result.exit_code == 2 and "no CUDA GPU here" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["ring", "--gpus", "1,x", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--gpus" in result.output and "Traceback" not in result.output


# --- the sharded sweep through the library ------------------------------------------------------------------


def _rank_plan(plan):
    """What a rank resolves from the launcher's command line (``fa2bench sweep`` parsed by the CLI)."""
    import typer

    from fa2bench import api
    from fa2bench.cli import app

    command = typer.main.get_command(app).commands[plan.command[0]]
    params = command.make_context(plan.command[0], list(plan.command[1:])).params
    given = {("out" if k == "out_dir" else k): getattr(v, "value", v) for k, v in params.items()
             if v is not None and k not in ("config", "clear_autotune_cache")}  # the latter: an action, not an option
    return api.plan_sweep(**given)


@pytest.mark.parametrize("spec, options", [
    ("smoke", {"provider": ["torch-eager", "sdpa-math"], "rep_ms": 2, "check": False}),
    (SweepSpec(seqlens=(512, 2048), headdims=(64,), tokens=4096, hidden=256, causal=(True,), dtypes=("bf16",),
               modes=("fwd",)), {"provider": ["fa2"], "point_timeout": 30, "isolate": True}),
])
def test_the_ranks_resolve_exactly_the_sweep_the_launcher_planned(tmp_path, spec, options):
    from fa2bench import api

    plan = api.plan_sweep(spec, gpus=2, out=tmp_path / "run", **options)
    assert plan.gpus == 2 and plan.sharded and plan.rank is None and plan.command[0] == "sweep"
    assert "--gpus" not in plan.command and "--resume" not in plan.command
    rank = _rank_plan(plan)
    assert (rank.spec, rank.providers, rank.out, rank.run_options) == (plan.spec, plan.providers, plan.out,
                                                                      plan.run_options)
    resumed = api.plan_sweep(spec, gpus="1", out=tmp_path / "run", resume=True, **options)
    assert "--resume" in resumed.command and _rank_plan(resumed).resume


def test_under_torchrun_a_sweep_plans_as_a_rank_and_refuses_gpus(tmp_path, monkeypatch):
    from fa2bench import api
    from fa2bench.core.presets import SpecError

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    plan = api.plan_sweep("smoke", provider=["torch-eager"], out=tmp_path)
    assert plan.rank == launch.Rank(1, 2, 1) and plan.sharded and plan.gpus is None
    with pytest.raises(SpecError, match="already runs under torchrun"):
        api.plan_sweep("smoke", gpus=2, out=tmp_path)


def test_a_sharded_sweep_refuses_providers_its_ranks_cannot_import(tmp_path, monkeypatch):
    from fa2bench import api
    from fa2bench.core.presets import SpecError

    monkeypatch.setitem(providers.REGISTRY, "mine", providers.Provider(
        name="mine", label="mine", color="k", kind="baseline", description="test double",
        make=lambda shape: attention_ref, devices=frozenset({"cpu", "cuda"})))  # registered by this module
    with pytest.raises(SpecError, match="provider mine is registered outside fa2bench"):
        api.plan_sweep("smoke", provider=["mine"], gpus=2, out=tmp_path)


def test_the_launcher_refuses_a_folder_with_results_before_starting_torchrun(tmp_path, monkeypatch):
    from fa2bench import api
    from fa2bench.run.results import ResultsError

    points = _points(1)
    _sharded_folder(tmp_path, points, 2)
    monkeypatch.setattr(launch, "run_torchrun", lambda *a, **k: pytest.fail("torchrun started"))
    plan = api.plan_sweep("smoke", provider=["torch-eager"], gpus=2, out=tmp_path)
    with pytest.raises(ResultsError, match="already holds results; pass --resume"):
        api.execute(plan)


def test_ring_options_are_checked_before_any_job_starts(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fa2bench.cli import app
    from fa2bench.distributed import ringbench

    monkeypatch.setattr(launch, "run_torchrun", lambda *a, **k: pytest.fail("torchrun started"))
    for args, message in ((["--impl", "cuda"], "--impl: unknown 'cuda'"), (["--method", "ring"], "--method"),
                          (["--heads", "6", "--kv-heads", "4"], "--kv-heads 4 does not divide"),
                          (["--reps", "0"], "--reps must be at least 1")):
        result = CliRunner().invoke(app, ["ring", "--gpus", "1", "--out", str(tmp_path), *args])
        assert result.exit_code == 2 and message in result.output, result.output
    assert ringbench.run_args() == ["--seqlen", "65536..262144", "--batch", "1", "--heads", "16", "--headdim", "128",
                                    "--dtype", "bf16", "--causal", "on", "--mode", "fwd,fwd_bwd", "--method",
                                    "ring-fa2,allgather-fa2,cp-sdpa", "--reps", "3", "--warmup", "1"]
    assert ringbench.run_args(seqlen="8192", tune=True, impl="ref")[-3:] == ["--impl", "ref", "--tune"]


@pytest.mark.parametrize("check", [False, True])
def test_ring_ranks_enter_through_fa2bench_ring_with_the_launchers_options(tmp_path, monkeypatch, check):
    import typer

    from fa2bench.cli import app
    from fa2bench.distributed import ringbench

    calls = []
    monkeypatch.setattr(launch, "run_torchrun", lambda n, args, **kw: calls.append((n, args, kw)) or 0)
    options = dict(seqlen="8192,16384", heads=8, kv_heads=2, dtype="fp16", method="ring-fa2", impl="ref", tune=True)
    plan = ringbench.plan_ring("1,2", tmp_path, check, **options)
    assert ringbench.execute_ring(plan, available_gpus=2) == 0
    assert [(n, kw) for n, _, kw in calls] == [(1, {}), (2, {})]  # `fa2bench ring` (no second CLI), no --gpus
    args = calls[0][1]
    params = typer.main.get_command(app).commands[args[0]].make_context(args[0], list(args[1:])).params
    assert args[0] == "ring" and params["gpus"] is None and params["check"] == check
    given = {k: getattr(v, "value", v) for k, v in params.items() if k in ringbench.RUN_OPTIONS}
    assert given == {**ringbench.RUN_OPTIONS, **(ringbench.CHECK_DEFAULTS if check else {}), **options}
