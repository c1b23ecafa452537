"""One point in depth: Triton kernel resources, torch.profiler traces, Nsight Compute counters and the IO
study against the HBM byte model."""
