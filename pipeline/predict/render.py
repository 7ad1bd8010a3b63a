"""Predict stage, rendering: a video's predictions drawn onto its frames, written as an MP4 or a GIF."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pipeline.errors import ActrecError
from pipeline.fileio import atomic_path
from pipeline.inputs.video import iter_video_frames
from pipeline.inputs.written import check_written_video
from pipeline.predict.prediction import VideoPrediction

MIN_WIDTH = 320  # annotated output is scaled up to at least this width so the text stays readable


def frame_windows(num_frames: int, starts: list[int], window: int) -> np.ndarray:
    """For each frame, the window whose centre is nearest (the label shown on that frame): ``[num_frames]``.

    A binary search over the (sorted) centres, so memory grows with the frames, not frames x windows.
    """
    if len(starts) == 1:
        return np.zeros(num_frames, dtype=np.int64)
    centres = np.asarray(starts, dtype=np.float64) + min(window, num_frames) / 2
    times = np.arange(num_frames) + 0.5
    after = np.clip(np.searchsorted(centres, times), 1, len(centres) - 1)
    before = after - 1
    # Ties go to the earlier window, as argmin over distances did.
    return np.where(times - centres[before] <= centres[after] - times, before, after)


def annotate(frame: np.ndarray, top: list[dict]) -> np.ndarray:
    """A frame (RGB) scaled to at least MIN_WIDTH wide, with the top labels and probability bars drawn on it."""
    height, width = frame.shape[:2]
    scale = max(1.0, MIN_WIDTH / width)
    frame = cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_LINEAR)
    canvas = frame.copy()
    row_height, bar_width = 22, min(120, canvas.shape[1] // 3)
    cv2.rectangle(canvas, (0, 0), (canvas.shape[1], 8 + row_height * len(top)), (0, 0, 0), -1)
    frame = cv2.addWeighted(canvas, 0.55, frame, 0.45, 0)
    for row, entry in enumerate(top):
        y = 6 + row_height * row
        filled = int(bar_width * entry["probability"])
        cv2.rectangle(frame, (6, y + 3), (6 + bar_width, y + row_height - 5), (90, 90, 90), 1)
        cv2.rectangle(frame, (6, y + 3), (6 + filled, y + row_height - 5), (60, 200, 60), -1)
        text = f"{entry['label']} {entry['probability']:.0%}"
        cv2.putText(frame, text, (12 + bar_width, y + row_height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return frame


def write_annotated(video: Path, prediction: VideoPrediction, out: Path, topk: int, gif_max_frames: int) -> int:
    """Write the annotated copy of ``video`` (MP4 or GIF) atomically; returns the number of frames written."""
    nearest = frame_windows(prediction.frames, prediction.starts, prediction.window_frames)
    tops = [prediction.window_top(i, topk) for i in range(len(prediction.starts))]
    is_gif = out.suffix.lower() == ".gif"
    step = max(1, -(-prediction.frames // gif_max_frames)) if is_gif else 1
    written, writer, gif_frames = 0, None, []
    with atomic_path(out) as tmp:
        for t, frame in enumerate(iter_video_frames(video)):
            if t % step or t >= len(nearest):
                continue
            annotated = annotate(frame, tops[nearest[t]])
            if is_gif:
                gif_frames.append(Image.fromarray(annotated).quantize(colors=64, method=Image.Quantize.MEDIANCUT))
            else:
                if writer is None:
                    size = (annotated.shape[1], annotated.shape[0])
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), prediction.fps, size)
                    if not writer.isOpened():
                        raise ActrecError(f"{out}: OpenCV cannot write this format; use a .mp4 or .gif name")
                writer.write(cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))
            written += 1
        if writer is not None:
            writer.release()
            check_written_video(tmp, out, written)  # OpenCV drops write errors (a full disk) silently
        if is_gif:
            duration_ms = round(1000 * step / prediction.fps)
            gif_frames[0].save(tmp, save_all=True, append_images=gif_frames[1:], duration=duration_ms, loop=0,
                               optimize=True)
    return written
