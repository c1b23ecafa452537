"""The CLI through Typer's CliRunner: help, a smoke sweep, resume, and one clear line for each bad input."""
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fa2bench.core import providers
from fa2bench.cli import app
from fa2bench.core.reference import attention_ref
from fa2bench.run.results import COLUMNS, load_run

runner = CliRunner()
TINY = ["--seqlen", "16,33", "--headdim", "16", "--batch", "1", "--heads", "2", "--rep-ms", "1", "--no-isolate",
        "--warmup-ms", "0"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("sweep", "providers", "info", "profile", "plot", "report", "compare", "export", "e2e", "ring"):
        assert command in result.output
    assert "--install-completion" in result.output


def test_sweep_help_groups_its_options_in_panels_and_lists_the_choices():
    text = invoke("sweep", "--help").output
    for panel in ("Shape", "Run", "Output"):
        assert f"─ {panel} ─" in text
    assert all(name in text for name in ("default", "paper", "quick", "smoke")) and "off|on|both" in text


def test_providers_lists_every_registered_provider_and_why_not():
    result = invoke("providers")
    assert result.exit_code == 0
    for name in providers.names():
        assert name in result.output
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in result.output


def test_info_without_gpu_says_so_and_exits_zero():
    result = invoke("info")
    assert result.exit_code == 0
    if not torch.cuda.is_available():
        assert "No CUDA GPU" in result.output


@pytest.fixture
def counting(monkeypatch):
    """A CPU provider that counts its set-ups, and raises at seqlen 33 (a provider failing mid-sweep)."""
    made = []

    def make(shape):
        made.append(shape.seqlen_q)

        def fn(q, k, v):
            if shape.seqlen_q == 33:
                raise RuntimeError("flaky kernel")
            return attention_ref(q, k, v, causal=shape.causal, upcast=False)

        return fn

    monkeypatch.setitem(providers.REGISTRY, "counting", providers.Provider(
        name="counting", label="counting", color="k", kind="baseline", description="test double", make=make,
        devices=frozenset({"cpu", "cuda"})))
    return made


def test_a_failing_provider_is_recorded_and_the_sweep_goes_on(tmp_path, counting):
    result = invoke("sweep", *TINY, "--provider", "counting,torch-eager", "--causal", "both", "--mode", "fwd",
                    "--dtype", "fp32", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    frame = load_run(tmp_path / "run")
    assert len(frame) == 2 * 2 * 2  # seqlens x causal x providers
    flaky = frame[(frame["provider"] == "counting") & (frame["seqlen_q"] == 33)]
    assert set(flaky["status"]) == {"error"} and flaky["error"].str.contains("flaky kernel").all()
    assert (frame[frame["provider"] == "torch-eager"]["status"] == "ok").all()


def test_resume_runs_only_the_missing_points(tmp_path, counting):
    out = tmp_path / "run"
    first = invoke("sweep", *TINY[:1], "16", *TINY[2:], "--provider", "counting", "--causal", "off", "--mode",
                   "fwd", "--dtype", "fp32", "--out", out)
    assert first.exit_code == 0, first.output
    assert counting == [16]
    again = invoke("sweep", *TINY, "--provider", "counting", "--causal", "off", "--mode", "fwd", "--dtype", "fp32",
                   "--out", out, "--resume", "--extend")  # another sweep: extends the run explicitly
    assert again.exit_code == 0, again.output
    assert counting == [16, 33]  # 16 was done already
    assert len(pd.read_csv(out / "results.csv")) == 2


@pytest.mark.slow  # every provider through the CPU interpreter: about 15 s
def test_smoke_sweep_writes_a_complete_results_folder(tmp_path):
    """What CI and a newcomer without a GPU run: every provider available here, every status known."""
    out = tmp_path / "smoke"
    args = ["sweep", "--preset", "smoke", "--out", out, "--rep-ms", "1", "--warmup-ms", "0"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    for name in ("results.csv", "results.parquet", "meta.json"):
        assert (out / name).exists()
    frame = load_run(out)
    assert list(frame.columns[: len(COLUMNS)]) == list(COLUMNS)
    meta = frame.attrs["meta"]
    assert meta["complete"] and meta["versions"]["torch"] == torch.__version__ and "commit" in meta["git"]
    assert set(frame["provider"]) >= {"naive", "fa1", "fa2", "torch-eager"}
    bad = frame[frame["status"] != "ok"]
    assert bad.empty, bad[["provider", "mode", "status", "error"]].to_string()
    if not torch.cuda.is_available():
        assert "NOT GPU performance" in result.output


@pytest.mark.parametrize("args, message", [
    (["--provider", "nope"], "unknown 'nope'"),
    (["--seqlen", "-5"], "--seqlen"),
    (["--seqlen", "0"], "--seqlen"),
    (["--headdim", "abc"], "--headdim"),
    (["--tokens", "-1"], "--tokens"),
    (["--headdim", "512", "--provider", "fa2,fa1"], "head dim 512 is supported by none"),
    (["--dtype", "fp8"], "unknown 'fp8'"),
    (["--mode", "train"], "unknown 'train'"),
    (["--kv-heads", "3", "--heads", "4"], "does not divide"),
    (["--resume"], "--resume needs --out"),
    (["--peak-tflops", "-3"], "--peak-tflops"),
])
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, args, message):
    result = invoke("sweep", *args, "--out", tmp_path / "x") if "--resume" not in args else invoke("sweep", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = invoke("sweep", *TINY, "--provider", "torch-eager", "--out", blocker / "run")
    assert result.exit_code == 2 and "cannot write" in result.output


def test_existing_results_folder_needs_resume(tmp_path):
    args = ["sweep", *TINY, "--provider", "torch-eager", "--mode", "fwd", "--causal", "off", "--out", tmp_path]
    assert invoke(*args).exit_code == 0
    second = invoke(*args)
    assert second.exit_code == 2 and "--resume" in second.output


def test_sweep_clear_autotune_cache_removes_fa2bench_decisions_only(tmp_path, monkeypatch):
    """--clear-autotune-cache deletes fa2bench's kernels' autotune files in Triton's cache dir (another library's
    and compiled kernels stay) and says how many, then sweeps."""
    cache = tmp_path / "triton"
    ours, theirs, compiled = (cache / "a" / "_attn_fwd_kernel.autotune.json", cache / "b" / "other.autotune.json",
                              cache / "a" / "_attn_fwd_kernel.cubin")
    for path in (ours, theirs, compiled):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache))
    result = invoke("sweep", *TINY, "--seqlen", "16", "--provider", "fa2", "--mode", "fwd", "--dtype", "fp16",
                    "--causal", "off", "--clear-autotune-cache", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "cleared 1 autotune results" in result.output
    assert not ours.exists() and theirs.exists() and compiled.exists()
