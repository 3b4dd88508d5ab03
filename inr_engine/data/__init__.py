"""The files shipped with the engine: the bundled priors and the sample volumes (with their licences).

Importing this module needs nothing beyond the standard library, so the Slicer modules can
find the samples before PyTorch is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
PRIORS_DIR = DATA_DIR / "priors"
SAMPLES_DIR = DATA_DIR / "samples"


def sample_path(name: str) -> Path:
    """A shipped sample file (``SAMPLES_DIR / name``)."""
    return SAMPLES_DIR / name


def samples() -> list[dict]:
    """The shipped samples as ``samples.json`` describes them (file, kind, source, ground truth)."""
    return json.loads((SAMPLES_DIR / "samples.json").read_text())["samples"]
