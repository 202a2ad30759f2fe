"""srnode: sr_engine."""
