"""fa2bench profile: shapes, ncu command lines and CSV parsing, the IO study's plumbing, traces, kernel
resources and the CLI's one-line failures, all on the CPU (ncu and the GPU are faked).

The CSV and query texts below are PARSER FIXTURES written by hand after Nsight Compute's documented output
layouts (``--page raw --csv --print-units base``: a header of metric names, a row of units, one row per kernel;
``--page details --csv``: one row per kernel and metric). Their numbers are invented: they are not results.
"""
import json
import subprocess
import time
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import triton
from typer.testing import CliRunner

from tests.conftest import DEVICE
from fa2bench import cli
from fa2bench.cli import profile as cli_profile

from fa2bench.core import config, iomodel

from fa2bench.profiling import iostudy, ncu
from fa2bench.profiling import profile as prof
from fa2bench.core.presets import Point, Shape, SpecError

# --- parser fixtures (hand-written, invented numbers) -----------------------------------------------------

RAW_CSV = '''==PROF== Connected to process 4242 (/usr/bin/python3.12)
==PROF== Disconnected from process 4242
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","dram__bytes_read.sum","dram__bytes_write.sum","gpu__time_duration.sum","lts__t_bytes.sum","lts__t_sector_hit_rate.pct","sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active","sm__throughput.avg.pct_of_peak_sustained_elapsed","sm__warps_active.avg.pct_of_peak_sustained_active"
"","","","","","","","","","","","byte","byte","nsecond","byte","%","%","%","%"
"0","4242","python3.12","127.0.0.1","_matmul_kernel","1","7","(256, 1, 1)","(512, 32, 1)","0","9.0","1,000,000","4,000,000","3,000","6,000,000","50","60","70","40"
"1","4242","python3.12","127.0.0.1","_softmax_kernel","1","7","(128, 1, 1)","(64, 32, 1)","0","9.0","4,000,000","4,000,000","1,000","9,000,000","10","0","30","80"
"2","4242","python3.12","127.0.0.1","_matmul_kernel","1","7","(256, 1, 1)","(8, 32, 1)","0","9.0","5,000,000","1,000,000","4,000","7,000,000","60","80","75","40"
"3","4242","python3.12","127.0.0.1","_matmul_kernel","1","7","(256, 1, 1)","(512, 32, 1)","0","9.0","1,000,000","4,000,000","3,000","6,000,000","50","60","70","40"
"4","4242","python3.12","127.0.0.1","_softmax_kernel","1","7","(128, 1, 1)","(64, 32, 1)","0","9.0","4,000,000","4,000,000","1,000","9,000,000","10","0","30","80"
"5","4242","python3.12","127.0.0.1","_matmul_kernel","1","7","(256, 1, 1)","(8, 32, 1)","0","9.0","5,000,000","1,000,000","4,000","7,000,000","60","80","75","40"
'''

DETAILS_CSV = '''"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","4242","python3.12","127.0.0.1","_attn_fwd","1","7","(128, 1, 1)","(32, 64, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","Mbyte","12.5"
"0","4242","python3.12","127.0.0.1","_attn_fwd","1","7","(128, 1, 1)","(32, 64, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","Kbyte","4,096"
"0","4242","python3.12","127.0.0.1","_attn_fwd","1","7","(128, 1, 1)","(32, 64, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","usecond","250.5"
"0","4242","python3.12","127.0.0.1","_attn_fwd","1","7","(128, 1, 1)","(32, 64, 1)","0","9.0","Command line profiler metrics","lts__t_sector_hit_rate.pct","%","n/a"
'''

QUERY_METRICS = '''---------------------------------------------------------------------------------------------------
Device NVIDIA H100 80GB HBM3 (GH100)
---------------------------------------------------------------------------------------------------
Metric Name                                  Metric Type    Metric Description
dram__bytes_read                             Counter        # of bytes read from DRAM
dram__bytes_write                            Counter        # of bytes written to DRAM
gpu__time_duration                           Counter        total duration in nanoseconds
lts__t_sector_hit_rate                       Ratio          proportion of L2 sector lookups that hit
sm__pipe_tensor_op_hmma_cycles_active        Counter        # of cycles where HMMA tensor pipe was active
sm__throughput                               Throughput     SM throughput assuming ideal load balancing
sm__warps_active                             Counter        cumulative # of warps in flight
'''

METRICS = ncu.select_metrics(None)
SHAPE = Shape(batch=4, heads=16, kv_heads=16, seqlen_q=4096, seqlen_k=4096, headdim=128, causal=True)
POINT = Point("fa2", "fwd", "fp16", SHAPE)


# --- shapes ---------------------------------------------------------------------------------------------


