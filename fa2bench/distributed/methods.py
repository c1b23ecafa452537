"""The context-parallel methods, the ring benchmark's providers: name, label, colour and what each is (torch-free,
so the scaling report reads them without importing torch; ``ring`` and ``ringcalls`` implement them)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CPMethod:
    """A context-parallel attention method (what ``ringbench`` measures), named like a provider."""
    name: str
    label: str
    color: str
    description: str


METHODS = {m.name: m for m in (
    CPMethod("ring-fa2", "Ring attention (fa2 Triton)", "#d62728",
             "fa2bench's ring attention: zig-zag shards, K/V passed around the ring with async P2P, "
             "overlapped with the fa2 forward, partial outputs merged by log-sum-exp"),
    CPMethod("allgather-fa2", "All-gather K/V (fa2 Triton)", "#9467bd",
             "all-gather K/V over the ranks, fa2 on the local queries; reduce-scatter dK/dV"),
    CPMethod("cp-sdpa", "PyTorch context_parallel (SDPA)", "#2ca02c",
             "torch.distributed.tensor.experimental.context_parallel over SDPA (its ring, head-tail balanced)"),
)}
