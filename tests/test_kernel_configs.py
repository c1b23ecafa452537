"""kernels/configs.py: the autotune spaces and the one shared-memory budget, read by every kernel and by the IO
model, importable without torch or Triton."""
import subprocess
import sys

import pytest

from fa2bench.kernels import configs


def test_configs_import_neither_torch_nor_triton():
    code = ("import sys, fa2bench.kernels.configs, fa2bench.core.iomodel; "
            "print('torch' in sys.modules, 'triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


@pytest.mark.parametrize("spec, tile", [("64x128w8s2", (64, 128, 8, 2)), (" 128x32w4s3 ", (128, 32, 4, 3))])
def test_a_tile_is_read_as_the_tools_write_it(spec, tile):
    assert configs.parse_tile(spec) == tile


@pytest.mark.parametrize("spec", ["64x", "64x128w8", "64x128s2w8", "a64x128w8s2", ""])
def test_a_tile_it_cannot_read_is_one_error_naming_the_form(spec):
    with pytest.raises(ValueError, match="a tile is BLOCK_MxBLOCK_NwWARPSsSTAGES"):
        configs.parse_tile(spec)


def test_block_d_is_the_next_power_of_two_at_least_16():
    for headdim in range(1, 257):
        want = 16
        while want < headdim:
            want *= 2
        assert configs.block_d(headdim) == want, headdim


def _spaces():
    """Every kernel's pruned fp16 and fp32 space at head dims 64..256 (the naive matmul at a long sequence)."""
    out = []
    for d in (64, 128, 256):
        for elt in (2, 4):
            out += [configs.fa2_space(k, tiles, d, elt) for k, tiles in configs.FA2.items()]
            out += [configs.fa1_space(k, d, elt) for k in configs.FA1]
            out.append([t for t in configs.NAIVE_MATMUL if configs.naive_matmul_fits(t, 4096, 4096, d, elt)])
    return out


def test_one_budget_prunes_every_kernel(monkeypatch):
    """Shrinking SMEM_BUDGET shrinks fa2's, fa1's and the naive matmul's spaces alike: one number, one place."""
    wide = _spaces()
    monkeypatch.setattr(configs, "SMEM_BUDGET", 48 * 1024)
    narrow = _spaces()
    fa2, fa1, naive = (slice(i, None, 6) for i in (0, 3, 5))  # per (d, elt): 3 fa2 kernels, 2 fa1, 1 naive
    for which in (fa2, fa1, naive):
        assert sum(map(len, narrow[which])) < sum(map(len, wide[which]))


@pytest.mark.parametrize("headdim", [1, 16, 64, 80, 128, 256])
@pytest.mark.parametrize("elt", [2, 4])
def test_fa2_spaces_are_never_empty_and_capped(headdim, elt):
    for kernel, tiles in configs.FA2.items():
        space = configs.fa2_space(kernel, tiles, headdim, elt)
        assert 1 <= len(space) <= configs.MAX_CONFIGS
        assert all(configs.fa2_fits(kernel, t, headdim, elt) for t in space) or space == [
            configs.FA2_FALLBACK[kernel]]


def test_first_tiles_are_the_first_fitting_candidates():
    assert configs.first_tiles("fa2", 128) == {"fwd": (128, 64), "bwd_dkdv": (64, 128), "bwd_dq": (128, 32)}
    assert configs.first_tiles("fa1", 64) == {"fwd": (128, 64), "bwd": (32, 128)}
    assert configs.first_tiles("naive", 64) == {}