def profiled(**options) -> list[Shape]:
    """The shapes `fa2bench profile` builds from its options (through SweepSpec, on the paper's workload)."""
    return config.spec_from(options, prof.POINT_DEFAULTS).shapes()


def test_a_profiled_shape_defaults_to_the_papers_tokens_and_hidden_size():
    assert profiled(causal=True) == [SHAPE]
    assert profiled(seqlen="1024", headdim=64, batch=2, heads=3, kv_heads=1, seqlen_k=512) == [Shape(
        2, 3, 1, 1024, 512, 64, False)]


@pytest.mark.parametrize("kwargs, message", [
    ({"batch": 2, "tokens": 4096}, "at most one of --batch and --tokens"),
    ({"heads": 2, "hidden": 256}, "at most one of --heads and --hidden"),
    ({"hidden": 100}, "not a multiple of head dim"),
    ({"tokens": 100}, "smaller than seqlen"),
    ({"kv_heads": 3}, "does not divide"),
    ({"batch": 0}, "--batch must be positive"),
])
def test_bad_sizes_are_spec_errors(kwargs, message):
    with pytest.raises(SpecError, match=message):
        profiled(**kwargs)


# --- ncu: command lines and parsing ---------------------------------------------------------------------


def test_the_ncu_command_profiles_only_the_childs_timed_calls_at_the_gpus_own_clocks():
    cmd = ncu.ncu_command("/opt/ncu", POINT, Path("out/report"), METRICS.values(), calls=2, warmup=3,
                           python="/venv/bin/python")
    line = " ".join(cmd)
    assert cmd[0] == "/opt/ncu"
    assert "--clock-control none" in line and "--cache-control all" in line
    assert "--profile-from-start off" in line and "--target-processes all" in line
    assert cmd[cmd.index("--metrics") + 1] == ",".join(METRICS.values())
    assert cmd[cmd.index("--export") + 1] == "out/report"
    child = cmd[cmd.index("/venv/bin/python") + 1:]
    assert child[:3] == ["-m", "fa2bench.profiling.ncu", "child"]
    assert "--causal" in child and child[child.index("--calls") + 1] == "2"
    assert child[child.index("--seqlen-q") + 1] == "4096" and child[child.index("--batch") + 1] == "4"


@pytest.mark.parametrize("provider", ["fa2-decode", "torch-eager"])
def test_a_profiled_decode_point_calls_the_provider_on_a_kv_cache(provider):
    shape = Shape(2, 4, 2, 1, 40, 16, True, page_size=16 if provider == "fa2-decode" else 0)
    call, grads = prof.prepare(Point(provider, "decode", "fp32", shape), device=DEVICE)
    out = call()
    assert grads is None and tuple(out.shape) == (2, 1, 4, 16)


@pytest.mark.parametrize("shape", [Shape(4, 32, 8, 1, 16384, 128, True, page_size=64, ragged=True),
                                   Shape(2, 16, 16, 2048, 2048, 64, True, variant="window256+softcap50")])
def test_the_child_profiles_the_point_it_was_given_paged_ragged_or_a_variant(shape):
    point = Point("fa2", "fwd", "bf16", shape)
    _, parsed = ncu.parse_child(ncu.child_args(point, calls=1, warmup=3)[3:])
    assert parsed == point


def test_the_export_reads_the_report_back_as_one_csv_row_per_kernel_in_base_units():
    cmd = ncu.export_command("ncu", Path("r.ncu-rep"))
    assert cmd == ["ncu", "--import", "r.ncu-rep", "--csv", "--page", "raw", "--print-units", "base"]


def test_metrics_asked_for_cover_the_issue_and_fall_back_to_what_ncu_offers():
    assert set(METRICS) == {"dram_read_bytes", "dram_write_bytes", "l2_bytes", "duration_ns", "occupancy_pct",
                            "tensor_pct", "sm_pct", "l2_hit_pct"}
    assert METRICS["tensor_pct"].startswith("sm__pipe_tensor_cycles_active")
    offered = ncu.parse_query_metrics(QUERY_METRICS)
    assert "dram__bytes_read" in offered and "Device" not in offered and "Metric" not in offered
    chosen = ncu.select_metrics(offered)
    assert chosen["tensor_pct"] == "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"
    assert "l2_bytes" not in chosen  # lts__t_bytes is not offered by this (fixture) ncu: left out, not fatal


def test_raw_csv_parses_one_row_per_launch_in_base_units():
    kernels = ncu.parse_ncu_csv(RAW_CSV, METRICS)
    assert [k["kernel"] for k in kernels] == ["_matmul_kernel", "_softmax_kernel", "_matmul_kernel"] * 2
    assert kernels[0]["dram_read_bytes"] == 1e6 and kernels[0]["dram_write_bytes"] == 4e6
    assert kernels[1]["duration_ns"] == 1000 and kernels[2]["tensor_pct"] == 80


