"""fa2bench e2e: the GPT, its FLOPs formula, the start-of-training check, the training loop, the results folder,
the Table-1 report and the command line. CPU providers only (the GPU test is marked ``gpu``)."""
import math

import fa2bench

import pytest
import torch
from typer.testing import CliRunner

from fa2bench.core import providers
from fa2bench.cli import app
from fa2bench.e2e import figures
from fa2bench.e2e.check import check_start, make_attention
from fa2bench.e2e.configs import MODELS, PAPER_TABLE1, GPTConfig
from fa2bench.e2e.flops import flops_per_sequence, flops_per_step
from fa2bench.e2e.model import GPT
from fa2bench.e2e.schema import E2E_COLUMNS
from fa2bench.e2e.train import E2ESpec, Trainer, estimate_bytes, plan, run_e2e, synthetic_batch
from fa2bench.core.reference import attention_ref
from fa2bench.run.results import ResultsError, load_run, read_meta

TINY = MODELS["gpt-tiny"]
CPU_PROVIDERS = ("torch-eager", "sdpa-math", "fa2", "naive", "fa1")
GIB = 2**30


def _register(monkeypatch, name, fn):
    """A CPU test double in the registry: ``fn(q, k, v, shape)``."""
    monkeypatch.setitem(providers.REGISTRY, name, providers.Provider(
        name=name, label=name, color="k", kind="baseline", description="test double",
        make=lambda shape: (lambda q, k, v: fn(q, k, v, shape)), devices=frozenset({"cpu", "cuda"})))
    return name


# --- configurations and FLOPs ----------------------------------------------------------------------------


def test_paper_models_have_the_papers_shapes_and_sizes():
    for name, layers, hidden, heads, billions in (("gpt-1.3b", 24, 2048, 16, 1.3), ("gpt-2.7b", 32, 2560, 20, 2.7)):
        c = GPTConfig.from_name(name)
        assert (c.layers, c.hidden, c.heads, c.headdim) == (layers, hidden, heads, 128)
        assert c.params(2048) / 1e9 == pytest.approx(billions, rel=0.03)
    assert set(PAPER_TABLE1) == {(m, n) for m in ("gpt-1.3b", "gpt-2.7b") for n in (2048, 8192)}
    assert max(v[2] for v in PAPER_TABLE1.values()) == 225  # the paper's headline: 225 TFLOP/s per A100


def test_params_count_equals_the_built_modules():
    model = GPT(TINY, 48, lambda q, k, v: q)
    assert sum(p.numel() for p in model.parameters()) == TINY.params(48)


def test_flops_follow_the_papers_formula_and_an_independent_count_of_the_matmuls():
    c, n = MODELS["gpt-1.3b"], 2048
    with torch.device("meta"):
        model = GPT(c, n, lambda q, k, v: q)
    # weights that multiply activations: every matrix but the position table (the tied output layer counts)
    matmul_weights = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and name != "pos.weight")
    dense = 2 * 3 * n * matmul_weights  # 2 FLOPs per multiply-add, forward + 2x backward
    attention = 3 * c.layers * 2 * (2 * n * n * c.hidden)  # QK^T and PV, full square, forward + backward
    assert flops_per_sequence(c, n) == 6 * n * c.params(0) + 12 * c.layers * c.hidden * n**2
    assert flops_per_sequence(c, n) == pytest.approx(dense + attention, rel=1e-3)  # biases and LayerNorms aside
    assert flops_per_step(c, n, 8) == 8 * flops_per_sequence(c, n)


def test_default_plan_fits_16k_tokens_of_the_13b_model_on_80_gib_and_says_so():
    spec = E2ESpec(models=("gpt-1.3b",), seqlens=(2048,), providers=("fa2",))
    at_2k, at_8k = (plan(MODELS["gpt-1.3b"], n, spec, 80 * GIB) for n in (2048, 8192))
    assert (at_2k.micro_batch, at_2k.grad_accum, at_2k.checkpointing) == (8, 1, False)
    assert (at_8k.micro_batch, at_8k.checkpointing) == (2, False)
    assert "micro-batch 8" in at_2k.note and "80 GiB" in at_2k.note
    small = plan(MODELS["gpt-1.3b"], 8192, spec, 16 * GIB)
    assert small.micro_batch == 1 and small.checkpointing  # one sequence does not fit without checkpointing
    assert estimate_bytes(MODELS["gpt-1.3b"], 8192, 1, True) < estimate_bytes(MODELS["gpt-1.3b"], 8192, 1, False)


def test_the_default_micro_batch_divides_the_tokens_asked_per_step():
    spec = E2ESpec(models=("gpt-1.3b",), seqlens=(2048,), providers=("fa2",), tokens_per_step=3 * 2048)
    p = plan(MODELS["gpt-1.3b"], 2048, spec, 80 * GIB)
    assert (p.micro_batch, p.grad_accum) == (1, 3)


