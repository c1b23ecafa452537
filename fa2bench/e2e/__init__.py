"""End-to-end training throughput: a GPT trained with each attention provider (the FlashAttention-2 paper's
Table 1). ``plan_e2e`` resolves the options (``fa2bench e2e``'s), ``execute_e2e`` runs the plan (alone, as a
torchrun rank, or launching the ranks), ``run_e2e`` runs a spec into a results folder in this process; ``figures``
draws and tabulates it.

The training names are imported lazily, so that plots and reports can import ``fa2bench.e2e.figures`` without
importing the runner, torch's training stack or a kernel.
"""
from fa2bench.e2e.configs import MODELS, ConfigError, GPTConfig

_TRAIN = ("E2EOptions", "E2EPlan", "E2ESpec", "plan_e2e", "run_e2e")
__all__ = ["MODELS", "ConfigError", "GPTConfig", *_TRAIN, "execute_e2e"]


def __getattr__(name):
    if name in _TRAIN:
        from fa2bench.e2e import train

        return getattr(train, name)
    if name == "execute_e2e":
        from fa2bench.e2e.execute import execute_e2e

        return execute_e2e
    raise AttributeError(f"module 'fa2bench.e2e' has no attribute {name!r}")