def test_counters_of_one_call_sum_bytes_over_its_kernels_and_weight_percentages_by_time():
    summary = ncu.per_call(ncu.parse_ncu_csv(RAW_CSV, METRICS), calls=2)
    assert summary["kernels_per_call"] == 3
    assert summary["dram_read_bytes"] == 10e6 and summary["dram_write_bytes"] == 9e6
    assert summary["dram_bytes"] == 19e6
    assert summary["duration_ns"] == 8000 and summary["l2_bytes"] == 22e6
    assert summary["tensor_pct"] == pytest.approx((60 * 3000 + 0 * 1000 + 80 * 4000) / 8000)
    rows = {r["kernel"]: r for r in ncu.by_kernel(ncu.parse_ncu_csv(RAW_CSV, METRICS), calls=2)}
    assert rows["_matmul_kernel"]["kernels_per_call"] == 2 and rows["_matmul_kernel"]["dram_read_bytes"] == 6e6


def test_raw_csv_columns_are_found_by_name_in_any_order():
    text = ('"Kernel Name","dram__bytes_write.sum","Context","dram__bytes_read.sum"\n'
            '"","Mbyte","","Gbyte"\n"_attn_fwd","2","1","1.5"\n')
    (kernel,) = ncu.parse_ncu_csv(text, METRICS)
    assert kernel["kernel"] == "_attn_fwd" and kernel["id"] == 0
    assert kernel["dram_read_bytes"] == 1.5e9 and kernel["dram_write_bytes"] == 2e6


def test_details_csv_parses_too_and_scales_units():
    (kernel,) = ncu.parse_ncu_csv(DETAILS_CSV, METRICS)
    assert kernel["kernel"] == "_attn_fwd"
    assert kernel["dram_read_bytes"] == pytest.approx(12.5e6)
    assert kernel["dram_write_bytes"] == pytest.approx(4.096e6)
    assert kernel["duration_ns"] == pytest.approx(250_500)
    assert kernel["l2_hit_pct"] is None and kernel["occupancy_pct"] is None


def test_text_without_a_table_parses_to_nothing():
    assert ncu.parse_ncu_csv("==PROF== Connected\n==ERROR== something\n", METRICS) == []


# --- run_ncu and the IO study with a fake ncu ------------------------------------------------------------


class FakeNcu:
    """Stands in for subprocess.run on ncu: writes the report, prints the child's line, exports a CSV whose
    DRAM bytes are ``measured(provider, seqlen)`` split over two kernels per call."""

    def __init__(self, measured=lambda provider, seqlen: 1e9, fail=lambda provider, seqlen: None, code=0,
                 extra_output="", unknown_metric=None):
        self.measured, self.fail, self.code, self.extra_output = measured, fail, code, extra_output
        self.unknown_metric = unknown_metric
        self.commands = []
        self.current = None

    def __call__(self, cmd, **kwargs):
        self.commands.append(cmd)
        if "--query-metrics" in cmd:
            return subprocess.CompletedProcess(cmd, 0, stdout=QUERY_METRICS, stderr="")
        if "--import" in cmd:
            return subprocess.CompletedProcess(cmd, 0, stdout=self._csv(*self.current), stderr="")
        provider, seqlen = cmd[cmd.index("--provider") + 1], int(cmd[cmd.index("--seqlen-q") + 1])
        self.current = (provider, seqlen)
        if self.unknown_metric and self.unknown_metric in cmd[cmd.index("--metrics") + 1]:
            return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=f"==ERROR== Failed to find metric "
                                                                          f"{self.unknown_metric}\n")
        Path(cmd[cmd.index("--export") + 1]).with_suffix(".ncu-rep").write_bytes(b"fake report")
        error = self.fail(provider, seqlen)
        line = {"error": error} if error else {"config": "fwd: BLOCK_M=128 BLOCK_N=64 w8 s3", "calls": 1}
        out = f"==PROF== Connected\n{self.extra_output}{ncu.CHILD_TAG}{json.dumps(line)}\n"
        return subprocess.CompletedProcess(cmd, 1 if error else self.code, stdout=out, stderr="")

    def _csv(self, provider, seqlen):
        half = self.measured(provider, seqlen) / 4
        head = ('"ID","Kernel Name","dram__bytes_read.sum","dram__bytes_write.sum","gpu__time_duration.sum",'
                '"sm__warps_active.avg.pct_of_peak_sustained_active"\n"","","byte","byte","nsecond","%"\n')
        return head + "".join(f'"{i}","k{i}","{half:.0f}","{half:.0f}","1000","50"\n' for i in range(2))

    def collected(self):
        return [c for c in self.commands if "--export" in c]


