from fa2bench.distributed.launch import pin_local_gpu

pin_local_gpu()  # under torchrun: this rank's GPU, before anything touches CUDA
from fa2bench.cli import app  # noqa: E402

app()
