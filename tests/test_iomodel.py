"""The HBM byte models: hand-computed values on small shapes, the paper's scaling laws, and the footprint."""
import pytest

from fa2bench.core import iomodel, providers
from fa2bench.core.iomodel import compulsory_bytes, hbm_bytes, hbm_terms, parse_blocks, theoretical_footprint_mb
from fa2bench.core.presets import Shape


def shape(n=256, d=64, b=1, h=1, kv=None, nk=None, causal=False):
    return Shape(batch=b, heads=h, kv_heads=kv or h, seqlen_q=n, seqlen_k=nk or n, headdim=d, causal=causal)


# --- hand-computed values ---------------------------------------------------------------------------------


def test_standard_attention_reads_and_writes_s_and_p_once_each_way():
    # B=1, H=2, N=Nk=4, d=8, fp16: |Q| = |K| = 64 elements, scores = 32
    s = shape(n=4, d=8, h=2)
    assert hbm_bytes("naive", s, "fwd", "fp16") == 2 * (2 * 64 + 2 * 64 + 4 * 32)  # 768
    assert hbm_bytes("naive", s, "bwd", "fp16") == 2 * (4 * 64 + 4 * 64 + 7 * 32)  # 1472
    assert hbm_bytes("naive", s, "fwd_bwd", "fp16") == 768 + 1472


def test_flash2_forward_reads_q_once_and_kv_once_per_q_block():
    # N = 256, d = 64, fp16, BLOCK_M=128, BLOCK_N=64: two Q blocks, each reading all 256 keys of K and V
    q_and_o = 2 * 256 * 64 * 2
    lse = 256 * 4
    kv = 2 * (256 * 2 * 64 * 2)
    assert hbm_bytes("fa2", shape(), "fwd", "fp16") == q_and_o + lse + kv  # 197632
    # causal: Q block 0 sees keys < 128 (two K/V blocks), Q block 1 all 256
    kv_causal = (128 + 256) * 2 * 64 * 2
    assert hbm_bytes("fa2", shape(causal=True), "fwd", "fp16") == q_and_o + lse + kv_causal  # 164864


def test_flash2_backward_reads_q_per_kv_block_in_dkdv_and_kv_per_q_block_in_dq():
    # N = 256, d = 64, fp16; dK/dV kernel BLOCK_N=128, dQ kernel BLOCK_M=128 BLOCK_N=32
    blocks = {"bwd_dkdv": (32, 128), "bwd_dq": (128, 32)}
    preprocess = 2 * 2 * 256 * 64 + 4 * 256  # O, dO read; Delta written
    dkdv_kv = 4 * 2 * 256 * 64  # K, V read, dK, dV written once
    q_row = 2 * 64 * 2 + 2 * 4  # Q, dO, LSE, Delta of one query row
    dq_q = 3 * 2 * 256 * 64 + 2 * 4 * 256  # Q, dO read, dQ written; LSE, Delta read
    full = preprocess + dkdv_kv + 2 * 256 * q_row + dq_q + 2 * (2 * 256) * 64 * 2
    assert hbm_bytes("fa2", shape(), "bwd", "fp16", blocks=blocks) == full  # 564224
    # causal: K/V block 1 is seen by query rows 128.. only; Q block 0 reads keys < 128 only
    causal = preprocess + dkdv_kv + (256 + 128) * q_row + dq_q + 2 * (128 + 256) * 64 * 2
    assert hbm_bytes("fa2", shape(causal=True), "bwd", "fp16", blocks=blocks) == causal  # 497664


def test_flash1_forward_rereads_q_and_the_fp32_output_once_per_kv_block():
    # N = 256, d = 64, fp16, BLOCK_M=128, BLOCK_N=64: 4 K/V blocks x 2 Q blocks of 128 rows
    kv = 2 * 256 * 64 * 2  # K and V once
    q = 4 * 256 * 64 * 2  # Q_i once per K/V block
    o = 2 * (3 * 256) * 64 * 4 + 256 * 64 * 2  # fp32 scratch read + written after the first block; O once
    stats = 2 * 4 * (4 * 256 + 3 * 256)  # l, m written per pair and read back after the first block
    assert hbm_bytes("fa1", shape(), "fwd", "fp16", blocks={"fwd": (128, 64)}) == kv + q + o + stats  # 636928


def test_terms_add_up_and_fwd_bwd_is_both_passes():
    s = shape(n=1000, d=96, b=2, h=4, kv=2, causal=True)
    for provider in ("naive", "fa1", "fa2", "sdpa-flash"):
        terms = hbm_terms(provider, s, "fwd_bwd", "bf16")
        assert sum(terms.values()) == hbm_bytes(provider, s, "fwd_bwd", "bf16")
        assert {k.split(".")[0] for k in terms} == {"fwd", "bwd"}
        assert hbm_bytes(provider, s, "fwd_bwd", "bf16") == (hbm_bytes(provider, s, "fwd", "bf16")
                                                             + hbm_bytes(provider, s, "bwd", "bf16"))


