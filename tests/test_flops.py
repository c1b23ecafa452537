"""The FLOPs model, against counts worked out by hand."""
import pytest

from fa2bench.core.flops import attended_pairs, attention_flops, tflops


def test_forward_is_four_b_h_n_n_d():
    # 2 matmuls x 2 FLOPs per multiply-add: 4 * 2 * 16 * 1024 * 1024 * 64
    assert attention_flops(2, 16, 1024, 1024, 64, False, "fwd") == 4 * 2 * 16 * 1024 * 1024 * 64


def test_backward_is_two_and_a_half_forward_and_both_is_three_and_a_half():
    fwd = attention_flops(1, 8, 512, 512, 128, False, "fwd")
    assert attention_flops(1, 8, 512, 512, 128, False, "bwd") == 2.5 * fwd
    assert attention_flops(1, 8, 512, 512, 128, False, "fwd_bwd") == 3.5 * fwd


def test_causal_counts_the_lower_triangle_with_its_diagonal():
    # 4 queries, 4 keys: rows see 1, 2, 3, 4 keys -> 10 pairs of 16
    assert attended_pairs(4, 4, causal=True) == 10
    assert attention_flops(1, 1, 4, 4, 8, True, "fwd") == 4 * 10 * 8
    # about half at long sequences
    assert attended_pairs(4096, 4096, True) / (4096 * 4096) == pytest.approx(0.5, abs=1e-3)


def test_cross_attention_causal_is_aligned_bottom_right():
    # 2 queries, 5 keys: query 0 sees keys 0..3 (4), query 1 sees 0..4 (5)
    assert attended_pairs(2, 5, True) == 9
    # 5 queries, 2 keys: queries 0..2 see nothing, query 3 sees 1 key, query 4 sees 2
    assert attended_pairs(5, 2, True) == 3
    assert attended_pairs(3, 7, False) == 21


def test_gqa_does_not_change_the_count():
    """FLOPs count query heads; sharing key/value heads saves memory traffic, not arithmetic."""
    assert attention_flops(1, 32, 256, 256, 64, True, "fwd") == 4 * 32 * attended_pairs(256, 256, True) * 64


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode"):
        attention_flops(1, 1, 1, 1, 1, False, "forward")


def test_tflops_from_milliseconds():
    assert tflops(2 * 10**12, 1000.0) == pytest.approx(2.0)
