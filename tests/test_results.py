"""The results store: rows land on disk at once, resume knows what is done, load_run reads it back."""
import json

import pandas as pd
import pytest

from fa2bench.core.presets import Point, Shape
from fa2bench.run.results import COLUMNS, STATUSES, ResultsError, RunWriter, load_run, write_meta

SHAPE = Shape(batch=2, heads=4, kv_heads=2, seqlen_q=128, seqlen_k=256, headdim=64, causal=True)


def _row(provider="fa2", status="ok", **extra):
    return {**Point(provider, "fwd", "fp16", SHAPE).fields(), "status": status, "error": "", "ms": 1.5, **extra}


def test_rows_are_on_disk_as_soon_as_they_are_appended(tmp_path):
    writer = RunWriter(tmp_path / "run")
    writer.append(_row())
    lines = (tmp_path / "run" / "results.csv").read_text().splitlines()
    assert lines[0].split(",") == list(COLUMNS)
    assert len(lines) == 2


def test_finish_writes_parquet_and_load_run_round_trips(tmp_path):
    writer = RunWriter(tmp_path)
    writer.append(_row())
    writer.append(_row("naive", status="oom", error="CUDA out of memory"))
    write_meta(tmp_path, {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]})
    writer.finish()
    frame = load_run(tmp_path)
    assert list(frame.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert frame["causal"].dtype == bool and frame["causal"].all()
    assert list(frame["status"]) == ["ok", "oom"]
    assert set(frame["status"]) <= set(STATUSES)
    assert frame.attrs["meta"]["gpus"][0]["name"].startswith("NVIDIA H100")
    assert frame.loc[1, "error"] == "CUDA out of memory"
    assert pd.isna(frame.loc[1, "tflops"])


def test_resume_knows_the_finished_points(tmp_path):
    RunWriter(tmp_path).append(_row())
    resumed = RunWriter(tmp_path, resume=True)
    assert Point("fa2", "fwd", "fp16", SHAPE).key() in resumed.done
    assert Point("fa1", "fwd", "fp16", SHAPE).key() not in resumed.done


def test_existing_results_are_not_overwritten_without_resume(tmp_path):
    RunWriter(tmp_path).append(_row())
    with pytest.raises(ResultsError, match="--resume"):
        RunWriter(tmp_path)


def test_missing_and_foreign_folders_give_clear_errors(tmp_path):
    with pytest.raises(ResultsError, match="no results folder"):
        load_run(tmp_path / "nope")
    with pytest.raises(ResultsError, match="not a fa2bench results folder"):
        load_run(tmp_path)
    (tmp_path / "results.csv").write_text("this,is\nnot,ours\n")
    with pytest.raises(ResultsError, match="not a fa2bench results file"):
        load_run(tmp_path)


def test_broken_meta_is_a_clear_error(tmp_path):
    writer = RunWriter(tmp_path)
    writer.append(_row())
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(ResultsError, match="meta.json"):
        load_run(tmp_path)


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ResultsError, match="cannot write"):
        RunWriter(blocker / "run")


def test_meta_is_json(tmp_path):
    write_meta(tmp_path, {"argv": ["fa2bench", "sweep"]})
    assert json.loads((tmp_path / "meta.json").read_text())["argv"][1] == "sweep"
