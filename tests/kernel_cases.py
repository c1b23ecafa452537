"""Shared cases for the kernel tests: fa2bench's own Triton kernels by provider name (from the one provider
registry, so a newly registered kernel is tested without editing the tests) and input makers."""
import torch

import fa2bench.kernels
from fa2bench import providers

KERNEL_PROVIDERS = providers.triton_providers()
KERNELS = {name: getattr(fa2bench.kernels, providers.get(name).function) for name in KERNEL_PROVIDERS}
MODULES = {name: providers.kernel_module(name) for name in KERNEL_PROVIDERS}


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
