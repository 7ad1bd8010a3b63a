"""Predict stage, inference: any video -> windows on the training clips' time scale -> label probabilities.

The checkpoint carries everything needed (backbone, weights, img_dim, sequence length, class names), so
prediction runs the backbone exactly as stage one did and feeds the sequence model clips shaped like the
ones it was trained on. Drawing the labels onto the video is ``render``'s job; a video is read twice
(features here, the annotated copy there) so that only its features, never all of its frames, are in memory.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config import config_from_dict
from pipeline.device import autocast_dtype, resolve_device
from pipeline.embed.backbone import embed_frames
from pipeline.embed.backbones import backbone_of
from pipeline.errors import ActrecError
from pipeline.fileio import atomic_path, write_json
from pipeline.inputs import VIDEO_SUFFIXES
from pipeline.inputs.video import iter_video_frames, video_fps
from pipeline.predict.prediction import VideoPrediction
from pipeline.predict.request import check_request
from pipeline.sequence.checkpoint import load_checkpoint, model_from_checkpoint
from pipeline.sequence.metrics import softmax
from pipeline.sequence.sampling import eval_clip_indices

log = logging.getLogger(__name__)

WINDOW_BATCH = 256  # windows per forward pass in prediction


class Predictor:
    """A checkpoint's sequence model plus the backbone it was trained on, ready for any number of videos."""

    def __init__(self, checkpoint: Path, device: str = "auto"):
        ckpt = load_checkpoint(checkpoint)
        self.cfg = config_from_dict(ckpt["config"], source=f"{checkpoint} (config)")
        self.class_names = list(ckpt["class_names"])
        self.device = resolve_device(device, option="--device")
        try:
            self.model = model_from_checkpoint(ckpt).to(self.device)
        except RuntimeError as exc:
            raise ActrecError(f"{checkpoint}: its weights do not fit its own config "
                              f"({len(self.class_names)} classes): {str(exc).splitlines()[0][:200]}") from exc
        imported = ckpt["fingerprint"].get("imported")
        if imported:
            raise ActrecError(f"{checkpoint} was trained on imported features (made by {imported.get('made_by')!r}, "
                              f"from {imported.get('folder')}); prediction computes features with a backbone of its "
                              f"own, so it cannot label a video for this run. Train on a cache from `actrec embed`")
        embed = self.cfg.embed
        self.spec = backbone_of(embed)  # the backbone the run's cache was embedded with, resolved once
        trained_on = ckpt["fingerprint"].get("weights")
        if self.spec.identity != trained_on:
            raise ActrecError(f"{checkpoint} was trained on features of {embed.backbone} with weights {trained_on}, "
                              f"but {embed.weights} is now {self.spec.identity}; restore that weights file or "
                              f"train again")
        self.backbone = self.spec.build(self.device)
        self.amp_dtype = self._forward_dtype(ckpt["fingerprint"], embed.precision)
        self.storage_dtype = np.dtype(ckpt["fingerprint"].get("dtype", "float32"))
        self.sequence_length = self.cfg.train.sequence_length
        self.clip_seconds = ckpt["clip_seconds"]

    def _forward_dtype(self, fingerprint: dict, precision: str):
        """The autocast dtype the cache's features were computed in (bf16 on a GPU, fp32 on a CPU), so that
        predicting on another machine than the embedding one still feeds the model the same kind of features."""
        recorded = fingerprint.get("forward_dtype")
        if recorded is None:  # a cache written before the dtype was recorded
            return autocast_dtype(self.device, precision)
        if recorded == "float16" and self.device.type == "cpu":
            return torch.bfloat16  # CPU autocast has no fp16; bf16 is the nearest
        return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[recorded]

    def video_features(self, path: Path) -> np.ndarray:
        """Features ``[T, D]`` of every frame of a video, computed as stage one computes them."""
        embed = self.cfg.embed
        features = embed_frames(self.backbone, iter_video_frames(path), self.spec.preprocessing, self.device,
                                self.amp_dtype, embed.batch_size)
        # The model was trained on features stored in the cache dtype; round the same way.
        return features.astype(self.storage_dtype).astype(np.float32)

    @torch.inference_mode()
    def clip_probabilities(self, features: np.ndarray, clips: np.ndarray) -> np.ndarray:
        """Softmax scores ``[K, C]`` of clips given as frame indices ``[K, L]`` into ``features``."""
        batch = torch.from_numpy(features[clips]).to(self.device)
        return softmax(self.model(batch).float().cpu().numpy().astype(np.float64))

    def window_probabilities(self, features: np.ndarray, window: int, starts: list[int]) -> np.ndarray:
        """Softmax scores ``[K, C]`` of the windows starting at ``starts``, ``WINDOW_BATCH`` windows per forward
        (a long video's clips never sit in memory all at once)."""
        parts = [self.clip_probabilities(features, window_indices(len(features), window, starts[i:i + WINDOW_BATCH],
                                                                  self.sequence_length))
                 for i in range(0, len(starts), WINDOW_BATCH)]
        return np.concatenate(parts)


