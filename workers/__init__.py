"""srnode: workers."""
