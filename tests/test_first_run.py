"""A new user's first minutes (issue 21): the default sweep's size and predicted cost, where a sweep's time goes,
what to run next, and every command sensible without a GPU (finishing or refusing in one line, in under a
minute, leaving nothing untracked in the checkout)."""
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fa2bench.cli import app
from fa2bench.cli.render import Tally, clock, print_next, print_time_split
from fa2bench.core import providers
from fa2bench.core.presets import POINT_COST_S, PRESETS, STARTUP_S, Point, Shape, SweepSpec
from fa2bench.read import display

REPO = Path(__file__).resolve().parent.parent
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a CUDA GPU does")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def untracked() -> str:
    """The checkout's changes and untracked files (ignored ones excluded): what a command must not add to."""
    return subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout


@pytest.fixture
def clean_checkout(tmp_path, monkeypatch):
    """Run in a scratch folder, and fail if the checkout gained a file meanwhile."""
    before = untracked()
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert untracked() == before


# --- the default sweep -------------------------------------------------------------------------------------


def test_the_default_preset_is_fa2_against_its_fastest_peers_and_the_naive_baseline():
    spec = SweepSpec.from_name("default")
    assert spec.providers == ("fa2", "sdpa-cudnn", "sdpa-flash", "flex", "naive")
    assert providers.with_role("speedup-baseline") in spec.providers  # the summary's speedup column
    assert set(spec.modes) == {"fwd", "bwd"} and spec.dtypes == ("fp16",)
    assert not set(spec.providers) & set(providers.ladder()) - {"fa2"}  # the ladder stays in `ablate`
    assert len(spec.points()) == 10


def test_the_default_preset_is_predicted_well_under_90_s_on_an_h200():
    spec = PRESETS["default"]
    predicted = spec.predicted_s()
    by_hand = STARTUP_S + sum(2 * POINT_COST_S[p] for p in spec.providers)  # one shape, fwd and bwd
    assert predicted == pytest.approx(by_hand) and predicted <= 60
    # the cost model is not a blank cheque: one more shape and it is at the limit
    assert spec.replace(causal=(False, True)).predicted_s() > 85
    assert PRESETS["quick"].predicted_s() is None  # ladder rungs etc.: no measured cost here, no prediction


@no_gpu
def test_without_a_gpu_the_default_sweep_is_still_the_smoke_preset(tmp_path):
    from fa2bench import api

    assert api.plan_sweep(out=tmp_path / "r").spec == PRESETS["smoke"]


def test_with_a_gpu_the_default_sweep_is_the_default_preset(tmp_path, monkeypatch):
    """What `fa2bench sweep` plans when a GPU is there (a merge once left a second resolution that fell back to
    quick: 272 points, 6 minutes on an H200, 2026-12-02)."""
    from fa2bench import api
    from fa2bench.core import device

    monkeypatch.setattr(device, "has_cuda", lambda: True)
    assert api.default_preset() == "default"
    monkeypatch.setattr(device, "has_cuda", lambda: False)
    assert api.plan_sweep(out=tmp_path / "r").spec == PRESETS[api.default_preset()] == PRESETS["smoke"]


# --- where the time goes -----------------------------------------------------------------------------------


def _point(provider):
    return Point(provider, "fwd", "fp16", Shape(1, 2, 2, 64, 64, 32, False))


def test_the_eta_predicts_each_remaining_point_by_its_providers_mean_so_far():
    points = [_point(p) for p in ("slow", "fast", "slow", "fast", "new")]
    tally = Tally(points)
    assert tally.eta_s() is None  # nothing ran yet: no guess
    tally.add(points[0], {"point_s": 6.0, "setup_s": 5.0, "timing_s": 0.5})
    tally.add(points[1], {"point_s": 1.0, "setup_s": 0.2, "timing_s": 0.7})
    # slow 6 + fast 1 + a provider not seen yet at the mean of all points so far (3.5)
    assert tally.eta_s() == pytest.approx(6.0 + 1.0 + 3.5)
    tally.add(points[2], None)  # done before (resume): costs nothing and changes no mean
    tally.add(points[3], {"point_s": 0.2, "status": "unsupported"})  # no split: counted as other
    assert tally.eta_s() == pytest.approx((6.0 + 1.0 + 0.2) / 3)
    assert (tally.setup_s, tally.timing_s) == pytest.approx((5.2, 1.2))
    assert tally.other_s == pytest.approx(0.5 + 0.1 + 0.2)
    assert tally.split() == "set-up 5 s · timing 1 s"
    assert [clock(s) for s in (None, 12.4, 185, 3729)] == ["?", "12 s", "3:05", "1:02:09"]


