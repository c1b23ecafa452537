"""fa2bench: how fast is attention on my GPU, and why? Built around FlashAttention-2 (Dao, 2023).

The public API, imported lazily (PEP 562): ``import fa2bench`` and reading, plotting, reporting and comparing
a run never import torch or Triton; ``sweep`` and ``register_provider`` do, when first used.

    import fa2bench
    run = fa2bench.sweep(seqlen=[128], headdim=[64], provider=["fa2"], mode=["fwd"])
    fa2bench.plot_run(run)
    fa2bench.report(run)
    fa2bench.compare_runs("results/a", "results/b").counts
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "sweep": "fa2bench.api", "Run": "fa2bench.api", "plot_run": "fa2bench.api", "report": "fa2bench.api",
    "compare_runs": "fa2bench.api", "export_run": "fa2bench.api", "find_run": "fa2bench.api",
    "list_runs": "fa2bench.api",
    "load_run": "fa2bench.run.results", "SweepSpec": "fa2bench.core.presets", "SpecError": "fa2bench.core.presets",
    "register_provider": "fa2bench.core.providers",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fa2bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