def test_run_ncu_keeps_the_report_its_csv_and_the_log(tmp_path):
    fake = FakeNcu(measured=lambda p, n: 2e9)
    result = ncu.run_ncu(POINT, tmp_path, ncu="ncu", run=fake)
    assert result.summary["dram_bytes"] == 2e9 and result.summary["kernels_per_call"] == 2
    assert result.config == "fwd: BLOCK_M=128 BLOCK_N=64 w8 s3"
    assert result.report == tmp_path / "report.ncu-rep" and result.report.exists()
    assert "dram__bytes_read.sum" in result.csv.read_text()
    assert result.log.read_text().startswith("$ ncu --clock-control none")
    meta = json.loads((tmp_path / "meta.json").read_text())  # provenance beside the report, as for a sweep
    assert meta["kind"] == "ncu" and meta["point"]["provider"] == POINT.provider and "commit" in meta["git"]
    # the metrics were chosen from what this ncu offers (the fixture lacks lts__t_bytes)
    collect = fake.collected()[0]
    assert "lts__t_bytes.sum" not in collect[collect.index("--metrics") + 1]


def test_a_metric_this_ncu_rejects_is_dropped_and_the_profile_retried(tmp_path):
    fake = FakeNcu(unknown_metric="lts__t_bytes.sum")
    result = ncu.run_ncu(POINT, tmp_path, ncu="ncu", run=fake, metrics=ncu.select_metrics(None))
    assert len(fake.collected()) == 2
    assert "lts__t_bytes.sum" not in result.metrics and result.summary["l2_bytes"] is None
    assert result.summary["dram_bytes"] == 1e9


@pytest.mark.parametrize("fake, message", [
    (FakeNcu(code=1, extra_output="==ERROR== ERR_NVGPUCTRPERM - The user does not have permission\n"),
     "performance counters"),
    (FakeNcu(fail=lambda p, n: "OutOfMemoryError: CUDA out of memory"), "fa2 failed under ncu: OutOfMemoryError"),
    (FakeNcu(code=9, extra_output="==ERROR== Failed to profile kernel\n"), "ncu exited with code 9"),
])
def test_ncu_failures_are_one_line(tmp_path, fake, message):
    with pytest.raises(ncu.ProfileError, match=message):
        ncu.run_ncu(POINT, tmp_path, ncu="ncu", run=fake)


def study_points(providers=("naive", "fa2"), seqlens=(1024, 2048)) -> list[Point]:
    """The points `fa2bench profile-io` builds (head dim 128, the paper's workload)."""
    return config.spec_from({"provider": list(providers), "seqlen": list(seqlens)}, prof.POINT_DEFAULTS).points()


def test_no_ncu_on_path_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ncu, "find_ncu", lambda: None)
    with pytest.raises(ncu.ProfileError, match="`ncu` is not on PATH"):
        ncu.run_ncu(POINT, tmp_path)
    with pytest.raises(ncu.ProfileError, match="`ncu` is not on PATH"):
        iostudy.io_study(study_points(("fa2",), (1024,)), tmp_path)


def test_io_study_puts_measured_bytes_next_to_the_model_in_a_table_and_a_figure(tmp_path):
    def measured(provider, seqlen):
        return {"naive": 1.0, "fa2": 0.25}[provider] * seqlen * 1e6

    fake = FakeNcu(measured=measured, fail=lambda p, n: "OutOfMemoryError: CUDA out of memory" if (
        p, n) == ("naive", 2048) else None)
    seen = []
    frame = iostudy.io_study(study_points(), tmp_path, ncu_path="ncu", run=fake,
                             on_point=lambda point, row: seen.append((point.provider, row["status"])))
    assert seen == [("naive", "ok"), ("naive", "error"), ("fa2", "ok"), ("fa2", "ok")]
    assert (tmp_path / iostudy.STUDY_CSV).exists() and (tmp_path / iostudy.STUDY_FIGURE).stat().st_size > 0
    ok = frame[frame["status"] == "ok"].set_index(["provider", "seqlen_q"])
    fa2 = ok.loc[("fa2", 2048)]
    shape = Shape(8, 16, 16, 2048, 2048, 128, False)
    assert (fa2["batch"], fa2["heads"]) == (8, 16)
    assert fa2["dram_bytes"] == 0.25 * 2048e6
    assert fa2["model_bytes"] == iomodel.hbm_bytes("fa2", shape, "fwd", "fp16",
                                                   config="fwd: BLOCK_M=128 BLOCK_N=64 w8 s3")
    assert fa2["measured_over_model"] == pytest.approx(fa2["dram_bytes"] / fa2["model_bytes"])
    assert fa2["compulsory_bytes"] == iomodel.compulsory_bytes(shape, "fwd", "fp16")
    assert Path(fa2["report"]) == tmp_path / "ncu" / "fa2-s2048" / "report.ncu-rep"
    failed = frame[frame["status"] == "error"]
    assert failed["error"].str.contains("OutOfMemoryError").all() and len(failed) == 1

    # a second run into the same folder profiles only what is not ok yet
    again = FakeNcu(measured=measured)
    frame = iostudy.io_study(study_points(), tmp_path, ncu_path="ncu", run=again)
    assert [(c[c.index("--provider") + 1], c[c.index("--seqlen-q") + 1]) for c in again.collected()] == [
        ("naive", "2048")]
    assert (frame["status"] == "ok").sum() == 4
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["kind"] == "io-study" and "versions" in meta and len(meta["resumed"]) == 1


