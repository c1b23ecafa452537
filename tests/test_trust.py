"""Runs that cannot be corrupted, and one clear line for every bad input (issue 20, item 6): one writer per
results folder, resume on the same device class and from the run's own recorded sweep, strict booleans, a
full disk, and the API's and CLI's misuses."""
import errno
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fa2bench import api
from fa2bench.cli import app
from fa2bench.core import config, providers
from fa2bench.core.presets import SpecError
from fa2bench.run import provenance, results
from fa2bench.run.results import ResultsError, RunWriter, load_run, read_meta

runner = CliRunner()
SWEEP = ["sweep", "--headdim", "16", "--batch", "1", "--heads", "2", "--rep-ms", "1", "--warmup-ms", "0",
         "--provider", "torch-eager", "--mode", "fwd", "--causal", "off", "--dtype", "fp32", "--no-isolate"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    text = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture
def run(tmp_path):
    out = tmp_path / "run"
    result = invoke(*SWEEP, "--seqlen", "16,33", "--out", out)
    assert result.exit_code == 0, result.output
    return out


# --- one writer, one device class, the run's own sweep ---------------------------------------------------


def test_a_second_writer_of_a_folder_gets_one_line(tmp_path):
    first = RunWriter(tmp_path / "run")
    with pytest.raises(ResultsError, match="another fa2bench run is writing"):
        RunWriter(tmp_path / "run", resume=True)
    result = invoke(*SWEEP, "--seqlen", "16", "--out", tmp_path / "run", "--resume")
    one_line_error(result, "another fa2bench run is writing")
    first.release()
    RunWriter(tmp_path / "run", resume=True).release()  # free again once the first let go


def test_a_closed_run_can_be_resumed_in_the_same_process(run):
    again = invoke(*SWEEP, "--seqlen", "16,33", "--out", run, "--resume")
    assert again.exit_code == 0 and "(2 already done)" in again.output


@pytest.mark.parametrize("recorded, here", [("cuda", "cpu"), ("cpu", "cuda")])
def test_resume_refuses_another_device_class(recorded, here):
    with pytest.raises(ResultsError, match=f"measured on {recorded} from a {here} machine"):
        results.continue_meta({"device": recorded, "sweep": {}}, {"device": here, "sweep": {}})


@pytest.mark.parametrize("recorded, here, said", [
    ({}, {"FA2_BWD_FLAT": "0"}, "--resume with FA2_BWD_FLAT=0 where the run was measured with no kernel switch set"),
    ({"FA2_DQ_FLAT": "0"}, {}, "--resume with no kernel switch set where the run was measured with FA2_DQ_FLAT=0")])
def test_resume_refuses_other_kernel_switches(recorded, here, said):
    """The FA2_* variables that switch the kernels' loops are recorded in meta.json, and a resume under others
    would mix two builds of the kernels in one run; runs that did not record them resume as before."""
    with pytest.raises(ResultsError, match=said):
        results.continue_meta({"kernel_env": recorded, "sweep": {}}, {"kernel_env": here, "sweep": {}})
    results.continue_meta({"sweep": {}}, {"kernel_env": here, "sweep": {}})


def test_a_run_records_its_kernel_switches_and_resumes_only_under_them(run, monkeypatch):
    assert read_meta(run)["kernel_env"] == {}
    monkeypatch.setenv("FA2_FWD_FLAT", "0")
    before = (run / "results.csv").read_bytes()
    one_line_error(invoke(*SWEEP, "--seqlen", "16,33", "--out", run, "--resume"),
                   "--resume with FA2_FWD_FLAT=0 where the run was measured with no kernel switch set")
    assert (run / "results.csv").read_bytes() == before


def test_resume_refuses_other_kernel_sources():
    """The kernels' sources are hashed into meta.json (``git.kernels_hash``): a default changed in kernels/ between
    two calls (no switch set in either) would mix two builds of the kernels in one run; runs that did not record the
    hash resume as before."""
    earlier = {"git": {"commit": "a" * 40, "kernels_hash": "1" * 64}, "sweep": {}}
    with pytest.raises(ResultsError, match=f"kernels/ at {'b' * 12} differs from {'a' * 12}'s"):
        results.continue_meta(earlier, {"git": {"commit": "b" * 40, "kernels_hash": "2" * 64}, "sweep": {}})
    same = {"git": {"commit": "b" * 40, "kernels_hash": "1" * 64}, "sweep": {}}
    assert results.continue_meta(earlier, same)["resumed"][0]["git"]["commit"] == "b" * 40
    results.continue_meta({"git": {"commit": "a" * 40}, "sweep": {}}, same)


def test_a_run_resumed_after_its_kernels_changed_is_refused_and_untouched(run, monkeypatch):
    assert read_meta(run)["git"]["kernels_hash"] == provenance.kernels_hash()
    monkeypatch.setattr(provenance, "kernels_hash", lambda root=None: "0" * 64)
    before = (run / "results.csv").read_bytes()
    one_line_error(invoke(*SWEEP, "--seqlen", "16,33", "--out", run, "--resume"),
                   "--resume with other kernel sources than the run was measured with")
    assert (run / "results.csv").read_bytes() == before


def test_a_gpu_run_resumed_on_a_cpu_machine_is_refused_and_untouched(run):
    meta = read_meta(run)
    results.write_meta(run, {**meta, "device": "cuda"})
    before = (run / "results.csv").read_bytes()
    one_line_error(invoke(*SWEEP, "--seqlen", "16,33", "--out", run, "--resume"), "measured on cuda from a cpu")
    assert (run / "results.csv").read_bytes() == before


def test_the_resume_hint_continues_a_custom_sweep_with_no_other_options(run):
    """What an interrupted sweep prints ('continue with --out X --resume') works: the run's meta.json is the
    sweep, not the default preset."""
    lines = (run / "results.csv").read_text().splitlines(keepends=True)
    (run / "results.csv").write_text("".join(lines[:-1]))  # one point left to do
    result = invoke("sweep", "--out", run, "--resume", "--no-isolate")
    assert result.exit_code == 0, result.output
    assert "(1 already done)" in result.output
    assert sorted(load_run(run)["seqlen_q"]) == [16, 33]


def test_the_resume_hint_continues_a_custom_ablation_with_no_other_options(tmp_path):
    """`fa2bench ablate` prints the same hint: a ladder at other shapes than its defaults continues from its
    meta.json, not from the ladder's default shapes (which would be 'a different sweep')."""
    out = tmp_path / "ablation"
    first = invoke("ablate", "--seqlen", "16", "--headdim", "16", "--mode", "fwd", "--causal", "off", "--out", out)
    assert first.exit_code == 0, first.output
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    (out / "results.csv").write_text("".join(lines[:-1]))
    again = invoke("ablate", "--out", out, "--resume")
    assert again.exit_code == 0, again.output
    assert f"({len(lines) - 2} already done)" in again.output
    assert set(load_run(out)["seqlen_q"]) == {16} and len(load_run(out)) == len(lines) - 1
    one_line_error(invoke("ablate", "--out", out, "--resume", "--seqlen", "32"), "different sweep", "seqlens")


def test_resume_refuses_a_run_option_other_than_the_runs_by_name(run):
    one_line_error(invoke("sweep", "--out", run, "--resume", "--rep-ms", "7"), "--rep-ms 7.0 (the run has 1.0)")
    one_line_error(invoke("sweep", "--out", run, "--resume", "--timer", "plain"), "--timer plain (the run has auto)")


# --- booleans, files, disks ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["no", "false", "yes", 0, 1, None.__class__])
def test_booleans_are_booleans(value):
    with pytest.raises(SpecError, match="expected true or false"):
        config.flag("resume", value)


def test_resume_no_in_the_api_is_an_error_not_yes(tmp_path):
    with pytest.raises(SpecError, match="--resume: expected true or false, got 'no'"):
        api.plan_sweep("smoke", out=tmp_path / "x", resume="no")
    with pytest.raises(SpecError, match="--check: expected true or false"):
        api.plan_sweep("smoke", check="no")


def test_resume_no_in_a_config_file_is_an_error(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('resume = "no"\nseqlen = [16]\n')
    one_line_error(invoke("sweep", "--config", path, "--out", tmp_path / "x"), "--resume: expected true or false")


@pytest.mark.parametrize("field", ["resume", "extend", "check", "shrink_on_oom", "checkpointing"])
def test_e2e_booleans_are_booleans_too(field, tmp_path):
    from fa2bench.e2e import plan_e2e

    with pytest.raises(SpecError, match=f"--{field.replace('_', '-')}: expected true or false, got 'no'"):
        plan_e2e(out=tmp_path / "x", **{field: "no"})


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_bytes(b"seqlen = [16]\n# caf\xe9\n")
    one_line_error(invoke("sweep", "--config", path), "is not UTF-8 text (byte 0xe9")


def test_a_full_disk_while_writing_results_is_one_line(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "fsync", full)
    one_line_error(invoke(*SWEEP, "--seqlen", "16", "--out", tmp_path / "run"), "No space left on device",
                   "--resume")


@pytest.mark.parametrize("command", [[*SWEEP, "--seqlen", "16"], ["ablate"], ["e2e"]], ids=lambda c: c[0])
def test_out_empty_is_refused_and_writes_nothing_here(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke(*command, "--out", ""), "--out is empty")
    assert list(tmp_path.iterdir()) == []


# --- the API's misuses -----------------------------------------------------------------------------------


def test_report_of_a_frame_without_a_folder_is_one_line():
    with pytest.raises(ResultsError, match="report writes report.md into a run folder"):
        api.report(pd.DataFrame({"a": [1]}))


@pytest.mark.parametrize("path", [None, "", 3])
def test_load_run_of_nothing_is_one_line(path):
    with pytest.raises(ResultsError, match="load_run needs a results folder or file"):
        load_run(path)


def test_compare_runs_on_a_frame_without_the_key_columns_is_one_line(run):
    with pytest.raises(ResultsError, match="run b is not a results table .no provider, mode"):
        api.compare_runs(run, pd.DataFrame({"ms": [1.0]}))
    with pytest.raises(ResultsError, match="run a is not a results table .no provider, .*, status column"):
        api.compare_runs(pd.DataFrame({"ms": [1.0]}), run)


def test_export_run_of_a_frame_without_the_key_columns_is_one_line(run):
    with pytest.raises(ResultsError, match="export_run: the run is not a results table .no provider"):
        api.export_run(pd.DataFrame({"a": [1]}))
    assert api.export_run(run)  # a real run exports


@pytest.mark.parametrize("colour", ["#12345", "not-a-colour", 7])
def test_register_provider_with_an_invalid_colour_is_one_line(colour):
    with pytest.raises(ValueError, match="is not a colour"):
        providers.register_provider(lambda shape: None, name="bad-colour", label="x", color=colour, kind="baseline",
                                    description="x")
    assert "bad-colour" not in providers.names()


def test_a_provider_may_prefer_a_timer_and_an_unknown_one_is_refused():
    with pytest.raises(ValueError, match="timer must be one of auto, plain, graph or None"):
        providers.Provider(name="t", label="t", color="#000000", kind="baseline", description="", make=lambda s: None,
                           timer="fast")
    assert providers.Provider(name="t", label="t", color="red", kind="baseline", description="",
                              make=lambda s: None, timer="graph").timer == "graph"


# --- the CLI's options without effect --------------------------------------------------------------------


def test_point_timeout_without_isolation_is_refused():
    one_line_error(invoke(*SWEEP, "--seqlen", "16", "--point-timeout", "5"), "--point-timeout works with --isolate")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the GPU-less path")
def test_gpus_on_a_cpu_machine_says_they_are_cpu_processes(tmp_path, monkeypatch):
    def launched(plan, **kwargs):
        return api.Run(plan.out, pd.DataFrame())

    monkeypatch.setattr(api, "execute", launched)
    result = invoke(*SWEEP, "--seqlen", "16", "--gpus", "4", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "no CUDA GPU here: --gpus 4 runs 4 CPU processes" in " ".join(result.output.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the GPU-less path")
def test_info_measure_on_a_cpu_is_one_line():
    one_line_error(invoke("info", "--measure"), "--measure times the GPU's matmul and copy ceilings: no CUDA GPU")


@pytest.mark.parametrize("value", ["-5", "0", "nan"])
def test_info_peak_tflops_must_be_positive(value):
    one_line_error(invoke("info", "--peak-tflops", value), "--peak-tflops must be a positive number")


# --- the timer as a sweep option and the new columns -----------------------------------------------------


def test_timer_is_a_sweep_option_recorded_in_meta(tmp_path):
    one_line_error(invoke(*SWEEP, "--seqlen", "16", "--timer", "fast"), "fast")
    path = tmp_path / "sweep.toml"
    path.write_text('timer = "quick"\n')
    one_line_error(invoke("sweep", "--config", path), "--timer: expected one of auto, plain, graph")
    run = api.sweep("smoke", out=tmp_path / "run", seqlen=[16], headdim=[16], provider=["torch-eager"],
                    mode=["fwd"], dtype=["fp32"], causal="off", rep_ms=1, warmup_ms=0, isolate=False, timer="plain")
    assert run.meta["options"]["timer"] == "plain"
    assert run.frame["samples"].min() >= 5 and set(run.frame["timer"]) == {"cpu"}


def test_a_committed_run_from_before_the_new_columns_still_loads():
    frame = load_run(Path(__file__).resolve().parent.parent / "results" / "h100-top")
    assert {"samples", "spread", "timer", "noisy", "sm_clock_min_mhz", "throttled_frac"} <= set(frame.columns)
    assert len(frame) and frame["ms"].notna().any()


def test_the_sharded_command_line_carries_the_timer_and_no_timeout_without_isolation():
    args = config.command_line({"timer": "graph", "check": True})
    assert args == ["--timer", "graph", "--check"]
    assert json.dumps(config.run_options({"timer": "graph"})["timer"]) == '"graph"'
