"""Commands over many runs: sweeps with DVC's queue, and the comparison report."""
