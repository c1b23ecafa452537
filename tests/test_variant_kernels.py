"""fa2's attention variants (issue 18): sliding windows, softcapping, ALiBi, document masking and packed (varlen)
batches, forward and backward, against a float64 reference written here from positions alone (it shares no mask
code with the kernels), on Triton's CPU interpreter in fp16 and fp32 (bf16 on the GPU only: the interpreter's bf16
dots are wrong). Small 16 x 16 tiles make short sequences span many blocks, so block skipping and the masked edges
of the band are exercised.
"""
import math

import pytest
import torch
import triton

from fa2bench.kernels import flash2
from fa2bench.kernels.flash2 import flash2_attention, flash2_varlen_attention
from fa2bench.kernels.tiles import tile_fraction, visited_blocks
from tests.conftest import DEVICE


# ---- the reference: a dense boolean mask built from positions, float64 ------------------------------------------
def allowed(seqlen_q, seqlen_k, causal=False, window=None, doc_ids=None):
    """(batch or 1, seqlen_q, seqlen_k) booleans: may query i attend key j."""
    i = torch.arange(seqlen_q)[:, None] + (seqlen_k - seqlen_q)  # aligned position i'
    j = torch.arange(seqlen_k)[None, :]
    ok = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool)
    if causal:
        ok &= j <= i
    if window is not None:
        ok &= (j >= i - window[0]) & (j <= i + window[1])
    ok = ok[None]
    if doc_ids is not None:
        d = doc_ids.cpu()
        ok = ok & (d[:, :, None] == d[:, None, :])
    return ok


def reference(q, k, v, causal=False, window=None, softcap=None, alibi_slopes=None, doc_ids=None):
    """softmax over the allowed keys of the (softcapped, ALiBi-biased) scores, in float64; zero rows see no key."""
    q, k, v = (t.double() for t in (q, k, v))
    heads, seqlen_q, d = q.shape[1:]
    seqlen_k = k.shape[2]
    group = heads // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if alibi_slopes is not None:
        dist = (torch.arange(seqlen_q)[:, None] + seqlen_k - seqlen_q - torch.arange(seqlen_k)[None, :]).abs()
        s = s - alibi_slopes.double().cpu()[None, :, None, None].to(s.device) * dist.to(s.device)
    ok = allowed(seqlen_q, seqlen_k, causal, window, doc_ids)[:, None].to(s.device)
    s = s.masked_fill(~ok, -math.inf)
    p = torch.softmax(s, -1).nan_to_num(0.0)  # a row of -inf gives NaN: it attends nothing
    return p @ v


TOL = {torch.float16: 1e-2, torch.float32: 2e-5, torch.bfloat16: 3e-2}
TILES = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)


def small_tiles():
    return flash2.forced_configs(fwd=TILES, bwd_dkdv=TILES, bwd_dq=TILES)


def run(fn, q, k, v, dtype, *args, **kwargs):
    """fn's output and gradients (dq, dk, dv) for fresh leaves of q, k, v in dtype, and dO."""
    leaves = [t.to(dtype).detach().requires_grad_() for t in (q, k, v)]
    o = fn(*leaves, *args, **kwargs)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, leaves, do)
    return (o, *grads), do


def assert_close(got, want, dtype, names=("o", "dq", "dk", "dv")):
    for name, a, b in zip(names, got, want):
        assert torch.isfinite(a).all(), f"{name} has NaN or inf"
        # relative to the largest value, at least 1 (inputs are N(0, 1)): a gradient that is 0 in exact arithmetic
        # (a window of one key) is compared by its rounding noise
        err = (a.double() - b.double()).abs().max().item() / max(b.abs().max().item(), 1.0)
        assert err < TOL[dtype], f"{name}: relative error {err:.2e}"


def check(shape, dtype=torch.float32, causal=False, tiles=True, **variant):
    """The kernel against the reference (output and all three gradients) on fresh N(0, 1) inputs."""
    b, h, hkv, sq, sk, d = shape
    q, k, v = (torch.randn(b, n, s, d, device=DEVICE) for n, s in ((h, sq), (hkv, sk), (hkv, sk)))
    with small_tiles() if tiles else _nothing():
        got, do = run(flash2_attention, q, k, v, dtype, causal, **variant)
    leaves = [t.to(dtype).double().requires_grad_() for t in (q, k, v)]
    ref = reference(*leaves, causal=causal, **variant)
    want = (ref, *torch.autograd.grad(ref, leaves, do.double()))
    assert_close(got, want, dtype)
    return got


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def docs(batch, lengths_per_row):
    """doc_ids (batch, seqlen) for documents of the given lengths laid end to end, one list per row."""
    return torch.stack([torch.repeat_interleave(torch.arange(len(ls), dtype=torch.int32),
                                                torch.tensor(ls)) for ls in lengths_per_row]).to(DEVICE)


