"""What GPU this is and what it can do: peak tensor-core throughput (one table, with sources) and NVML info.

Peaks are dense (no structured sparsity) TFLOP/s from the vendor's datasheets: fp16/bf16 and tf32 on the tensor
cores, fp32 on the CUDA cores (IEEE fp32 FMA: what an fp32 point computes; a tf32 point may use TF32 tensor
cores and is measured against their rate). 0 means the table does not know the rate.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

A100_PEAK_TFLOPS = 312.0  # A100 SXM4 dense fp16/bf16 tensor core: the FlashAttention-2 paper's yardstick

_A100 = "NVIDIA A100 Tensor Core GPU datasheet (2021), dense rates"
_H100 = "NVIDIA H100 Tensor Core GPU datasheet (2023), dense rates (half the sparsity figures)"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet (2024), dense rates (half the sparsity figures)"


@dataclass(frozen=True)
class GpuPeak:
    name: str
    pattern: str  # regex searched in the lower-cased device name
    fp16: float  # dense fp16/bf16 tensor-core TFLOP/s (fp32 accumulate)
    tf32: float  # dense TF32 tensor-core TFLOP/s
    source: str
    hbm_tb_per_s: float | None = None  # datasheet memory bandwidth (TB/s), None where not recorded
    hbm_source: str = ""
    fp32: float = 0.0  # non-tensor (CUDA core) fp32 TFLOP/s

    def tflops(self, dtype: str) -> float:
        return {"tf32": self.tf32, "fp32": self.fp32}.get(dtype, self.fp16)


_A100_80 = "NVIDIA A100 80GB datasheet (SXM 2.04, PCIe 1.94)"
_A100_40 = "NVIDIA A100 40GB datasheet"

# Ordered: the first match wins, so variants (PCIe, NVL, memory sizes) come before the plain name.
PEAKS = (
    GpuPeak("H100 PCIe", r"h100.*pcie", 756.0, 378.0, _H100, 2.0, "NVIDIA H100 PCIe datasheet", fp32=51.0),
    GpuPeak("H100 NVL", r"h100.*nvl", 835.0, 417.5, _H100, 3.9, "NVIDIA H100 NVL datasheet", fp32=60.0),
    GpuPeak("H100 SXM5", r"h100", 989.4, 494.7, _H100, 3.35, "NVIDIA H100 SXM5 datasheet", fp32=67.0),
    GpuPeak("H200 NVL", r"h200.*nvl", 835.0, 417.5, _H200, 4.8, "NVIDIA H200 datasheet", fp32=60.0),
    GpuPeak("H200 SXM", r"h200", 989.4, 494.7, _H200, 4.8, "NVIDIA H200 datasheet", fp32=67.0),
    GpuPeak("H800 SXM5", r"h800", 989.4, 494.7, "NVIDIA H800 datasheet, dense rates", 3.35,
            "NVIDIA H800 SXM5 datasheet", fp32=67.0),
    GpuPeak("A100 PCIe", r"a100.*(80\s*gb.*pcie|pcie.*80\s*gb)", 312.0, 156.0, _A100, 2.0, _A100_80, fp32=19.5),
    GpuPeak("A100 PCIe", r"a100.*pcie", 312.0, 156.0, _A100, 1.555, _A100_40, fp32=19.5),
    GpuPeak("A100 SXM4", r"a100.*80\s*gb", 312.0, 156.0, _A100, 2.0, _A100_80, fp32=19.5),
    GpuPeak("A100 SXM4", r"a100", 312.0, 156.0, _A100, 1.555, _A100_40, fp32=19.5),
    GpuPeak("A800", r"a800", 312.0, 156.0, "NVIDIA A800 datasheet, dense rates", fp32=19.5),
    GpuPeak("A10G", r"a10g", 70.0, 35.0, "AWS G5 / NVIDIA A10G specifications, dense rates", 0.6,
            "NVIDIA A10G specifications"),
    GpuPeak("A10", r"\ba10\b", 125.0, 62.5, "NVIDIA A10 datasheet, dense rates", 0.6, "NVIDIA A10 datasheet",
            fp32=31.2),
    GpuPeak("L40S", r"l40s", 362.05, 183.0, "NVIDIA L40S datasheet, dense rates", 0.864, "NVIDIA L40S datasheet",
            fp32=91.6),
    GpuPeak("L4", r"\bl4\b", 121.0, 60.0, "NVIDIA L4 datasheet, dense rates", 0.3, "NVIDIA L4 datasheet", fp32=30.3),
    GpuPeak("V100", r"v100", 125.0, 0.0, "NVIDIA V100 datasheet (no TF32; fp32 of the SXM2 card, PCIe 14)", fp32=15.7),
    GpuPeak("T4", r"\bt4\b", 65.0, 0.0, "NVIDIA T4 datasheet (no TF32)", fp32=8.1),
    GpuPeak("RTX 4090", r"4090", 165.2, 82.6, "NVIDIA Ada whitepaper, fp16 with fp32 accumulate, dense", 1.008,
            "NVIDIA RTX 4090 specifications", fp32=82.6),
    GpuPeak("B200", r"b200", 2250.0, 1100.0, "NVIDIA DGX B200 / HGX B200 specifications, per GPU, dense", 8.0,
            "NVIDIA B200 specifications"),
)


def hbm_bandwidth(device_name: str | None) -> tuple[float, str] | None:
    """Datasheet HBM bandwidth (TB/s) and its source for a device name, or None if not in the table."""
    entry = lookup_peak(device_name)
    return (entry.hbm_tb_per_s, entry.hbm_source) if entry and entry.hbm_tb_per_s else None


def _searchable(device_name: str) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'nvidia a100 sxm4 80gb': what the tables' patterns are searched in."""
    return device_name.lower().replace("_", " ").replace("-", " ")


