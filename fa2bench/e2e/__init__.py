"""End-to-end training throughput: a GPT trained with each attention provider (the FlashAttention-2 paper's
Table 1). ``run_e2e`` runs a spec into a results folder; ``figures`` draws and tabulates it."""
from fa2bench.e2e.configs import MODELS, ConfigError, GPTConfig
from fa2bench.e2e.train import E2EOptions, E2ESpec, run_e2e

__all__ = ["MODELS", "ConfigError", "GPTConfig", "E2EOptions", "E2ESpec", "run_e2e"]
