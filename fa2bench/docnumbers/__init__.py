"""Numbers in the docs that cannot drift: README.md (and docs/*.md) quote results only inside marked blocks,
``<!-- fa2bench:begin NAME -->`` ... ``<!-- fa2bench:end NAME -->``, whose text ``BLOCKS[NAME]`` computes from
the committed runs under ``results/``. ``render`` rewrites the blocks of a text (``fa2bench report --readme``);
``stale`` lists the blocks whose text is not what the data gives (``tests/test_docs_numbers.py``).

A block is a table or a whole sentence, so the words around a number cannot say something the number does not.
It reads every kind of run (sweeps, the ablation, e2e's Table 1), so it sits above ``read`` and ``e2e``.
"The measured ceiling" of a run is the one in its meta.json: ``ceilings.matmul_<dtype>_tflops``, the median
time of one 8192 x 8192 x 8192 ``torch.matmul`` timed at the start of that run (``hardware.measure_ceilings``).
No block reads a legacy folder (one without a tool-written meta.json; ``results/README.md``).

The blocks live by the runs they read: ``h100`` (top, ablation, e2e, fa3's dQ-first study), ``h200`` (headline,
first result, decoding), ``variants``; ``data`` names the runs.
"""
from __future__ import annotations

import os
import re
from functools import partial
from pathlib import Path
from typing import Callable

from fa2bench.docnumbers.data import (DECODE_AB, DECODE_H100, DECODE_H100_ONE_ID, DECODE_H100_SHORT,
                                      DECODE_H100_TMA, DECODE_TMA, DECODE_TMA_CONTIGUOUS, VARIANTS_H100_BEFORE,
                                      VARIANTS_H100_FULL, VARIANTS_H100_ONE_STREAM, VARIANTS_H100_STREAMS,
                                      VARLEN_H100_BEFORE)
from fa2bench.docnumbers.h100 import (ablation_fa1, ablation_steps, ablation_versus, e2e_table, e2e_tokens,
                                      e2e_versus, fa3_dq_first, top_points, top_table, top_versus)
from fa2bench.docnumbers.h200 import (decode_ab, decode_rerun, decode_splits, decode_timers,
                                      decode_tma_contiguous, decode_tma_paged, decode_versus, fa3_accept,
                                      fa3_accept_h100, fa3_backward, fa3_forward, fa3_forward_h100, fa3_rungs,
                                      first_run, headline_rerun, headline_table, ladder_fa1, ladder_state,
                                      ladder_steps, ladder_versus, same_card)
from fa2bench.docnumbers.variants import (variants_cost, variants_dense_flat, variants_dkdv_tiles, variants_dq_streams,
                                          variants_h100, variants_latest, variants_misses, variants_power,
                                          variants_profile, variants_table, variants_tiles, variants_torch_varlen,
                                          variants_varlen, variants_varlen_h100, variants_versus)

BEGIN, END = "<!-- fa2bench:begin {} -->", "<!-- fa2bench:end {} -->"
_BLOCK = re.compile(r"<!-- fa2bench:begin ([\w-]+) -->(.*?)<!-- fa2bench:end \1 -->", re.S)

