"""Pictures and tables the page draws: a prediction's timeline of top labels, thumbnail strips, a frame at a time
and a clip between two times (the Search tab)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import ActrecError
from pipeline.fileio import atomic_path
from pipeline.inputs.video import iter_video_frames, video_fps
from pipeline.predict.prediction import VideoPrediction

THUMB_HEIGHT = 72  # pixels of each frame of a thumbnail strip


def timeline_rows(prediction: VideoPrediction, labels: int) -> list[dict]:
    """Rows (seconds, label, probability) of the video's ``labels`` most probable labels, one per window:
    the x of a window is its centre, in seconds. A video of one window gets its start and end instead, so that
    the chart draws a line rather than a lone point."""
    chosen = [entry["label"] for entry in prediction.video_top(labels)]
    columns = [prediction.class_names.index(label) for label in chosen]
    rows = []
    for i in range(len(prediction.starts)):
        start, end = prediction.window_seconds(i)
        times = (start, end) if len(prediction.starts) == 1 else ((start + end) / 2,)
        rows += [{"seconds": round(t, 3), "label": label,
                  "probability": round(float(prediction.probabilities[i, column]), 4)}
                 for t in times for label, column in zip(chosen, columns)]
    return rows


def thumbnail_strip(video: Path, count: int, out: Path) -> Path:
    """``count`` evenly spaced frames of ``video`` side by side, THUMB_HEIGHT high, as a JPEG (kept if present)."""
    if out.is_file():
        return out
    frames = list(iter_video_frames(video))  # test videos are clips of seconds: their frames fit in memory
    picked = [frames[i] for i in np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)]
    width = round(picked[0].shape[1] * THUMB_HEIGHT / picked[0].shape[0])
    strip = np.concatenate([np.asarray(Image.fromarray(f).resize((width, THUMB_HEIGHT))) for f in picked], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Image.fromarray(strip).save(tmp, format="JPEG", quality=85)
    return out


def frame_at(video: Path, seconds: float, out: Path, height: int = 2 * THUMB_HEIGHT) -> Path:
    """The frame of ``video`` at ``seconds`` (its own frame rate), ``height`` pixels high, as a JPEG (kept if
    present)."""
    if out.is_file():
        return out
    wanted = int(round(seconds * video_fps(video)))
    frame = None
    for i, frame in enumerate(iter_video_frames(video)):
        if i >= wanted:
            break
    if frame is None:
        raise ActrecError(f"{video.name}: no frame to show")
    width = round(frame.shape[1] * height / frame.shape[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Image.fromarray(frame).resize((width, height)).save(tmp, format="JPEG", quality=85)
    return out


def clip_between(video: Path, start: float, end: float, out: Path) -> Path:
    """The frames of ``video`` from ``start`` to ``end`` seconds as an MP4 at the video's frame rate (kept if
    present)."""
    import cv2

    if out.is_file():
        return out
    fps = video_fps(video)
    first, last = int(start * fps), int(np.ceil(end * fps))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        writer = None
        try:
            for i, frame in enumerate(iter_video_frames(video)):
                if i > last:
                    break
                if i >= first:
                    if writer is None:
                        size = (frame.shape[1], frame.shape[0])
                        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
                    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            if writer is not None:
                writer.release()
        if writer is None:
            raise ActrecError(f"{video.name} has no frames between {start:.2f} and {end:.2f} s")
    return out