# ---- no variant: the dK/dV kernel's one loop -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 2, 1, 75, 75, 16), (1, 2, 2, 45, 70, 16), (1, 2, 2, 70, 45, 16)],
                         ids=["self-gqa", "q<k", "q>k"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dense_steps_masked_only_in_the_band_and_at_the_ragged_end(shape, causal):
    """16 x 16 tiles: each K/V block's loop over the query rows has masked steps (the causal band, the ragged last
    step) and unmasked ones between, decided per step; every kind of step must give the reference's gradients."""
    check(shape, torch.float32, causal)
    check(shape, torch.float16, causal)


# ---- the one-loop kernels (FA2_FWD_FLAT, FA2_BWD_FLAT) ---------------------------------------------------------------
FLAT_CASES = {  # (shape, dtype, causal, variant): every kind of bound the flat loops take
    "dense-gqa-ragged": ((1, 4, 2, 75, 75, 16), torch.float32, True, {}),
    "dense-full-q<k": ((1, 2, 2, 45, 70, 16), torch.float16, False, {}),
    "dense-causal-q>k": ((1, 2, 2, 70, 45, 16), torch.float32, True, {}),
    "window-gqa": ((2, 4, 2, 61, 61, 16), torch.float16, True, {"window": (17, 0)}),
    "window-two-sided": ((1, 2, 1, 45, 45, 16), torch.float32, False, {"window": (3, 5)}),
    "docs-gqa": ((2, 4, 2, 70, 70, 16), torch.float32, True, {"doc_ids": [[1, 15, 16, 17, 21], [70]]}),
    "docs-softcap": ((2, 4, 2, 70, 70, 16), torch.float16, True, {"doc_ids": [[17, 1, 52], [70]], "softcap": 3.0}),
    "window-softcap": ((1, 2, 1, 61, 61, 16), torch.float16, True, {"window": (17, 0), "softcap": 3.0}),
    "docs-window-softcap-alibi": ((2, 4, 2, 70, 70, 16), torch.float16, True,
                                  {"doc_ids": [[33, 5, 32], [1, 69]], "window": (20, 0), "softcap": 5.0,
                                   "alibi_slopes": "geometric"}),
}


@pytest.mark.parametrize("mode", ["1", "all", "all/dq0"])
@pytest.mark.parametrize("case", list(FLAT_CASES))
def test_flat_loops_match_reference(case, mode, monkeypatch):
    """FA2_FWD_FLAT and FA2_BWD_FLAT: the forward's and the dQ kernel's stages in one loop, the dK/dV kernel's steps
    of every query head of a GQA group in one loop, each step masked or not by itself (``1``: as the default picks
    per kernel; ``all/dq0``: every kernel but the dQ kernel, FA2_DQ_FLAT=0); output and gradients as the
    reference's."""
    shape, dtype, causal, variant = FLAT_CASES[case]
    flat, _, dq = mode.partition("/dq")
    monkeypatch.setenv(flash2.FLAT_ENV, flat)
    monkeypatch.setenv(flash2.FWD_FLAT_ENV, flat)
    monkeypatch.setenv(flash2.DQ_FLAT_ENV, dq)
    variant = dict(variant)
    if "doc_ids" in variant:
        variant["doc_ids"] = docs(shape[0], variant["doc_ids"])
    if variant.get("alibi_slopes") == "geometric":
        variant["alibi_slopes"] = torch.tensor([2.0 ** -(i + 1) for i in range(shape[1])], device=DEVICE)
    check(shape, dtype, causal, **variant)


def _switch_mods(variant: dict) -> "flash2.Mods":
    """A causal 64-token launch's Mods with ``variant`` (documents given as lengths)."""
    if "doc_ids" in variant:
        variant = {**variant, "doc_ids": docs(1, variant["doc_ids"])}
    return flash2.mods(True, 64, 64, 2, 1, torch.device(DEVICE), **variant)


W, SC, D = {"window": (4, 0)}, {"softcap": 2.0}, {"doc_ids": [[30, 34]]}


@pytest.mark.parametrize("variant, fwd, dkdv, dq", [
    ({}, False, False, False), (SC, False, False, False), (W, True, True, False), ({**W, **SC}, True, False, False),
    (D, True, True, True), ({**D, **SC}, True, True, True), ({**D, **W}, True, True, True),
    ({**D, **W, **SC}, True, False, False)], ids=str)
def test_flat_switches_by_default(variant, fwd, dkdv, dq, monkeypatch):
    """At the default (1), every masked variant runs the one loops, except the backward kernels that measured slower
    with them (docs/variants.md section 4): a window's dQ kernel unless documents cut the window without softcap,
    and with softcap the window's dK/dV kernel too. Dense attention and softcap alone stay staged."""
    for env in (flash2.FWD_FLAT_ENV, flash2.FLAT_ENV, flash2.DQ_FLAT_ENV):
        monkeypatch.delenv(env, raising=False)
    m = _switch_mods(variant)
    assert (flash2.flat_loops("fwd", m), *flash2.flat_backward(m)) == (fwd, dkdv, dq)


@pytest.mark.parametrize("mode, flat", [("0", False), ("all", True), ("1", None)])
def test_flat_switch_modes(mode, flat, monkeypatch):
    """0 runs no one loop, all every one (dense too), 1 the default's; each kernel's variable is its own: the
    forward's FA2_FWD_FLAT, both backward kernels' FA2_BWD_FLAT; anything else is one clear error."""
    monkeypatch.delenv(flash2.DQ_FLAT_ENV, raising=False)
    for variant in ({}, W, D, {**W, **SC}):
        m = _switch_mods(variant)
        monkeypatch.delenv(flash2.FWD_FLAT_ENV, raising=False)
        monkeypatch.delenv(flash2.FLAT_ENV, raising=False)
        default = (flash2.flat_loops("fwd", m), *flash2.flat_backward(m))
        monkeypatch.setenv(flash2.FLAT_ENV, mode)
        expect = default[1:] if flat is None else (flat, flat)
        assert (flash2.flat_loops("fwd", m), *flash2.flat_backward(m)) == (default[0], *expect)
        monkeypatch.setenv(flash2.FWD_FLAT_ENV, mode)
        assert flash2.flat_loops("fwd", m) is (default[0] if flat is None else flat)
    for env in (flash2.FWD_FLAT_ENV, flash2.FLAT_ENV):
        monkeypatch.setenv(env, "yes")
        with pytest.raises(ValueError, match=env):
            flash2.flat_loops("fwd" if env == flash2.FWD_FLAT_ENV else "bwd_dkdv", _switch_mods(W))


def test_dq_beside_dkdv_needs_a_gpu_and_takes_0_or_1(monkeypatch):
    """FA2_BWD_STREAMS: 1 (the default) runs the dQ kernel on a second stream beside the dK/dV kernel on a CUDA
    device (tests/test_kernels_gpu.py checks it there); elsewhere, and at 0, both run on the caller's stream;
    anything else is one clear error."""
    q = torch.zeros(1, 1, 8, 16)
    for mode in (None, "1", "0"):
        if mode is None:
            monkeypatch.delenv(flash2.STREAMS_ENV, raising=False)
        else:
            monkeypatch.setenv(flash2.STREAMS_ENV, mode)
        assert flash2.dq_beside_dkdv(q) is None
    monkeypatch.setenv(flash2.STREAMS_ENV, "on")
    with pytest.raises(ValueError, match=f"{flash2.STREAMS_ENV} must be 0 or 1, got 'on'"):
        flash2.dq_beside_dkdv(q)


def test_only_fa2_runs_its_dq_kernel_beside_dkdv_not_the_ladders_rungs():
    """The second stream is a scheduling choice, not one of the paper's changes: fa2 (and the packed and ring paths
    that launch its kernels) takes it, the ablation ladder's rungs 3-6 do not, so it does not blur their steps."""
    from fa2bench.kernels import ladder

    assert flash2.FA2.dq_stream
    assert [rung.dq_stream for rung in ladder.RUNGS.values()] == [False] * 4


@pytest.mark.parametrize("dq_mode, dq_flat", [("0", False), ("all", True), ("", True)])
def test_flat_dq_switch(dq_mode, dq_flat, monkeypatch):
    """FA2_DQ_FLAT, when set, decides the dQ kernel's loop apart from the dK/dV kernel's; unset (or empty), the dQ
    kernel follows FA2_BWD_FLAT."""
    monkeypatch.setenv(flash2.FLAT_ENV, "all")
    monkeypatch.setenv(flash2.DQ_FLAT_ENV, dq_mode)
    assert flash2.flat_backward(_switch_mods(W)) == (True, dq_flat)
    monkeypatch.setenv(flash2.DQ_FLAT_ENV, "sometimes")
    with pytest.raises(ValueError, match="FA2_DQ_FLAT"):
        flash2.flat_backward(_switch_mods({}))


# ---- sliding windows -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", [(0, 0), (3, 5), (0, 7), (20, 2), (1000, 1000)], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_window_matches_reference(window, causal):
    """Windows smaller than a 16-row block, zero, one-sided, and larger than the sequence (no limit)."""
    check((1, 2, 1, 45, 45, 16), causal=causal, window=window)


@pytest.mark.parametrize("shape", [(1, 2, 2, 29, 53, 16), (2, 4, 2, 53, 29, 32)], ids=["q<k", "q>k-gqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_window_cross_attention_is_bottom_right_aligned(shape, causal):
    check(shape, causal=causal, window=(6, 3))


def test_window_fp16():
    check((2, 2, 1, 61, 61, 32), torch.float16, causal=True, window=(17, 0))


# ---- softcapping and ALiBi -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("softcap", [0.5, 1e4], ids=["tiny", "huge"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_softcap_matches_reference(softcap, causal):
    """softcap 0.5 squashes every score (backward through tanh's derivative); 1e4 leaves them as they are."""
    check((1, 2, 2, 37, 37, 16), causal=causal, softcap=softcap)


def test_softcap_fp16_cross_attention():
    check((1, 2, 1, 33, 50, 32), torch.float16, causal=True, softcap=2.0)


@pytest.mark.parametrize("shape", [(1, 4, 2, 40, 40, 16), (1, 4, 1, 23, 47, 16)], ids=["gqa", "mqa-q<k"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_alibi_with_gqa(shape, causal):
    """One slope per query head: heads of one kv group get different biases."""
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], device=DEVICE)
    check(shape, causal=causal, alibi_slopes=slopes)


def test_alibi_fp16():
    check((2, 4, 2, 45, 45, 32), torch.float16, alibi_slopes=torch.rand(4, device=DEVICE))


# ---- documents ---------------------------------------------------------------------------------------------------
DOCS = {
    "one": [[48]],
    "length-1-docs": [[1, 1, 1, 45]],
    "straddling": [[5, 20, 1, 13, 9]],  # boundaries inside 16-row blocks
    "many-tiny": [[1, 2, 3, 2, 1, 4, 3, 2, 1, 5, 4, 3, 2, 1, 5, 9]],
    "two-rows": [[48], [7, 9, 16, 16]],  # a padded batch: each row its own documents
}


@pytest.mark.parametrize("layout", list(DOCS))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_documents_match_reference(layout, causal):
    lengths = DOCS[layout]
    check((len(lengths), 2, 1, 48, 48, 16), causal=causal, doc_ids=docs(len(lengths), lengths))


def test_documents_with_window_softcap_alibi_fp16():
    check((1, 2, 2, 48, 48, 32), torch.float16, causal=True, window=(9, 0), softcap=5.0,
          alibi_slopes=torch.tensor([0.3, 0.1], device=DEVICE), doc_ids=docs(1, [[5, 20, 1, 13, 9]]))


def test_everything_at_once_gqa_fp32():
    check((2, 4, 2, 48, 48, 16), causal=False, window=(7, 4), softcap=1.5,
          alibi_slopes=torch.rand(4, device=DEVICE), doc_ids=docs(2, [[20, 28], [1, 30, 17]]))


def test_default_tiles_too():
    """The interpreter's default config (larger tiles than the sequence): one block, every variant masked."""
    check((1, 2, 1, 40, 40, 16), causal=True, tiles=False, window=(5, 0), softcap=3.0,
          doc_ids=docs(1, [[13, 27]]))


# ---- rows that see no key ------------------------------------------------------------------------------------------
def test_rows_that_see_no_key_output_zero_and_pass_zero_gradient():
    """seqlen_q > seqlen_k under causal: the first rows see no key; the window (0, 0) keeps one key a row at most."""
    got = check((1, 2, 1, 50, 20, 16), causal=True, window=(0, 0))
    o, dq = got[0], got[1]
    assert (o[:, :, :30] == 0).all() and (dq[:, :, :30] == 0).all()


def test_window_far_from_the_keys_masks_rows():
    """Cross attention with q much longer than k: with a one-sided window most rows see nothing."""
    check((1, 1, 1, 64, 8, 16), window=(2, 0))


# ---- packed batches (varlen) ---------------------------------------------------------------------------------------
def packed(lengths, heads, d):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    return torch.randn(sum(lengths), heads, d, device=DEVICE), cu


def varlen_reference(q, k, v, cu_q, cu_k, **variant):
    """The reference per sequence, on (1, heads, len, d) slices; packed back."""
    outs = []
    for b in range(len(cu_q) - 1):
        qs, ks, vs = (t[c[b]:c[b + 1]].transpose(0, 1)[None] for t, c in ((q, cu_q), (k, cu_k), (v, cu_k)))
        outs.append(reference(qs, ks, vs, **variant)[0].transpose(0, 1))
    return torch.cat(outs)


VARLEN = {  # {name: (q lengths, k lengths)}
    "self": ([17, 1, 40, 5], [17, 1, 40, 5]),
    "cross": ([5, 1, 40, 17], [9, 3, 33, 17]),
    "empty-sequences": ([3, 0, 20], [0, 4, 31]),
}


@pytest.mark.parametrize("variant", [{}, {"window": (4, 2)},  # the score mods per sequence: the slow lane
                                     pytest.param({"softcap": 2.0}, marks=pytest.mark.slow),
                                     pytest.param({"alibi": True}, marks=pytest.mark.slow)], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", list(VARLEN))
def test_varlen_matches_reference_per_sequence(case, causal, variant):
    lens_q, lens_k = VARLEN[case]
    variant = dict(variant)
    if variant.pop("alibi", False):
        variant["alibi_slopes"] = torch.tensor([0.5, 0.2, 0.1, 0.05], device=DEVICE)
    (q, cu_q), (k, cu_k), (v, _) = packed(lens_q, 4, 16), packed(lens_k, 2, 16), packed(lens_k, 2, 16)
    with small_tiles():
        got, do = run(flash2_varlen_attention, q, k, v, torch.float32, cu_q, cu_k, max(lens_q), max(lens_k),
                      causal, **variant)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref = varlen_reference(*leaves, cu_q, cu_k, causal=causal, **variant)
    assert_close(got, (ref, *torch.autograd.grad(ref, leaves, do.double())), torch.float32)


def test_the_varlen_grid_covers_each_block_of_each_sequence_once_the_last_blocks_first():
    from fa2bench.kernels.flash2 import VARLEN_BLOCKS, varlen_blocks

    lengths = [3, 0, 20, 16, 33]
    table, counts = varlen_blocks(lengths, "cpu")
    flat = table.tolist()
    for i, size in enumerate(VARLEN_BLOCKS):
        pairs = list(zip(flat[flat[i]:flat[i] + 2 * counts[size]:2], flat[flat[i] + 1:flat[i] + 2 * counts[size]:2]))
        assert sorted(pairs) == [(seq, b) for seq, n in enumerate(lengths) for b in range(-(-n // size))]
        assert [b for _, b in pairs] == sorted((b for _, b in pairs), reverse=True)
    assert counts == {16: 1 + 0 + 2 + 1 + 3, 32: 1 + 0 + 1 + 1 + 2, 64: 4, 128: 4}


@pytest.mark.parametrize("headdim", [64, 128])
@pytest.mark.parametrize("switch", ["DOCS", "VARLEN"])
def test_a_document_masks_forward_at_head_dim_128_autotunes_over_128_row_tiles_only(headdim, switch):
    """The tuner's 20 ms per candidate ranked 64x64 first for the document masks' forward at d128 on an H100, where a
    sweep's timing ran it 1.04-1.09x slower (configs.DOCS_FWD_MIN_BLOCK_M); the dense forward and other head dims
    keep their tiles."""
    prune = flash2.early_prune("fwd")
    q = torch.empty(1, dtype=torch.float16)

    def rows(**switches):
        confs = flash2.candidates(flash2.spaces.FA2)["fwd"]
        return {c.kwargs["BLOCK_M"] for c in prune(confs, dict(Q=q, HEAD_DIM=headdim, **switches))}
    assert 64 in rows()
    assert rows(**{switch: True}) == ({128} if headdim == 128 else rows())


@pytest.mark.parametrize("headdim", [64, 128])
def test_a_study_can_hold_every_forward_to_128_row_tiles(headdim, monkeypatch):
    """FA2_FWD_MIN_BLOCK_M (a study's switch) cuts the smaller tiles from every variant's forward space; the
    backward kernels keep theirs."""
    q = torch.empty(1, dtype=torch.float16)

    def rows(kernel):
        confs = flash2.candidates(flash2.spaces.FA2)[kernel]
        return {c.kwargs["BLOCK_M"] for c in flash2.early_prune(kernel)(confs, dict(Q=q, HEAD_DIM=headdim))}
    before = rows("bwd_dq")
    monkeypatch.setenv(flash2.FWD_MIN_BLOCK_M_ENV, "128")
    assert rows("fwd") == {128} and rows("bwd_dq") == before
    monkeypatch.setenv(flash2.FWD_MIN_BLOCK_M_ENV, "wide")
    with pytest.raises(ValueError, match="FA2_FWD_MIN_BLOCK_M must be a whole number"):
        rows("fwd")


def test_varlen_fp16_causal_window():
    (q, cu_q), (k, cu_k), (v, _) = packed([30, 1, 18], 2, 32), packed([30, 1, 18], 2, 32), packed([30, 1, 18], 2, 32)
    with small_tiles():
        got, do = run(flash2_varlen_attention, q, k, v, torch.float16, cu_q, cu_k, 30, 30, True, window=(5, 0))
    leaves = [t.half().double().requires_grad_() for t in (q, k, v)]
    ref = varlen_reference(*leaves, cu_q, cu_k, causal=True, window=(5, 0))
    assert_close(got, (ref, *torch.autograd.grad(ref, leaves, do.double())), torch.float16)


# ---- bad input ----------------------------------------------------------------------------------------------------
def _bad_variants():
    f32 = dict(device=DEVICE, dtype=torch.float32)
    return {
        "negative window": (dict(window=(-1, 2)), "window sizes must be >= 0"),
        "window not a pair": (dict(window=(3,)), "pair of ints"),
        "window of floats": (dict(window=(1.5, 2)), "pair of ints"),
        "softcap zero": (dict(softcap=0.0), "softcap must be"),
        "softcap negative": (dict(softcap=-1.0), "softcap must be"),
        "softcap NaN": (dict(softcap=math.nan), "softcap must be"),
        "alibi wrong length": (dict(alibi_slopes=torch.ones(3, **f32)), "alibi_slopes"),
        "alibi wrong dtype": (dict(alibi_slopes=torch.ones(2, device=DEVICE, dtype=torch.float16)), "alibi_slopes"),
        "alibi wrong device": (dict(alibi_slopes=torch.ones(2, dtype=torch.float32, device="meta")), "alibi_slopes"),
        "doc_ids wrong shape": (dict(doc_ids=torch.zeros(1, 15, dtype=torch.int32, device=DEVICE)), "doc_ids"),
        "doc_ids wrong dtype": (dict(doc_ids=torch.zeros(1, 16, dtype=torch.int64, device=DEVICE)), "doc_ids"),
        "doc_ids decreasing": (dict(doc_ids=torch.tensor([[0] * 8 + [1] * 4 + [0] * 4], dtype=torch.int32,
                                                          device=DEVICE)), "non-decreasing"),
    }


@pytest.mark.parametrize("case", list(_bad_variants()))
def test_bad_variant_raises_value_error(case):
    kwargs, message = _bad_variants()[case]
    q = torch.randn(1, 2, 16, 16, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        flash2_attention(q, q, q, **kwargs)


def test_mods_take_a_device_by_name():
    """A device named by a string is the same device as its tensors' (not "must be on cpu, got cpu")."""
    slopes = torch.ones(2, dtype=torch.float32, device=DEVICE)
    doc_ids = torch.zeros(1, 16, dtype=torch.int32, device=DEVICE)
    m = flash2.mods(True, 16, 16, 2, 1, str(slopes.device), alibi_slopes=slopes, doc_ids=doc_ids)
    assert m.switches()["ALIBI"] and m.switches()["DOCS"]


def test_doc_ids_need_self_attention():
    q, k = torch.randn(1, 2, 16, 16, device=DEVICE), torch.randn(1, 2, 20, 16, device=DEVICE)
    with pytest.raises(ValueError, match="self-attention"):
        flash2_attention(q, k, k, doc_ids=torch.zeros(1, 16, dtype=torch.int32, device=DEVICE))


def test_doc_ids_are_checked_once_per_tensor_and_again_after_an_in_place_change(monkeypatch):
    calls, dev = [], torch.device(DEVICE)
    find = flash2._find_doc_bounds
    monkeypatch.setattr(flash2, "_find_doc_bounds", lambda *a: calls.append(1) or find(*a))
    doc_ids = torch.tensor([[0] * 8 + [1] * 8], dtype=torch.int32, device=DEVICE)
    first = flash2._doc_bounds(doc_ids, 1, 16, 16, dev)
    assert flash2._doc_bounds(doc_ids, 1, 16, 16, dev) is first and len(calls) == 1  # no second host sync
    assert flash2._doc_bounds(doc_ids.clone(), 1, 16, 16, dev) is not first  # another tensor: checked anew
    doc_ids[0, 12:] = 0  # now decreasing: the change is seen, not the remembered answer
    with pytest.raises(ValueError, match="non-decreasing"):
        flash2._doc_bounds(doc_ids, 1, 16, 16, dev)


def test_cu_seqlens_are_checked_once_per_tensor():
    cu, dev = torch.tensor([0, 6, 10], dtype=torch.int32, device=DEVICE), torch.device(DEVICE)
    memo = flash2._Memo()
    assert flash2._check_cu_seqlens(cu, "cu_seqlens_q", 10, 6, dev, memo)[0] == 2
    with pytest.raises(ValueError, match="max_seqlen"):  # other arguments are checked again
        flash2._check_cu_seqlens(cu, "cu_seqlens_q", 10, 5, dev, memo)
    cu[1] = 12
    with pytest.raises(ValueError, match="never decrease"):
        flash2._check_cu_seqlens(cu, "cu_seqlens_q", 10, 6, dev, memo)


def _bad_cu():
    i32 = dict(dtype=torch.int32, device=DEVICE)
    return {
        "not starting at 0": (torch.tensor([1, 5, 10], **i32), 5, "start at 0"),
        "decreasing": (torch.tensor([0, 6, 4, 10], **i32), 6, "never decrease"),
        "wrong total": (torch.tensor([0, 5, 9], **i32), 5, "end at the packed length"),
        "int64": (torch.tensor([0, 5, 10]), 5, "int32"),
        "max_seqlen too small": (torch.tensor([0, 3, 10], **i32), 5, "max_seqlen"),
    }


@pytest.mark.parametrize("case", list(_bad_cu()))
def test_bad_cu_seqlens_raise_value_error(case):
    cu, max_seqlen, message = _bad_cu()[case]
    q = torch.randn(10, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        flash2_varlen_attention(q, q, q, cu, cu, max_seqlen, max_seqlen)


def test_varlen_q_must_be_3d():
    q = torch.randn(1, 10, 2, 16, device=DEVICE)
    cu = torch.tensor([0, 10], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="3-D"):
        flash2_varlen_attention(q, q, q, cu, cu, 10, 10)


# ---- the switches: off means the dense kernel ----------------------------------------------------------------------
def test_dense_calls_compile_with_every_variant_switch_off():
    meta = flash2._meta(64, True, "tf32", flash2.FA2)
    assert {k: meta[k] for k in ("WINDOW", "SOFTCAP", "ALIBI", "DOCS", "VARLEN")} == dict.fromkeys(
        ("WINDOW", "SOFTCAP", "ALIBI", "DOCS", "VARLEN"), False)
    assert {"WINDOW", "SOFTCAP", "ALIBI", "DOCS", "VARLEN"} <= set(flash2.TUNE_KEY)


# ---- which tiles are visited (kernels/tiles.py) --------------------------------------------------------------------
def attended_tiles(seqlen_q, seqlen_k, bm, bn, causal=False, window=None, doc_lengths=None):
    """Brute force: for each Q block, the K blocks holding at least one attended pair."""
    ids = None
    if doc_lengths is not None:
        ids = torch.repeat_interleave(torch.arange(len(doc_lengths)), torch.tensor(doc_lengths))[None]
    ok = allowed(seqlen_q, seqlen_k, causal, window, ids)[0]
    return [sorted({j // bn for i in range(m0, min(m0 + bm, seqlen_q)) for j in ok[i].nonzero().flatten().tolist()})
            for m0 in range(0, seqlen_q, bm)]


@pytest.mark.parametrize("case", [
    dict(), dict(causal=True), dict(window=(5, 9)), dict(window=(0, 0), causal=True), dict(window=(40, 3)),
    dict(doc_lengths=[1, 30, 7, 1, 25]), dict(doc_lengths=[64], causal=True, window=(10, 0)),
], ids=str)
def test_visited_tiles_are_exactly_those_with_an_attended_pair(case):
    visited = visited_blocks(64, 64, 16, 8, **case)
    assert [list(r) for r in visited] == attended_tiles(64, 64, 16, 8, **case)


def test_visited_tiles_cross_attention():
    for case in (dict(causal=True), dict(window=(3, 2)), dict(window=(3, 2), causal=True)):
        assert [list(r) for r in visited_blocks(30, 70, 16, 16, **case)] == attended_tiles(30, 70, 16, 16, **case)


def test_tile_fractions_of_the_variants():
    n = 8192
    assert tile_fraction(n, n, 128, 64) == 1.0
    assert tile_fraction(n, n, 128, 64, causal=True) == pytest.approx(0.5, abs=0.01)
    assert tile_fraction(n, n, 128, 64, causal=True, window=(1024, 0)) == pytest.approx(1152 / n, abs=0.01)
    assert tile_fraction(n, n, 128, 128, doc_lengths=[1024] * 8) == 1 / 8
    assert tile_fraction(n, n, 128, 64, doc_lengths=[n]) == 1.0


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", list(VARLEN))
def test_flat_loops_varlen(case, causal, monkeypatch):
    """Packed batches (empty sequences too) through the one loops (FA2_FWD_FLAT=1, FA2_BWD_FLAT=1): each
    sequence's output and gradients as the per-sequence reference's."""
    monkeypatch.setenv(flash2.FLAT_ENV, "1")
    monkeypatch.setenv(flash2.FWD_FLAT_ENV, "1")
    test_varlen_matches_reference_per_sequence(case, causal, {"window": (4, 2)})


# ---- the GPU: bf16 and longer sequences ----------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("variant", ["window", "softcap", "alibi", "docs", "all"])
@pytest.mark.parametrize("headdim", [64, 128])
def test_variants_on_the_gpu(variant, dtype, headdim):
    n, heads = 1500, 4
    kwargs = {
        "window": dict(window=(256, 0)),
        "softcap": dict(softcap=30.0),
        "alibi": dict(alibi_slopes=torch.tensor([2.0 ** -(i + 1) for i in range(heads)], device=DEVICE)),
        "docs": dict(doc_ids=docs(2, [[700, 1, 799], [1500]])),
        "all": dict(window=(300, 0), softcap=30.0, alibi_slopes=torch.rand(heads, device=DEVICE) * 0.01,
                    doc_ids=docs(2, [[100] * 15, [1, 1499]])),
    }[variant]
    check((2, heads, 2, n, n, headdim), dtype, causal=True, tiles=False, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("headdim", [64, 128])
@pytest.mark.parametrize("variant", ["dense", "window", "window-softcap", "docs", "docs-softcap", "all"])
def test_flat_loops_on_the_gpu(variant, headdim, monkeypatch):
    """The one loops (FA2_FWD_FLAT=all, FA2_BWD_FLAT=all) compiled for the GPU, bf16, at the autotuner's usual picks
    (results/h200-variants-2; forced, so that no time goes to tuning): as the reference."""
    monkeypatch.setenv(flash2.FLAT_ENV, "all")
    monkeypatch.setenv(flash2.FWD_FLAT_ENV, "all")
    n, heads = 1500, 4
    kwargs = {
        "dense": {},
        "window": dict(window=(256, 0)),
        "docs": dict(doc_ids=docs(2, [[700, 1, 799], [1500]])),
        "docs-softcap": dict(doc_ids=docs(2, [[700, 1, 799], [1500]]), softcap=30.0),
        "window-softcap": dict(window=(256, 0), softcap=30.0),
        "all": dict(window=(300, 0), softcap=30.0, alibi_slopes=torch.rand(heads, device=DEVICE) * 0.01,
                    doc_ids=docs(2, [[100] * 15, [1, 1499]])),
    }[variant]
    with flash2.forced_configs(fwd=triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
                               bwd_dkdv=triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=2),
                               bwd_dq=triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3)):
        check((2, heads, 2, n, n, headdim), torch.bfloat16, causal=True, tiles=False, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_varlen_on_the_gpu(dtype):
    lens = [1, 700, 1300, 33]
    (q, cu), (k, _), (v, _) = packed(lens, 8, 128), packed(lens, 2, 128), packed(lens, 2, 128)
    got, do = run(flash2_varlen_attention, q, k, v, dtype, cu, cu, max(lens), max(lens), True, window=(200, 0),
                  softcap=20.0)
    leaves = [t.to(dtype).double().requires_grad_() for t in (q, k, v)]
    ref = varlen_reference(*leaves, cu, cu, causal=True, window=(200, 0), softcap=20.0)
    assert_close(got, (ref, *torch.autograd.grad(ref, leaves, do.double())), dtype)