# --- the child process ----------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the GPU-less failure line")
def test_the_child_reports_a_failure_on_one_line(capsys):
    code = ncu.main(["child", "--provider", "torch-eager", "--mode", "fwd", "--dtype", "fp32", "--batch", "1",
                      "--heads", "1", "--kv-heads", "1", "--seqlen-q", "16", "--seqlen-k", "16", "--headdim", "16",
                      "--causal", "off"])
    assert code == 1
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith(ncu.CHILD_TAG)]
    assert "error" in json.loads(line[len(ncu.CHILD_TAG):])


def test_the_module_without_child_prints_usage():
    assert ncu.main([]) == 2


# --- torch.profiler trace -------------------------------------------------------------------------------


def test_kernel_table_aggregates_gpu_activity_by_name():
    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "_attn_fwd", "dur": 100.0},
        {"ph": "X", "cat": "kernel", "name": "_attn_fwd", "dur": 120.0},
        {"ph": "X", "cat": "gpu_memset", "name": "Memset (Device)", "dur": 20.0},
        {"ph": "X", "cat": "cpu_op", "name": "aten::empty", "dur": 999.0},  # CPU side: not GPU activity
        {"ph": "i", "cat": "kernel", "name": "marker"},
    ]}
    rows = prof.kernel_table(trace, calls=2)
    assert [(r["name"], r["kind"], r["per_call"]) for r in rows] == [("_attn_fwd", "kernel", 1.0),
                                                                     ("Memset (Device)", "memset", 0.5)]
    assert rows[0]["mean_us"] == 110.0 and rows[0]["share_pct"] == pytest.approx(220 / 240 * 100)


def test_trace_writes_a_chrome_trace(tmp_path):
    a = torch.randn(32, 32)
    rows = prof.trace(lambda: a @ a, tmp_path / "t" / "trace.json", calls=2)
    data = json.loads((tmp_path / "t" / "trace.json").read_text())
    assert any("fa2bench call 1" in str(ev.get("name")) for ev in data["traceEvents"])
    if not torch.cuda.is_available():
        assert rows == []  # no GPU kernels on the CPU


# --- Triton kernel resources ------------------------------------------------------------------------------

Meta = namedtuple("Meta", "name shared num_warps num_stages")


class FakeCompiled:
    def __init__(self, name, tiles, warps, stages, regs, spills, shared):
        self.metadata = Meta(name, shared, warps, stages)
        self.n_regs, self.n_spills = regs, spills
        names = ["Q", "K", "HEAD_DIM", *tiles]
        consts = {(2,): 128, **{(3 + i,): v for i, v in enumerate(tiles.values())}}
        self.src = SimpleNamespace(fn=SimpleNamespace(arg_names=names), constants=consts)


def fake_jit(*compiled):
    return SimpleNamespace(device_caches={0: ({f"key{i}": c for i, c in enumerate(compiled)}, {}, None, None, None)})