def test_an_explicit_plan_is_kept_and_tokens_per_step_become_accumulation():
    spec = E2ESpec(models=("gpt-tiny",), seqlens=(32,), providers=("fa2",), micro_batch=2, tokens_per_step=256,
                   checkpointing=True)
    p = plan(TINY, 32, spec, 80 * GIB)
    assert (p.micro_batch, p.grad_accum, p.checkpointing) == (2, 4, True)


# --- correctness ----------------------------------------------------------------------------------------


def test_loss_and_gradients_at_start_agree_across_cpu_providers():
    verdicts = check_start(TINY, 32, 2, CPU_PROVIDERS, "cpu")
    for name, verdict in verdicts.items():
        assert verdict.ok, f"{name}: {verdict.detail}"


def test_a_wrong_attention_fails_the_start_check(monkeypatch):
    acausal = _register(monkeypatch, "acausal", lambda q, k, v, s: attention_ref(q, k, v, causal=False, upcast=False))
    verdict = check_start(TINY, 32, 2, [acausal], "cpu")[acausal]
    # at initialisation the loss barely depends on attention; the gradients of the QKV projection do
    assert not verdict.ok and "grad_qkv0" in verdict.detail


def _train(provider, steps, batch=8, lr=3e-3):
    trainer = Trainer(TINY, 32, make_attention(provider, TINY, 32, batch), "cpu", lr=lr, seed=0)
    gen = torch.Generator().manual_seed(1)
    return [trainer.step([synthetic_batch(TINY.vocab, 32, batch, "cpu", gen, period=8)]) for _ in range(steps)]


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["torch-eager", "sdpa-math"])
def test_loss_falls_on_a_learnable_copy_task(provider):
    # each sequence repeats its first 8 tokens: 24 of 32 targets are a copy from 8 places back
    losses = _train(provider, 200)
    assert losses[0] == pytest.approx(math.log(TINY.vocab), rel=0.05)  # chance level at start
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0]
    assert sum(losses[-10:]) / 10 > math.log(TINY.vocab) * 8 / 32 * 0.9  # the 8 random tokens stay unpredictable


@pytest.mark.slow
def test_fa2_trains_step_for_step_like_eager_attention():
    fa2, eager = _train("fa2", 6, batch=2), _train("torch-eager", 6, batch=2)
    assert fa2 == pytest.approx(eager, rel=1e-4)
    assert fa2[-1] < fa2[0]


# --- a run: results folder, statuses, resume, report -----------------------------------------------------


def _spec(*names, **kwargs):
    return E2ESpec(models=("gpt-tiny",), seqlens=(32,), providers=names, steps=2, warmup=1, **kwargs)


def test_a_run_writes_rows_meta_and_parquet_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    frame = run_e2e(_spec("torch-eager", "sdpa-flash"), out)
    assert list(frame["status"]) == ["ok", "unsupported"]
    ok = frame.iloc[0]
    assert ok["ms_p20"] <= ok["ms"] <= ok["ms_p80"]
    # two timed steps: the row says so and is flagged noisy, as a sweep point on fewer than 5 samples would be
    assert (ok["samples"], ok["timer"], bool(ok["noisy"])) == (2, "step", True)
    assert ok["spread"] == pytest.approx((ok["ms_p80"] - ok["ms_p20"]) / ok["ms"])
    assert ok["tflops"] == pytest.approx(flops_per_step(TINY, 32, 1) / (ok["ms"] * 1e-3) / 1e12)
    assert ok["tokens_per_s"] == pytest.approx(32 / (ok["ms"] * 1e-3))
    assert ok["pct_a100_peak"] == pytest.approx(100 * ok["tflops"] / 312)
    assert ok["max_rel_error"] < 1e-5 and ok["mode"] == "train" and ok["dtype"] == "fp32"
    assert (ok["batch"], ok["heads"], ok["headdim"], ok["seqlen_q"], bool(ok["causal"])) == (1, 4, 16, 32, True)
    assert read_meta(out)["kind"] == "e2e" and read_meta(out)["complete"]
    assert (out / "results.parquet").exists()
    assert list(load_run(out).columns[:10]) == list(E2E_COLUMNS[:10])

    calls = []
    _register(monkeypatch, "counted", lambda q, k, v, s: calls.append(1) or attention_ref(q, k, v, causal=True,
                                                                                         upcast=False))
    frame = run_e2e(_spec("torch-eager", "sdpa-flash", "counted"), out, resume=True, extend=True)
    assert list(frame["provider"]) == ["torch-eager", "sdpa-flash", "counted"] and calls  # only the new one ran
    assert len(read_meta(out)["resumed"]) == 1
    assert [s["providers"] for s in read_meta(out)["sweeps"]] == [["torch-eager", "sdpa-flash"],
                                                                  ["torch-eager", "sdpa-flash", "counted"]]


