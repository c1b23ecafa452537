"""fa2bench e2e --gpus N: data-parallel training on the CPU, gloo at world size 2, the tiny GPT.

Real process groups: DDP's gradients must equal one process's on the two ranks' batches concatenated, one
rank's out of memory must become every rank's ``oom`` without a hang, and the command must write one folder
whose rows are per GPU. The launcher's arguments are checked to plan exactly the run it was given.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fa2bench.cli import app
from fa2bench.distributed import launch
from fa2bench.e2e import dp, train
from fa2bench.e2e.check import make_attention
from fa2bench.e2e.configs import MODELS
from fa2bench.e2e.flops import flops_per_step
from fa2bench.e2e.schema import E2E_COLUMNS, e2e_key
from fa2bench.run.results import LOCK_NAME, load_run

ROOT = Path(__file__).resolve().parent.parent
TINY = MODELS["gpt-tiny"]
SEQLEN, WORLD = 32, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))


def _batches(rank: int, micro_batch: int = 2):
    gen = torch.Generator().manual_seed(train.data_seed(0, rank))
    return [train.synthetic_batch(TINY.vocab, SEQLEN, micro_batch, "cpu", gen)]


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2 holds DTensor shards


def _grads(model) -> torch.Tensor:
    return torch.cat([_full(p.grad).flatten() for p in model.parameters()])


def _dp_worker(rank: int, parallel: str, port: int, out: str) -> None:
    import torch.distributed as dist

    _join(rank, port)
    me = launch.init_process_group("gloo")
    group = dp.Group(me, parallel, "cpu")
    trainer = train.Trainer(TINY, SEQLEN, make_attention("torch-eager", TINY, SEQLEN, 2), "cpu", seed=0,
                            wrap=group.wrap)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.backward(_batches(rank))  # DDP all-reduces (FSDP reduce-scatters) the mean gradient in backward
    grads = _grads(trainer.model).tolist()
    group.probe_step(trainer, _batches(rank))  # no all-reduce: the replicas must stay equal all the same
    trainer.step(_batches(rank))
    params = torch.cat([_full(p.detach()).flatten() for p in trainer.model.parameters()]).tolist()
    everyone = group._gather({"grads": grads, "params": params})
    if rank == 0:
        Path(out).write_text(json.dumps(everyone))
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def dp_ranks(request, tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp(request.param) / "ranks.json"
    mp.spawn(_dp_worker, args=(request.param, _free_port(), str(out)), nprocs=WORLD)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_data_parallel_gradients_equal_one_process_on_the_concatenated_batch(dp_ranks):
    single = train.Trainer(TINY, SEQLEN, make_attention("torch-eager", TINY, SEQLEN, 2 * WORLD), "cpu", seed=0)
    inputs, targets = (torch.cat(t) for t in zip(*(_batches(r)[0] for r in range(WORLD))))
    single.optimizer.zero_grad(set_to_none=True)
    single.backward([(inputs, targets)])  # the mean loss over all 4 sequences
    want = _grads(single.model)
    for rank in dp_ranks:
        got = torch.tensor(rank["grads"])
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-5 * want.abs().max(), (got - want).abs().max()
    # and it is a real check: one rank's own batch alone gives other gradients
    alone = train.Trainer(TINY, SEQLEN, make_attention("torch-eager", TINY, SEQLEN, 2), "cpu", seed=0)
    alone.optimizer.zero_grad(set_to_none=True)
    alone.backward(_batches(0))
    assert (_grads(alone.model) - want).abs().max() > 1e-3 * want.abs().max()


@pytest.mark.slow
def test_replicas_stay_equal_after_the_probe_step_and_a_training_step(dp_ranks):
    assert dp_ranks[0]["params"] == dp_ranks[1]["params"]


def _oom_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    calls = [0]
    backward = train.Trainer.backward

    def failing(self, batches):  # rank 1 runs out of memory in the first configuration's first step
        calls[0] += 1
        if rank == 1 and calls[0] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return backward(self, batches)

    train.Trainer.backward = failing
    spec = train.E2ESpec(models=("gpt-tiny",), seqlens=(SEQLEN,), providers=("torch-eager", "sdpa-math"), steps=2,
                         warmup=1, check=False, gpus=WORLD, parallel="ddp")
    dp.run_ranks(spec, out)


@pytest.mark.slow
def test_one_ranks_out_of_memory_is_every_ranks_oom_and_the_run_goes_on(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_oom_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD)  # returns: no rank hangs
    frame = load_run(tmp_path)
    assert frame["status"].tolist() == ["oom", "ok"]
    assert frame["error"][0].startswith("rank 1: CUDA out of memory")
    assert json.loads((tmp_path / "meta.json").read_text())["complete"] is True


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fa2bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=launch.child_env({"OMP_NUM_THREADS": "1"}))


@pytest.mark.slow
def test_the_command_on_two_ranks_writes_one_folder_of_per_gpu_rows_and_resumes(tmp_path):
    out = tmp_path / "dp"
    args = ["e2e", "--gpus", "2", "--model", "gpt-tiny", "--seqlen", str(SEQLEN), "--provider",
            "torch-eager,sdpa-math", "--steps", "2", "--warmup", "1", "--out", str(out)]
    first = _cli(*args)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    written = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)  # the lock file stays (no delete race)
    assert written == ["meta.json", "results.csv", "results.parquet"]  # rank 0 only
    frame = load_run(out)
    assert (out / "results.csv").read_text().splitlines()[0] == ",".join(E2E_COLUMNS)
    assert frame["provider"].tolist() == ["torch-eager", "sdpa-math"] and (frame["status"] == "ok").all()
    assert (frame["gpus"] == 2).all() and (frame["parallel"] == "ddp").all()
    # per GPU: one micro-batch of one sequence per rank, its FLOPs, TFLOP/s from them; globally twice the tokens
    assert (frame["tokens_per_step"] == frame["micro_batch"] * frame["grad_accum"] * SEQLEN).all()
    assert (frame["flops"] == flops_per_step(TINY, SEQLEN, 1)).all()
    assert frame["tflops"].tolist() == pytest.approx((frame["flops"] / (frame["ms"] * 1e9)).tolist(), rel=1e-6)
    assert frame["global_tokens_per_s"].tolist() == pytest.approx((2 * frame["tokens_per_s"]).tolist(), rel=1e-9)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "e2e" and meta["sweep"]["gpus"] == 2 and meta["complete"] is True
    assert meta["distributed"]["backend"] == "gloo" and [r["rank"] for r in meta["distributed"]["ranks"]] == [0, 1]
    assert all({"host", "gpu"} <= set(r) for r in meta["distributed"]["ranks"])

    again = _cli(*args, "--resume")
    assert again.returncode == 0 and again.stdout.count("done before (resume)") == 2, again.stderr[-2000:]
    assert len(load_run(out)) == 2


@pytest.mark.parametrize("args, message", [
    (["--gpus", "0"], "--gpus must be at least 1"),
    (["--gpus", "two"], "expected a number or 'all'"),
    (["--parallel", "fsdp"], "--parallel needs --gpus"),
] + ([(["--gpus", "all"], "no CUDA GPU here")] if not torch.cuda.is_available() else []))
def test_bad_gpus_and_parallel_are_one_line_and_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(app, ["e2e", *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_under_torchrun_gpus_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["e2e", "--gpus", "2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "already runs under torchrun" in result.output


def test_the_ranks_plan_exactly_the_run_the_launcher_planned(tmp_path, monkeypatch):
    options = dict(steps=3, warmup=2, micro_batch=2, tokens_per_step=256, checkpointing=True, shrink_on_oom=False,
                   check=False)
    launcher = train.plan_e2e("gpt-tiny", "32,64", "torch-eager,sdpa-math", out=tmp_path / "r", gpus=2,
                              parallel="fsdp", peak_tflops=100.0, **options)
    assert launcher.gpus == 2 and launcher.rank is None
    seen = {}
    monkeypatch.setattr(dp, "run_ranks", lambda spec, out, **kw: seen.update(spec=spec, out=out, **kw))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, dp.rank_command(launcher))
    assert result.exit_code == 0, result.output
    assert seen["spec"] == launcher.spec and seen["out"] == launcher.out and seen["opts"] == launcher.opts
    assert "configurations" not in result.output  # rank 1 leaves the talking to rank 0


def test_rows_written_before_data_parallel_runs_resume_as_one_process_rows():
    old = {"model": "gpt-tiny", "seqlen_q": 64, "provider": "fa2"}
    assert e2e_key(old) == e2e_key({**old, "gpus": float("nan"), "parallel": ""}) == ("gpt-tiny", 64, "fa2", 1, "none")
    spec = train.E2ESpec(models=("gpt-tiny",), seqlens=(64,), providers=("fa2",))
    assert spec.key(("gpt-tiny", 64, "fa2")) == e2e_key(old)
    assert e2e_key({**old, "gpus": 4, "parallel": "ddp"}) != e2e_key(old)


def test_the_launcher_refuses_a_used_folder_before_torchrun_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "run_torchrun", lambda *a, **k: pytest.fail("torchrun started"))
    spec = train.E2ESpec(models=("gpt-tiny",), seqlens=(SEQLEN,), providers=("torch-eager",), gpus=2, parallel="ddp")
    writer = train.start_writer(spec, train.E2EOptions(device="cpu"), train.this_peak(train.E2EOptions("cpu")),
                                tmp_path, resume=False, extend=False)
    writer.append({"model": "gpt-tiny", "seqlen_q": SEQLEN, "provider": "torch-eager", "mode": "train",
                   "dtype": "fp32", "batch": 1, "heads": 4, "kv_heads": 4, "seqlen_k": SEQLEN, "headdim": 16,
                   "causal": True, "gpus": 2, "parallel": "ddp", "status": "ok"})
    base = ["e2e", "--gpus", "2", "--model", "gpt-tiny", "--seqlen", str(SEQLEN), "--out", str(tmp_path)]
    for args, message in ((["--provider", "torch-eager"], "--resume"),
                          (["--provider", "sdpa-math", "--resume"], "pass --extend")):
        result = CliRunner().invoke(app, base + args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
