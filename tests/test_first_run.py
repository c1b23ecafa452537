"""A first result fast, and every command sensible without a GPU: the default preset answers "how fast is
attention here, against what I would use instead?", `ablate` and `ring` finish or refuse within a minute on a
CPU and write nothing outside ignored ``results/*-cpu`` folders, and a sweep where nothing ran says so."""
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fa2bench.core import providers
from fa2bench.core.presets import PRESETS

REPO = Path(__file__).resolve().parent.parent
CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a GPU")


def fa2bench(*args, cwd, timeout=120):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fa2bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - start


def untracked(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_the_default_preset_is_fa2_against_the_fastest_peers_and_naive_at_a_few_shapes():
    spec = PRESETS["default"]
    assert spec.providers[0] == "fa2" and {"sdpa-cudnn", "sdpa-flash", "flex", "naive"} <= set(spec.providers)
    assert not set(spec.providers) & set(providers.ladder()) - {"fa2"}, "the ladder belongs to `fa2bench ablate`"
    assert set(spec.modes) == {"fwd", "bwd"}
    assert len(spec.points()) <= 24, "every point costs seconds of compiling on a fresh GPU"


@CPU_ONLY
def test_ablate_on_a_cpu_runs_the_smoke_ladder_in_under_a_minute_into_an_ignored_folder(tmp_path):
    proc, seconds = fa2bench("ablate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert seconds < 60
    assert "NOT GPU performance" in proc.stdout
    written = untracked(tmp_path)
    assert written and all(p.startswith("results/ablation-") and p.split("/")[1].endswith("-cpu") for p in written)
    ignored = subprocess.run(["git", "check-ignore", "-q", "results/ablation-x-cpu/results.csv"], cwd=REPO)
    assert ignored.returncode == 0, "results/*-cpu must stay ignored by git"


@CPU_ONLY
@pytest.mark.parametrize("args", [["ring"], ["ring", "--gpus", "1,2"]], ids=["default", "gpus"])
def test_ring_on_a_cpu_refuses_in_one_line_and_writes_nothing(tmp_path, args):
    proc, seconds = fa2bench(*args, cwd=tmp_path)
    assert proc.returncode == 2 and seconds < 60
    assert "no" in proc.stderr and "pytest tests/test_distributed.py" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not untracked(tmp_path)


@CPU_ONLY
def test_a_sweep_where_every_point_is_unsupported_exits_non_zero_with_one_line(tmp_path):
    proc, _ = fa2bench("sweep", "--provider", "sdpa-cudnn", "--seqlen", "16", "--headdim", "16", "--batch", "1",
                       "--heads", "2", "--mode", "fwd", "--causal", "off", cwd=tmp_path)
    assert proc.returncode == 1
    assert "no point ran" in proc.stderr and "needs a CUDA GPU" in proc.stderr


@CPU_ONLY
def test_a_finished_sweep_says_what_to_run_next(tmp_path):
    proc, _ = fa2bench("sweep", "--provider", "torch-eager", "--seqlen", "16", "--headdim", "16", "--batch", "1",
                       "--heads", "2", "--mode", "fwd", "--causal", "off", "--rep-ms", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "fa2bench plot" in proc.stdout and "fa2bench ablate" in proc.stdout and "--preset paper" in proc.stdout