@dataclass(frozen=True)
class PeakInfo:
    """The peak used to compute ``pct_device_peak`` and where it came from."""
    tflops: float | None
    source: str
    matched: str | None = None


def lookup_peak(device_name: str | None) -> GpuPeak | None:
    """The table entry for a device name such as "NVIDIA H100 80GB HBM3" or "NVIDIA A100-SXM4-80GB"."""
    if not device_name:
        return None
    name = _searchable(device_name)
    return next((p for p in PEAKS if re.search(p.pattern, name)), None)


def device_peak(device_name: str | None, dtype: str, override: float | None = None) -> PeakInfo:
    if override is not None:
        return PeakInfo(override, "--peak-tflops given on the command line")
    if not device_name:
        return PeakInfo(None, "no GPU: no device peak")
    entry = lookup_peak(device_name)
    if entry is None:
        return PeakInfo(None, f"{device_name!r} is not in fa2bench's peak table; pass --peak-tflops")
    value = entry.tflops(dtype)
    return PeakInfo(value or None, entry.source, entry.name)


def pct_of(tflops: float, peak: float | None) -> float:
    return float("nan") if not peak else 100.0 * tflops / peak


# --- the GPU itself -------------------------------------------------------------------------------------


def cuda_device_name() -> str | None:
    from fa2bench.core import device
    if not device.has_cuda():
        return None
    import torch

    return torch.cuda.get_device_name(0)


def _nvml_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_info() -> list[dict]:
    """One dict per GPU from NVML (name, clocks, power limit, memory, driver) and torch (SMs, capability, UUID).

    Empty when there is no NVIDIA GPU or no NVML; never raises.
    """
    import torch

    from fa2bench.run.telemetry import nvml

    gpus: list[dict] = []
    pynvml = nvml()
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i in range(count):
        props = torch.cuda.get_device_properties(i)
        info = {"index": i, "name": props.name, "sms": props.multi_processor_count,
                "capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1)}
        if getattr(props, "uuid", None) is not None:  # which physical card: two runs on "an H200" may not share one
            info["uuid"] = str(props.uuid)
        if pynvml is not None:
            try:
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                info.update(
                    driver=_nvml_text(pynvml.nvmlSystemGetDriverVersion()),
                    max_sm_clock_mhz=pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                    max_mem_clock_mhz=pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM),
                    sm_clock_mhz=pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                    power_limit_w=pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
                    temperature_c=pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                )
            except Exception as exc:  # an old driver may lack a query; keep what we have
                info["nvml_error"] = str(exc)
        gpus.append(info)
    return gpus


def software_versions() -> dict:
    import platform

    import torch

    from fa2bench.core import device
    device.prepare_triton()
    import triton

    from fa2bench import __version__

    gpu = torch.cuda.is_available()
    return {"fa2bench": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if gpu else None, "nccl": nccl_version() if gpu else None}


def nccl_version() -> str | None:
    """The NCCL that torch.distributed's multi-GPU runs use ("2.27.5"), None where torch was built without it."""
    import torch

    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def measure_ceilings() -> dict:
    """Achievable ceilings on this GPU: a large fp16 and bf16 matmul and a large device-to-device copy.

    Timed with triton.testing.do_bench (median) on random data.
    """
    import torch
    from triton.testing import do_bench

    out = {}
    n = 8192
    for dtype, label in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
        ms = do_bench(functools.partial(torch.matmul, a, b), warmup=100, rep=500, return_mode="median")
        out[f"matmul_{label}_tflops"] = 2 * n**3 / (ms * 1e-3) / 1e12
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=100, rep=500, return_mode="median")
    out["copy_tb_per_s"] = 2 * src.numel() / (ms * 1e-3) / 1e12  # bytes read + bytes written
    del a, b, src, dst
    torch.cuda.empty_cache()  # give the memory back: the sweep's worker process needs it
    return out
