"""Reading runs: summaries, figures, reports, comparisons and exports, from a results folder alone (no
runner, no kernel)."""
