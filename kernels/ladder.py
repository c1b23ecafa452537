"""The FlashAttention-1 -> FlashAttention-2 ablation ladder, rungs 3 to 6: FA2's kernels with optimisations off.

Each rung adds exactly one change to the rung before. They are not copies: every rung runs the kernels of
``kernels/flash2.py`` with its compile-time switches (``DEFER``, ``SEQ_PAR``, ``SKIP``, all ``tl.constexpr``)
set as below, so the rungs differ only where a switch is tested.

    rung  provider    loops / grid                                normalisation             causal blocks
    1     fa1         K/V outer, Q inner, O,l,m via HBM; b x h    every step (FA1)          skipped (flash1.py)
    2     fa1-split   as rung 1, split over extra programs        every step                skipped (flash1.py)
    3     r3-swap     Q outer, K/V inner, O on chip; b x h        every step, stores m, l   all visited, masked
    4     r4-defer    as rung 3                                   once at the end, LSE only all visited, masked
    5     r5-seqpar   as rung 4, grid over Q blocks (fwd, dQ)     once at the end           all visited, masked
                      and K/V blocks (dK, dV) too = FA2's algorithm
    6     r6-skip     as rung 5                                   once at the end           skipped; unmasked
                                                                                            off-diagonal stage
    7     fa2         rung 6 with its own tuned autotune space (flash2.py), and (not a change of the paper's) its
                      dQ kernel on a second stream beside the dK/dV kernel (FA2_BWD_STREAMS=0: in turn, as rung 6)

Rung 3 keeps FA1's normalised output inside the loop (``O <- diag(l_new)^-1 (diag(l_old) e^{m_old - m_new} O +
P V)``) and stores both the running max m and the sum l, as FA1 does; its backward recomputes
``P = exp2(s - m) / l``. Rungs 4 on store only the log-sum-exp. Rungs 3-5 visit every K/V block for every Q block
under causal masking and mask every block (bounds and causal); rung 6 adds block skipping and the split into
unmasked blocks off the diagonal and masked blocks on it (the first rung with causal skipping: FA1's kernels, rungs
1-2, skip causal blocks too, as FlashAttention-1's CUDA code did).

Backward: every rung uses FA2's backward structure (Algorithm 2 of the FA2 paper without atomics): Delta =
rowsum(dO * O) first, then a dK/dV kernel (K/V block outer, Q blocks inner) and a dQ kernel (Q block outer, K/V
blocks inner). Rungs 3-4 run them with one program per (batch, kv head) and (batch, head), walking their blocks in
turn; rung 5 gives each K/V block (dK, dV) and each Q block (dQ) its own program; rung 6 skips causal blocks.

Autotuning: rungs 3-6 share one small config list (``LADDER`` in kernels/configs.py: three configs per kernel, the
same for every rung and head dim, pruned only where shared memory or registers would not fit), so that the ladder
isolates the algorithm, not the tuning, and GPU autotuning stays cheap. fa1 and fa1-split keep flash1.py's space; fa2
keeps its own tuned space. Warp partitioning (the FA2 paper's third change, split-Q instead of split-K) is not a rung:
Triton's compiler lays a Q tile over warps, not the kernel author; see docs/ablation.md.

Tested on: the CPU through Triton 3.9's interpreter (tests/test_kernels.py, fp16 and fp32, every rung forward and
backward, causal and not, GQA/MQA, ragged lengths). GPU: H100 (tests/test_kernels_gpu.py; results/h100-ablation).
"""
from __future__ import annotations

from . import _common  # noqa: F401  (first: importing it picks the CPU interpreter before Triton loads)
import triton

from . import configs as spaces
from ._common import bwd_preprocess
from .flash2 import Variant, candidates, pruned, run_variant, tuned_launcher


# One small list for every rung and head dim (kernels/configs.py: LADDER); the first one that fits runs on the CPU
# interpreter. fwd and bwd_dq: BLOCK_M query rows per program; bwd_dkdv: BLOCK_N keys per program.
LADDER_CONFIGS = candidates(spaces.LADDER)
_LAUNCHER = tuned_launcher(spaces.LADDER)
_AUTOTUNED = _LAUNCHER.kernels
TRITON_KERNELS = {**_AUTOTUNED, "bwd_preprocess": bwd_preprocess}  # every kernel a launch runs (for profiling)
forced_configs, last_config, config_cached = _LAUNCHER.forced_configs, _LAUNCHER.last_config, _LAUNCHER.config_cached

RUNGS = {  # each runs its dK/dV and dQ kernels in turn on one stream (dq_stream off), as the paper's Algorithm 2
    3: Variant(defer=False, seq_par=False, skip=False, launcher=_LAUNCHER, dq_stream=False),
    4: Variant(defer=True, seq_par=False, skip=False, launcher=_LAUNCHER, dq_stream=False),
    5: Variant(defer=True, seq_par=True, skip=False, launcher=_LAUNCHER, dq_stream=False),
    6: Variant(defer=True, seq_par=True, skip=True, launcher=_LAUNCHER, dq_stream=False),
}


def configs(headdim: int) -> dict[str, list[triton.Config]]:
    """The ladder's configs after pruning, per kernel, for fp16/bf16 inputs of this head dim."""
    return {name: pruned(name, cands, headdim) for name, cands in LADDER_CONFIGS.items()}


def _rung(n: int, what: str):
    def attention(q, k, v, causal: bool = False, sm_scale: float | None = None, tf32: bool = False):
        return run_variant(RUNGS[n], q, k, v, causal, sm_scale, tf32)

    attention.__name__ = attention.__qualname__ = f"r{n}_attention"
    attention.__doc__ = (f"Rung {n} of the ablation ladder ({what}): softmax(q k^T * sm_scale) v, differentiable; "
                         "arguments as flash2_attention's.")
    return attention


r3_attention = _rung(3, "Q outer loop, O normalised every step, batch x heads grid")
r4_attention = _rung(4, "+ deferred normalisation, log-sum-exp only")
r5_attention = _rung(5, "+ sequence parallelism")
r6_attention = _rung(6, "+ causal block skipping, unmasked off-diagonal blocks")
