"""Sweep specs: presets expand to the paper's shapes, and option strings parse or fail clearly."""
import pytest

from fa2bench.core.presets import Point, SpecError, SweepSpec, parse_ints, parse_names


def test_paper_preset_is_the_flashattention2_sweep():
    spec = SweepSpec.from_name("paper")
    shapes = spec.shapes()
    assert sorted({s.seqlen_q for s in shapes}) == [512, 1024, 2048, 4096, 8192, 16384]
    assert {s.headdim for s in shapes} == {64, 128}
    assert {s.causal for s in shapes} == {False, True}
    assert spec.modes == ("fwd", "bwd", "fwd_bwd")
    for s in shapes:  # 16k tokens per batch and hidden 2048
        assert s.batch * s.seqlen_q == 16384
        assert s.heads * s.headdim == 2048
        assert s.kv_heads == s.heads and s.seqlen_k == s.seqlen_q
    assert len(shapes) == 6 * 2 * 2


def test_points_put_providers_innermost():
    spec = SweepSpec(seqlens=(64,), headdims=(32,), batch=(1,), heads=(2,), causal=(False,), modes=("fwd",))
    points = spec.points(("a", "b"))
    assert [p.provider for p in points] == ["a", "b"]


def test_gqa_and_cross_attention_shapes():
    spec = SweepSpec(seqlens=(128,), seqlens_k=(256,), headdims=(64,), batch=(2,), heads=(8,), kv_heads=(2, 1))
    shapes = spec.shapes()
    assert {(s.kv_heads, s.seqlen_k) for s in shapes} == {(2, 256), (1, 256)}


@pytest.mark.parametrize("text, values", [
    ("512,1024", (512, 1024)),
    ("512..4096", (512, 1024, 2048, 4096)),
    ("64:256:64", (64, 128, 192, 256)),
    ("1, 17,97", (1, 17, 97)),
])
def test_parse_ints(text, values):
    assert parse_ints(text, "seqlen") == values


@pytest.mark.parametrize("text", ["-5", "0", "abc", "4096..512", "", "1:10:0"])
def test_parse_ints_refuses_bad_values(text):
    with pytest.raises(SpecError, match="--seqlen"):
        parse_ints(text, "seqlen")


def test_parse_names_refuses_unknown():
    with pytest.raises(SpecError, match="unknown 'fp8'"):
        parse_names("fp16,fp8", "dtype", ("fp16", "bf16"))


@pytest.mark.parametrize("changes, message", [
    (dict(tokens=256), "smaller than seqlen"),
    (dict(hidden=100), "not a multiple"),
    (dict(kv_heads=(3,)), "does not divide"),
    (dict(headdims=(-64,)), "--headdim must be positive"),
    (dict(modes=("sideways",)), "unknown mode"),
])
def test_invalid_specs_are_refused(changes, message):
    spec = SweepSpec.from_name("paper").replace(**changes)
    with pytest.raises(SpecError, match=message):
        spec.validate()


def test_unknown_preset():
    with pytest.raises(SpecError, match="unknown preset"):
        SweepSpec.from_name("fast")


def test_a_results_row_gives_back_its_shape():
    from fa2bench.core.presets import Shape

    shape = Shape(2, 8, 2, 128, 256, 64, True)
    row = {**Point("fa2", "fwd", "fp16", shape).fields(), "ms": 1.0}
    assert Shape.from_row(row) == shape
    assert Shape.from_row(type("Row", (), row)) == shape  # attribute access, as itertuples rows
    assert shape.label() == "b2 h8/kv2 s128x256 d64 causal"