def test_resuming_another_spec_needs_extend_and_another_kind_of_run_is_refused(tmp_path):
    out = tmp_path / "run"
    run_e2e(_spec("torch-eager", check=False), out)
    with pytest.raises(ResultsError, match="different sweep.*--extend"):
        run_e2e(_spec("torch-eager", "sdpa-math", check=False), out, resume=True)
    assert len(load_run(out)) == 1  # nothing was run
    result = invoke("sweep", "--seqlen", "32", "--headdim", "16", "--provider", "torch-eager", "--mode", "fwd",
                    "--out", out, "--resume", "--extend")
    assert result.exit_code == 2 and "another kind of run" in result.output


def test_out_of_memory_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    def oom(q, k, v, shape):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    _register(monkeypatch, "hungry", oom)
    frame = run_e2e(_spec("hungry", "torch-eager", check=False), tmp_path / "run")
    assert list(frame["status"]) == ["oom", "ok"]
    assert "out of memory" in frame.iloc[0]["error"]


def test_out_of_memory_halves_the_micro_batch_and_keeps_tokens_per_step(tmp_path, monkeypatch):
    def fits_one(q, k, v, shape):
        if shape.batch > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return attention_ref(q, k, v, causal=True, upcast=False)

    _register(monkeypatch, "fits-one", fits_one)
    row = run_e2e(_spec("fits-one", micro_batch=4, check=False), tmp_path / "run").iloc[0]
    assert (row["status"], row["micro_batch"], row["grad_accum"], row["tokens_per_step"]) == ("ok", 1, 4, 128)
    assert "retried with 1" in row["note"]


def test_report_and_plot_of_an_e2e_run_draw_table_1_with_the_papers_numbers(tmp_path):
    out = tmp_path / "run"
    run_e2e(_spec("torch-eager"), out)
    text = fa2bench.report(out).read_text()
    assert "Table 1" in text and "paper A100: FlashAttention-2" in text and "6 · seqlen · params" in text
    assert (out / "figures" / f"{figures.FIGURE}.png").exists()
    frame = load_run(out)
    assert figures.is_e2e(frame)
    frame.loc[:, "model"] = "gpt-1.3b"  # the paper's row for the same table
    frame.loc[:, "seqlen_q"] = 8192
    assert "| 72 | 170 | 220 |" in figures.table1(frame)


def test_an_e2e_run_is_not_taken_for_the_newest_sweep(tmp_path):
    from fa2bench.api import find_run
    from fa2bench.api import list_runs as runs

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "meta.json").write_text('{"started_utc": "2026-01-01T00:00:00+00:00"}')
    (sweep / "results.csv").write_text("")
    run_e2e(_spec("torch-eager", check=False), tmp_path / "e2e")  # started later
    assert runs(tmp_path) == [sweep] and find_run(tmp_path, env="FA2BENCH_TEST_UNSET") == sweep
    assert runs(tmp_path, kind="e2e") == [tmp_path / "e2e"] and len(runs(tmp_path, kind=None)) == 2


# --- command line ---------------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("args, message", [
    (["--model", "gpt-9b"], "--model: unknown 'gpt-9b'"),
    (["--provider", "fa9"], "--provider: unknown 'fa9'"),
    (["--seqlen", "two"], "--seqlen"),
    (["--seqlen", "0"], "--seqlen"),
    (["--steps", "0"], "--steps"),
    (["--warmup", "0"], "--warmup"),
    (["--tokens-per-step", "100", "--seqlen", "64"], "--tokens-per-step"),
    (["--resume"], "--resume needs --out"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = invoke("e2e", *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU refusal")
def test_a_paper_size_model_without_a_gpu_is_refused():
    result = invoke("e2e", "--model", "gpt-1.3b")
    assert result.exit_code == 2 and "needs a CUDA GPU" in result.output


def test_the_command_runs_a_tiny_model_and_the_report_follows(tmp_path):
    out = tmp_path / "cli"
    result = invoke("e2e", "--model", "gpt-tiny", "--seqlen", "32", "--provider", "torch-eager,sdpa-math",
                    "--steps", "2", "--warmup", "1", "--out", out)
    assert result.exit_code == 0, result.output
    assert "gpt-tiny 32 torch-eager:" in result.output and "TFLOP/s" in result.output
    assert list(load_run(out)["status"]) == ["ok", "ok"]
    assert invoke("report", out).exit_code == 0 and (out / "report.md").exists()
    assert invoke("plot", out).exit_code == 0


# --- GPU ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_a_small_model_trains_with_fa2_and_sdpa_flash_on_the_gpu(tmp_path):
    spec = E2ESpec(models=("gpt-small",), seqlens=(512,), providers=("fa2", "sdpa-flash"), steps=3, warmup=1,
                   micro_batch=4)
    frame = run_e2e(spec, tmp_path / "gpu")
    for row in frame.to_dict("records"):
        assert row["status"] == "ok", f"{row['provider']}: {row['error']}"
        assert row["dtype"] == "bf16" and row["tflops"] > 0 and row["peak_mem_mb"] > 0
        assert math.isfinite(row["loss_last"]) and row["loss_last"] < row["loss_first"]
