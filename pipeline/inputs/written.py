"""Checking a video that OpenCV wrote: its VideoWriter drops write errors (a full disk) without a word."""

from __future__ import annotations

from pathlib import Path

from pipeline.fileio import incomplete_write
from pipeline.inputs.video import DecodeError, iter_video_frames


def check_written_video(written: Path, target: Path, frames: int) -> None:
    """Refuse ``written`` (the temp file of ``target``) unless all ``frames`` decode back from it."""
    try:
        count = sum(1 for _ in iter_video_frames(written))
    except DecodeError:
        count = 0
    if count != frames:
        raise incomplete_write(target, f"only {count} of its {frames} frames could be read back")
