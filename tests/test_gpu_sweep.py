"""On a GPU: a quick sweep of every reference provider finishes with every point ok, and so does the default
sweep, in its time budget."""
import pytest
from typer.testing import CliRunner

from fa2bench.core import providers
from fa2bench.cli import app
from fa2bench.run.results import load_run

pytestmark = pytest.mark.gpu
# PyTorch's own attention (the registry's baseline and vendor providers that need no extra package) on dense points
# (torch-varlen runs packed documents only: tests/test_providers_torch.py checks it)
REFERENCE = [n for n in providers.names() if providers.get(n).kind in ("baseline", "vendor")
             and providers.get(n).requires is None and providers.get(n).runs_variant("dense")]


def test_quick_sweep_of_reference_providers_is_all_ok(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--preset", "quick", "--provider", ",".join(REFERENCE),
                                      "--out", str(tmp_path), "--rep-ms", "20", "--warmup-ms", "5"])
    assert result.exit_code == 0, result.output
    frame = load_run(tmp_path)
    assert len(frame) == 2 * 2 * 2 * 2 * len(REFERENCE)  # seqlens x head dims x causal x modes x providers
    bad = frame[frame["status"] != "ok"]
    assert bad.empty, bad[["provider", "mode", "seqlen_q", "headdim", "causal", "status", "error"]].to_string()


def test_the_default_sweep_is_all_ok_splits_its_time_and_fits_in_90_s(tmp_path):
    """Issue 21: `fa2bench sweep` as a new user types it. 90 s is the budget of a fresh machine (compilation
    and autotuning included); a warm one is faster still."""
    result = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    frame = load_run(tmp_path)
    assert set(frame["provider"]) == {"fa2", "sdpa-cudnn", "sdpa-flash", "flex", "naive"} and len(frame) == 10
    bad = frame[frame["status"] != "ok"]
    assert bad.empty, bad[["provider", "mode", "status", "error"]].to_string()
    assert (frame["setup_s"] + frame["timing_s"] <= frame["point_s"]).all()
    assert frame["point_s"].sum() < 90
    assert "time in points:" in result.output and "fa2bench ablate" in result.output