def test_the_end_of_a_run_says_how_long_set_up_and_timing_took_and_what_to_run_next():
    console = display.console()
    frame = pd.DataFrame({"point_s": [6.0, 1.0, 0.5], "setup_s": [5.0, 0.2, None], "timing_s": [0.5, 0.7, None]})
    with console.capture() as captured:
        print_time_split(frame, console)
        print_time_split(frame.drop(columns=["setup_s", "timing_s"]), console)  # an older run: silent
        print_next(Path("results/run"), console)
    text = captured.get()
    assert "time in points: 8 s = set-up 5 s" in text and "timing 1 s + other 1 s" in text
    assert text.count("time in points") == 1
    for command in ("fa2bench plot results/run", "fa2bench ablate", "fa2bench sweep --preset paper"):
        assert command in text


def test_a_finished_sweep_ends_with_the_time_split_and_the_next_steps(clean_checkout):
    result = invoke("sweep", "--seqlen", "16", "--headdim", "16", "--batch", "1", "--heads", "2", "--mode", "fwd",
                    "--provider", "torch-eager", "--rep-ms", "1", "--warmup-ms", "0", "--no-isolate", "--out",
                    clean_checkout / "r")
    assert result.exit_code == 0, result.output
    assert "time in points:" in result.output and "fa2bench plot" in result.output
    assert "fa2bench sweep --preset paper" in result.output
    assert {"setup_s", "timing_s"} <= set(pd.read_csv(clean_checkout / "r" / "results.csv").columns)


@no_gpu
def test_a_sweep_of_only_unsupported_points_exits_1_with_one_line(clean_checkout):
    result = invoke("sweep", "--seqlen", "16", "--headdim", "16", "--batch", "1", "--heads", "2", "--provider",
                    "sdpa-flash", "--no-isolate", "--out", clean_checkout / "r")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "every point of this sweep is unsupported" in errors[0]
    assert "needs a CUDA GPU" in errors[0] and "Traceback" not in result.output
    assert "Summary" not in result.output and "fa2bench plot" not in result.output


# --- every command sensible without a GPU --------------------------------------------------------------------


@no_gpu
def test_ablate_without_a_gpu_runs_a_smoke_ladder_under_a_minute_into_an_ignored_folder(clean_checkout):
    started = time.monotonic()
    result = invoke("ablate")
    assert time.monotonic() - started < 60
    assert result.exit_code == 0, result.output
    assert "NO GPU" in result.output and "NOT GPU performance" in result.output
    (run,) = (clean_checkout / "results").iterdir()
    assert run.name.startswith("ablation-") and run.name.endswith("-cpu")  # .gitignore: /results/*-cpu/
    frame = pd.read_csv(run / "results.csv")
    assert set(frame["provider"]) == set(providers.ladder())
    on_cpu = frame[frame["provider"].map(lambda n: providers.get(n).availability("cpu") is None)]
    assert (on_cpu["status"] == "ok").all() and len(on_cpu) < len(frame)  # fa3 (Gluon, Hopper): unsupported
    assert (run / "ablation.md").exists()


@no_gpu
@pytest.mark.parametrize("gpus", [None, "1,2"])
def test_ring_without_a_gpu_refuses_in_one_line_and_writes_nothing(clean_checkout, monkeypatch, gpus):
    from fa2bench.distributed import launch

    monkeypatch.setattr(launch, "run_torchrun", lambda *a, **k: pytest.fail("torchrun started"))
    started = time.monotonic()
    result = invoke("ring", *(["--gpus", gpus] if gpus else []))
    assert time.monotonic() - started < 60
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no CUDA GPU here" in result.output and "fa2bench sweep" in result.output
    assert not any(clean_checkout.iterdir())  # no results/ring
