"""--resume trusts nothing in the folder: damaged rows are dropped and re-run (and the user told), stray bytes
give a clear message, a different sweep is refused unless --extend, and SIGTERM ends a sweep like Ctrl-C."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
from typer.testing import CliRunner

from fa2bench.cli import app
from fa2bench.run.results import DAMAGED_NAME, load_run, read_meta, scan_csv

runner = CliRunner()
SWEEP = ["sweep", "--headdim", "16", "--batch", "1", "--heads", "2", "--rep-ms", "1", "--warmup-ms", "0",
         "--provider", "torch-eager", "--mode", "fwd", "--causal", "off", "--dtype", "fp32", "--no-isolate"]


def sweep(out, seqlens="16,33", *extra):
    return runner.invoke(app, [*SWEEP, "--seqlen", seqlens, "--out", str(out), *map(str, extra)])


def ok_run(tmp_path, seqlens="16,33"):
    out = tmp_path / "run"
    result = sweep(out, seqlens)
    assert result.exit_code == 0, result.output
    return out


def cut_last_row(csv_path, keep_fields: int):
    """Cut the last row after ``keep_fields`` fields and half of the next one, as a crash mid-write does."""
    lines = csv_path.read_bytes().split(b"\n")
    fields = lines[-2].split(b",")
    fields[keep_fields] = fields[keep_fields][: max(1, len(fields[keep_fields]) // 2)]
    csv_path.write_bytes(b"\n".join(lines[:-2]) + b"\n" + b",".join(fields[: keep_fields + 1]))


def test_a_row_cut_mid_field_is_dropped_rerun_and_reported(tmp_path):
    out = ok_run(tmp_path)
    csv_path = out / "results.csv"
    header = csv_path.read_text().splitlines()[0].split(",")
    ms_before = load_run(out)["ms"].tolist()
    cut_last_row(csv_path, header.index("ms"))  # "...,ok,,0.0" where the median was 0.04...
    assert len(scan_csv(csv_path)[2]) == 1
    assert len(load_run(out)) == 1  # readers (plot, report, compare) never see the half row

    result = sweep(out, "16,33", "--resume")
    assert result.exit_code == 0, result.output
    assert "dropped 1 damaged row" in result.output and "cut off mid-row" in result.output
    assert "(1 already done)" in result.output
    frame = load_run(out)
    assert len(frame) == 2 and (frame["status"] == "ok").all() and frame["ms"].notna().all()
    assert frame["ms"].iloc[0] == ms_before[0]  # the intact row is kept as it was
    assert (out / DAMAGED_NAME).exists()


def test_stray_bytes_are_a_clear_message_not_a_traceback(tmp_path):
    out = ok_run(tmp_path)
    with open(out / "results.csv", "ab") as f:
        f.write(b"\xff\xfe")
    result = sweep(out, "16,33", "--resume")
    assert result.exit_code == 0, result.output
    assert "stray bytes" in result.output and "UnicodeDecodeError" not in result.output
    assert "(2 already done)" in result.output
    assert len(pd.read_csv(out / "results.csv")) == 2


def test_stray_bytes_inside_the_file_drop_only_that_row(tmp_path):
    out = ok_run(tmp_path)
    lines = (out / "results.csv").read_bytes().split(b"\n")
    lines[1] = lines[1][:10] + b"\xff" + lines[1][10:]
    (out / "results.csv").write_bytes(b"\n".join(lines))
    result = sweep(out, "16,33", "--resume")
    assert result.exit_code == 0, result.output
    assert "line 2: stray bytes" in result.output
    assert len(load_run(out)) == 2


def test_resume_with_a_different_sweep_is_refused_naming_the_difference(tmp_path):
    out = ok_run(tmp_path, "16")
    result = sweep(out, "16,33", "--resume")
    assert result.exit_code == 2, result.output
    assert "seqlens 16 -> 16,33" in result.output and "--extend" in result.output
    assert len(load_run(out)) == 1  # nothing was run or touched


def test_extend_adds_the_points_and_records_every_sweep(tmp_path):
    out = ok_run(tmp_path, "16,33")
    result = sweep(out, "33,48", "--resume", "--extend")
    assert result.exit_code == 0, result.output
    assert "2 points (1 already done)" in result.output  # this sweep's points, not the folder's rows
    meta = read_meta(out)
    assert [s["seqlens"] for s in meta["sweeps"]] == [[16, 33], [33, 48]]
    assert meta["resumed"][-1]["extended"] is True
    assert sorted(load_run(out)["seqlen_q"]) == [16, 33, 48]
    again = sweep(out, "16,33", "--resume")  # either recorded sweep resumes without --extend
    assert again.exit_code == 0 and "(2 already done)" in again.output


def test_extend_without_resume_is_a_usage_error(tmp_path):
    result = sweep(tmp_path / "x", "16", "--extend")
    assert result.exit_code == 2 and "--extend needs --resume" in result.output


def test_sigterm_flushes_and_prints_the_resume_hint(tmp_path):
    out = tmp_path / "run"
    many = "16:4096:16"  # 256 points: seconds of work, so the signal lands mid-sweep
    proc = subprocess.Popen([sys.executable, "-m", "fa2bench", *SWEEP, "--seqlen", many, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 120
    while not (out / "results.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until the first point is on disk
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert read_meta(out)["complete"] is False
    assert 0 < len(load_run(out)) < 256  # what finished is saved; the rest is for --resume


def test_readers_leave_out_a_damaged_row_and_say_so(tmp_path):
    out = ok_run(tmp_path)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    (out / "results.parquet").unlink()  # a crashed sweep writes no parquet: readers read the CSV
    cut_last_row(out / "results.csv", header.index("ms"))
    result = runner.invoke(app, ["compare", str(out), str(out)])
    assert result.exit_code == 0, result.output
    assert "1 damaged row(s) of results.csv left out" in result.output and "1 shared points" in result.output


def test_a_field_recorded_by_only_one_version_is_not_a_different_sweep():
    from fa2bench.run.results import sweep_difference

    assert sweep_difference({"seqlens": [64]}, {"seqlens": [64], "new_field": None}) is None
    assert sweep_difference({"seqlens": [64]}, {"seqlens": [64], "new_field": [1]}) == "new_field (default) -> 1"
