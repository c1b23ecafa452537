"""Shared cases for the kernel tests: the kernels by provider name and input makers."""
import torch

from fa2bench.kernels import flash1, flash1_attention, flash2, flash2_attention, naive, naive_attention

KERNELS = {"naive": naive_attention, "fa1": flash1_attention, "fa2": flash2_attention}
MODULES = {"naive": naive, "fa1": flash1, "fa2": flash2}


def shape_id(shape):
    b, h, hkv, sq, sk, d = shape
    return f"b{b}h{h}kv{hkv}-q{sq}k{sk}-d{d}"


def make_qkv(shape, dtype, device, bshd=False):
    """Fresh N(0, 1) inputs; with ``bshd`` they are (b, s, h, d) tensors viewed as (b, h, s, d)."""
    b, h, hkv, sq, sk, d = shape

    def one(heads, seqlen):
        if bshd:
            return torch.randn(b, seqlen, heads, d, dtype=dtype, device=device).transpose(1, 2)
        return torch.randn(b, heads, seqlen, d, dtype=dtype, device=device)

    return one(h, sq), one(hkv, sk), one(hkv, sk)
