"""srnode training: fine-tune SR models on DICOM series and hand them to the node.

Data flows one way through these modules:
dataset_index (find series, split by patient/series) → slice_cache (float32 HU memmaps) →
patches (+ degradations) → loop (presets, EMA, checkpoint, distributed, validation) →
export (weights, model card, registry entry) → compare (paper table, bar plot, crop grid).
The architectures, intensity mapping, LR operator and metrics are the SR engine's (sr_engine).
"""
