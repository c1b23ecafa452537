"""Test set-up: without CUDA, Triton runs through its CPU interpreter (set before Triton is imported); terminal
output is 200 columns wide in every worker, whatever the terminal (rich would wrap tables at its width)."""
import os
import zlib

import pytest
import torch

from fa2bench.core import device
from fa2bench.read.display import WIDTH_ENV

device.prepare_triton()
os.environ[WIDTH_ENV] = "200"

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """A different seed per test, derived from its id (stable across runs, so a failure reproduces)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
