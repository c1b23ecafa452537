"""Correctness at the start of training: with the same seed, weights and batch, the model's loss and gradients
through each provider agree with a float64 reference as closely as the attention gate demands.

The gate is ``reference.judge``: a provider's error against the float64 model (attention by
``attention_ref(upcast=True)``) may be at most ``FACTOR`` times the error of the same model with plain
low-precision PyTorch attention (``torch-eager``), plus the dtype's rounding floor. Checked tensors: the loss,
the gradient of the first block's QKV projection (every later attention backward flows into it) and all
gradients flattened together; errors are relative to the largest magnitude of each reference tensor.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from fa2bench.core import providers
from fa2bench.e2e.configs import GPTConfig
from fa2bench.e2e.model import GPT
from fa2bench.core.presets import Shape
from fa2bench.core.reference import Verdict, attention_ref, judge

BASELINE = "torch-eager"


def autocast(device: str):
    """bf16 mixed precision on a GPU; plain fp32 on the CPU (the Triton interpreter's bf16 dot is wrong)."""
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_dtype(device: str) -> str:
    return "bf16" if device == "cuda" else "fp32"


def attention_shape(config: GPTConfig, seqlen: int, batch: int) -> Shape:
    return Shape(batch=batch, heads=config.heads, kv_heads=config.heads, seqlen_q=seqlen, seqlen_k=seqlen,
                 headdim=config.headdim, causal=True)


def make_attention(provider: str, config: GPTConfig, seqlen: int, batch: int):
    """The provider's ``fn(q, k, v)`` for this model's causal self-attention (may raise providers.Unsupported)."""
    return providers.get(provider).make(attention_shape(config, seqlen, batch))


def _loss_and_grads(model: GPT, tokens, targets, device: str, low_precision: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with autocast(device) if low_precision else contextlib.nullcontext():
        loss = model(tokens, targets)
    loss.backward()
    grads = [p.grad.detach().double().flatten() for p in model.parameters()]
    return {"loss": loss.detach().double().reshape(1),
            "grad_qkv0": model.blocks[0].attn.qkv.weight.grad.detach().double(),
            "grads": torch.cat(grads)}


class StartCheck:
    """The float64 reference and the low-precision baseline of one (config, seqlen, batch), computed once;
    ``verdict(provider)`` runs the same step with the provider's attention and gates it."""

    def __init__(self, config: GPTConfig, seqlen: int, batch: int, device: str, seed: int = 0):
        self.config, self.seqlen, self.batch, self.device = config, seqlen, batch, device
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, config.vocab, (batch, seqlen + 1), generator=gen).to(device)
        self.inputs, self.targets = tokens[:, :-1], tokens[:, 1:]
        torch.manual_seed(seed)
        with torch.device(device):
            ref_model = GPT(config, seqlen, functools.partial(attention_ref, causal=True, upcast=True))
        self.state = {k: v.clone() for k, v in ref_model.state_dict().items()}
        self.refs = _loss_and_grads(ref_model.double(), self.inputs, self.targets, device, low_precision=False)
        del ref_model
        self.baselines = self._low_precision(BASELINE)
        self.dtype = torch.bfloat16 if run_dtype(device) == "bf16" else torch.float32

    def _low_precision(self, provider: str) -> dict[str, torch.Tensor]:
        with torch.device(self.device):
            model = GPT(self.config, self.seqlen, make_attention(provider, self.config, self.seqlen, self.batch))
        model.load_state_dict(self.state)
        return _loss_and_grads(model, self.inputs, self.targets, self.device, low_precision=True)

    def verdict(self, provider: str) -> Verdict:
        return judge(self._low_precision(provider), self.refs, self.baselines, self.dtype)


def check_start(config: GPTConfig, seqlen: int, batch: int, names, device: str,
                seed: int = 0) -> dict[str, Verdict]:
    """A verdict per provider in ``names`` for one forward and backward from the same initial weights."""
    check = StartCheck(config, seqlen, batch, device, seed)
    return {name: check.verdict(name) for name in names}