def test_resources_list_each_compiled_variant_and_mark_the_autotuners_pick():
    # fa2's kernels are also compiled with BLOCK_D (the padded head dim, set by the launcher, not by a config)
    picked = FakeCompiled("_attn_fwd", {"BLOCK_D": 128, "BLOCK_M": 128, "BLOCK_N": 64}, 8, 3, regs=168, spills=0,
                          shared=98304)
    other = FakeCompiled("_attn_fwd", {"BLOCK_D": 128, "BLOCK_M": 64, "BLOCK_N": 64}, 4, 3, regs=128, spills=12,
                         shared=49152)
    pre = FakeCompiled("_attn_bwd_preprocess", {"BLOCK_M": 64}, 4, 1, regs=40, spills=0, shared=0)
    autotuned = SimpleNamespace(fn=SimpleNamespace(fn=fake_jit(picked, other)),  # autotune(heuristics(jit))
                                configs=[], cache={("key",): triton.Config({"BLOCK_M": 128, "BLOCK_N": 64},
                                                                           num_warps=8, num_stages=3)})
    rows = prof.resources_of({"fwd": autotuned, "bwd_preprocess": fake_jit(pre)})
    assert [(r["kernel"], r["tiles"], r["chosen"]) for r in rows] == [
        ("fwd", "BLOCK_D=128 BLOCK_M=128 BLOCK_N=64", True), ("fwd", "BLOCK_D=128 BLOCK_M=64 BLOCK_N=64", False),
        ("bwd_preprocess", "BLOCK_M=64", True)]  # a kernel that is not autotuned: every variant is in use
    assert rows[0] == {"kernel": "fwd", "function": "_attn_fwd", "regs": 168, "spills": 0,
                       "shared_bytes": 98304, "warps": 8, "stages": 3, "tiles": "BLOCK_D=128 BLOCK_M=128 BLOCK_N=64",
                       "autotuned": True, "chosen": True}
    # a forced config (no autotuner entry) is found through the provider's config string
    autotuned.cache = {}
    rows = prof.resources_of({"fwd": autotuned}, config="fwd: BLOCK_M=64 BLOCK_N=64 w4 s3")
    assert [r["chosen"] for r in rows] == [False, True]
    # only the autotuner's best_config: still found
    autotuned.best_config = triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3)
    assert [r["chosen"] for r in prof.resources_of({"fwd": autotuned})] == [True, False]


