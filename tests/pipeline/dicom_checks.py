"""Checks shared by the pipeline tests: dciodvfy errors, HU values, geometry."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

# Errors name values that differ per file (positions, UIDs); compare the kind of error only.
_VALUE = re.compile(r"<[^>]*>|\[[^\]]*\]|= .*$")


def dciodvfy_errors(path: Path) -> set[str]:
    """The set of distinct error kinds dciodvfy reports for one file."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {_VALUE.sub("", line).strip() for line in lines if line.startswith("Error")}


def new_errors(derived: Path, source: Path) -> set[str]:
    """dciodvfy errors of `derived` that its source instance does not already have."""
    return dciodvfy_errors(derived) - dciodvfy_errors(source)


def modality_values(ds: Dataset) -> np.ndarray:
    """Float values in the modality's units (HU for CT)."""
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return ds.pixel_array.astype(np.float64) * slope + intercept
