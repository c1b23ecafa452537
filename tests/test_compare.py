"""compare: a slowdown counts as a regression only when it exceeds both the threshold and the measured
noise (B's p20 above A's p80); an injected 20% regression fails the gate (exit 1), noise-level differences
pass (exit 0), and runs from another GPU or software stack compare with a warning."""
import pandas as pd
import pytest
from typer.testing import CliRunner

from fa2bench.read import compare
from fa2bench.cli import app
from tests.synthetic import committed_run, results_frame, write_run

runner = CliRunner()
SMALL = dict(providers=("naive", "fa1", "fa2", "flash-attn"), seqlens=(512, 1024, 2048), headdims=(64, 128))


def slower(frame: pd.DataFrame, factor: float, **where) -> pd.DataFrame:
    """``frame`` with the points matching ``where`` (column=value) ``factor`` times slower, spread and all."""
    out = frame.copy()
    mask = pd.Series(True, index=out.index)
    for col, value in where.items():
        mask &= out[col] == value
    for col in ("ms", "ms_p20", "ms_p80"):
        out.loc[mask, col] *= factor
    out.loc[mask, "tflops"] /= factor
    return out


@pytest.fixture(scope="module")
def base():
    return results_frame(**SMALL, seed=0)


def test_noise_level_differences_are_not_regressions(base):
    rerun = results_frame(**SMALL, seed=1)  # every timing jitters within its 2% spread
    result = compare.compare(base, rerun)
    assert result.regressions.empty
    assert set(result.counts) <= {"same", "noise", "not ok"}
    assert result.table["ratio"].dropna().between(0.98, 1.02).all()


def test_an_injected_20_percent_regression_is_flagged(base):
    result = compare.compare(base, slower(results_frame(**SMALL, seed=1), 1.2, provider="fa2", mode="fwd"))
    flagged = result.regressions
    assert set(flagged["provider"]) == {"fa2"} and set(flagged["mode"]) == {"fwd"}
    assert len(flagged) == len(base[(base["provider"] == "fa2") & (base["mode"] == "fwd")])
    assert flagged["ratio"].between(1.17, 1.23).all()
    assert list(result.table["verdict"][: len(flagged)]) == ["regression"] * len(flagged)  # listed first


def test_a_slowdown_inside_the_measured_spread_is_noise(base):
    wide = base.assign(ms_p20=base["ms"] * 0.7, ms_p80=base["ms"] * 1.3)  # a noisy machine
    result = compare.compare(wide, slower(wide, 1.2, provider="fa2"))
    assert result.regressions.empty
    assert set(result.table.loc[result.table["provider"] == "fa2", "verdict"]) == {"noise"}


def test_a_slowdown_beyond_the_noise_but_under_the_threshold_passes(base):
    tight = base.assign(ms_p20=base["ms"] * 0.999, ms_p80=base["ms"] * 1.001)
    candidate = slower(tight, 1.03, provider="fa2")
    assert compare.compare(tight, candidate, threshold=0.05).regressions.empty
    assert len(compare.compare(tight, candidate, threshold=0.01).regressions) > 0


def test_speedups_and_status_changes(base):
    faster = slower(base, 0.7, provider="fa1")
    result = compare.compare(base, faster)
    fa1 = result.table[result.table["provider"] == "fa1"]
    assert set(fa1.loc[fa1["status_a"] == "ok", "verdict"]) == {"faster"}
    assert set(fa1.loc[fa1["status_a"] == "wrong", "verdict"]) == {"not ok"}  # still wrong: not a change
    assert result.regressions.empty

    broken = base.copy()
    point = (broken["provider"] == "fa2") & (broken["status"] == "ok")
    broken.loc[point.idxmax(), ["status", "error"]] = ["error", "RuntimeError: boom"]
    result = compare.compare(base, broken)
    assert list(result.regressions["verdict"]) == ["broken"]
    assert "fixed" in compare.compare(broken, base).counts
    # unsupported on both sides (flash-attn is not installed) or a point only one run has: not a regression
    assert compare.compare(base, base).counts == {"same": int((base["status"] == "ok").sum()),
                                                  "not ok": int((base["status"] != "ok").sum())}
    partial = compare.compare(base, base[base["seqlen_q"] != 2048])
    assert partial.regressions.empty and partial.only_a == int((base["seqlen_q"] == 2048).sum())