# --- block sizes from the config column --------------------------------------------------------------------


@pytest.mark.parametrize("config, expected", [
    ("fwd: BLOCK_M=128 BLOCK_N=64 w8 s3 | bwd_dkdv: BLOCK_M=32 BLOCK_N=128 w4 s3 | "
     "bwd_dq: BLOCK_M=128 BLOCK_N=32 w4 s3",
     {"fwd": (128, 64), "bwd_dkdv": (32, 128), "bwd_dq": (128, 32)}),  # flash2
    ("fwd: BLOCK_M=64 BLOCK_N=128 w4 s2 | bwd: BLOCK_M=32 BLOCK_N=64 w4 s2",
     {"fwd": (64, 128), "bwd": (32, 64)}),  # flash1
    ("fwd: S[qk] BLOCK_M=128 BLOCK_N=128 BLOCK_K=64 w8 s3, P[softmax] BLOCK_M=16 BLOCK_N=256 w4",
     {"fwd": (128, 128)}),  # naive: the first tile of the segment
    ("", {}), (None, {}), (float("nan"), {}), ("garbage | more: nothing here", {}),
])
def test_parse_blocks_reads_each_kernels_tiles(config, expected):
    assert parse_blocks(config) == expected


def test_the_config_column_overrides_the_default_blocks():
    s = shape(n=2048, d=128)
    chosen = "fwd: BLOCK_M=64 BLOCK_N=64 w4 s3"
    assert hbm_bytes("fa2", s, "fwd", "fp16", config=chosen) == hbm_bytes("fa2", s, "fwd", "fp16",
                                                                           blocks={"fwd": (64, 64)})
    assert hbm_bytes("fa2", s, "fwd", "fp16", config=chosen) > hbm_bytes("fa2", s, "fwd", "fp16")
    # explicit blocks win over the config string
    assert hbm_bytes("fa2", s, "fwd", "fp16", config=chosen, blocks={"fwd": (128, 64)}) == hbm_bytes(
        "fa2", s, "fwd", "fp16")


# --- scaling laws -------------------------------------------------------------------------------------------


def test_standard_attention_grows_as_n_squared():
    small, big = (hbm_bytes("naive", shape(n=n, d=128, h=16), "fwd", "fp16") for n in (8192, 16384))
    assert big / small == pytest.approx(4, rel=0.02)


def test_flash2_kv_rereads_grow_as_n_squared_d_over_block_m():
    def kv(n, d=128, bm=128):
        return hbm_terms("fa2", shape(n=n, d=d), "fwd", "fp16", blocks={"fwd": (bm, 64)})["fwd.kv"]

    assert kv(8192) == 2 * 8192 * 8192 * 128 * 2 / 128  # 2 N^2 d e / BLOCK_M exactly, N a multiple of BLOCK_M
    assert kv(16384) / kv(8192) == 4  # ~ N^2
    assert kv(8192, d=64) / kv(8192, d=128) == 0.5  # ~ d
    assert kv(8192, bm=64) / kv(8192, bm=128) == 2  # ~ 1/BLOCK_M: more SRAM, fewer re-reads (the 1/M)


def test_flash1_rereads_shrink_with_block_n():
    def q_reads(bn):
        return hbm_terms("fa1", shape(n=4096, d=128), "fwd", "fp16", blocks={"fwd": (128, bn)})["fwd.q"]

    assert q_reads(64) / q_reads(128) == 2  # Q_i re-read once per K/V block: N^2 d / BLOCK_N


def test_causal_masking_halves_flash2s_kv_rereads():
    full = hbm_terms("fa2", shape(n=16384, d=128), "fwd", "fp16")["fwd.kv"]
    causal = hbm_terms("fa2", shape(n=16384, d=128, causal=True), "fwd", "fp16")["fwd.kv"]
    assert causal / full == pytest.approx(0.5, abs=0.01)
    naive_full, naive_causal = (hbm_bytes("naive", shape(n=4096, causal=c), "fwd", "fp16") for c in (False, True))
    assert naive_full == naive_causal  # the standard kernels stay dense


def test_flash2_beats_standard_attention_and_flash1_at_long_sequences():
    for mode in ("fwd", "bwd", "fwd_bwd"):
        s = shape(n=8192, d=128, h=16)
        naive, fa1, fa2 = (hbm_bytes(p, s, mode, "fp16") for p in ("naive", "fa1", "fa2"))
        assert fa2 < naive and fa2 < fa1, mode


