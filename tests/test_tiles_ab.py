"""tools/tiles_ab.py, the tile A/B for fa2's autotuned kernels, on the interpreter at a tiny shape: a check of what
it forces, checks and writes (its timings mean nothing here)."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from fa2bench.kernels import flash2
from fa2bench.kernels._common import describe_config


def tiles_ab(out, *args: str) -> subprocess.CompletedProcess:
    shape = ("--device", "cpu", "--seqlen", "96", "--batch", "1", "--heads", "2", "--kv-heads", "1", "--headdim", "32",
             "--dtype", "fp16", "--rounds", "1", "--out", str(out))
    return subprocess.run([sys.executable, "tools/tiles_ab.py", *shape, *args], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("kernel, tiles", [("bwd_dkdv", ["16x32w4s1", "32x64w4s1"]),
                                           ("bwd_dq", ["32x16w4s1", "64x32w4s1"])])
def test_a_backward_kernel_runs_each_forced_tile_and_its_arms_agree(tmp_path, kernel, tiles):
    proc = tiles_ab(tmp_path, "--kernel", kernel, "--providers", "fa2,fa2-varlen", "--variant", "docs", "--tiles",
                    ",".join(tiles))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = pd.read_csv(tmp_path / "tiles_ab.csv")
    assert sorted(rows.tile.unique()) == sorted(tiles) and set(rows.provider) == {"fa2", "fa2-varlen"}
    assert set(rows.kernel) == {kernel}
    for tile, config in zip(rows.tile, rows.config):  # the tile each row names is the one its kernel launched with
        assert f"{kernel}: {describe_config(flash2.tile_config(tile))}" in config, (tile, config)
    # dQ, dK and dV of each provider's arms agree with its first tile's (fp16 gradients of O(1) inputs)
    worst = float(proc.stdout.split("first tile)| = ")[1].split()[0])
    assert worst < 2e-2, proc.stdout


def test_a_malformed_tile_is_one_line(tmp_path):
    proc = tiles_ab(tmp_path, "--tiles", "64x64w4")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("tiles_ab: "), proc.stderr
