"""The vocabulary every stage shares: shapes, points and presets; the FLOP, IO and memory models; the provider
registry; sweep options; matmul precision; the float64 reference and its correctness gate. No torch at import."""
