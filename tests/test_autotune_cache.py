"""Autotuning once, not every run (issue 21): fa2bench's autotuners keep their decisions in Triton's on-disk cache,
under Triton's key plus the GPU model and torch (``_common.machine_key``), and a row says whether its configs came
from there (``config_cached``).

On the CPU, Triton's interpreter turns ``cache_results`` off and fa2bench's launcher skips the search, so the disk
round trip is tested in child processes (tests/autotune_child.py) that compile for real and call Triton's own
lookup with a stand-in search. What only a GPU shows: that a real launch takes this path and that the cached
config times as the searched one did (the GPU test at the end).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fa2bench.kernels import _common, flash2
from fa2bench.run.results import COLUMNS

CHILD = Path(__file__).with_name("autotune_child.py")


def child(step: str, cache_dir: Path) -> list[dict]:
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache_dir)}
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, str(CHILD), step], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_a_second_process_reads_the_decision_from_disk_and_another_gpu_does_not(tmp_path):
    [first] = child("search", tmp_path)
    assert first["cache_results"] and first["searched"] and not first["hit"] and not first["from_disk"]
    second, other_gpu, cleared, after_clear = child("lookup-other-clear", tmp_path)
    assert second["hit"] and not second["searched"] and second["from_disk"]
    assert second["config"] == first["config"]
    assert other_gpu["searched"] and not other_gpu["hit"]  # same sm_90 target, another GPU model: its own entry
    assert cleared == {"removed": 2}
    assert after_clear["searched"] and not after_clear["hit"]
    assert list(tmp_path.glob("*/_attn_fwd_kernel.autotune.json"))  # written again by the last search


def test_a_decision_made_with_another_tuner_warm_up_is_its_own(tmp_path):
    default, hot, hot_again, default_again = child("warmups", tmp_path)
    assert default["searched"] and hot["searched"] and not hot["hit"]  # 200 ms: not the 5 ms decision
    assert hot_again["hit"] and default_again["hit"] and not default_again["searched"]


@pytest.mark.parametrize("text, ms", [("", 5), (" 200 ", 200.0), ("0", 0.0)])
def test_the_tuner_warm_up_is_5_ms_unless_the_environment_says(monkeypatch, text, ms):
    monkeypatch.setenv(_common.TUNE_WARMUP_ENV, text)
    assert _common.tune_warmup_ms() == ms


@pytest.mark.parametrize("text", ["fast", "-1"])
def test_a_tuner_warm_up_it_cannot_use_is_one_clear_error(monkeypatch, text):
    monkeypatch.setenv(_common.TUNE_WARMUP_ENV, text)
    with pytest.raises(ValueError, match="FA2_TUNE_WARMUP_MS must be"):
        _common.tune_warmup_ms()


def test_every_fa2bench_autotuner_persists_its_decisions():
    from fa2bench.kernels import flash1, ladder, naive

    tuners = [*flash2._AUTOTUNED.values(), *ladder._AUTOTUNED.values(), *flash1._AUTOTUNED.values(),
              naive._matmul_autotuned]
    for tuner in tuners:
        assert tuner in _common._TUNERS
        assert tuner.check_disk_cache.__qualname__.startswith("_persist"), tuner.base_fn.__name__


def test_machine_key_names_torch_and_the_device():
    key = _common.machine_key()
    assert torch.__version__ in key
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name() in key


def test_all_cached_ignores_launches_that_were_not_autotuned():
    assert _common.all_cached([]) is None
    assert _common.all_cached([None, None]) is None
    assert _common.all_cached([True, None, True]) is True
    assert _common.all_cached([True, False]) is False


def test_rows_have_a_config_cached_column_and_the_interpreter_leaves_it_empty():
    """Under the interpreter the first pruned config runs without a search: nothing was autotuned (None)."""
    from tests.conftest import DEVICE

    assert COLUMNS[COLUMNS.index("config") + 1] == "config_cached"
    q, k, v = (torch.randn(1, 2, 33, 64, dtype=torch.float16, device=DEVICE) for _ in range(3))
    flash2.flash2_attention(q, k, v)
    if DEVICE == "cpu":
        assert flash2.config_cached() is None


@pytest.mark.gpu
def test_gpu_second_process_reuses_the_config_without_searching(tmp_path):
    """GPU: the same fa2 point in two fresh processes sharing a cache dir: the first searches, the second reads the
    config from disk (config_cached True) and picks the same one."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    code = ("import json, torch; from fa2bench.kernels import flash2; "
            "q, k, v = (torch.randn(2, 16, 2048, 64, device='cuda', dtype=torch.float16, requires_grad=True) "
            "for _ in range(3)); o = flash2.flash2_attention(q, k, v, causal=True); o.sum().backward(); "
            "print(json.dumps([flash2.last_config(), flash2.config_cached()]))")
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                      timeout=600, check=True).stdout.splitlines()[-1]) for _ in range(2)]
    assert runs[0][1] is False and runs[1][1] is True
    assert runs[0][0] == runs[1][0]


def test_flexattention_cannot_move_the_cache_folder_under_our_tuners(tmp_path):
    """TorchInductor points TRITON_CACHE_DIR at its own folder when it is unset; after importing the kernels it is
    set to Triton's own folder, so a flex point in the middle of a sweep leaves the autotune lookups where they were."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_CACHE_DIR"}
    env["HOME"] = str(tmp_path)
    code = ("import fa2bench.kernels._common, triton\n"
            "from torch._inductor.runtime.cache_dir_utils import triton_cache_dir\n"
            "print(triton_cache_dir(0)); print(triton.knobs.cache.dir)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    inductor_dir, triton_dir = out.stdout.split()
    assert inductor_dir == triton_dir == str(tmp_path / ".triton" / "cache")