def test_flash1_beats_standard_attention_only_while_d_is_small_against_its_tile():
    """Θ(N²d²/M) against Θ(N²): FA1 moves Q (e bytes) and its fp32 O scratch (read and written) per row per K/V
    block, about (e + 8)·d / BLOCK_N bytes per score, against standard attention's 4·e."""
    s64, s128 = shape(n=8192, d=64, h=16), shape(n=8192, d=128, h=16)
    naive64, naive128 = (hbm_bytes("naive", s, "fwd", "fp16") for s in (s64, s128))
    assert hbm_bytes("fa1", s64, "fwd", "fp16", blocks={"fwd": (128, 128)}) < naive64  # 10·64/128 < 8 bytes
    assert hbm_bytes("fa1", s64, "fwd", "fp16", blocks={"fwd": (128, 64)}) > naive64  # 10·64/64 > 8
    assert hbm_bytes("fa1", s128, "fwd", "fp16", blocks={"fwd": (128, 64)}) > naive128
    assert hbm_bytes("fa1", s128, "fwd", "fp16", blocks={"fwd": (128, 256)}) < naive128


@pytest.mark.parametrize("headdim", [32, 64, 80, 128, 256])
def test_default_blocks_are_the_kernels_first_autotune_candidates(headdim):
    """The IO model's default tiles are read from kernels/configs.py, the space the kernels tune over: the first
    config each kernel module keeps for fp16 at this head dim (the interpreter's choice, the autotuner's first)."""
    from fa2bench.kernels import flash1, flash2

    for algo, module in (("fa1", flash1), ("fa2", flash2)):
        first = {name: (cfgs[0].kwargs["BLOCK_M"], cfgs[0].kwargs["BLOCK_N"])
                 for name, cfgs in module.configs(headdim).items()}
        assert iomodel.default_blocks(algo, headdim) == first, algo


def test_gqa_shrinks_what_standard_attention_reads_of_k_and_v():
    mha = hbm_terms("naive", shape(n=512, h=8, kv=8), "fwd", "fp16")["fwd.kv"]
    gqa = hbm_terms("naive", shape(n=512, h=8, kv=2), "fwd", "fp16")["fwd.kv"]
    assert gqa == mha / 4


MODELLED = [n for n in providers.names() if iomodel.modelled(n)]


def test_the_registry_names_each_providers_model_and_vendor_ones_are_marked_assumed():
    assert set(MODELLED) >= {"naive", "fa1", "fa2", "torch-eager", "sdpa-math", "sdpa-flash", "flex"}
    fa2_like_vendors = {p for p in MODELLED
                        if providers.get(p).kind == "vendor" and iomodel.algorithm(p) != "standard"}
    assert {p for p in MODELLED if iomodel.assumed(p)} == fa2_like_vendors
    assert {iomodel.algorithm(p) for p in ("naive", "torch-eager", "sdpa-math")} == {"standard"}


def test_unknown_provider_or_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="no HBM model for provider 'mystery'"):
        hbm_bytes("mystery", shape(), "fwd", "fp16")
    with pytest.raises(ValueError, match="unknown mode 'train'"):
        hbm_bytes("fa2", shape(), "train", "fp16")


# --- memory footprint ---------------------------------------------------------------------------------------


def test_footprint_of_standard_attention_is_s_and_p_plus_o():
    s = shape(n=1024, d=64, h=2)  # S and P: 2 x 1024 x 1024 fp16 = 4 MiB each; O: 256 KiB
    assert theoretical_footprint_mb("naive", s, "fwd", "fp16") == pytest.approx(8.25)
    assert theoretical_footprint_mb("fa2", s, "fwd", "fp16") == pytest.approx(0.25 + 2 * 1024 * 4 / 2**20)


def test_footprint_grows_with_n_for_standard_attention_and_stays_linear_for_flash():
    def ratio(provider, mode):
        return (theoretical_footprint_mb(provider, shape(n=8192, d=128), mode, "fp16")
                / theoretical_footprint_mb(provider, shape(n=4096, d=128), mode, "fp16"))

    for mode in ("fwd", "bwd", "fwd_bwd"):
        assert ratio("naive", mode) == pytest.approx(4, rel=0.05)  # N^2
        assert ratio("fa2", mode) == pytest.approx(2)  # N
        assert ratio("fa1", mode) == pytest.approx(2)


def test_fwd_bwd_footprint_holds_what_forward_saved_during_backward():
    s = shape(n=2048, d=64, h=4)
    for provider in ("naive", "fa1", "fa2"):
        both = theoretical_footprint_mb(provider, s, "fwd_bwd", "fp16")
        assert both >= theoretical_footprint_mb(provider, s, "fwd", "fp16")
        assert both > theoretical_footprint_mb(provider, s, "bwd", "fp16")
