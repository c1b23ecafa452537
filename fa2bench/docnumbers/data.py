"""The committed runs the blocks read, by name, and the small readers they share."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

TOP, E2E, ABLATION = "h100-top", "h100-e2e", "h100-ablation"
FIRST, SECOND = "h200-default-run1", "h200-default-run2"  # issue 21: the default sweep twice on a fresh machine
# the decode preset (1k tile rule of 894571e) and split study
DECODE, SPLITS = "h200-decode-v5", "h200-decode-splits-v2"
DECODE_H100 = "h100-decode"  # the decode preset on an H100, the block table read a block ahead (64a93c7)
DECODE_H100_SHORT = "h100-decode-2"  # again, 64-key blocks where a split has at most two of 128 (8edbe04)
DECODE_H100_ONE_ID = "h100-decode-3"  # again, a block inside one page reads one table entry (b4cc0da)
DECODE_TMA = "h100-decode-tma"  # K/V as TMA boxes against pointer loads, one process (d0386d2)
DECODE_TMA_CONTIGUOUS = "h100-decode-tma-2"  # again on contiguous caches, beside cuDNN (10d51ed)
DECODE_H100_TMA = "h100-decode-5"  # the preset with K/V as TMA boxes by default, page-sized blocks (10d51ed)
DECODE_AB = {  # one-process A/Bs of kernels/decode.py (tools/decode_paged_ab.py): block name -> (run, the
    # (batch, keys) points the change was made for, the page sizes it was judged at; None: all)
    "decode-table-ahead": ("h100-decode-table-ahead", ((1, 1024), (1, 4096), (4, 1024), (4, 4096)), None),
    "decode-short-ab": ("h100-decode-short-ab", ((1, 4096),), None),  # the short corner's 64-key blocks
    "decode-one-id-ab": ("h100-decode-one-id-ab", ((1, 1024), (1, 4096), (4, 1024)), (64,)),  # its 64-key blocks
    "decode-tma-page-cap": ("h100-decode-tma-paged", ((4, 1024), (4, 4096), (16, 1024), (16, 4096)), (64,)),
}
DECODE_BEFORE, PLAIN = "h200-decode", "h200-decode-plain"  # before the retuning; the plain-timer subset of it
VARIANTS = "h200-variants"  # issue 18: the variants preset, fp16 and bf16
HEADLINE = "h200-headline"  # issue 20: the paper's shapes at d64-256 on the H200, six providers
LADDER = "h200-ablation-3"  # issues 20, 23: the FA1 -> FA2 -> FA3 ladder on the H200, rungs 8-10
RERUN = "h200-headline-rerun-2"  # issue 20: its fp16 d128 fa2 and cuDNN points again, a later lease
SAME_CARD = ("h200-headline-rerun-3", "h200-headline-rerun-4")  # issue 20: the subset twice in one lease
FA3_BWD = "h200-fa3-bwd"  # issue 23: the Gluon backward against fa2 and cuDNN
FA3_ACCEPT = "h200-fa3-accept-3"  # issue 23: the acceptance run (paper shapes 2k-16k, fp16/bf16, d64/128, both modes)
FA3_ACCEPT_H100 = "h100-fa3-accept-1"  # issue 23: the same sweep on an H100 (session 19), every provider, both modes
FA3_FORWARD = "h200-fa3-fwd-6"  # issue 23: rung 9 and cuDNN forward after the boundary group (session 15)
FA3_FORWARD_H100 = "h100-fa3-fwd-9"  # issue 23: the same on an H100, O by TMA copies at d128 (session 37)
FA3_RUNGS = "h200-fa3-rungs-3"  # issue 23: the three forward rungs and cuDNN, one call (causal bands, snake walk)
VARLEN_H100 = ("h100-varlen-3", "h100-varlen-3-fp16")  # issue 18: varlen against the padded document mask (H100)
VARLEN_H100_BEFORE = {  # issue 18: the same on an H100 before the packed forward's 128-row tiles, by block name
    "variants-varlen-h100-1": ("h100-varlen-1", "h100-varlen-1-fp16"),  # session 19
}
DQ_FIRST_AB = ("h100-fa3-dqfirst-ab", "h100-fa3-dqfirst-ab-2", "h100-fa3-dqfirst-ab-3", "h100-fa3-dqfirst-ab-4",
               "h100-fa3-dqfirst-ab-5")  # issue 23: fa3's d128 dQ-first study, one A/B each
VARIANTS_LATEST = "h200-variants-3"  # issue 18: bf16 d128 variants at the one-loop forward (and backward) default
VARIANTS_H100_BEFORE = {  # issue 18: the same command on an H100 at earlier defaults, by block name
    "variants-h100-4": "h100-variants-4",  # softcap in the one loops (session 22)
    "variants-h100-5": "h100-variants-5",  # a window's backward on the one-loop dK/dV, staged dQ (session 23)
    "variants-h100-6": "h100-variants-6",  # the dK/dV kernels computing dP^T before P^T (session 24)
}
TORCH_VARLEN = ("h100-varlen-torch", "h100-varlen-torch-mha")  # issue 18: torch's varlen_attn, GQA then MHA (s. 32)
DKDV_TILES = ("h100-dkdv-tiles-window", "h100-dkdv-tiles-docs")  # issue 18: fa2's dK/dV tiles forced (session 32)
VARIANTS_H100 = "h100-variants-8"  # issue 18: again, document masks forward on 128-row tiles at d128 (session 25)
VARIANTS_H100_ONE_STREAM = "h100-variants-9"  # issue 18: the whole preset (fp16, bf16, d128, d256) at one commit (s. 32)
VARIANTS_H100_FULL = "h100-variants-11"  # issue 18: the same with the dQ kernel on a second stream (session 34)
DQ_STREAMS_AB = "h100-dq-streams-ab"  # issue 18: the dQ kernel on a second stream beside the dK/dV kernel (s. 32)
# issue 18: dense causal attention's one loops against the staged ones, two calls (session 33; the second with the
# candidate defaults as mode 1+s against the old ones as 0+s)
DENSE_FLAT_AB = ("h100-dense-flat-ab", "h100-dense-flat-ab-d64", "h100-dense-flat-ab-2", "h100-dense-flat-ab-d64-2",
                 "h100-dense-flat-ab-mha")
VARIANTS_H100_STREAMS = "h100-variants-10"  # issue 18: the preset with the second stream, cut short (session 33)
NAMES = {"fa2": "fa2", "sdpa-cudnn": "cuDNN", "sdpa-flash": "flash"}


def load(root: Path, run: str) -> pd.DataFrame:
    from fa2bench.run.results import load_run

    frame = load_run(root / run)
    keys = [c for c in ("provider", "mode", "dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim",
                        "causal", "page_size", "ragged", "variant", "model") if c in frame]
    return frame.drop_duplicates(keys, keep="last").reset_index(drop=True)


def read_meta(root: Path, run: str) -> dict:
    return json.loads((root / run / "meta.json").read_text())


def kilo(n: int) -> str:
    return f"{n // 1024}k"


def ok_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]

