"""fa2bench.profiling.compile_sm90 compiles fa2's kernels for an H100 (sm_90) on a machine without a GPU, with
Triton's bundled ptxas: a compile error on the Hopper target is caught on the CPU, before any device time is spent."""

import pytest
import torch

from fa2bench.kernels import flash2
from tests import fresh


def compile_sm90(*args: str) -> str:
    """compile_sm90's output for ``args``, compiled for real (not through the interpreter)."""
    return fresh.python("-m", "fa2bench.profiling.compile_sm90", *args).stdout


def compile_first_config(kernel: str, *flags: str) -> str:
    cfg = flash2.configs(64)[kernel][0]
    spec = f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']}w{cfg.num_warps}s{cfg.num_stages}"
    return compile_sm90("--kernel", kernel, "--headdim", "64", "--configs", spec, *flags)


@pytest.mark.slow
@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("kernel", ["fwd", "bwd_dkdv", "bwd_dq"])
def test_each_kernel_compiles_for_sm90_with_registers_reported(kernel, tma):
    out = compile_first_config(kernel, "--causal", *(["--tma"] if tma else []))
    assert "FAILED" not in out, out
    regs = int(out.split("regs ")[1].split()[0])
    assert 0 < regs <= 255


@pytest.mark.slow
@pytest.mark.parametrize("variants", ["window,docs", "softcap,alibi", "varlen,window,softcap,alibi"])
@pytest.mark.parametrize("kernel", ["fwd", "bwd_dkdv", "bwd_dq"])
def test_variant_switches_compile_for_sm90(kernel, variants):
    """fa2's variant specialisations (issue 18) build for Hopper too, not only on the interpreter."""
    out = compile_first_config(kernel, "--causal", "--variants", variants)
    assert "FAILED" not in out, out
    assert variants.replace(",", "+") in out


@pytest.mark.slow
def test_flat_compiles_the_one_loop_kernel_and_the_default_is_what_a_launch_runs():
    """--flat / --no-flat build the one-loop dK/dV kernel or the three-stage loops (FLAT a compile-time constant):
    different builds with different spill stacks; without either, the build a launch runs (documents without
    softcap: the one loop, ``flash2.flat_loops``)."""
    spec = ("--kernel", "bwd_dkdv", "--headdim", "64", "--configs", "64x64w4s3", "--causal", "--variants", "docs")
    staged, flat, launched = compile_sm90(*spec, "--no-flat"), compile_sm90(*spec, "--flat"), compile_sm90(*spec)
    assert "FAILED" not in staged + flat + launched, staged + flat + launched
    assert flat.startswith("bwd_dkdv d64 64x64w4s3 docs flat: regs"), flat
    assert staged.split(": ")[1] != flat.split(": ")[1], (staged, flat)
    assert launched.split(": ")[1] == flat.split(": ")[1], (launched, flat)


@pytest.mark.slow
def test_a_config_that_cannot_compile_is_one_failed_line():
    """A 48-row tile is not a power of two (tl.arange refuses it): the tool prints FAILED and the reason
    instead of resources, one line."""
    out = compile_sm90("--kernel", "fwd", "--headdim", "64", "--configs", "48x64w4s3")
    assert out == "fwd d64 48x64w4s3: FAILED ValueError: arange's range must be a power of 2\n", out


def test_fa2_launch_ints_are_what_a_launch_passes():
    """--shape's ints for fa2 are a launch's: contiguous (batch, heads, rows, d) strides, the GQA group, the
    sequence lengths and their power-of-two buckets, the variants preset's band. (In a fresh process: importing
    compile_sm90 turns this process's interpreter off.)"""
    ints = fresh.json_of("import json; from fa2bench.profiling.compile_sm90 import fa2_launch_ints; "
                         "print(json.dumps(fa2_launch_ints('bwd_dq', 64, (2, 4, 2, 96, 80), ('window',))))")
    q, k = torch.empty(2, 4, 96, 64), torch.empty(2, 2, 80, 64)
    assert [ints[f"stride_q{a}"] for a in "zhm"] == list(q.stride()[:3])
    assert [ints[f"stride_dq{a}"] for a in "zhm"] == list(q.stride()[:3])
    assert [ints[f"stride_k{a}"] for a in "zhn"] == list(k.stride()[:3])
    assert (ints["H"], ints["GROUP"], ints["N_CTX_Q"], ints["N_CTX_K"]) == (4, 2, 96, 80)
    assert (ints["N_CTX_Q_BUCKET"], ints["N_CTX_K_BUCKET"], ints["win_left"], ints["win_right"]) == (128, 128, 4096, 0)
    assert "stride_dkz" not in ints  # the dQ kernel has no dK


@pytest.mark.slow
def test_shape_compiles_the_build_a_launch_makes():
    """Without --shape, fa2's dQ kernel (d128, 128x64 w8 s3, bf16, causal) is built with plain ints and unaligned
    pointers and spills; with the shape of a launch it is the launch's build, which the H100's profile read at 234
    registers and no spills (docs/logs/h100-bwd-profiles-49b06e4.txt)."""
    spec = ("--kernel", "bwd_dq", "--headdim", "128", "--causal", "--dtype", "bf16", "--configs", "128x64w8s3")
    plain, launched = compile_sm90(*spec), compile_sm90(*spec, "--shape", "4,16,8,8192,8192")
    assert "FAILED" not in plain + launched, plain + launched
    assert launched.startswith("bwd_dq d128 128x64w8s3 dense shape 4,16,8,8192,8192: regs"), launched
    assert int(plain.split("stack ")[1].split()[0]) > 0, plain
    assert int(launched.split("stack ")[1].split()[0]) == 0, launched
    assert int(launched.split("regs ")[1].split()[0]) < 255, launched


LONGEST_EXP_RUN = """
import json, re, sys
from fa2bench.profiling.compile_sm90 import compile_one, flash2, sass  # first: it turns the interpreter off
kernel = compile_one("bwd_dkdv", flash2.tile_config("64x128w8s3"), 128, True, False, "bf16",
                     variants=tuple(v for v in sys.argv[1:] if v), shape=(4, 16, 8, 8192, 8192))
units = "".join("E" if "MUFU.EX2" in line else "G" if "HGMMA" in line else "" for line in sass(kernel).splitlines())
print(json.dumps(max(map(len, re.findall("E+", units)))))
"""


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["", "window", "docs"], ids=["dense", "window", "docs"])
def test_dkdv_steps_issue_dp_among_the_exponentials(variant):
    """Both dK/dV kernels (staged: dense; one loop: window, documents) compute dP^T = V dO^T before P^T, so in
    the launch's build (d128, bf16, causal, 64x128 w8 s3) dP^T's wgmmas sit among P^T's exponentials: no run of
    MUFU.EX2 in the SASS is a step's whole 32 (64 x 64 per warp group over 128 threads). With dP^T after P^T
    every step ran all 32 first (docs/variants.md section 4; the order measured 1.01-1.02x in the backward)."""
    assert fresh.json_of(LONGEST_EXP_RUN, variant) < 32
