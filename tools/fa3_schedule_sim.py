"""fa3's causal tile schedule, simulated on the host (no GPU): for the paper's causal shapes (16k tokens, hidden
2048) and a rung's tile rows, each band of heads (``fa3.causal_order``) under two schedules of the persistent grid:

- static: the kernel's walk today (``_slot``: rounds of one tile per CTA, every other round reversed), whose
  balance ``fa3.causal_band`` weighs when it picks the band;
- dynamic: each CTA takes the next tile in the order when it finishes its last (list scheduling; what a tile
  counter in global memory would give), as a bound on what a dynamic scheduler could buy.

A tile costs its K/V blocks plus ``--per-tile`` (prologue and epilogue, in blocks). Balance is the mean over the
largest of the CTAs' sums (1.0: all finish together); "K/V in flight" is the most heads one round reads, times a
head's K and V bytes, against the L2 (``causal_band`` wants it within half).

    python tools/fa3_schedule_sim.py [--headdim 64,128] [--seqlen 2048,4096,8192,16384] [--rung 9]
                                     [--bands 1,2,4,8,16] [--per-tile 1.0] [--sms 132] [--l2-mib 60]
"""
from __future__ import annotations

import argparse
import heapq

import numpy as np

from fa3_ab import ints


def list_schedule_balance(cost: np.ndarray, grid: int) -> float:
    """Balance when each of ``grid`` CTAs takes the next tile (in order) as soon as it is free."""
    free = [0.0] * grid
    for c in cost:
        heapq.heappush(free, heapq.heappop(free) + c)
    return float(cost.sum() / grid / max(free))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--headdim", type=ints, default=[64, 128])
    ap.add_argument("--seqlen", type=ints, default=[2048, 4096, 8192, 16384])
    ap.add_argument("--rung", type=int, default=9, choices=(8, 9, 10))
    ap.add_argument("--bands", type=ints, default=[1, 2, 4, 8, 16])
    ap.add_argument("--per-tile", type=float, default=1.0)
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--l2-mib", type=float, default=60.0)
    a = ap.parse_args(argv)
    from fa2bench.kernels import fa3

    l2 = int(a.l2_mib * 2**20)
    print(f"rung {a.rung}, {a.sms} CTAs, L2 {a.l2_mib:g} MiB, per-tile cost {a.per_tile:g} blocks; "
          "band: static / dynamic balance, K/V in flight (MiB); * = causal_band's pick")
    for headdim in a.headdim:
        heads = 2048 // headdim
        for seqlen in a.seqlen:
            batch = max(1, 16384 // seqlen)
            bh = batch * heads
            block_m = fa3.tiles(headdim, a.rung, causal=True, seqlen_q=seqlen)["BLOCK_M"]
            n_m = -(-seqlen // block_m)
            kv_head = 2 * seqlen * headdim * 2
            cost = fa3._tile_blocks(n_m, seqlen, seqlen, block_m).astype(float) + a.per_tile
            grid = min(a.sms, n_m * bh)
            picked = fa3.causal_band(n_m, bh, a.sms, kv_head, l2, seqlen, seqlen, block_m, a.per_tile)
            cells = []
            for band in sorted({b for b in a.bands if b < bh} | {picked, bh}):
                mb, head = fa3.causal_order(n_m, bh, band)
                mib = fa3.heads_in_flight(head, grid) * kv_head / 2**20
                cells.append(f"{band}{'*' if band == picked else ''}: {fa3.walk_balance(cost[mb], grid):.3f} / "
                             f"{list_schedule_balance(cost[mb], grid):.3f}, {mib:.0f}")
            print(f"d{headdim} {seqlen:>5} ({batch} x {heads} heads, {block_m}-row tiles): " + " | ".join(cells))


if __name__ == "__main__":
    main()
