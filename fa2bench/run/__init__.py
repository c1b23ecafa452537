"""Running points: the runner and its worker process, the timer, GPU telemetry and hardware facts, and the
results store every stage writes through."""
