"""kernels/decode.py against the float64 decode reference (fa2bench/core/decode_ref.py).

Interpreter cases are small (seconds in all): KV length 1, lengths off the page and block grid, one page, an
empty tail page, a spare page no one references, very different lengths in one batch, more splits than blocks,
q_len 1 and > 1, GQA groups 1, 4, 8 and MQA; paged equals contiguous; every split count agrees; bad input is
one ValueError line. GPU cases (``-m gpu``) run realistic shapes in fp16 and bf16.
"""
import math
import re

import pytest
import torch

from tests.conftest import DEVICE
from fa2bench.kernels.configs import SMEM_BUDGET
from fa2bench.kernels.decode import (MAX_SPLITS, TMA_DEFAULT, choose_tile, decode_attention, last_config,
                                     num_splits_heuristic, plan, sm_count)
from fa2bench.core.decode import compulsory_bytes, kv_lengths, shape_problem
from fa2bench.core.decode_ref import DecodeInputs, check_decode, decode_ref, gather_kv, make_inputs

CPU_DTYPES = [torch.float32, torch.float16]


def run(inputs: DecodeInputs, **kw):
    return decode_attention(inputs.q, inputs.k_cache, inputs.v_cache, inputs.seqlens_k, inputs.block_table, **kw)


def paged_copy(inputs: DecodeInputs, page_size: int) -> DecodeInputs:
    """The same contiguous cache cut into pages of ``page_size``, handed out in reverse order."""
    batch, kv_len = inputs.k_cache.shape[:2]
    width = math.ceil(kv_len / page_size)
    pad = width * page_size - kv_len
    order = torch.arange(batch * width).flip(0).reshape(batch, width)

    def pages(cache):
        padded = torch.nn.functional.pad(cache, (0, 0, 0, 0, 0, pad))
        out = torch.empty(batch * width, page_size, *cache.shape[2:], dtype=cache.dtype, device=cache.device)
        out[order.reshape(-1)] = padded.reshape(batch * width, page_size, *cache.shape[2:])
        return out

    return DecodeInputs(inputs.q, pages(inputs.k_cache), pages(inputs.v_cache), inputs.seqlens_k,
                        order.to(torch.int32).to(inputs.q.device))


CASES = [  # batch, heads, kv_heads, q_len, kv_len, head dim, page size (0: contiguous), ragged, splits
    pytest.param(1, 2, 2, 1, 1, 16, 16, False, None, id="kv-len-1"),
    pytest.param(2, 4, 1, 1, 37, 32, 16, False, 3, id="mqa-off-grid"),
    pytest.param(1, 8, 8, 1, 32, 16, 32, False, 2, id="one-page-group-1"),
    pytest.param(3, 8, 2, 4, 75, 24, 16, True, 4, id="ragged-q4-gqa4"),
    pytest.param(2, 8, 1, 2, 50, 16, 0, True, 2, id="contiguous-ragged-mqa-q2"),
    pytest.param(2, 16, 2, 1, 40, 16, 16, False, 64, id="gqa8-more-splits-than-blocks"),
    pytest.param(1, 4, 2, 16, 20, 16, 0, False, None, id="q16-heuristic"),
]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("batch,heads,kv_heads,q_len,kv_len,d,page,ragged,splits", CASES)
def test_matches_reference(batch, heads, kv_heads, q_len, kv_len, d, page, ragged, splits, dtype):
    inputs = make_inputs(batch, heads, kv_heads, q_len, kv_len, d, page, ragged, dtype, DEVICE)
    verdict = check_decode(lambda i: run(i, num_splits=splits), inputs)
    assert verdict.ok, verdict.detail