BLOCKS: dict[str, Callable[[Path], str]] = {
    "top-points": top_points, "top-table": top_table, "top-versus": top_versus,
    "ablation-versus": ablation_versus, "ablation-fa1": ablation_fa1, "ablation-steps": ablation_steps,
    "e2e-tokens": e2e_tokens, "e2e-table": e2e_table, "e2e-versus": e2e_versus,
    "first-run": first_run, "decode-versus": decode_versus, "decode-splits": decode_splits,
    "decode-timers": decode_timers, "variants-table": variants_table, "variants-varlen": variants_varlen,
    "variants-varlen-h100": variants_varlen_h100,
    "variants-power": variants_power, "variants-cost": variants_cost, "variants-tiles": variants_tiles,
    "variants-profile": variants_profile, "headline-table": headline_table,
    "headline-rerun": headline_rerun, "ladder-state": ladder_state, "ladder-versus": ladder_versus,
    "ladder-fa1": ladder_fa1, "ladder-steps": ladder_steps, "fa3-backward": fa3_backward,
    "same-card": same_card, "fa3-accept": fa3_accept, "fa3-accept-h100": fa3_accept_h100,
    "variants-latest": variants_latest, "fa3-rungs": fa3_rungs, "fa3-forward": fa3_forward,
    "fa3-forward-h100": fa3_forward_h100,
    "fa3-dq-first": fa3_dq_first, "variants-h100": variants_h100,
    "variants-torch-varlen": variants_torch_varlen, "variants-dkdv-tiles": variants_dkdv_tiles,
    "variants-table-h100": partial(variants_table, run=VARIANTS_H100_FULL), "variants-misses-h100": variants_misses,
    "variants-varlen-h100-11": partial(variants_varlen, runs=(VARIANTS_H100_FULL,)),
    "variants-table-h100-9": partial(variants_table, run=VARIANTS_H100_ONE_STREAM),
    "variants-misses-h100-9": partial(variants_misses, run=VARIANTS_H100_ONE_STREAM),
    "variants-varlen-h100-9": partial(variants_varlen, runs=(VARIANTS_H100_ONE_STREAM,)),
    "variants-versus-h100-11": partial(variants_versus, run=VARIANTS_H100_FULL, headdims=(128, 256)),
    "variants-dq-streams": variants_dq_streams, "variants-dense-flat": variants_dense_flat,
    # the cut-short run: its d128 cells only, and not dense (that ran a candidate the same call rejected)
    "variants-partial-h100-10": partial(variants_versus, run=VARIANTS_H100_STREAMS, skip=("dense",)),
    "decode-versus-h100": partial(decode_versus, run=DECODE_H100),
    "decode-versus-h100-short": partial(decode_versus, run=DECODE_H100_SHORT),
    "decode-rerun-h100": partial(decode_rerun, before=DECODE_H100, after=DECODE_H100_SHORT),
    "decode-versus-h100-one-id": partial(decode_versus, run=DECODE_H100_ONE_ID),
    "decode-rerun-h100-one-id": partial(decode_rerun, before=DECODE_H100_SHORT, after=DECODE_H100_ONE_ID),
    "decode-tma-paged": partial(decode_tma_paged, run=DECODE_TMA),
    "decode-tma-contiguous": partial(decode_tma_contiguous, run=DECODE_TMA_CONTIGUOUS),
    "decode-versus-h100-tma": partial(decode_versus, run=DECODE_H100_TMA),
    "decode-rerun-h100-tma": partial(decode_rerun, before=DECODE_H100_ONE_ID, after=DECODE_H100_TMA),
    **{name: partial(decode_ab, run=run, points=points, pages=pages)
       for name, (run, points, pages) in DECODE_AB.items()},
    **{name: partial(variants_latest, run=run) for name, run in VARIANTS_H100_BEFORE.items()},
    **{name: partial(variants_varlen, runs=runs) for name, runs in VARLEN_H100_BEFORE.items()},
}


def blocks(text: str) -> list[tuple[str, str]]:
    """(name, text) of every marked block, in order."""
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]


def render(text: str, root: str | Path = "results", links: str = "") -> str:
    """``text`` with every marked block's contents recomputed from the runs under ``root``; an unknown block
    name is a ValueError. ``links``: the path from the text's file to the repository root (``links_from``), put
    before the blocks' ``results/...`` links so that they resolve from that file."""
    root, cache = Path(root), {}

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in BLOCKS:
            raise ValueError(f"unknown block {name!r} (known: {', '.join(BLOCKS)})")
        if name not in cache:
            cache[name] = BLOCKS[name](root).replace("](results/", f"]({links}results/")
        return BEGIN.format(name) + cache[name] + END.format(name)

    return _BLOCK.sub(fill, text)


def links_from(path: str | Path, repo: str | Path = ".") -> str:
    """The prefix that takes a link in the file ``path`` to the repository root ``repo``: '' for README.md,
    '../' for docs/*.md."""
    up = os.path.relpath(Path(repo).resolve(), Path(path).resolve().parent)
    return "" if up == "." else up.replace(os.sep, "/") + "/"


def stale(text: str, root: str | Path = "results", links: str = "") -> list[str]:
    """Names of the blocks whose text differs from what the data gives (``links`` as in ``render``)."""
    fresh = dict(blocks(render(text, root, links)))
    return [name for name, body in blocks(text) if fresh[name] != body]


def update(paths, root: str | Path = "results", repo: str | Path = ".") -> list[Path]:
    """Rewrite the marked blocks of each file in ``paths`` (their links made relative to each file, ``repo`` the
    repository root); returns the files that changed."""
    changed = []
    for path in map(Path, paths):
        text = path.read_text()
        new = render(text, root, links_from(path, repo))
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed

