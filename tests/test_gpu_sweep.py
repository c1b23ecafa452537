"""On a GPU: a quick sweep of every reference provider finishes with every point ok."""
import pytest
from typer.testing import CliRunner

from fa2bench.core import providers
from fa2bench.cli import app
from fa2bench.run.results import load_run

pytestmark = pytest.mark.gpu
# PyTorch's own attention (the registry's baseline and vendor providers that need no extra package)
REFERENCE = [n for n in providers.names() if providers.get(n).kind in ("baseline", "vendor")
             and providers.get(n).requires is None]


def test_quick_sweep_of_reference_providers_is_all_ok(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--preset", "quick", "--provider", ",".join(REFERENCE),
                                      "--out", str(tmp_path), "--rep-ms", "20", "--warmup-ms", "5"])
    assert result.exit_code == 0, result.output
    frame = load_run(tmp_path)
    assert len(frame) == 2 * 2 * 2 * 2 * len(REFERENCE)  # seqlens x head dims x causal x modes x providers
    bad = frame[frame["status"] != "ok"]
    assert bad.empty, bad[["provider", "mode", "seqlen_q", "headdim", "causal", "status", "error"]].to_string()
