"""The fuzz corpus for tests: one copy, in bench/faults/fuzz_corpus.py (bench must not import tests)."""
from __future__ import annotations

from bench.faults.fuzz_corpus import PHI_ID, PHI_MARKERS, PHI_NAME, Variant, generate, write_corpus
from bench.faults.fuzz_run import run_fuzz

__all__ = ["PHI_ID", "PHI_MARKERS", "PHI_NAME", "Variant", "generate", "run_fuzz", "write_corpus"]
