"""Test-side helpers for the real footage (benchmarks/footage.py builds it): configs and header counts."""

from __future__ import annotations

from pathlib import Path

import cv2

from benchmarks.footage import source  # noqa: F401  (re-exported for the tests)
from pipeline.config import load_config
from tests.helpers import PROJECT_ROOT, tiny_overrides


def footage_config(real_footage: Path, tmp_path: Path, fmt: str):
    """The tiny pipeline settings on one real-footage dataset; the folder format's drawn split goes to tmp_path."""
    dataset = real_footage / fmt
    splits = tmp_path / "splits" if fmt == "folder" else dataset / "splits"
    extra = ["data.split=auto"] if fmt == "folder" else []
    return load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", tiny_overrides(tmp_path) + [
        "data.synthetic=false", f"data.format={fmt}", f"data.name=real-{fmt}", f"data.videos={dataset}/videos",
        f"data.splits={splits}", "embed.batch_size=32", "train.sequence_length=8", *extra])


def header_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
