"""report.md: the run's metadata, the headline table, speedups, the points that failed, and the figures
linked by relative paths that exist; ``find_run`` picks the run the notebook and tests read."""
import json
import re

import pytest
from typer.testing import CliRunner

from fa2bench import api

from fa2bench.core import providers
from fa2bench.read import markdown as report
from fa2bench.run.results import ResultsError
from fa2bench.cli import app
from fa2bench.read.summary import headline
from tests.synthetic import ERROR, H100, WRONG, copy_of_committed_run, results_frame, write_run

runner = CliRunner()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A synthetic H100 run on disk with its report written."""
    run_dir = write_run(results_frame(seqlens=(512, 1024, 2048, 4096)), tmp_path_factory.mktemp("run") / "run")
    return run_dir, report.write_report(run_dir).read_text()


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_report_is_written_in_the_run_folder_with_every_section(written):
    run_dir, text = written
    assert (run_dir / "report.md").read_text() == text
    for title in ("Run", "Headline", "Speedups", "Failures", "Figures"):
        assert f"\n## {title}" in text
    meta = _section(text, "Run")
    assert H100 in meta and "0123456789ab" in meta and "torch 2.6.0" in meta and "989" in meta


def test_headline_has_every_provider_and_mode(written):
    run_dir, text = written
    table = _section(text, "Headline")
    frame = results_frame(seqlens=(512, 1024, 2048, 4096))
    for name in set(frame["provider"]):
        assert table.count(f"| {providers.get(name).label} |") == 2  # fwd and bwd
    best = headline(frame).set_index(["provider", "mode"]).loc[("fa2", "fwd"), "best_tflops"]
    assert f"| {best:.0f} |" in table


def test_speedups_are_fa2_over_each_provider_by_sequence_length(written):
    _, text = written
    section = _section(text, "Speedups")
    assert "**fwd, fp16**" in section and "**bwd, fp16**" in section
    fwd = section.split("**fwd, fp16**")[1].split("**bwd")[0]
    assert "| seqlen | 512 | 1k | 2k | 4k | all |" in fwd
    for name in ("naive", "fa1", "sdpa-flash", "torch-eager"):
        assert f"| vs {providers.get(name).label} |" in fwd
    assert "flash-attn (CUDA)" not in fwd  # never ran: nothing to compare


def test_wrong_and_error_points_are_listed_with_their_messages(written):
    _, text = written
    failures = _section(text, "Failures")
    assert "**wrong**" in failures and "dq: max rel error 0.31" in failures
    assert "**error**" in failures and "triton compilation failed \\| out of resources" in failures  # | escaped
    assert f"s{WRONG[4]} d{WRONG[2]} causal" in failures and f"s{ERROR[4]} d{ERROR[2]} " in failures
    assert "| oom |" in failures and "| unsupported |" in failures and "flash_attn" in failures


def test_figures_are_embedded_by_relative_paths_that_exist(written):
    run_dir, text = written
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 7  # throughput and fraction of peak per mode, speedup, memory, roofline
    for link in links:
        assert link.startswith("figures/") and (run_dir / link).exists()


def test_a_cpu_run_says_so_and_explains_missing_figures(tmp_path):
    run_dir = write_run(results_frame(gpu=None, providers=("naive", "fa2", "torch-eager"), seqlens=(64, 128),
                                      headdims=(32,), dtypes=("fp32",)), tmp_path / "cpu")
    text = report.write_report(run_dir).read_text()
    assert "**CPU run.**" in text
    assert "_Not drawn: no peak-memory measurements" in text


@pytest.mark.slow  # draws every figure of a real run
def test_a_real_run_on_disk_gets_a_report(tmp_path):
    run_dir = copy_of_committed_run(tmp_path)
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    text = (run_dir / "report.md").read_text()
    assert "## Headline" in text and "![throughput-" in text
    assert runner.invoke(app, ["report", str(tmp_path / "nope")]).exit_code == 2


def test_md_table_escapes_pipes_and_newlines():
    table = report.md_table([["a|b", "line\nbreak"]], ["x", "y"], "lr")
    assert table.splitlines() == ["| x | y |", "|:---|---:|", "| a\\|b | line break |"]


def test_find_run_prefers_the_environment_then_the_newest_run(tmp_path, monkeypatch):
    monkeypatch.delenv(api.RUN_ENV, raising=False)
    assert api.find_run(tmp_path / "results") is None
    frame = results_frame(providers=("fa2",), seqlens=(512,), headdims=(64,), modes=("fwd",))
    for name, started in (("b-old", "2025-01-01T00:00:00+00:00"), ("a-new", "2025-06-01T00:00:00+00:00")):
        write_run(frame, tmp_path / "results" / name)
        meta = json.loads((tmp_path / "results" / name / "meta.json").read_text())
        (tmp_path / "results" / name / "meta.json").write_text(json.dumps({**meta, "started_utc": started}))
    (tmp_path / "results" / "io-study").mkdir()  # not a sweep: no meta.json
    assert api.find_run(tmp_path / "results") == tmp_path / "results" / "a-new"
    assert api.list_runs(tmp_path / "results") == [tmp_path / "results" / "a-new", tmp_path / "results" / "b-old"]
    monkeypatch.setenv(api.RUN_ENV, str(tmp_path / "results" / "b-old"))
    assert api.find_run(tmp_path / "results") == tmp_path / "results" / "b-old"
    monkeypatch.setenv(api.RUN_ENV, str(tmp_path / "missing"))
    with pytest.raises(ResultsError, match="FA2BENCH_RUN"):
        api.find_run(tmp_path / "results")