def test_lengths_far_apart_and_empty_tail_page():
    """Lengths 1, 17 and 96 over pages of 16: a short sequence beside a long one, 17 keys leaving a page with
    one key; the table is wider than any sequence needs (its tail entries are -1 and never read). Then the same
    with a spare last page that no sequence references."""
    q = torch.randn(3, 1, 4, 16)
    k, v = torch.randn(2, 9, 16, 2, 16)
    table = torch.full((3, 8), -1, dtype=torch.int32)
    table[0, 0] = 8
    table[1, :2] = torch.tensor([3, 0])
    table[2, :6] = torch.tensor([1, 2, 4, 5, 6, 7])
    lengths = torch.tensor([1, 17, 96], dtype=torch.int32)
    every_page_used = DecodeInputs(q, k, v, lengths, table)
    spare = DecodeInputs(q, torch.cat([k, torch.randn(1, 16, 2, 16)]), torch.cat([v, torch.randn(1, 16, 2, 16)]),
                         lengths, table)
    for case in (every_page_used, spare):
        for splits in (1, 3, 8):
            verdict = check_decode(lambda i: run(i, num_splits=splits), case)
            assert verdict.ok, verdict.detail


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_no_lengths_means_every_sequence_fills_the_cache(causal, splits):
    """seqlens_k None on a contiguous cache gives the reference's answer for lengths all equal to kv_len, causal
    or not, split or not."""
    inputs = make_inputs(2, 8, 2, 3, 45, 16, 0, False, torch.float32, DEVICE)
    assert bool((inputs.seqlens_k == 45).all())
    verdict = check_decode(lambda i: decode_attention(i.q, i.k_cache, i.v_cache, None, causal=causal,
                                                      num_splits=splits), inputs, causal)
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize("page", [16, 32, 64])
def test_paged_equals_contiguous(page):
    inputs = make_inputs(2, 8, 2, 3, 90, 32, 0, True, torch.float32, DEVICE)
    contiguous = run(inputs, num_splits=2)
    paged = run(paged_copy(inputs, page), num_splits=2)
    torch.testing.assert_close(paged, contiguous, rtol=1e-6, atol=1e-6)


def test_split_counts_agree():
    inputs = make_inputs(2, 4, 2, 2, 130, 32, 16, True, torch.float32, DEVICE)
    outs = [run(inputs, num_splits=s) for s in (1, 2, 3, 5, 9, 20)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-6)


def test_heuristic():
    assert num_splits_heuristic(programs=512, n_blocks=2048, sms=132) == 1  # the grid fills the GPU already
    assert num_splits_heuristic(programs=8, n_blocks=2048, sms=132) == 16  # one wave of one program per SM
    assert num_splits_heuristic(programs=8, n_blocks=2048, sms=132, per_sm=2) == 33
    assert num_splits_heuristic(programs=8, n_blocks=5, sms=132) == 5  # at least one block per split
    assert num_splits_heuristic(programs=1, n_blocks=10**6, sms=1000) == MAX_SPLITS
    assert num_splits_heuristic(programs=200, n_blocks=2, sms=132) == 1


