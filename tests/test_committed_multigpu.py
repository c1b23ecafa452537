"""The committed 4 x H100 run (results/multigpu-h100x4) says what docs/multigpu.md part 4 says it does, and the
project's own code still reads it: the sharded sweep merged every point and matches the one-GPU run's statuses,
and ringreport recomputes the committed scaling table from ring.csv (through the report path too)."""
from __future__ import annotations

import pandas as pd
import pytest

from fa2bench.distributed import ringreport
from fa2bench.run.results import load_run
from tests.synthetic import REPO

RUN = REPO / "results" / "multigpu-h100x4"
KEY = ["provider", "mode", "dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim", "causal"]

pytestmark = pytest.mark.skipif(not RUN.exists(), reason="results/multigpu-h100x4 is not in this checkout")


def test_sharded_sweep_has_every_point_of_the_one_gpu_sweep_with_the_same_status():
    one, four = load_run(RUN / "single"), load_run(RUN / "sharded4")
    joined = one.merge(four, on=KEY, how="outer", suffixes=("_1", "_4"), indicator=True)
    assert len(one) == len(four) == 24
    assert (joined["_merge"] == "both").all()
    assert (joined["status_1"] == joined["status_4"]).all()
    assert sorted(four["rank"].unique()) == [0, 1, 2, 3]


def test_ring_report_recomputes_the_committed_scaling_table():
    frame = pd.read_csv(RUN / "ring" / "ring.csv", keep_default_na=False, na_values=[""])
    frame["causal"] = frame["causal"].astype(str).str.lower().isin(["true", "1"])
    table = ringreport.scaling(frame)
    committed = pd.read_csv(RUN / "ring" / "scaling.csv")
    assert len(table) == len(committed) == 48
    cols = ["method", "mode", "seqlen", "world_size"]
    merged = table.merge(committed, on=cols, suffixes=("", "_committed"))
    assert len(merged) == 48
    for col in ("ms", "tflops_per_gpu", "scaling_efficiency_pct"):
        assert merged[col].to_numpy() == pytest.approx(merged[f"{col}_committed"].to_numpy(), rel=1e-9)
    at_256k = merged[(merged["seqlen"] == 262144) & (merged["world_size"] == 4)]
    assert set(at_256k["method"]) == {"ring-fa2", "allgather-fa2", "cp-sdpa"}


def test_the_report_path_regenerates_the_committed_scaling_table_and_figure(tmp_path):
    """``fa2bench report`` on the ring folder (``api.report``, as for every kind of run) writes scaling.csv byte
    for byte as committed and scaling.png pixel for pixel (ring.csv from before the results store's spelling)."""
    import shutil

    import numpy as np
    from PIL import Image

    from fa2bench import api

    folder = tmp_path / "ring"
    shutil.copytree(RUN / "ring", folder)
    (folder / "scaling.csv").unlink()
    (folder / "scaling.png").unlink()
    assert api.report(folder) == folder / "report.md"
    assert (folder / "scaling.csv").read_bytes() == (RUN / "ring" / "scaling.csv").read_bytes()
    drawn, committed = (np.asarray(Image.open(p / "scaling.png")) for p in (folder, RUN / "ring"))
    assert drawn.shape == committed.shape and (drawn == committed).all()
