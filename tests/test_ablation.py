"""The ablation ladder's analysis: step speedups, their spread, the waterfall and the report."""
import math

import pandas as pd
import pytest

from fa2bench.read import ablation
from tests.synthetic import results_frame

RUNGS = {"fa1": 1, "fa1-split": 2, "r3-swap": 3, "r4-defer": 4, "r5-seqpar": 5, "r6-skip": 6, "fa2": 7}


def ladder_frame(spread=0.02):
    """A synthetic run in which rung r is (1 + r/10) times as fast as the rung before it."""
    frame = results_frame(providers=("fa1",), seqlens=(512, 2048, 16384), spread=spread,
                          ceilings={"matmul_fp16_tflops": 700.0})
    rows = []
    for name, rung in RUNGS.items():
        part = frame.copy()
        part["provider"] = name
        speed = math.prod(1 + r / 10 for r in range(2, rung + 1) if r != 2) * (1.3 if rung == 2 else 1)
        for col in ("ms", "ms_p20", "ms_p80"):
            part[col] = part[col] / speed
        part["tflops"] = part["tflops"] * speed
        rows.append(part)
    out = pd.concat(rows, ignore_index=True)
    out.attrs["meta"] = frame.attrs["meta"]
    return out


def test_each_rung_is_measured_against_the_rung_it_builds_on():
    assert [ablation.base_rung(r) for r in range(1, 8)] == [None, 1, 1, 3, 4, 5, 6]


def test_step_speedups_recover_the_construction_with_spread_bounds_around_them():
    table = ablation.steps(ladder_frame(), RUNGS)
    one = table[(table["mode"] == "fwd") & (table["headdim"] == 128) & (~table["causal"])
                & (table["seqlen_q"] == 2048)].set_index("provider")
    assert math.isnan(one.loc["fa1", "speedup"])
    assert one.loc["fa1-split", "base"] == "fa1" and one.loc["fa1-split", "speedup"] == pytest.approx(1.3)
    assert one.loc["r3-swap", "base"] == "fa1" and one.loc["r3-swap", "speedup"] == pytest.approx(1.3)
    for name, rung in list(RUNGS.items())[3:]:
        assert one.loc[name, "speedup"] == pytest.approx(1 + rung / 10)
        assert one.loc[name, "speedup_lo"] < one.loc[name, "speedup"] < one.loc[name, "speedup_hi"]
    assert one.loc["fa2", "pct_matmul_ceiling"] == pytest.approx(100 * one.loc["fa2", "tflops"] / 700.0)


def test_points_that_did_not_run_ok_have_no_step():
    frame = ladder_frame()
    frame.loc[frame["provider"] == "r4-defer", "status"] = "error"
    table = ablation.steps(frame, RUNGS)
    assert "r4-defer" not in set(table["provider"])
    assert table[table["provider"] == "r5-seqpar"]["speedup"].isna().all()


def test_short_and_long_pick_the_nearest_run_lengths():
    assert ablation.short_and_long([512, 1024, 4096, 16384]) == (1024, 16384)
    assert ablation.short_and_long([512, 2048, 16384]) == (2048, 16384)
    assert ablation.short_and_long([32, 48]) == (48,)


def test_write_draws_one_waterfall_per_panel_and_a_report_with_the_papers_claims(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, "ladder_rungs", lambda: RUNGS)
    frame = ladder_frame()
    path = ablation.write(tmp_path, frame)
    text = path.read_text()
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert len(figures) == 8  # (fwd, bwd) x (64, 128) x (causal, not)
    assert "ablation-fwd-d128-causal-fp16.png" in figures
    assert "## fwd, head dim 128, non-causal, fp16" in text
    assert "1.30x" in text and "1.70x" in text
    assert "25-40% of the A100's peak" in text and "`fa2` over `fa1-split`" in text
    assert (tmp_path / "ablation_steps.csv").exists()


def test_write_refuses_a_run_without_ladder_providers(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, "ladder_rungs", lambda: RUNGS)
    with pytest.raises(ValueError, match="no ladder provider"):
        ablation.write(tmp_path, results_frame(providers=("sdpa-flash",)))


@pytest.mark.slow
def test_ablate_runs_the_ladder_and_writes_its_report_on_the_interpreter(tmp_path):
    from typer.testing import CliRunner

    from fa2bench.core import providers
    from fa2bench.cli import app

    out = tmp_path / "abl"
    result = CliRunner().invoke(app, ["ablate", "--seqlen", "32", "--headdim", "32", "--mode", "fwd", "--dtype",
                                      "fp32", "--batch", "1", "--heads", "2", "--rep-ms", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "results.csv")
    assert set(rows["provider"]) == set(providers.ladder())
    on_cpu = rows["provider"].map(lambda n: providers.get(n).availability("cpu") is None)
    assert (rows[on_cpu]["status"] == "ok").all() and (rows[~on_cpu]["status"] == "unsupported").all()
    assert len(rows) == 2 * len(providers.ladder())  # causal and not
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["ablation-fwd-d32-causal-fp32.png",
                                                                  "ablation-fwd-d32-full-fp32.png"]
    assert "## fwd, head dim 32, causal, fp32" in (out / "ablation.md").read_text()