class LazyCompiled(FakeCompiled):
    """Like Triton's CompiledKernel: no n_regs / n_spills until ``_init_handles`` loads the binary."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._regs = (self.n_regs, self.n_spills)
        del self.n_regs, self.n_spills
        self.loads = 0

    def _init_handles(self):
        self.loads += 1
        self.n_regs, self.n_spills = self._regs


class DoneFuture:
    def __init__(self, value, done=True):
        self.value, self._done = value, done

    def done(self):
        return self._done

    def result(self):
        return self.value


def test_resources_load_unlaunched_variants_and_read_every_cache_layout():
    lazy = LazyCompiled("_attn_fwd", {"BLOCK_M": 128, "BLOCK_N": 64}, 4, 3, regs=200, spills=8, shared=65536)
    row = prof.describe_compiled(lazy)
    assert (row["regs"], row["spills"], lazy.loads) == (200, 8, 1)
    a = FakeCompiled("k", {"BLOCK_M": 16}, 4, 1, regs=1, spills=0, shared=0)
    b = FakeCompiled("k", {"BLOCK_M": 32}, 4, 1, regs=1, spills=0, shared=0)
    # Triton 3.x: device_caches[device] = (kernel_cache, key_cache, target, backend, binder); an async compile
    # leaves a future until it is done
    jit = SimpleNamespace(device_caches={0: ({"a": a, "b": DoneFuture(b), "c": DoneFuture(None, done=False)},
                                             {}, None, None, None)})
    assert prof.compiled_kernels(jit) == [a, b]
    assert prof.compiled_kernels(SimpleNamespace(cache={0: {"a": a}})) == [a]  # older Triton: cache[device]
    # autotune(heuristics(jit)): the chain is walked; the autotuner's own cache holds Configs, not kernels
    wrapped = SimpleNamespace(fn=SimpleNamespace(fn=jit, values={}),
                              cache={("k",): triton.Config({"BLOCK_M": 16}, num_warps=4, num_stages=1)}, configs=[])
    assert prof.unwrap_jit(wrapped) is jit
    assert prof.compiled_kernels(wrapped) == [a, b]
    assert [r["chosen"] for r in prof.resources_of({"k": wrapped})] == [True, False]


def test_a_non_triton_provider_has_no_kernel_resources():
    assert prof.kernel_resources("sdpa-flash") == []


@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
def test_describe_reads_a_real_triton_compilation_for_hopper():
    """Compiles a tiny kernel for sm_90 without a GPU (ptxas ships with Triton); registers need the driver."""
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    def double(X, Y, N, BLOCK_M: tl.constexpr):
        offs = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(Y + offs, tl.load(X + offs, mask=offs < N) * 2, mask=offs < N)

    src = ASTSource(fn=JITFunction(double), signature={"X": "*fp32", "Y": "*fp32", "N": "i32",
                                                       "BLOCK_M": "constexpr"}, constexprs={"BLOCK_M": 256})
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 2})
    except Exception as exc:  # no ptxas / no NVIDIA backend in this Triton build
        pytest.skip(f"cannot compile for sm_90 here: {exc}")
    row = prof.describe_compiled(compiled)
    assert (row["function"], row["tiles"], row["warps"], row["stages"]) == ("double", "BLOCK_M=256", 4, 2)
    assert row["shared_bytes"] == 0
    if not torch.cuda.is_available():
        assert row["regs"] is None  # reading registers loads the binary, which needs the driver


# --- the CLI --------------------------------------------------------------------------------------------

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def test_help_lists_the_profile_commands():
    result = invoke("--help")
    assert "profile" in result.output and "profile-io" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the GPU-less message")
@pytest.mark.parametrize("args", [["profile", "--provider", "fa2", "--seqlen", "4096", "--headdim", "128",
                                   "--causal", "on", "--mode", "fwd"],
                                  ["profile-io", "--provider", "naive,fa2", "--seqlen", "1024..4096"]])
def test_without_a_gpu_profile_is_one_clear_line(args):
    result = invoke(*args)
    assert result.exit_code == 2
    assert "needs a CUDA GPU" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args", [["profile", "--provider", "fa2", "--ncu"], ["profile-io"]])
def test_without_ncu_the_ncu_paths_are_one_clear_line(monkeypatch, args):
    monkeypatch.setattr(cli_profile, "has_cuda", lambda: True)
    monkeypatch.setattr(ncu, "find_ncu", lambda: None)
    result = invoke(*args)
    assert result.exit_code == 2
    assert "`ncu` is not on PATH" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["profile", "--provider", "nope"], "'nope' is not one of"),
    (["profile", "--provider", "fa2", "--mode", "train"], "'train' is not one of"),
    (["profile", "--provider", "fa2", "--dtype", "fp8"], "'fp8' is not one of"),
    (["profile", "--provider", "fa2", "--seqlen", "1024,2048"], "takes one point; these options give 2"),
    (["profile", "--provider", "fa2", "--batch", "2", "--tokens", "8192"], "--batch and --tokens"),
    (["profile", "--provider", "fa2", "--hidden", "100"], "not a multiple of head dim"),
    (["profile-io", "--seqlen", "abc"], "--seqlen"),
    (["profile-io", "--provider", "fa2,nope"], "unknown 'nope'"),
])
def test_bad_profile_input_is_one_clear_line_and_exit_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.fixture
def fake_gpu(monkeypatch):
    """The CLI's GPU-only path with the GPU faked: torch-eager runs on the CPU, ncu is a FakeNcu."""
    from fa2bench.run import hardware
    monkeypatch.setattr(cli_profile, "has_cuda", lambda: True)
    monkeypatch.setattr(hardware, "cuda_device_name", lambda: "Fake H100")
    monkeypatch.setattr(ncu, "find_ncu", lambda: "ncu")
    monkeypatch.setattr(prof, "prepare", lambda point: (lambda: torch.randn(64, 64) @ torch.randn(64, 64), None))
    real_run_ncu, real_study = ncu.run_ncu, iostudy.io_study
    monkeypatch.setattr(ncu, "run_ncu", lambda *a, **k: real_run_ncu(*a, **{**k, "run": FakeNcu()}))
    monkeypatch.setattr(iostudy, "io_study", lambda *a, **k: real_study(*a, **{**k, "run": FakeNcu()}))


def test_profile_prints_timing_model_trace_and_ncu_tables(fake_gpu, tmp_path, monkeypatch):
    monkeypatch.setattr(prof, "kernel_resources", lambda provider: [
        {"kernel": "fwd", "function": "_attn_fwd", "tiles": "BLOCK_M=128 BLOCK_N=64", "warps": 8, "stages": 3,
         "regs": 168, "spills": 0, "shared_bytes": 98304, "autotuned": True, "chosen": True}])
    result = invoke("profile", "--provider", "torch-eager", "--seqlen", "1024", "--headdim", "64", "--ncu",
                    "--trace", tmp_path / "trace.json", "--out", tmp_path / "ncu", "--trace-calls", "2")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for expected in ("profile torch-eager fwd fp16 b16 h32 s1024 d64", "TFLOP/s", "HBM model (standard)",
                     "Triton kernels", "_attn_fwd", "trace.json", "Nsight Compute, per call",
                     "all kernels", "DRAM measured 1.000 GB per call vs model", "ncu report:"):
        assert expected in text, expected
    assert (tmp_path / "trace.json").exists() and (tmp_path / "ncu" / "report.ncu-rep").exists()


