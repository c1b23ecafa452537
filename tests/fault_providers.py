"""Test-only providers that break the process running them (imported by the isolation tests and by the
worker processes they start; never shipped, never in the CLI's list unless a test imports this module).

- ``fault-abort``: ``os.abort()`` (SIGABRT), as a segfaulting extension or a failed assertion in C++ would;
- ``fault-hang``: never returns, as a deadlocked kernel would;
- ``fault-oob``: a Triton kernel that stores far outside its buffer: an illegal memory access, a sticky CUDA
  error that poisons the process (GPU only).
"""
import os
import time

from fa2bench.core import device, providers
device.prepare_triton()  # first: sets TRITON_INTERPRET without a GPU, before triton is imported
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from fa2bench.core.reference import attention_ref


def _register(name, fn, devices=frozenset({"cpu", "cuda"})):
    if name in providers.REGISTRY:
        return

    def make(shape):
        def call(q, k, v):
            fn(q)
            return attention_ref(q, k, v, causal=shape.causal, upcast=False)

        return call

    providers.register(name=name, label=name, color="k", kind="baseline", devices=devices,
                       description="test-only fault injection")(make)


def _abort(q):
    os.abort()


def _hang(q):
    while True:
        time.sleep(1)


@triton.jit
def _oob_store_kernel(ptr, far):
    offs = tl.arange(0, 16)
    tl.store(ptr + far + offs, tl.zeros((16,), dtype=tl.float32))


def _out_of_bounds(q):
    _oob_store_kernel[(1,)](q, 1 << 40)  # 2^40 elements past the buffer: an illegal address


_register("fault-abort", _abort)
_register("fault-hang", _hang)
_register("fault-oob", _out_of_bounds, devices=frozenset({"cuda"}))
