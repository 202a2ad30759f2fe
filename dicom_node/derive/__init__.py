"""Derived-series writer: upscaled float arrays + source headers → highdicom objects."""
