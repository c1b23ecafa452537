"""Named GPT model configurations, and the FlashAttention-2 paper's end-to-end numbers to compare with.

The paper's sizes (Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning",
arXiv:2307.08691, Section 4.2 and Table 1) are GPT3-1.3B and GPT3-2.7B trained with context 2k and 8k. Their
shapes are those of the paper's training code (Dao-AILab/flash-attention, ``training/configs/experiment/pile/``):
``gpt3xl-flash.yaml`` (1.3B: 24 layers, hidden 2048, 16 heads) and ``gpt3-2.7B-flash-hdim128.yaml`` (2.7B: 32
layers, hidden 2560, 20 heads, "Headdim 128 is faster than headdim 80"), both with head dim 128. The tiny
configurations are for CPU tests (the Triton interpreter) and GPU smoke runs.
"""
from __future__ import annotations

from dataclasses import dataclass

from fa2bench.core.presets import SpecError

# GPT-2's BPE vocabulary (50257) padded up to a multiple of 64, a tensor-core-friendly size (nanoGPT's choice).
GPT2_VOCAB_PADDED = 50304


class ConfigError(SpecError):
    """An unknown model name or an impossible configuration: a usage error (a ``SpecError``, as for sweeps)."""


@dataclass(frozen=True)
class GPTConfig:
    name: str
    layers: int
    hidden: int
    heads: int
    vocab: int = GPT2_VOCAB_PADDED
    mlp_ratio: int = 4

    @property
    def headdim(self) -> int:
        return self.hidden // self.heads

    def validate(self) -> None:
        if min(self.layers, self.hidden, self.heads, self.vocab, self.mlp_ratio) < 1:
            raise ConfigError(f"model {self.name}: every size must be positive")
        if self.hidden % self.heads:
            raise ConfigError(f"model {self.name}: hidden {self.hidden} is not a multiple of heads {self.heads}")

    def params(self, seqlen: int = 0) -> int:
        """Parameters: token embedding (tied with the output layer), ``seqlen`` learned positions, and per layer
        two LayerNorms, the QKV and output projections and the MLP (with biases), plus the final LayerNorm."""
        h, f = self.hidden, self.mlp_ratio * self.hidden
        per_layer = 2 * 2 * h + (3 * h * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h)
        return self.vocab * h + seqlen * h + self.layers * per_layer + 2 * h

    @classmethod
    def from_name(cls, name: str) -> "GPTConfig":
        if name not in MODELS:
            raise ConfigError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
        return MODELS[name]


MODELS: dict[str, GPTConfig] = {c.name: c for c in (
    GPTConfig("gpt-1.3b", layers=24, hidden=2048, heads=16),
    GPTConfig("gpt-2.7b", layers=32, hidden=2560, heads=20),
    GPTConfig("gpt-small", layers=4, hidden=512, heads=4),  # head dim 128 like the paper's models: GPU smoke runs
    GPTConfig("gpt-tiny", layers=2, hidden=64, heads=4, vocab=64),  # CPU tests (head dim 16)
)}

# Table 1 of the paper: training speed in TFLOP/s per A100 (8 x A100 80GB SXM, bf16), by the FLOPs formula in
# ``fa2bench.e2e.flops``. Columns: without FlashAttention (standard attention), FlashAttention, FlashAttention-2.
PAPER_TABLE1_SOURCE = "Dao (2023), FlashAttention-2, arXiv:2307.08691, Table 1 (8 x A100 80GB SXM)"
PAPER_TABLE1_COLUMNS = ("standard", "FlashAttention", "FlashAttention-2")
PAPER_TABLE1: dict[tuple[str, int], tuple[float, float, float]] = {
    ("gpt-1.3b", 2048): (142.0, 189.0, 196.0),
    ("gpt-1.3b", 8192): (72.0, 170.0, 220.0),
    ("gpt-2.7b", 2048): (149.0, 189.0, 205.0),
    ("gpt-2.7b", 8192): (80.0, 175.0, 225.0),
}
