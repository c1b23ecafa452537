"""Model FLOPs of a training step, by the formula the FlashAttention-2 paper uses for its Table 1.

Dao (2023), FlashAttention-2, arXiv:2307.08691, Section 4.2, following Megatron-LM (Narayanan et al., 2021):
FLOPs per sequence (forward and backward) = 6 · seqlen · number of params + 12 · number of layers · hidden dim
· seqlen². The first term is the weight-input multiplications (2 FLOPs per multiply-add, forward once and
backward twice), the second attention's two matmuls (QKᵀ and PV), also forward and backward. The paper keeps
the attention term whole although a causal mask needs about half of it ("we choose to follow the formula from
the literature"), and recomputation (gradient checkpointing, FlashAttention's own backward) is not counted:
these are *model* FLOPs, the same for every provider, so TFLOP/s compare time alone.

"number of params" here is every parameter but the learned position embeddings (a table lookup, no
multiplication); the token embedding counts, because it is also the (tied) output layer, a
hidden x vocab matmul per token.
"""
from __future__ import annotations

from fa2bench.e2e.configs import GPTConfig


def matmul_params(config: GPTConfig) -> int:
    """The parameters that take part in a multiplication: all but the position embeddings."""
    return config.params(seqlen=0)


def flops_per_sequence(config: GPTConfig, seqlen: int) -> int:
    """6 · seqlen · params + 12 · layers · hidden · seqlen² (forward + backward, one sequence)."""
    return 6 * seqlen * matmul_params(config) + 12 * config.layers * config.hidden * seqlen**2


def flops_per_step(config: GPTConfig, seqlen: int, sequences: int) -> int:
    """Model FLOPs of one optimizer step over ``sequences`` sequences of ``seqlen`` tokens."""
    return sequences * flops_per_sequence(config, seqlen)
