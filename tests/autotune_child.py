"""Child process of test_autotune_cache.py: Triton's real on-disk autotune lookup for fa2's forward autotuner, as
fa2bench wraps it, on a CPU machine. Triton compiled for real (not the interpreter, which turns cache_results off);
the driver is told the target is an H100 (sm_90), since there is no GPU to ask; the search is a stand-in that
"times" three configs (no GPU to time on). Prints one JSON line per step.

    python tests/autotune_child.py search                 # one lookup
    python tests/autotune_child.py lookup-other-clear     # a lookup, one as another GPU, clear, a lookup again
    python tests/autotune_child.py warmups                # lookups at the default warm-up, at 200 ms twice, default
"""
import json
import os
import sys
import types
import warnings

os.environ.pop("TRITON_INTERPRET", None)
warnings.filterwarnings("ignore", message="triton was imported before fa2bench")

import triton.runtime.autotuner as triton_autotuner  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from fa2bench import kernels  # noqa: E402
from fa2bench.kernels import _common, flash2  # noqa: E402

triton_autotuner.driver = types.SimpleNamespace(
    active=types.SimpleNamespace(get_current_target=lambda: GPUTarget("cuda", 90, 32)))
TUNER = flash2._AUTOTUNED["fwd"]
KEY = (64, True, True, True, True, "tf32", False, 4096, 4096, "torch.float16", "torch.float16", "torch.float16",
       "torch.float32", "torch.float32", "torch.float16")
CONFIGS = TUNER.configs[:3]
FAKE_MS = (2.0, 1.0, 3.0)  # the second config "wins"


def lookup() -> dict:
    searched = []

    def search():  # what Triton's benchmark() leaves behind
        searched.append(True)
        TUNER.configs_timings = {c: [ms, ms, ms] for c, ms in zip(CONFIGS, FAKE_MS)}
        TUNER.cache[KEY] = CONFIGS[1]

    hit = TUNER.check_disk_cache(KEY, CONFIGS, search)
    cfg = TUNER.cache[KEY]
    return {"hit": hit, "searched": bool(searched), "config": _common.describe_config(cfg),
            "from_disk": any(cfg is c for c in TUNER.from_disk), "cache_results": TUNER.cache_results}


def main(step: str) -> None:
    if step == "search":
        print(json.dumps(lookup()))
        return
    if step == "warmups":
        for warmup in ("", "200", "200", ""):
            os.environ[_common.TUNE_WARMUP_ENV] = warmup
            print(json.dumps(lookup()))
        return
    print(json.dumps(lookup()))
    real = _common.machine_key
    _common.machine_key = lambda: "NVIDIA H200 sm_90 132 SMs, torch 0 cuda 0"  # same arch, another GPU
    print(json.dumps(lookup()))
    _common.machine_key = real
    print(json.dumps({"removed": kernels.clear_autotune_cache()}))
    print(json.dumps(lookup()))


if __name__ == "__main__":
    main(sys.argv[1])
