"""Reader study (issue 10): blinded expert ranking of super-resolved slices, as in the paper's Table 5.

definition → sampling (which slices) → candidates (each model once per case, cached float arrays)
→ randomise (per-reader order and opaque ids) → service (answers) → stats/export (results).
"""
