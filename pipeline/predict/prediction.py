"""One video's prediction: its windows, each window's probabilities over the classes, and what they become (the
top labels of a window and of the video, the seconds a window spans, the JSON timeline). No torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def top_labels(probabilities: np.ndarray, class_names: list[str], k: int) -> list[dict]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": class_names[i], "probability": round(float(probabilities[i]), 6)} for i in order]


@dataclass
class VideoPrediction:
    """One video's windows and each window's probabilities over the classes: what every output is made from."""

    video: str
    frames: int
    fps: float
    sequence_length: int
    window_frames: int  # frames a window spans at this video's rate
    hop_seconds: float
    starts: list[int]  # first frame of each window
    probabilities: np.ndarray  # [windows, classes]
    class_names: list[str]

    def window_top(self, window: int, k: int) -> list[dict]:
        return top_labels(self.probabilities[window], self.class_names, k)

    def video_top(self, k: int = 5) -> list[dict]:
        """The video-level top-k: the mean of the windows' probabilities."""
        return top_labels(self.probabilities.mean(axis=0), self.class_names, k)

    def window_seconds(self, window: int) -> tuple[float, float]:
        """Start and end (exclusive) of a window, in seconds."""
        start = self.starts[window]
        return start / self.fps, min(start + self.window_frames, self.frames) / self.fps

    def as_json(self, topk: int) -> dict:
        """The JSON timeline: per window its frames, seconds and top-k labels; the video-level top-5."""
        windows = []
        for i, start in enumerate(self.starts):
            start_s, end_s = self.window_seconds(i)
            windows.append({"start_frame": start, "end_frame": min(start + self.window_frames, self.frames) - 1,
                            "start_s": round(start_s, 3), "end_s": round(end_s, 3),
                            "top": self.window_top(i, topk)})
        return {"video": self.video, "frames": self.frames, "fps": self.fps,
                "sequence_length": self.sequence_length, "window_frames": self.window_frames,
                "window_seconds": round(self.window_frames / self.fps, 3), "hop_seconds": self.hop_seconds,
                "windows": windows, "video_top5": self.video_top(5)}
