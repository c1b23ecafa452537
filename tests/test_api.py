"""The public API: imported lazily (no torch for reading, plotting, reporting, comparing, exporting), a sweep
from a notebook cell on the CPU interpreter, and the CLI's export."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import fa2bench
from fa2bench import api
from fa2bench.core import providers
from fa2bench.cli import app
from fa2bench.core.presets import SpecError
from fa2bench.core.reference import attention_ref
from tests import fresh
from tests.synthetic import REPO, copy_of_committed_run, results_frame, write_run


def python(code: str, cwd=REPO) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_every_public_name_resolves():
    assert set(fa2bench.__all__) <= set(dir(fa2bench))
    for name in fa2bench.__all__:
        assert getattr(fa2bench, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fa2bench.nope  # noqa: B018


def test_import_and_load_run_import_no_torch():
    assert python("import sys, fa2bench; fa2bench.load_run; print('torch' in sys.modules)") == "False"


@pytest.mark.slow  # draws every figure of a real run
def test_reading_plotting_reporting_comparing_and_exporting_a_run_import_neither_torch_nor_triton(tmp_path):
    run_dir = copy_of_committed_run(tmp_path)
    code = (f"import sys, fa2bench; run = fa2bench.load_run({str(run_dir)!r}); "
            "fa2bench.plot_run(run, kinds=['memory']); "
            f"fa2bench.report({str(run_dir)!r}); fa2bench.compare_runs(run, run).counts; "
            "fa2bench.export_run(run); print('torch' in sys.modules, 'triton' in sys.modules)")
    assert python(code) == "False False"
    assert (run_dir / "report.md").exists() and list((run_dir / "figures").glob("throughput-*.png"))


def test_help_imports_no_torch_and_is_quick():
    start = time.perf_counter()
    out = python("import sys; from typer.testing import CliRunner; from fa2bench.cli import app; "
                 "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0 and 'sweep' in r.output; "
                 "print('torch' in sys.modules)")
    assert out == "False"
    assert time.perf_counter() - start < 10  # about 0.4 s on an idle machine; loose for a busy one


def test_the_notebook_cell_runs_a_sweep_on_the_cpu_interpreter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = fa2bench.sweep(seqlen=[128], headdim=[64], provider=["fa2"], mode=["fwd"])
    assert run.complete and run.path.parent == Path("results")  # results/<time>-cpu
    assert (tmp_path / run.path / "results.csv").exists() and run.meta["complete"] is True
    frame = run.frame
    assert list(frame["provider"]) == ["fa2", "fa2"] and set(frame["causal"]) == {False, True}
    assert (frame["status"] == "ok").all(), frame[["status", "error"]].to_string()
    assert (frame["seqlen_q"] == 128).all() and (frame["headdim"] == 64).all() and (frame["ms"] > 0).all()


@pytest.fixture
def recorder(monkeypatch):
    """A CPU provider that records the shapes it is made for."""
    made = []

    def make(shape):
        made.append(shape.seqlen_q)
        return lambda q, k, v: attention_ref(q, k, v, causal=shape.causal, upcast=False)

    monkeypatch.setitem(providers.REGISTRY, "recorder", providers.Provider(
        name="recorder", label="recorder", color="k", kind="baseline", description="test double", make=make,
        devices=frozenset({"cpu", "cuda"})))
    return made


TINY = dict(headdim=16, batch=1, heads=2, causal="off", mode="fwd", dtype="fp32", rep_ms=1, warmup_ms=0,
            isolate=False)  # test doubles are registered in this process only


def test_sweep_calls_on_point_and_resume_runs_only_what_is_missing(tmp_path, recorder):
    seen = []
    first = fa2bench.sweep(seqlen="16", provider="recorder", out=tmp_path / "run", **TINY,
                           on_point=lambda point, row: seen.append((point.shape.seqlen_q, row["status"])))
    assert seen == [(16, "ok")] and recorder == [16] and first.complete
    again = fa2bench.sweep(seqlen=[16, 33], provider=["recorder"], out=tmp_path / "run", resume=True, extend=True,
                           **TINY)  # another sweep: extends the run explicitly
    assert recorder == [16, 33] and len(again.frame) == 2
    assert len(again.meta["resumed"]) == 1 and again.meta["started_utc"] == first.meta["started_utc"]
    assert [list(s["seqlens"]) for s in again.meta["sweeps"]] == [[16], [16, 33]]
    assert api.Run.load(tmp_path / "run").frame["seqlen_q"].tolist() == [16, 33]


@pytest.mark.parametrize("overrides, message", [
    ({"seqlen": [0]}, "--seqlen must be positive"),
    ({"provider": ["nope"]}, "unknown 'nope'"),
    ({"batch": [2], "tokens": 4096}, "at most one of --batch and --tokens"),
    ({"resume": True}, "--resume needs --out"),
    ({"out": "run", "extend": True}, "--extend needs --resume"),
    ({"seqlen": [2**31]}, "beyond what any GPU can hold"),
    ({"point_timeout": -1}, "--point-timeout must be a positive number"),
    ({"rep_ms": 0}, "--rep-ms > 0"),
    ({"colour": "red"}, "unknown field 'colour'"),
])
def test_a_sweep_that_cannot_run_is_one_spec_error_before_anything_runs(tmp_path, overrides, message):
    with pytest.raises(SpecError, match=message):
        fa2bench.sweep(**{"seqlen": [16], "provider": ["torch-eager"], **overrides})
    assert not (tmp_path / "results").exists()


def test_providers_registered_outside_fa2bench_reach_the_worker_or_run_in_process(recorder, monkeypatch):
    """A GPU sweep isolates points in a worker process, which imports the modules of registered providers; one
    defined in __main__ (a notebook's) cannot be imported there, so it runs in-process unless isolation is
    asked for, which is then one clear error."""
    opts = {"isolate": None}
    api._isolation(opts, ("fa2", "recorder"), "cuda")
    assert opts == {"isolate": True, "plugins": (__name__,)}
    monkeypatch.setattr(providers.get("recorder").make, "__module__", "__main__")
    opts = {"isolate": None}
    api._isolation(opts, ("fa2", "recorder"), "cuda")
    assert opts == {"isolate": False, "plugins": ()}
    with pytest.raises(SpecError, match="recorder is defined in __main__.*--no-isolate"):
        api._isolation({"isolate": True}, ("recorder",), "cuda")


def test_register_provider_adds_to_the_one_registry(monkeypatch):
    monkeypatch.setattr(providers, "REGISTRY", dict(providers.REGISTRY))
    fa2bench.register_provider(lambda shape: None, name="mine", label="Mine", color="#000000", kind="baseline",
                               description="a user's provider")
    assert providers.get("mine").label == "Mine" and "mine" in providers.names()
    with pytest.raises(ValueError, match="registered twice"):
        fa2bench.register_provider(lambda shape: None, name="mine", label="x", color="k", kind="baseline",
                                   description="again")


def test_export_github_benchmark_has_one_entry_per_ok_point(tmp_path):
    frame = results_frame(providers=("fa2", "naive", "flash-attn"), seqlens=(512, 1024), headdims=(64,),
                          modes=("fwd",))
    entries = fa2bench.export_run(frame)
    ok = frame[frame["status"] == "ok"]
    assert len(entries) == len(ok) and {tuple(sorted(e)) for e in entries} == {
        ("extra", "name", "range", "unit", "value")}
    first = ok.iloc[0]
    assert entries[0]["value"] == first["ms"] and entries[0]["unit"] == "ms"
    assert entries[0]["name"] == "fa2 fwd fp16 b32 h32 s512 d64"
    assert len({e["name"] for e in entries}) == len(entries)  # one series per point
    assert fa2bench.export_run(frame, metric="tflops")[0]["value"] == first["tflops"]
    with pytest.raises(ValueError, match="unknown export format"):
        fa2bench.export_run(frame, format="csv")


def test_export_command_writes_the_json_or_prints_it(tmp_path):
    run_dir = write_run(results_frame(providers=("fa2",), seqlens=(512,), headdims=(64,), modes=("fwd",)),
                        tmp_path / "run")
    printed = CliRunner().invoke(app, ["export", str(run_dir)])
    assert printed.exit_code == 0, printed.output
    assert len(json.loads(printed.output)) == 2  # causal and not
    written = CliRunner().invoke(app, ["export", str(run_dir), "--format", "github-benchmark", "--metric",
                                       "tflops", "--out", str(tmp_path / "bench.json")])
    assert written.exit_code == 0, written.output
    assert json.loads((tmp_path / "bench.json").read_text())[0]["unit"] == "TFLOP/s"
    missing = CliRunner().invoke(app, ["export", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "Traceback" not in missing.output


@pytest.mark.slow  # draws every figure of a real run
def test_a_committed_run_replots_identically(tmp_path):
    """The acceptance check of the library refactor: report.md and every figure of a committed run, redrawn
    from its results alone, equal what is committed (PNG pixels compared, not bytes: metadata may differ)."""
    import matplotlib.image
    import numpy as np

    from tests.synthetic import COMMITTED_RUN

    copy = tmp_path / COMMITTED_RUN.name
    for name in ("results.csv", "results.parquet", "meta.json"):
        copy.mkdir(exist_ok=True)
        (copy / name).write_bytes((COMMITTED_RUN / name).read_bytes())
    report = fa2bench.report(copy)
    assert report.read_text() == (COMMITTED_RUN / "report.md").read_text()
    committed = sorted(p.name for p in (COMMITTED_RUN / "figures").iterdir())
    assert sorted(p.name for p in (copy / "figures").iterdir()) == committed
    for name in committed:
        old, new = (matplotlib.image.imread(folder / "figures" / name) for folder in (COMMITTED_RUN, copy))
        assert old.shape == new.shape and np.array_equal(old, new), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the GPU-less path")
def test_without_a_gpu_the_library_switches_on_the_interpreter_before_triton_is_imported(tmp_path):
    """No TRITON_INTERPRET in the environment and no test set-up: the sweep itself must set it in time."""
    code = ("import os, sys, fa2bench; assert 'triton' not in sys.modules; "
            f"run = fa2bench.sweep(seqlen=[32], headdim=[16], provider=['fa2'], mode=['fwd'], causal='off', "
            f"rep_ms=1, warmup_ms=0, out={str(tmp_path / 'run')!r}); "
            "print(run.frame['status'].tolist(), os.environ.get('TRITON_INTERPRET'))")
    done = fresh.python("-c", code, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['ok'] 1"
