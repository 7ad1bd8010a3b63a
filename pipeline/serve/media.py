"""Pictures and tables the page draws from a prediction: the timeline of top labels, thumbnail strips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.fileio import atomic_path
from pipeline.inputs.video import iter_video_frames
from pipeline.predict.predictor import VideoPrediction

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
