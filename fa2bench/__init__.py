"""fa2bench: how fast is attention on my GPU, and why? Built around FlashAttention-2 (Dao, 2023)."""
import os as _os

__version__ = "0.1.0"

# Why fa2bench's Triton kernels cannot run in this process (None when they can); see _interpret_without_gpu.
INTERPRETER_PROBLEM = None


def _interpret_without_gpu() -> None:
    """Without CUDA, run Triton kernels through Triton's CPU interpreter. Triton reads TRITON_INTERPRET when it is
    first imported, so this runs before any fa2bench module (or the user) imports it; a value set by the user
    wins. If triton was imported first without it, the kernels would fail later with a cryptic InterpreterError:
    say so once, in one line, and let the providers report it."""
    import sys
    import warnings

    import torch

    global INTERPRETER_PROBLEM
    if torch.cuda.is_available() or _os.environ.get("TRITON_INTERPRET"):
        return
    if "triton" in sys.modules:
        INTERPRETER_PROBLEM = ("triton was imported before fa2bench without TRITON_INTERPRET=1, so fa2bench's "
                               "Triton kernels cannot run on this CPU; import fa2bench first or set "
                               "TRITON_INTERPRET=1")
        warnings.warn(INTERPRETER_PROBLEM, RuntimeWarning, stacklevel=3)
        return
    _os.environ["TRITON_INTERPRET"] = "1"


_interpret_without_gpu()