def test_tiles_follow_the_cache_and_fit_shared_memory():
    # every SM gets a 128-key block: 128 keys, 3 stages; a short cache: 64 keys, 2 stages; fp32: 32 keys
    assert choose_tile(programs=8, capacity=16384, elt=2, block_d=128, sms=132) == (128, 3)
    assert choose_tile(programs=8, capacity=1024, elt=2, block_d=128, sms=132) == (64, 2)
    assert choose_tile(programs=8, capacity=16384, elt=4, block_d=128, sms=132) == (32, 3)
    assert choose_tile(programs=512, capacity=4096, elt=2, block_d=128, sms=132) == (128, 3)
    # a short cache: 64-key blocks, 2 stages with few programs; 32-key blocks, 3 stages with two per SM and more;
    # 128 keys, 3 stages at about one program per SM
    assert choose_tile(programs=512, capacity=1024, elt=2, block_d=128, sms=132) == (32, 3)
    assert choose_tile(programs=264, capacity=1024, elt=2, block_d=128, sms=132) == (32, 3)
    assert choose_tile(programs=263, capacity=1024, elt=2, block_d=128, sms=132) == (128, 3)
    assert choose_tile(programs=66, capacity=1024, elt=2, block_d=128, sms=132) == (64, 2)
    assert choose_tile(programs=32, capacity=1024, elt=2, block_d=128, sms=132) == (64, 2)
    assert choose_tile(programs=128, capacity=1024, elt=2, block_d=128, sms=132) == (128, 3)
    assert choose_tile(programs=32, capacity=2048, elt=2, block_d=128, sms=132) == (128, 3)
    # splits of at most two 128-key blocks (batch 1, 8 KV heads, 4k keys: 16 splits) take four 64-key blocks, 3 stages,
    # at the same split count (one program per SM); with more blocks per split, 128/3 again
    assert choose_tile(programs=8, capacity=4096, elt=2, block_d=128, sms=132) == (64, 3)
    assert plan(1, 1, 32, 8, 128, 4096, 2, 132)[2:6] == (64, 3, 4, 16)
    assert choose_tile(programs=8, capacity=4096 + 128, elt=2, block_d=128, sms=132) == (128, 3)
    assert choose_tile(programs=8, capacity=4096, elt=2, block_d=256, sms=132) == (64, 2)  # 128/3, shrunk
    # head dim 256: 3 stages of 128 x 256 K and V would not fit, nor 2; 2 stages of 64 keys do
    block_n, stages = choose_tile(programs=512, capacity=4096, elt=2, block_d=256, sms=132)
    assert (block_n, stages) == (64, 2) and stages * 2 * block_n * 256 * 2 <= SMEM_BUDGET


def test_a_paged_launch_runs_the_contiguous_launchs_stages():
    inputs = make_inputs(2, 4, 2, 1, 130, 32, 16, False, torch.float32, DEVICE)
    run(inputs, num_splits=2, tiles=(32, 4, 3))
    assert last_config().endswith("s3 splits=2 page=16")


@pytest.mark.slow
def test_paged_k_and_v_are_buffered_as_deeply_as_contiguous_ones_at_the_same_stages():
    """The table is read a block ahead, so no K/V address waits on a table load of its own step: compiled for
    sm_90 (tools/decode_ttgir.py), a paged launch keeps the contiguous launch's K/V buffers and shared memory
    at the same num_stages (the table loaded in the K/V loads' own step took a share of the stages)."""
    from tests import fresh

    out = fresh.python("tools/decode_ttgir.py", "--page", "0,64", "--block-n", "64,128", "--stages", "2,3",
                       timeout=600).stdout
    found = {}
    for line in out.splitlines():
        page, tiling = line.split()[0], " ".join(line.split()[1:3])
        assert "FAILED" not in line, line
        buffers, smem = line.split("K/V buffers ")[1].split()[0], line.split("smem ")[1].split()[0]
        found.setdefault(tiling, {})[page] = (buffers, smem)
    assert len(found) == 4, out
    for tiling, pages in found.items():
        assert pages["page=0"] == pages["page=64"], (tiling, pages)
    # and a step reads one table entry for a block inside one page, one per key row for a block spanning two
    ids = {" ".join(line.split()[:2]): line.split("table ids per step ")[1] for line in out.splitlines()}
    assert ids["page=64 BLOCK_N=64"] == "1,1" and ids["page=64 BLOCK_N=128"] == "128,128", ids


def test_one_launch_plan_for_the_kernel_and_the_split_study():
    # batch 1, 8 KV groups of 4 heads, 16k keys on 132 SMs: 128-key blocks, one program per SM, so 132 // 8 splits
    assert plan(1, 1, 32, 8, 128, 16384, 2, 132) == (16, 1, 128, 3, 4, 16, False)
    # a short cache: 64-key blocks, two programs per SM, at most one split per block
    assert plan(1, 1, 32, 8, 128, 1024, 2, 132).splits == 16
    assert plan(1, 16, 128, 1, 64, 4096, 2, 132, tiles=(128, 8, 2))[:5] == (128, 16, 128, 2, 8)
    run(make_inputs(2, 4, 2, 2, 130, 32, 0, False, torch.float32, DEVICE))  # the kernel launches as planned
    p = plan(2, 2, 4, 2, 32, 130, 4, sm_count(torch.device(DEVICE)), tma=TMA_DEFAULT)
    assert last_config() == (f"decode: BLOCK_M={p.block_m} BLOCK_N={p.block_n} w{p.warps} s{p.stages} "
                             f"splits={p.splits}" + (" tma" if p.tma else ""))


