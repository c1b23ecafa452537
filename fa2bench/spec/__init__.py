"""What a sweep measures, and what right means: shapes, points and presets, the FLOP, IO and memory models,
the provider registry, sweep options, precision and the float64 reference. No torch at import."""