def window_length(clip_seconds: float, fps: float) -> int:
    """Frames a window spans: the time a training clip covered on average, at this video's frame rate."""
    return max(1, round(clip_seconds * fps))


def window_starts(num_frames: int, window: int, step: int) -> list[int]:
    """First frames of the windows: every ``step`` frames, plus one ending on the last frame.

    A video shorter than one window gets a single window over all of it.
    """
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, step))
    if starts[-1] != num_frames - window:
        starts.append(num_frames - window)
    return starts


def window_indices(num_frames: int, window: int, starts: list[int], length: int) -> np.ndarray:
    """Frame indices ``[K, length]`` of the windows' clips: each window sampled as an evaluation clip (the centres
    of ``length`` equal segments), so a window is seen on the time scale training and evaluation use."""
    return np.stack([start + eval_clip_indices(min(window, num_frames - start), length, 1)[0] for start in starts])


def predict_video(predictor: Predictor, path: Path, hop: float) -> VideoPrediction:
    """Probabilities of windows spanning ``predictor.clip_seconds`` that start every ``hop`` seconds, whatever
    the video's frame rate."""
    features = predictor.video_features(path)
    fps = video_fps(path)
    window = window_length(predictor.clip_seconds, fps)
    starts = window_starts(len(features), window, max(1, round(hop * fps)))
    return VideoPrediction(video=str(path), frames=len(features), fps=fps, sequence_length=predictor.sequence_length,
                           window_frames=window, hop_seconds=hop, starts=starts,
                           probabilities=predictor.window_probabilities(features, window, starts),
                           class_names=predictor.class_names)


def _videos_in(folder: Path) -> list[Path]:
    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise ActrecError(f"{folder}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder")
    return videos


@dataclass
class PredictionReport:
    """What ``predict`` did, the same shape for one video and for a folder."""

    predictions: list[VideoPrediction]
    failures: dict[str, str]  # video -> why it could not be predicted (a folder's unreadable videos)
    outputs: dict[str, str | None]  # what -> the file written (None: not asked for)


def predict(video: Path, checkpoint: Path, out: str | None = None, json_path: str | None = None,
            hop: float | None = None, device: str = "auto") -> PredictionReport:
    """Label one video (annotated video + JSON timeline) or a folder of videos (CSV of video-level top-5)."""
    from pipeline.predict.render import write_annotated

    video, out = check_request(video, checkpoint, out, json_path, hop)
    predictor = Predictor(Path(checkpoint), device)
    hop = hop or predictor.cfg.predict.hop
    if video.is_dir():
        return predict_folder(predictor, video, Path(out), hop)

    prediction = predict_video(predictor, video, hop)
    topk = predictor.cfg.predict.topk
    if json_path:
        write_json(json_path, prediction.as_json(max(topk, 5)))
    if out:
        write_annotated(video, prediction, Path(out), topk, predictor.cfg.predict.gif_max_frames)
    return PredictionReport([prediction], {}, {"annotated video": out, "JSON timeline": json_path})


def format_prediction(report: PredictionReport) -> str:
    """What ``actrec predict`` prints: one video's windows and top-5, or a folder's top-1 per video; the files."""
    lines = []
    if len(report.predictions) == 1 and not report.failures:
        result = report.predictions[0]
        count = len(result.starts)
        lines.append(f"{result.video}: {result.frames} frames, {count} window{'s' if count != 1 else ''} of "
                     f"{result.window_frames / result.fps:.3g} s ({result.window_frames} frames, sampled to "
                     f"{result.sequence_length}) every {result.hop_seconds:g} s")
        lines += [f"  {rank}. {entry['label']:<28} {entry['probability']:.3f}"
                  for rank, entry in enumerate(result.video_top(5), 1)]
    else:
        lines += [f"{result.video}: {top['label']} {top['probability']:.3f}"
                  for result in report.predictions for top in result.video_top(1)]
        lines += [f"{video}: skipped ({reason})" for video, reason in report.failures.items()]
    lines += [f"  {what}: {path}" for what, path in report.outputs.items() if path]
    return "\n".join(lines)


def predict_folder(predictor: Predictor, folder: Path, csv_path: Path, hop: float) -> PredictionReport:
    """Video-level top-5 for every video under ``folder``; unreadable videos are listed with the reason."""
    rows, predictions, failures = [], [], {}
    for path in _videos_in(folder):
        name = str(path.relative_to(folder))
        try:
            prediction = predict_video(predictor, path, hop)
        except ActrecError as exc:
            rows.append([name, str(exc)])
            failures[str(path)] = str(exc)
            log.warning(f"skipped: {exc}")
            continue
        predictions.append(prediction)
        rows.append([name, ""] + [x for e in prediction.video_top(5) for x in (e["label"], e["probability"])])
    header = ["video", "error"] + [f"{what}{k}" for k in range(1, 6) for what in ("label", "probability")]
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    log.info(f"{len(predictions)} videos predicted, {len(failures)} failed; video-level top-5 in {csv_path}")
    return PredictionReport(predictions, failures, {"CSV of video-level top-5": str(csv_path)})
