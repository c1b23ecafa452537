"""Shared cases for the kernel tests: fa2bench's own Triton kernels by provider name (from the one provider
registry, so a newly registered kernel is tested without editing the tests) and input makers."""
from contextlib import contextmanager

import torch

import fa2bench.kernels
from fa2bench.core import providers
# Kernels tied to one GPU architecture (fa3: Hopper-only Gluon, no interpreter) have their own tests
KERNEL_PROVIDERS = tuple(n for n in providers.triton_providers() if providers.get(n).sm is None)
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


@contextmanager
def recorded_launches(launcher):
    """Record what ``launcher`` (a kernels._common.Launcher) launches: {kernel name: whether it moved its tiles
    through TMA descriptors} of the last launch of each, so a test can say which code path really ran."""
    seen = {}
    launch = launcher.launch

    def recording(name, grid, *args, **kwargs):
        seen[name] = kwargs["TMA"]
        return launch(name, grid, *args, **kwargs)

    launcher.launch = recording
    try:
        yield seen
    finally:
        del launcher.launch  # the class's method again


def expected_paths(tma: bool) -> dict:
    """What ``recorded_launches`` sees for one fa2 forward and backward that all take (or all skip) TMA."""
    return {"fwd": tma, "bwd_dkdv": tma, "bwd_dq": tma}
