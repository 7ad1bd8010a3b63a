"""Predictions for the page: one model in memory, one prediction at a time, every result in its own folder.

The page's handlers call this with values that came from a browser; nothing here opens a path a request
named unless it is a run's own test video or an upload Gradio stored in the server's temporary folder.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.config import ServeConfig
from pipeline.errors import ActrecError
from pipeline.predict.prediction import VideoPrediction
from pipeline.predict.predictor import Predictor, predict_video
from pipeline.predict.render import write_annotated
from pipeline.serve.runs import ServedRun

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]  # (fraction done, what runs now)


@dataclass
class PagePrediction:
    prediction: VideoPrediction
    annotated: Path  # the annotated MP4, in its own folder under the server's temporary folder


class PredictionService:
    """The runs' checkpoints behind the page; the model of the run last asked for stays loaded."""

    def __init__(self, runs: list[ServedRun], workdir: Path, settings: ServeConfig, device: str = "auto"):
        self.runs = {run.name: run for run in runs}
        self.workdir = workdir
        self.settings = settings
        self.device = device
        self._lock = threading.Lock()  # the queue runs one prediction at a time; this keeps it so
        self._loaded: tuple[str, Predictor] | None = None

    def run(self, name: str) -> ServedRun:
        if name not in self.runs:
            raise ActrecError(f"no run named {name!r} is served here")
        return self.runs[name]

    def test_video(self, run: ServedRun, name: str) -> Path:
        """The file of one of ``run``'s test videos, by its name in the split (never a path from the request)."""
        if name not in run.test_videos:
            raise ActrecError(f"{name!r} is not a test video of {run.name}")
        return run.test_videos[name]

    def check_upload(self, path: Path) -> None:
        """Refuse an upload over serve.max_upload_mb (Gradio refuses it first; this covers other routes)."""
        size_mb = path.stat().st_size / 1e6
        if size_mb > self.settings.max_upload_mb:
            raise ActrecError(f"{path.name} is {size_mb:.0f} MB, over serve.max_upload_mb={self.settings.max_upload_mb}"
                              f"; upload a shorter video or start `actrec serve` with a larger limit")

    def predict(self, run: ServedRun, video: Path, progress: Progress) -> PagePrediction:
        """``run``'s prediction on ``video`` and its annotated copy, as `actrec predict` makes them."""
        with self._lock:
            progress(0.05, f"loading the model of {run.name}")
            predictor = self._predictor(run)
            progress(0.2, "computing the video's features and its windows' labels")
            prediction = predict_video(predictor, video, predictor.cfg.predict.hop)
            progress(0.7, "drawing the annotated video")
            out = Path(tempfile.mkdtemp(dir=self.workdir)) / f"{video.stem}-annotated.mp4"
            predict_cfg = predictor.cfg.predict
            write_annotated(video, prediction, out, predict_cfg.topk, predict_cfg.gif_max_frames)
        log.info(f"{run.name}: {video.name} -> {prediction.video_top(1)[0]['label']}")
        return PagePrediction(prediction, out)

    def _predictor(self, run: ServedRun) -> Predictor:
        if self._loaded is None or self._loaded[0] != run.name:
            self._loaded = None  # the previous model goes before the next one loads: one in memory
            self._loaded = (run.name, Predictor(run.checkpoint, self.device))
        return self._loaded[1]