def test_tma_boxes_never_span_pages_of_64_keys_or_more():
    # batch 16, 8 KV groups, 1k keys: 128-key blocks; TMA on 64-key pages takes 64-key blocks (a box is one page's
    # rows) at the same stages and splits; smaller pages and pointer loads keep the contiguous cache's tiles, and
    # where a block spans pages it is read through pointer loads
    contiguous = plan(16, 1, 32, 8, 128, 1024, 2, 132)
    assert contiguous.block_n == 128 and not contiguous.tma
    assert plan(16, 1, 32, 8, 128, 1024, 2, 132, page=64, tma=True) == contiguous._replace(block_n=64, tma=True)
    assert plan(16, 1, 32, 8, 128, 1024, 2, 132, page=256, tma=True) == contiguous._replace(tma=True)
    assert plan(16, 1, 32, 8, 128, 1024, 2, 132, page=32, tma=True) == contiguous
    assert plan(16, 1, 32, 8, 128, 1024, 2, 132, page=64, tma=False) == contiguous


@pytest.mark.parametrize("page", [16, 32])
def test_a_block_may_span_pages(page):
    """tiles= asks for 64-key blocks over smaller pages: each key row is read from its own page (pages handed out
    in reverse order, ragged lengths, a split count that cuts blocks mid-sequence)."""
    inputs = make_inputs(2, 8, 2, 3, 150, 32, 0, True, torch.float32, DEVICE)
    contiguous = run(inputs, num_splits=2)
    paged = run(paged_copy(inputs, page), num_splits=2, tiles=(64, 4, 2))
    assert last_config().startswith("decode: BLOCK_M=16 BLOCK_N=64")
    torch.testing.assert_close(paged, contiguous, rtol=1e-6, atol=1e-6)
    verdict = check_decode(lambda i: run(i, num_splits=3, tiles=(64, 4, 2)), paged_copy(inputs, page))
    assert verdict.ok, verdict.detail


def test_reference_gathers_pages_in_table_order():
    cache = torch.arange(3 * 4, dtype=torch.float32).reshape(3, 4, 1, 1)
    table = torch.tensor([[2, 0, -1]], dtype=torch.int32)
    assert gather_kv(cache, table, 0, 6).flatten().tolist() == [8, 9, 10, 11, 0, 1]


def test_reference_causal_is_bottom_right():
    """The last query sees every key; the first of q_len sees kv_len - q_len + 1 of them."""
    q = torch.zeros(1, 2, 1, 4, dtype=torch.float64)  # equal scores: the output averages the values seen
    v = torch.arange(5, dtype=torch.float64).reshape(1, 5, 1, 1).expand(1, 5, 1, 4).contiguous()
    out = decode_ref(DecodeInputs(q, torch.randn(1, 5, 1, 4), v, torch.tensor([5], dtype=torch.int32)))
    assert out[0, :, 0, 0].tolist() == [1.5, 2.0]  # mean of 0..3, mean of 0..4


def test_ragged_lengths_and_bytes():
    assert kv_lengths(4, 1, 100, ragged=True) == [25, 50, 75, 100]
    assert kv_lengths(2, 1, 100, ragged=False) == [100, 100]
    # b1 h32/kv8 one query over 1024 keys, d128, fp16: K, V of 8 heads x 1024 keys, plus Q and O of 32 heads
    assert compulsory_bytes(1, 32, 8, 1, 1024, 128, False, 2) == 2 * (2 * 1024 * 8 * 128 + 2 * 32 * 128)
    assert shape_problem(17, 1000, 0, True).startswith("decode takes 1..16")
    assert "page size 48" in shape_problem(1, 1000, 48, True)


