"""Decoding: the one place that knows codecs and frame folders.

Everything downstream gets uint8 RGB frames shaped ``[T, H, W, 3]``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterator

# FFmpeg's messages inside OpenCV ("moov atom not found") go straight to stderr beside the one line DecodeError
# gives for the same file: quiet unless the user's environment asks for them (read when FFmpeg first opens a file).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
import cv2  # noqa: E402
import numpy as np

from pipeline.errors import ActrecError

log = logging.getLogger(__name__)
# Likewise OpenCV's own warnings ("[ WARN:0@...] ... can't be used to capture by name"): only its errors show.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

KEEP_SHARE = 0.5  # a decode that ends early keeps its frames when they are more than this share of the header's count
FRAME_PATTERN = "{:06d}.jpg"  # frames/Class/v_Class_gXX_cYY/000001.jpg, 1-based like the seed's extractor


class DecodeError(ActrecError):
    """A video or frame folder that cannot be decoded (corrupt, truncated, empty)."""


def iter_video_frames(path: str | Path, on_short: Callable[[int, int], None] | None = None,
                      threads: int = 0) -> Iterator[np.ndarray]:
    """Yield the frames of a video file as uint8 RGB ``[H, W, 3]`` arrays, in order (one sequential pass).

    A decode that ends early (a cut-off or damaged file) keeps the frames that decoded when they are most of the
    count the header lists; ``on_short(decoded, header_frames)`` is told so. Fewer raise ``DecodeError`` at the end.
    ``threads``: FFmpeg's decode threads (0: its own choice, one per core); stage one, which decodes many videos
    side by side next to the forward pass, asks for 1: frame threading only adds CPU time there.
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads] if threads else [])
    if not capture.isOpened():
        raise DecodeError(f"{path}: OpenCV cannot open it (corrupt, or a codec this OpenCV lacks)")
    expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    count = 0
    try:
        while True:
            ok, frame_bgr = capture.read()
            if not ok:
                break
            count += 1
            yield cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    if count == 0:
        raise DecodeError(f"{path}: no decodable frames")
    _check_count(path, count, expected, on_short)


def _check_count(path: Path, count: int, expected: int, on_short) -> None:
    """Container frame counts can be off by a frame or two; a larger shortfall is a cut-off or damaged file,
    whose frames are kept when they are most of the header's count (more than KEEP_SHARE of it)."""
    if expected <= 0 or count >= expected - max(2, expected // 100):
        return
    if count <= KEEP_SHARE * expected:
        raise DecodeError(f"{path}: truncated: decoded {count} of the {expected} frames its header lists")
    log.warning("%s: decoding ended at frame %d of the %d its header lists; keeping those %d", path, count, expected,
                count)
    if on_short is not None:
        on_short(count, expected)


def video_fps(path: str | Path, default: float = 25.0) -> float:
    """Frame rate from the container (UCF-101 is 25 fps); ``default`` when the container does not say."""
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    capture.release()
    return float(fps) if fps and fps > 0 else default


def typical_fps(paths: list, sample: int = 64, default: float = 25.0) -> float:
    """The median frame rate of up to ``sample`` evenly spaced videos of ``paths`` (headers only, fast), so
    a time span in frames can be turned into seconds; ``default`` where none of them can say."""
    picked = [Path(paths[i]) for i in np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(int)]
    rates = [video_fps(p, default=0.0) for p in picked if p.is_file()] if paths else []
    rates = [r for r in rates if r > 0]
    return float(np.median(rates)) if rates else default


def frame_paths(folder: str | Path) -> list[Path]:
    """The JPEG frames of an extracted video folder, in frame order."""
    return sorted(Path(folder).glob("*.jpg"))


def iter_frames_dir(folder: str | Path) -> Iterator[np.ndarray]:
    """Yield the frames of an extracted JPEG folder as uint8 RGB ``[H, W, 3]`` arrays, one at a time, in order.

    The folder is checked before the first frame: a missing or empty folder raises at once."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DecodeError(f"{folder}: no such frames folder (run `actrec extract` first, or set embed.source=videos)")
    paths = frame_paths(folder)
    if not paths:
        raise DecodeError(f"{folder}: no .jpg frames in the folder")
    return _read_jpegs(paths)


def _read_jpegs(paths: list[Path]) -> Iterator[np.ndarray]:
    for p in paths:
        frame_bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if frame_bgr is None:
            raise DecodeError(f"{p}: unreadable JPEG")
        yield cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)