def test_other_gpus_and_versions_are_compared_with_a_warning(base):
    other = results_frame(**SMALL, gpu="NVIDIA A100-SXM4-80GB")
    other.attrs["meta"]["versions"] = {**other.attrs["meta"]["versions"], "torch": "2.7.0"}
    warnings = compare.compare(base, other).warnings
    assert any("different GPUs" in w and "A100" in w and "H100" in w for w in warnings)
    assert any("torch 2.6.0 -> 2.7.0" in w for w in warnings)
    assert compare.compare(base, base).warnings == []


def test_compare_command_exit_codes(base, tmp_path):
    a = write_run(base, tmp_path / "a")
    noisy = write_run(results_frame(**SMALL, seed=1), tmp_path / "noisy")
    regressed = write_run(slower(results_frame(**SMALL, seed=1), 1.2, provider="fa2", headdim=128), tmp_path / "slow")

    result = runner.invoke(app, ["compare", str(a), str(noisy)])
    assert result.exit_code == 0, result.output
    assert "regression" not in result.output

    result = runner.invoke(app, ["compare", str(a), str(regressed), "--changes-only"])
    assert result.exit_code == 1, result.output
    assert "regression" in result.output and "1.2" in result.output and "regression(s)" in result.output

    assert runner.invoke(app, ["compare", str(a), str(regressed), "--threshold", "0.25"]).exit_code == 0
    for args in ([str(a), str(tmp_path / "nope")], [str(a), str(noisy), "--threshold", "-1"]):
        result = runner.invoke(app, ["compare", *args])
        assert result.exit_code == 2 and "error" in result.output
    elsewhere = write_run(results_frame(providers=("fa2",), seqlens=(8192,), headdims=(64,)), tmp_path / "other")
    result = runner.invoke(app, ["compare", str(a), str(elsewhere)])
    assert result.exit_code == 2 and "share no points" in result.output


def test_points_timed_with_another_timer_are_named(base, tmp_path):
    """A plain timer that times the host reads slower than the graph over the same kernels: a rerun that switched
    timers compares the timers too, and compare says which points did."""
    first = base.assign(timer="plain")
    again = slower(base, 0.4, provider="fa2").assign(timer="plain")
    again.loc[again["provider"] == "fa2", "timer"] = "graph"
    result = compare.compare(first, again)
    fa2_ok = int(((base["provider"] == "fa2") & (base["status"] == "ok")).sum())
    assert fa2_ok and len(result.retimed) == fa2_ok and set(result.retimed["provider"]) == {"fa2"}
    assert compare.compare(base, base).retimed.empty  # runs that do not record the timer claim nothing

    shown = runner.invoke(app, ["compare", str(write_run(first, tmp_path / "a")),
                                str(write_run(again, tmp_path / "b"))],
                          terminal_width=200)
    assert f"{fa2_ok} of them timed with another timer in B (plain -> graph: {fa2_ok})" in shown.output, shown.output
    assert shown.output.count("graph*") == fa2_ok


def test_a_real_run_compared_with_itself_passes():
    run = committed_run()
    result = runner.invoke(app, ["compare", str(run), str(run)])
    assert result.exit_code == 0, result.output


def test_a_change_measured_with_wide_spreads_is_noise(base):
    wide = base.assign(ms_p20=base["ms"] * 0.6, ms_p80=base["ms"] * 1.4)  # the middle 60% spans 80% of the median
    result = compare.compare(wide, slower(wide, 3.0, provider="fa2"))  # even 3x: the spreads no longer overlap
    assert result.regressions.empty
    assert set(result.table.loc[(result.table["provider"] == "fa2") & (result.table["status_a"] == "ok"),
                                "verdict"]) == {"noise"}


def test_cpu_interpreter_timings_never_gate(base):
    cpu_a, cpu_b = results_frame(**SMALL, gpu=None, seed=0), results_frame(**SMALL, gpu=None, seed=1)
    result = compare.compare(cpu_a, slower(cpu_b, 81.0, provider="naive"))  # the 81x "regressions" of issue 10
    assert result.regressions.empty and "noise" in result.counts
    assert any("never as regressions" in w for w in result.warnings)


def test_a_reader_closing_the_pipe_is_not_a_regression(base, tmp_path):
    import subprocess
    import sys

    a = write_run(base, tmp_path / "a")
    proc = subprocess.Popen([sys.executable, "-m", "fa2bench", "compare", str(a), str(a)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, stderr
    assert "BrokenPipeError" not in stderr and "Traceback" not in stderr
