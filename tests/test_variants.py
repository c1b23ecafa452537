"""Attention variants (issue 18): the spelling, the float64 reference, the attended-pair FLOPs, the sweep option and
the results column, as specs."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fa2bench.core import variants
from fa2bench.core.flops import attention_flops
from fa2bench.core.presets import SpecError, SweepSpec
from fa2bench.core.reference import attention_ref
from fa2bench.core.variants import Variant, VariantError

SPELLINGS = ["dense", "window4096", "window256:0", "softcap50", "softcap2.5", "alibi", "docs", "docs:512/256/256",
             "window4096+softcap50", "window8:2+softcap3+alibi+docs:10/22"]


@pytest.mark.parametrize("text", SPELLINGS)
def test_a_spelling_reads_back_as_itself(text):
    assert variants.format_variant(variants.parse(text)) == text


def test_parts_may_come_in_any_order_and_are_written_canonically():
    assert variants.canonical("softcap50+window4096") == "window4096+softcap50"
    assert variants.parse_list("dense, alibi,dense") == ("dense", "alibi")


@pytest.mark.parametrize("text", ["window-1", "softcap0", "softcapnan", "softcap-3", "windowx", "docs:0/4",
                                  "bogus", "alibi+alibi", "docs:nomix"])
def test_bad_spellings_are_one_clear_line(text):
    with pytest.raises(VariantError) as err:
        variants.parse(text)
    assert "\n" not in str(err.value)


def test_doc_lengths_must_sum_to_the_sequence():
    with pytest.raises(SpecError, match="sum to 100"):
        SweepSpec(seqlens=(64,), headdims=(32,), batch=(1,), heads=(2,), variants=("docs:50/50",)).validate()


def test_mixed_documents_are_seeded_and_fill_each_sequence():
    lengths = variants.doc_lengths(variants.parse("docs"), 3, 8192)
    assert lengths == variants.doc_lengths(variants.parse("docs"), 3, 8192)
    assert all(sum(row) == 8192 for row in lengths) and len({tuple(r) for r in lengths}) > 1


@pytest.mark.parametrize("heads, expected", [(8, [2.0 ** -i for i in range(1, 9)]),
                                             (1, [2.0 ** -8])])
def test_alibi_slopes_are_geometric_for_powers_of_two(heads, expected):
    assert variants.alibi_slopes(heads) == pytest.approx(expected)


def test_alibi_slopes_of_other_head_counts_interleave_the_next_power_as_bloom_does():
    # 12 heads: the 8 slopes of 8 heads, then slopes 1, 3, 5, 7 of 16 heads (2^-0.5, 2^-1.5, ...)
    assert variants.alibi_slopes(12) == pytest.approx([2.0 ** -i for i in range(1, 9)]
                                                      + [2.0 ** -(0.5 + i) for i in range(4)])


# --- the reference against a loop over positions --------------------------------------------------------------


def loop_attention(q, k, v, causal, window=None, softcap=None, alibi_slopes=None, doc_ids=None):
    """One query and one key at a time, from the conventions in fa2bench.core.variants' docstring."""
    batch, heads, sq, d = q.shape
    kv_heads, sk = k.shape[1], k.shape[2]
    out = torch.zeros(batch, heads, sq, d, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            kh = h // (heads // kv_heads)
            for i in range(sq):
                pos = i + sk - sq
                scores, values = [], []
                for j in range(sk):
                    if causal and j > pos:
                        continue
                    if window is not None and not pos - window[0] <= j <= pos + window[1]:
                        continue
                    if doc_ids is not None and doc_ids[b, i] != doc_ids[b, j]:
                        continue
                    s = float(q[b, h, i] @ k[b, kh, j]) / math.sqrt(d)
                    if softcap is not None:
                        s = softcap * math.tanh(s / softcap)
                    if alibi_slopes is not None:
                        s -= float(alibi_slopes[h]) * abs(pos - j)
                    scores.append(s)
                    values.append(v[b, kh, j])
                if scores:
                    p = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
                    out[b, h, i] = sum(pi * vj for pi, vj in zip(p, values))
    return out


CASES = [("window3:1", False, 9, 9), ("window2:0", True, 7, 9), ("softcap2", False, 6, 8), ("alibi", True, 8, 8),
         ("docs:3/4/2", True, 9, 9), ("docs:5/4", False, 9, 9), ("window2+softcap1.5", True, 8, 8),
         ("window1:0+softcap3+alibi+docs:4/5", True, 9, 9), ("window0:0", False, 10, 6)]


@pytest.mark.parametrize("spelling, causal, sq, sk", CASES)
def test_the_reference_is_the_loop_over_positions(spelling, causal, sq, sk):
    torch.manual_seed(0)
    q = torch.randn(2, 4, sq, 8, dtype=torch.float64)
    k, v = (torch.randn(2, 2, sk, 8, dtype=torch.float64) for _ in range(2))
    kw = variants.kernel_kwargs(variants.parse(spelling), 2, 4, sq, "cpu")
    torch.testing.assert_close(attention_ref(q, k, v, causal, **kw), loop_attention(q, k, v, causal, **kw))


def test_a_query_that_sees_no_key_outputs_zeros_and_passes_back_no_gradient():
    q = torch.randn(1, 1, 6, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    o = attention_ref(q, k, v, True, window=(1, 0))  # queries 0 and 1 sit before the first key
    o.sum().backward()
    assert torch.isfinite(o).all() and (o[0, 0, :2] == 0).all() and (q.grad[0, 0, :2] == 0).all()


# --- FLOPs: attended pairs only ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling, causal, sq, sk", CASES + [("docs", True, 4096, 4096), ("window64", True, 300, 300)])
def test_flops_count_the_pairs_of_the_dense_mask(spelling, causal, sq, sk):
    from fa2bench.core.reference import variant_allowed

    kw = variants.kernel_kwargs(variants.parse(spelling), 2, 4, sq, "cpu")
    pairs = int(variant_allowed(sq, sk, causal, kw.get("window"), kw.get("doc_ids"), "cpu")
                .expand(2, 1, sq, sk).sum())
    assert attention_flops(2, 4, sq, sk, 8, causal, "fwd", variants.canonical(spelling)) == 4 * 4 * pairs * 8


@pytest.mark.parametrize("spelling, causal, sq, sk", CASES + [("docs", True, 512, 512)])
def test_sdpas_mask_is_built_apart_from_the_reference_and_agrees_with_it(spelling, causal, sq, sk):
    from fa2bench.core.presets import Shape
    from fa2bench.core.reference import variant_allowed
    from fa2bench.core.variant_mods import sdpa_mask

    shape = Shape(batch=2, heads=4, kv_heads=2, seqlen_q=sq, seqlen_k=sk, headdim=8, causal=causal,
                  variant=variants.canonical(spelling))
    kw = variants.kernel_kwargs(variants.parse(spelling), 2, 4, sq, "cpu")
    mask = sdpa_mask(shape, kw, "cpu")
    allowed = variant_allowed(sq, sk, causal, kw.get("window"), kw.get("doc_ids"), "cpu")
    if "alibi_slopes" in kw:  # an additive bias: -inf where masked
        mask = mask > float("-inf")
    assert torch.equal(mask.expand(2, mask.shape[1], sq, sk), allowed.expand(2, mask.shape[1], sq, sk))


def test_softcap_and_alibi_cost_what_dense_costs():
    dense = attention_flops(2, 4, 64, 64, 32, True, "bwd")
    assert attention_flops(2, 4, 64, 64, 32, True, "bwd", "softcap50+alibi") == dense


# --- the sweep ---------------------------------------------------------------------------------------------------


def test_the_variants_preset_stays_modest():
    assert len(SweepSpec.from_name("variants").points()) <= 150


@pytest.mark.parametrize("command", [["sweep", "--preset", "smoke"], ["profile", "--provider", "fa2"]])
def test_a_bad_variant_on_the_command_line_is_one_line_and_exit_2(command):
    from fa2bench.cli import app

    result = CliRunner().invoke(app, [*command, "--variant", "softcap0"])
    assert result.exit_code == 2
    assert "softcap" in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_old_results_without_a_variant_column_read_as_dense(tmp_path):
    from fa2bench.run import results

    row = {"provider": "fa2", "mode": "fwd", "dtype": "fp32", "batch": 1, "heads": 2, "kv_heads": 2,
           "seqlen_q": 64, "seqlen_k": 64, "headdim": 32, "causal": True, "status": "ok", "error": "",
           "ms": 1.0, "flops": 10, "tflops": 1.0}
    pd.DataFrame([row]).to_csv(tmp_path / "results.csv", index=False)
    frame = results.read_csv(tmp_path / "results.csv")
    assert list(frame["variant"]) == ["dense"]


@pytest.mark.slow
def test_a_cpu_sweep_of_variants_checks_every_provider_that_can_express_them(tmp_path):
    from fa2bench import api

    run = api.sweep("smoke", out=tmp_path / "run", seqlen=[64], mode=["fwd", "bwd"], isolate=False,
                    variant=["dense", "window16:0+softcap5", "alibi+docs:40/24"], causal="on",
                    provider=["fa2", "fa2-varlen", "flex", "sdpa-math", "torch-eager", "naive"], ceilings=False,
                    warmup_ms=1, rep_ms=1)
    frame = run.frame
    assert set(frame["variant"]) == {"dense", "window16:0+softcap5", "alibi+docs:40/24"}
    for r in frame.to_dict("records"):
        name, status, error = r["provider"], r["status"], r["error"]
        if name == "fa2" or (name == "fa2-varlen" and "docs" in r["variant"]):  # the kernel's own switches
            assert status == "ok", (name, r["variant"], error)
            assert "BLOCK_M=" in r["config"], (name, r["config"])  # the config the kernel launched with
        elif name == "fa2-varlen":
            assert status == "unsupported" and "packed documents only" in error
        elif name in ("torch-eager",) or (name == "sdpa-math" and "softcap" not in r["variant"]):
            assert status == "ok", (name, r["variant"], error)
        elif name == "flex":
            assert status in ("ok", "unsupported")  # FlexAttention needs a GPU (no CPU backward)
        elif name == "naive" and r["variant"] != "dense":
            assert status == "unsupported" and "cannot express variant" in error


def test_fa2_varlen_joins_only_sweeps_with_packed_documents():
    from fa2bench import api

    dense = api.plan_sweep("smoke", out="results/x-cpu")
    docs = api.plan_sweep("smoke", out="results/x-cpu", variant=["docs:40/24"], seqlen=[64])
    assert "fa2-varlen" not in dense.providers and "fa2" in dense.providers
    assert "fa2-varlen" in docs.providers


def test_sdpa_runs_a_masked_variant_with_gqa_as_users_do():
    from fa2bench.core import providers
    from fa2bench.core.presets import Shape

    shape = Shape(batch=2, heads=4, kv_heads=2, seqlen_q=40, seqlen_k=40, headdim=8, causal=True,
                  variant="window8+docs:16/24")
    q, k, v = torch.randn(2, 4, 40, 8), torch.randn(2, 2, 40, 8), torch.randn(2, 2, 40, 8)
    kw = providers.variant_kwargs(shape, "cpu")
    got = providers.get("sdpa-math").make(shape)(q, k, v)
    torch.testing.assert_close(got.double(), attention_ref(q, k, v, True, **kw), atol=1e-5, rtol=1e-5)


def test_fa2_varlen_is_handed_token_major_inputs_so_packing_them_is_a_view():
    from fa2bench.core import providers
    from fa2bench.run.point import make_inputs

    from fa2bench.core.presets import Shape

    shape = Shape(batch=2, heads=4, kv_heads=2, seqlen_q=24, seqlen_k=24, headdim=8, causal=True, variant="docs:8/16")
    q, k, v = make_inputs(shape, "fp32", "cpu", True, providers.get("fa2-varlen").layout)
    assert q.shape == (2, 4, 24, 8) and q.is_leaf and q.requires_grad
    packed = q.transpose(1, 2).reshape(-1, 4, 8)
    assert packed.data_ptr() == q.data_ptr() and packed._base is not None  # a view, no copy
    assert providers.get("fa2").layout == "bhsd" and make_inputs(shape, "fp32", "cpu")[0].is_contiguous()
