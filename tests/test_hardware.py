"""Peak lookup: device names as NVML and torch spell them map to the right datasheet entry."""
import math

import pytest

from fa2bench.run.hardware import A100_PEAK_TFLOPS, device_peak, lookup_peak, pct_of


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM5"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM4"),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM4"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe"),
    ("NVIDIA A100-PCIE-40GB", "A100 PCIe"),
    ("NVIDIA A10G", "A10G"),
    ("NVIDIA A10", "A10"),
    ("Tesla T4", "T4"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
])
def test_device_names_match_their_datasheet_entry(name, expected):
    assert lookup_peak(name).name == expected


def test_h100_sxm_peak_is_the_dense_datasheet_rate_and_tf32_has_its_own():
    assert device_peak("NVIDIA H100 80GB HBM3", "bf16").tflops == pytest.approx(989.4)
    assert device_peak("NVIDIA H100 80GB HBM3", "tf32").tflops == pytest.approx(494.7)
    assert device_peak("NVIDIA H100 80GB HBM3", "fp32").tflops == pytest.approx(67.0)  # CUDA cores, no TF32
    assert device_peak("NVIDIA A100-SXM4-80GB", "tf32").tflops == pytest.approx(156.0)
    assert device_peak("NVIDIA A100-SXM4-80GB", "fp32").tflops == pytest.approx(19.5)
    assert device_peak("NVIDIA B200", "fp32").tflops is None  # not in the table: unknown, not 0


def test_a100_is_the_papers_yardstick():
    for name in ("NVIDIA A100-SXM4-80GB", "NVIDIA A100-PCIE-40GB"):
        entry = lookup_peak(name)
        assert entry.fp16 == A100_PEAK_TFLOPS and "A100" in entry.source
        assert device_peak(name, "bf16").tflops == A100_PEAK_TFLOPS


def test_unknown_gpu_gets_a_note_not_a_crash():
    peak = device_peak("Imaginary GPU 9000", "fp16")
    assert peak.tflops is None and "--peak-tflops" in peak.source
    assert math.isnan(pct_of(100.0, peak.tflops))


def test_override_wins_and_no_gpu_has_no_peak():
    assert device_peak("NVIDIA H100 80GB HBM3", "fp16", override=500.0).tflops == 500.0
    assert device_peak(None, "fp16").tflops is None


def test_percent_of_peak():
    assert pct_of(156.0, 312.0) == pytest.approx(50.0)


def test_meta_versions_name_nccl_and_cudnn_on_a_gpu_and_leave_them_empty_without(monkeypatch):
    """Provenance (issue 20, item 5): a GPU run records the NCCL its multi-GPU runs use beside cuDNN's version."""
    import torch

    from fa2bench.run import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = hardware.software_versions()
    assert cpu["nccl"] is None and cpu["cudnn"] is None and cpu["torch"] == torch.__version__
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91900)
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: (2, 27, 5))
    gpu = hardware.software_versions()
    assert gpu["nccl"] == "2.27.5" and gpu["cudnn"] == 91900
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: torch._C._nccl_version_missing())
    assert hardware.nccl_version() is None  # torch built without NCCL