def _valid():
    q = torch.randn(2, 2, 4, 16)
    k, v = torch.randn(2, 6, 16, 2, 16)
    table = torch.tensor([[0, 1, -1], [2, 3, 4]], dtype=torch.int32)
    return dict(q=q, k_cache=k, v_cache=v, seqlens_k=torch.tensor([20, 40], dtype=torch.int32), block_table=table)


def _with(**changes):
    args = _valid()
    args.update(changes)
    return args


BAD = [
    pytest.param(_with(block_table=torch.tensor([[0, 6, -1], [2, 3, 4]], dtype=torch.int32)),
                 r"block_table\[0, 1\] = 6 is outside the cache's 6 pages", id="table-entry-outside"),
    pytest.param(_with(block_table=torch.tensor([[0, -1, -1], [2, 3, 4]], dtype=torch.int32)),
                 r"block_table\[0, 1\] = -1 is outside", id="table-entry-negative"),
    pytest.param(_with(seqlens_k=torch.tensor([20, 49], dtype=torch.int32)),
                 "seqlens_k up to 49 exceed the cache's capacity of 48", id="lengths-over-capacity"),
    pytest.param(_with(k_cache=torch.randn(6, 24, 2, 16), v_cache=torch.randn(6, 24, 2, 16)),
                 "page size 24 cannot be tiled", id="page-size"),
    pytest.param(_with(seqlens_k=torch.tensor([1, 40], dtype=torch.int32)),
                 "causal decoding of 2 queries needs kv length >= q_len", id="q-len-over-kv-len"),
    pytest.param(_with(q=torch.randn(2, 2, 3, 16)), r"query heads \(3\) must be a multiple of the cache's kv heads",
                 id="heads-vs-groups"),
    pytest.param(_with(q=torch.randn(2, 17, 4, 16)), "decode takes 1..16 queries", id="q-len-17"),
    pytest.param(_with(seqlens_k=torch.tensor([20, 40])), "seqlens_k must be int32", id="lengths-int64"),
    pytest.param(_with(seqlens_k=None), "a paged cache .* needs seqlens_k", id="paged-without-lengths"),
    pytest.param(_with(k_cache=torch.randn(2, 1, 2, 16), v_cache=torch.randn(2, 1, 2, 16), seqlens_k=None,
                       block_table=None), "causal decoding of 2 queries needs kv length >= q_len",
                 id="q-len-over-kv-len-without-lengths"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_line(args, message):
    with pytest.raises(ValueError, match=message) as info:
        decode_attention(**args)
    assert "\n" not in str(info.value)


def test_valid_input_passes_the_checks():
    assert decode_attention(**_valid()).shape == (2, 2, 4, 16)


# --- GPU: realistic shapes in fp16 and bf16 -------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("page", [0, 16, 64, 256])
@pytest.mark.parametrize("ragged", [False, True], ids=["uniform", "ragged"])
@pytest.mark.parametrize("q_len", [1, 4])
def test_gpu_llama8b_shapes(dtype, page, ragged, q_len):
    inputs = make_inputs(8, 32, 8, q_len, 8192, 128, page, ragged, dtype, "cuda")
    for splits in (None, 1, 7):
        verdict = check_decode(lambda i: run(i, num_splits=splits), inputs)
        assert verdict.ok, f"splits {splits}: {verdict.detail}"


@pytest.mark.gpu
@pytest.mark.parametrize("page", [16, 64, 256])
@pytest.mark.parametrize("tiles", [None, (64, 4, 2), (128, 4, 3)], ids=["plan", "64-2", "128-3"])
def test_gpu_paged_gives_the_contiguous_bits(page, tiles):
    """Same tiles and splits, only the addresses differ: a paged cache (pages in reverse order, blocks spanning
    pages or not, the table read a block ahead of the K/V loads) returns the contiguous
    cache's output bit for bit, over many blocks per program and ragged ends."""
    inputs = make_inputs(4, 32, 8, 1, 8192, 128, 0, True, torch.bfloat16, "cuda")
    paged = paged_copy(inputs, page)
    for splits in (1, 3):
        out = run(paged, num_splits=splits, tiles=tiles)
        same = tiles or _launched_tiles()  # the plan's (with TMA it caps a block at the page) for both layouts
        assert torch.equal(out, run(inputs, num_splits=splits, tiles=same))


def _launched_tiles() -> tuple[int, int, int]:
    """(BLOCK_N, warps, stages) of the last launch, as last_config reports it."""
    return tuple(int(x) for x in re.search(r"BLOCK_N=(\d+) w(\d+) s(\d+)", last_config()).groups())


def _poison_past_lengths(inputs: DecodeInputs) -> DecodeInputs:
    """A contiguous cache whose rows past each sequence's length are NaN: a kernel that reads them into the sum
    returns NaN."""
    k, v = inputs.k_cache.clone(), inputs.v_cache.clone()
    for b, length in enumerate(inputs.seqlens_k.tolist()):
        k[b, length:] = float("nan")
        v[b, length:] = float("nan")
    return DecodeInputs(inputs.q, k, v, inputs.seqlens_k, None)


@pytest.mark.parametrize("splits", [1, 3])
def test_tma_boxes_match_the_reference_with_nan_past_the_lengths(splits):
    """tma=True reads whole (BLOCK_N, head_dim) boxes, rows past a sequence's length included; NaN there must not
    reach the output."""
    inputs = _poison_past_lengths(make_inputs(3, 8, 2, 2, 75, 16, 0, True, torch.float16, DEVICE))
    verdict = check_decode(lambda i: run(i, num_splits=splits, tma=True), inputs)
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize("page", [16, 32])
def test_tma_boxes_on_pages_match_the_reference(page):
    """A paged cache read in boxes of one page each where a block fits in a page (fp32 takes 32-key blocks, so
    16-key pages fall back to pointer loads)."""
    inputs = make_inputs(2, 8, 2, 1, 90, 16, 0, True, torch.float32, DEVICE)
    verdict = check_decode(lambda i: run(paged_copy(i, page), num_splits=2, tma=True), inputs)
    assert verdict.ok, verdict.detail
    assert last_config().endswith("tma page=%d" % page) == (page >= 32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(16, 1024), (4, 4096), (2, 20000)], ids=["b16-1k", "b4-4k", "b2-20000"])
@pytest.mark.parametrize("page", [0, 64, 256])
def test_gpu_tma_gives_the_pointer_loads_bits(dtype, shape, page):
    """The same tiles read through TMA boxes: the reference's answer, and the pointer loads' output at the same
    tiles bit for bit (ragged lengths, NaN past them; contiguous, 64-key pages with page-sized blocks, 256-key
    pages that hold a whole block)."""
    batch, kv_len = shape
    inputs = _poison_past_lengths(make_inputs(batch, 32, 8, 1, kv_len, 128, 0, True, dtype, "cuda"))
    if page:
        inputs = paged_copy(inputs, page)
    tiles = (64, 4, 3) if page == 64 else None  # pointer loads would take 128-key blocks there
    for splits in (None, 1, 3):
        verdict = check_decode(lambda i: run(i, num_splits=splits, tma=True), inputs)
        assert verdict.ok, f"splits {splits}: {verdict.detail}"
        assert " tma" in last_config()
        boxes = run(inputs, num_splits=splits, tma=True, tiles=tiles)
        assert " tma" in last_config()
        assert torch.equal(boxes, run(inputs, num_splits=splits, tma=False, tiles=tiles))


@pytest.mark.gpu
def test_gpu_repeated_runs_are_bit_equal():
    inputs = make_inputs(4, 64, 8, 1, 20000, 128, 64, True, torch.bfloat16, "cuda")
    first = run(inputs)
    for _ in range(5):
        assert torch.equal(run(inputs), first)


# --- the decode mode in a sweep (CPU: the interpreter) ---------------------------------------------------------


def test_decode_sweep_rows_resume_and_figure(tmp_path):
    from fa2bench import api
    from fa2bench.read import plots
    from fa2bench.run.results import load_run, row_key

    options = dict(mode="decode", seqlen=[2], seqlen_k=[40], headdim=[16], batch=[2], heads=[4], kv_heads=[2],
                   causal="on", dtype=["fp32"], page_size="0,16", ragged="both",
                   provider=["fa2-decode", "torch-eager"], isolate=False)
    run = api.sweep(out=tmp_path, **options)
    frame = run.frame.set_index(["provider", "page_size", "ragged"]).sort_index()
    assert len(frame) == 8 and frame.loc["fa2-decode", "status"].eq("ok").all()
    assert frame.loc[("torch-eager", 0, False), "status"] == "ok"
    assert frame.loc[("torch-eager", 16, False), "error"].startswith("cannot read a paged KV cache")
    assert frame.loc[("torch-eager", 0, True), "error"].startswith("takes one KV length")
    ok = run.frame[run.frame["status"] == "ok"]
    assert (ok["us"] > 0).all() and (ok["gbps"] > 0).all() and ok["timer"].isin(["plain", "graph", "cpu"]).all()
    # the keys tell paged from contiguous points: a resume finds every one of them done
    assert len({row_key(r) for r in load_run(tmp_path).to_dict("records")}) == 8
    assert api.sweep(out=tmp_path, resume=True, **options).complete
    assert len(load_run(tmp_path)) == 8
    plotted = plots.plot_run(load_run(tmp_path), tmp_path / "figures")
    assert [p.name for p in plotted.files["decode_bandwidth"]] == ["decode_bandwidth-fp32.png"]
    assert [p.name for p in plotted.files["decode_latency"]] == ["decode_latency-fp32.png"]


def test_old_rows_read_as_contiguous_uniform():
    from fa2bench.run.results import row_key
    from fa2bench.core.presets import Point, Shape

    old = dict(provider="fa2", mode="fwd", dtype="fp16", batch=1, heads=2, kv_heads=2, seqlen_q=64, seqlen_k=64,
               headdim=32, causal=False)
    assert row_key(old) == Point("fa2", "fwd", "fp16", Shape(1, 2, 2, 64, 64, 32, False)).key()
    assert Shape.from_row(old) == Shape(1, 2, 2, 64, 64, 32, False)


def test_decode_preset_and_bad_decode_options():
    from fa2bench.core import config
    from fa2bench.core.presets import SpecError, SweepSpec

    shapes = SweepSpec.from_name("decode").shapes()
    assert max(s.batch * s.seqlen_k for s in shapes) <= 2**21 and {s.page_size for s in shapes} == {0, 64}
    with pytest.raises(SpecError, match="page size 48 cannot be tiled"):
        config.spec_from({"page_size": "48"}, "decode")
    with pytest.raises(SpecError, match="with --mode decode only"):
        config.spec_from({"page_size": "16"}, "smoke")
    with pytest.raises(SpecError, match="decode takes 1..16 queries"):
        config.spec_from({"seqlen": [32]}, "decode")


def test_the_tile_study_takes_shapes_and_refuses_a_bad_one_in_one_line(capsys):
    from fa2bench.profiling import decode_splits

    assert decode_splits._shape("64,32,8,1024") == (64, 32, 8, 1024)
    for bad in ("1,2,3", "64,30,8,1024", "0,32,8,1024"):
        with pytest.raises(SystemExit):
            decode_splits.main(["--out", "unused", "--study", "tiles", "--shape", bad])
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "argument --shape:" in last and bad in last and "Traceback" not in last
