"""fa2bench: how fast is attention on my GPU, and why? Built around FlashAttention-2 (Dao, 2023)."""
import os as _os

__version__ = "0.1.0"


def _interpret_without_gpu() -> None:
    """Without CUDA, run Triton kernels through Triton's CPU interpreter. Triton reads TRITON_INTERPRET when it is
    first imported, so this runs before any fa2bench module (or the user) imports it; a value set by the user
    wins."""
    import torch

    if not torch.cuda.is_available():
        _os.environ.setdefault("TRITON_INTERPRET", "1")


_interpret_without_gpu()
