"""srnode: training."""
