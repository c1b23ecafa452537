from fa2bench.cli import app
from fa2bench.distributed.launch import pin_local_gpu

if __name__ == "__main__":  # a spawned worker process imports this module too: it must not run the CLI
    pin_local_gpu()  # under torchrun: this rank's GPU, before anything touches CUDA
    app()
