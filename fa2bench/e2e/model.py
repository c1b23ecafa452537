"""A compact GPT-style decoder whose attention is any provider of the registry.

Pre-LayerNorm blocks (x + attn(ln(x)), x + mlp(ln(x))), causal self-attention through ``fn(q, k, v) -> o`` in
layout (batch, heads, seq, headdim) (``providers.get(name).make(shape)``; fa2bench's Triton kernels are autograd
functions, so they train), a GELU MLP of 4x the hidden size, learned position embeddings, a final LayerNorm and
an output layer tied to the token embedding. No dropout: a throughput benchmark, and runs stay deterministic.
Initialisation as in GPT-2: N(0, 0.02), residual projections scaled by 1/sqrt(2 · layers).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fa2bench.e2e.configs import GPTConfig

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, attn: AttnFn):
        super().__init__()
        self.heads, self.headdim = config.heads, config.headdim
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.proj = nn.Linear(config.hidden, config.hidden)
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seqlen, hidden = x.shape
        qkv = self.qkv(x).view(batch, seqlen, 3, self.heads, self.headdim).permute(2, 0, 3, 1, 4)
        o = self.attn(qkv[0], qkv[1], qkv[2])  # (batch, heads, seq, headdim) views: no copies
        return self.proj(o.transpose(1, 2).reshape(batch, seqlen, hidden))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, attn: AttnFn):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.hidden)
        self.attn = CausalSelfAttention(config, attn)
        self.ln2 = nn.LayerNorm(config.hidden)
        self.fc = nn.Linear(config.hidden, config.mlp_ratio * config.hidden)
        self.out = nn.Linear(config.mlp_ratio * config.hidden, config.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, seqlen: int, attn: AttnFn, checkpointing: bool = False):
        super().__init__()
        config.validate()
        self.config, self.seqlen, self.checkpointing = config, seqlen, checkpointing
        self.tok = nn.Embedding(config.vocab, config.hidden)
        self.pos = nn.Embedding(seqlen, config.hidden)
        self.blocks = nn.ModuleList(Block(config, attn) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")):
                nn.init.ones_(p)
            elif p.dim() == 1:  # biases
                nn.init.zeros_(p)
            else:
                residual = name.endswith(("attn.proj.weight", "out.weight"))
                std = 0.02 / math.sqrt(2 * self.config.layers) if residual else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (batch, seq, vocab), or the mean next-token cross-entropy when ``targets`` are given."""
        x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.checkpointing and self.training else block(x)
        logits = F.linear(self.ln_f(x), self.tok.weight)  # tied output layer
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
