"""Predict stage: any video -> windows on the training clips' time scale -> labels, annotated video, JSON.

The checkpoint carries everything needed (backbone, weights, img_dim, sequence length, class names), so
prediction runs the backbone exactly as stage one did and feeds the sequence model clips shaped like the
ones it was trained on. A video is read twice (features, then the annotated copy) so that only its features,
never all of its frames, are held in memory.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from pipeline.config import config_from_dict
from pipeline.device import autocast_dtype, resolve_device
from pipeline.embed.backbone import embed_frames, frame_resize, load_backbone, weights_identity
from pipeline.errors import ActrecError
from pipeline.fileio import atomic_path, check_writable, write_json
from pipeline.inputs.video import iter_video_frames, video_fps
from pipeline.inputs.written import check_written_video
from pipeline.sequence.checkpoint import load_checkpoint, model_from_checkpoint
from pipeline.sequence.metrics import softmax
from pipeline.sequence.sampling import eval_clip_indices

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".avi", ".mp4", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v"}
WINDOW_BATCH = 256  # windows per forward pass in prediction
MIN_WIDTH = 320  # annotated output is scaled up to at least this width so the text stays readable


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
        embed = self.cfg.embed
        trained_on = ckpt["fingerprint"].get("weights")
        if weights_identity(embed.backbone, embed.weights) != trained_on:
            raise ActrecError(f"{checkpoint} was trained on features of {embed.backbone} with weights {trained_on}, "
                              f"but {embed.weights} is now {weights_identity(embed.backbone, embed.weights)}; "
                              f"restore that weights file or train again")
        self.backbone = load_backbone(embed.backbone, embed.weights, self.device, embed.img_dim)
        self.amp_dtype = self._forward_dtype(ckpt["fingerprint"], embed.precision)
        self.storage_dtype = np.dtype(ckpt["fingerprint"].get("dtype", "float32"))
        self.sequence_length = self.cfg.train.sequence_length
        self.clip_seconds = ckpt.get("clip_seconds")  # None in checkpoints written before it was recorded

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
        features = embed_frames(self.backbone, iter_video_frames(path), frame_resize(embed), self.device,
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


def window_length(clip_seconds: float | None, fps: float, sequence_length: int) -> int:
    """Frames a window spans: the time a training clip covered on average, at this video's frame rate (a
    checkpoint from before that was recorded: ``sequence_length`` consecutive frames)."""
    if not clip_seconds:
        return sequence_length
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


def top_labels(probabilities: np.ndarray, class_names: list[str], k: int) -> list[dict]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": class_names[i], "probability": round(float(probabilities[i]), 6)} for i in order]


def predict_video(predictor: Predictor, path: Path, hop: float, topk: int) -> dict:
    """Per-window top-k labels and the video-level top-5 (mean of the windows' probabilities).

    Windows span ``predictor.clip_seconds`` and start every ``hop`` seconds, whatever the video's frame rate.
    """
    features = predictor.video_features(path)
    fps = video_fps(path)
    window = window_length(predictor.clip_seconds, fps, predictor.sequence_length)
    starts = window_starts(len(features), window, max(1, round(hop * fps)))
    probabilities = predictor.window_probabilities(features, window, starts)
    windows = []
    for start, probs in zip(starts, probabilities):
        end = min(start + window, len(features)) - 1
        windows.append({"start_frame": start, "end_frame": end, "start_s": round(start / fps, 3),
                        "end_s": round((end + 1) / fps, 3), "top": top_labels(probs, predictor.class_names, topk)})
    return {
        "video": str(path), "frames": len(features), "fps": fps, "sequence_length": predictor.sequence_length,
        "window_frames": window, "window_seconds": round(window / fps, 3), "hop_seconds": hop,
        "windows": windows, "video_top5": top_labels(probabilities.mean(axis=0), predictor.class_names, 5),
        "_window_probabilities": probabilities,
    }


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


def write_annotated(video: Path, result: dict, out: Path, topk: int, gif_max_frames: int) -> int:
    """Write the annotated copy of ``video`` (MP4 or GIF) atomically; returns the number of frames written."""
    starts = [w["start_frame"] for w in result["windows"]]
    nearest = frame_windows(result["frames"], starts, result["window_frames"])
    is_gif = out.suffix.lower() == ".gif"
    step = max(1, -(-result["frames"] // gif_max_frames)) if is_gif else 1
    written, writer, gif_frames = 0, None, []
    with atomic_path(out) as tmp:
        for t, frame in enumerate(iter_video_frames(video)):
            if t % step or t >= len(nearest):
                continue
            annotated = annotate(frame, result["windows"][nearest[t]]["top"][:topk])
            if is_gif:
                gif_frames.append(Image.fromarray(annotated).quantize(colors=64, method=Image.Quantize.MEDIANCUT))
            else:
                if writer is None:
                    size = (annotated.shape[1], annotated.shape[0])
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), result["fps"], size)
                    if not writer.isOpened():
                        raise ActrecError(f"{out}: OpenCV cannot write this format; use a .mp4 or .gif name")
                writer.write(cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))
            written += 1
        if writer is not None:
            writer.release()
            check_written_video(tmp, out, written)  # OpenCV drops write errors (a full disk) silently
        if is_gif:
            duration_ms = round(1000 * step / result["fps"])
            gif_frames[0].save(tmp, save_all=True, append_images=gif_frames[1:], duration=duration_ms, loop=0,
                               optimize=True)
    return written


def _videos_in(folder: Path) -> list[Path]:
    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise ActrecError(f"{folder}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in this folder")
    return videos


def predict(video: Path, checkpoint: Path, out: str | None = None, json_path: str | None = None,
            hop: float | None = None, device: str = "auto") -> dict:
    """Label one video (annotated video + JSON timeline) or a folder of videos (CSV of video-level top-5)."""
    video = Path(video)
    if not video.exists():
        raise ActrecError(f"{video}: no such video file or folder")
    if hop is not None and not hop > 0:
        raise ActrecError(f"--hop {hop}: seconds between windows must be above 0")
    allowed = (".csv",) if video.is_dir() else (".mp4", ".gif")
    if out is not None and Path(out).suffix.lower() not in allowed:
        what = "a folder of videos gives a CSV" if video.is_dir() else "the annotated video is an MP4 or a GIF"
        raise ActrecError(f"--out {out}: {what}; use a name ending in {' or '.join(allowed)}")
    if video.is_dir() and out is None:
        out = video / "predictions.csv"
    check_outputs({"the input video": video, "the checkpoint": Path(checkpoint)}, {"--out": out, "--json": json_path})
    predictor = Predictor(Path(checkpoint), device)
    hop = hop or predictor.cfg.predict.hop
    topk = predictor.cfg.predict.topk
    if video.is_dir():
        return predict_folder(predictor, video, Path(out), hop)

    result = predict_video(predictor, video, hop, max(topk, 5))
    result.pop("_window_probabilities")
    if json_path:
        write_json(json_path, result)
    if out:
        write_annotated(video, result, Path(out), topk, predictor.cfg.predict.gif_max_frames)
    result["outputs"] = {"annotated video": out, "JSON timeline": json_path}
    return result


def check_outputs(inputs: dict, outputs: dict) -> None:
    """Before any work: no output may be an input (after links) or another output, and each must be writable."""
    given = {option: Path(path) for option, path in outputs.items() if path is not None}
    seen = {}
    for option, path in given.items():
        for what, source in inputs.items():
            if _same_file(path, source):
                raise ActrecError(f"{option} {path} is {what}; writing it would destroy it. Choose another name")
        key = path.resolve()
        if key in seen:
            raise ActrecError(f"{option} {path} is also {seen[key]}; give each output its own name")
        seen[key] = option
    for path in given.values():
        check_writable(path)


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return a.samefile(b)  # also hard links
    return a.resolve() == b.resolve()


def format_prediction(result: dict) -> str:
    """What ``actrec predict`` prints for one video: its windows, video-level top-5 and the files written."""
    count = len(result["windows"])
    lines = [f"{result['video']}: {result['frames']} frames, {count} window{'s' if count != 1 else ''} of "
             f"{result['window_seconds']:g} s ({result['window_frames']} frames, sampled to "
             f"{result['sequence_length']}) every {result['hop_seconds']:g} s"]
    lines += [f"  {rank}. {entry['label']:<28} {entry['probability']:.3f}"
              for rank, entry in enumerate(result["video_top5"], 1)]
    lines += [f"  {what}: {path}" for what, path in result.get("outputs", {}).items() if path]
    return "\n".join(lines)


def predict_folder(predictor: Predictor, folder: Path, csv_path: Path, hop: float) -> dict:
    """Video-level top-5 for every video under ``folder``; unreadable videos are listed with the reason."""
    rows = []
    for path in _videos_in(folder):
        try:
            top = predict_video(predictor, path, hop, 5)["video_top5"]
            rows.append([str(path.relative_to(folder)), ""] + [x for e in top for x in (e["label"], e["probability"])])
        except ActrecError as exc:
            rows.append([str(path.relative_to(folder)), str(exc)])
            log.warning(f"skipped: {exc}")
    header = ["video", "error"] + [f"{what}{k}" for k in range(1, 6) for what in ("label", "probability")]
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    failed = sum(1 for row in rows if row[1])
    log.info(f"{len(rows) - failed} videos predicted, {failed} failed; video-level top-5 in {csv_path}")
    return {"csv": str(csv_path), "videos": len(rows), "failed": failed}