def test_a_profiled_variant_counts_its_attended_pairs_and_claims_no_dense_hbm_model(fake_gpu):
    from fa2bench.core.flops import attention_flops

    point = prof.plan_point(provider="torch-eager", seqlen=[1024], headdim=[64], batch=[1], heads=[2], causal="on",
                            variant="window128")
    measured = prof.measure(point)
    assert measured.flops == attention_flops(1, 2, 1024, 1024, 64, True, "fwd", "window128")
    assert measured.flops < attention_flops(1, 2, 1024, 1024, 64, True, "fwd") / 3
    assert measured.model_bytes is None


def test_profile_io_prints_the_study_table(fake_gpu, tmp_path):
    result = invoke("profile-io", "--provider", "naive,fa2", "--seqlen", "1024,2048", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "DRAM bytes per call: measured (ncu) vs model" in text and "io_study.png" in text
    assert len(iostudy.load_study(tmp_path)) == 4


def test_a_timed_out_ncu_takes_the_profiled_process_with_it(tmp_path):
    pid_file = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):
        ncu.run_in_group(["bash", "-c", f"sleep 30 & echo $! > {pid_file}; wait"], timeout=0.5)
    status = Path(f"/proc/{int(pid_file.read_text())}/status")
    for _ in range(50):  # the kill is asynchronous: give it a moment
        if not status.exists() or "\tZ" in status.read_text():  # gone, or a zombie nobody has reaped yet
            break
        time.sleep(0.02)
    else:
        pytest.fail("the profiled process outlived the timeout")


# --- on a GPU ------------------------------------------------------------------------------------------

GPU_POINT = Point("fa2", "fwd", "fp16", Shape(1, 4, 4, 1024, 1024, 128, False))


@pytest.mark.gpu
def test_on_a_gpu_fa2s_resources_and_trace_are_read(tmp_path):
    call, grads = prof.prepare(GPU_POINT)
    rows = prof.kernel_resources("fa2")
    # the variant of the config that ran (more when this worker ran fa2 at other shapes before)
    fwd = [r for r in rows if r["kernel"] == "fwd" and "BLOCK_D=128" in r["tiles"]]
    assert fwd, prof.kernel_resources("fa2", chosen_only=False)
    for r in fwd:
        assert r["regs"] > 0 and r["shared_bytes"] > 0 and r["spills"] is not None and "BLOCK_M=" in r["tiles"]
    table = prof.trace(call, tmp_path / "trace.json", calls=3)
    assert any("_attn_fwd" in r["name"] and r["per_call"] == 1 for r in table), table


@pytest.mark.gpu
def test_on_a_gpu_ncu_measures_at_least_the_compulsory_bytes(tmp_path):
    if ncu.find_ncu() is None:
        pytest.skip("ncu is not on PATH")
    result = ncu.run_ncu(GPU_POINT, tmp_path, timeout_s=300)
    s = GPU_POINT.shape
    inputs = 2 * s.batch * s.headdim * (s.heads * s.seqlen_q + 2 * s.kv_heads * s.seqlen_k)
    assert result.summary["kernels_per_call"] == 1
    # Q, K and V are read from DRAM at least once. O's writes may not reach DRAM before the kernel ends: the L2
    # is write-back, and a 1 MiB output fits in it many times over (seen on an H100: reads only).
    assert result.summary["dram_read_bytes"] >= 0.9 * inputs
    assert result.summary["dram_bytes"] <= 1.1 * iomodel.hbm_bytes("fa2", GPU_POINT.shape, "fwd", "fp16",
                                                                   config=result.config)


def test_a_real_ncu_export_from_the_h100_parses():
    """tests/data/ncu-h100-fa2-fwd-s4096-d128.csv: what `fa2bench profile --provider fa2 --seqlen 4096
    --headdim 128 --mode fwd --ncu` exported on the lent H100 (ncu 2025.3.1), one _attn_fwd launch."""
    text = (Path(__file__).parent / "data" / "ncu-h100-fa2-fwd-s4096-d128.csv").read_text()
    (kernel,) = ncu.parse_ncu_csv(text, METRICS)
    assert kernel["kernel"] == "_attn_fwd"
    assert 0.19e9 < kernel["dram_read_bytes"] < 0.21e9  # Q, K, V of b4 h16 s4096 d128 fp16: 0.201 GB
    assert 0 < kernel["l2_hit_pct"] <= 100 and 0 < kernel["tensor_pct"] <= 100


def test_profile_plans_exactly_one_point_with_the_paper_defaults():
    point = prof.plan_point(provider="fa2", seqlen="1024", causal="on")
    assert (point.provider, point.shape.seqlen_q, point.shape.headdim, point.shape.causal) == ("fa2", 1024, 128, True)
    with pytest.raises(SpecError, match="takes one point; these options give 2"):
        prof.plan_point(provider="fa2", causal="both")
