"""Decoder choice by measurement: OpenCV, PyAV and torchcodec in frames/s per core on real footage.

Each decoder reads the same files sequentially (one decode thread where it lets us say so) and hands RGB
frames to stage one's own resize (``resized_chunks`` with the backbone's ``preprocessing`` at 224, crop), so the numbers
compare the decoders and nothing else. Frames/s per core is frames over the process's CPU seconds, which
counts every thread a decoder starts. Rounds alternate between the decoders and medians are kept.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from benchmarks.common import row
from benchmarks.footage import build_footage, source

log = logging.getLogger(__name__)

IMG_DIM = 224
CHUNK = 32
WINS_BY = 1.15  # another decoder replaces OpenCV only when it is this much faster on both files


def opencv_frames(path: Path) -> Iterator[np.ndarray]:
    """Stage one's decoder (OpenCV's FFmpeg backend), as the decode workers run it: one thread."""
    import cv2

    from pipeline.inputs.video import iter_video_frames

    cv2.setNumThreads(1)
    return iter_video_frames(path, threads=1)


def pyav_frames(path: Path) -> Iterator[np.ndarray]:
    """PyAV (its wheels bundle FFmpeg), one decode thread, frames converted to RGB by its own swscale."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def torchcodec_frames(path: Path) -> Iterator[np.ndarray]:
    """torchcodec's CPU decoder (the system's FFmpeg libraries), one FFmpeg thread, batches of CHUNK frames."""
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path), device="cpu", num_ffmpeg_threads=1, dimension_order="NHWC",
                           seek_mode="approximate")
    for start in range(0, len(decoder), CHUNK):
        yield from decoder.get_frames_in_range(start, min(start + CHUNK, len(decoder))).data.numpy()


DECODERS: dict[str, Callable[[Path], Iterator[np.ndarray]]] = {
    "opencv": opencv_frames, "pyav": pyav_frames, "torchcodec": torchcodec_frames}
PACKAGES = {"opencv": "cv2", "pyav": "av", "torchcodec": "torchcodec"}
# Whether the wheel alone decodes: torchcodec loads the system's FFmpeg libraries (apt, brew, conda), the others
# bundle their own.
INDEX_ONLY = {"opencv": True, "pyav": True, "torchcodec": False}


def available() -> dict[str, str]:
    """The decoders that load and decode here, and for the others why not (one line each)."""
    status = {}
    for name, module in PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            status[name] = f"not installed (pip install {'opencv-python-headless' if name == 'opencv' else name})"
            continue
        try:
            next(iter(DECODERS[name](source("carphone_pristine.mp4"))))
            status[name] = "ok"
        except Exception as exc:  # noqa: BLE001  (any failure to load or decode makes it unavailable; it is reported)
            status[name] = f"does not run here: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return status


def per_core_fps(decoder: Callable[[Path], Iterator[np.ndarray]], path: Path) -> tuple[float, int]:
    """Frames/s per CPU second of decoding ``path`` plus stage one's resize to IMG_DIM, and the frame count."""
    import torch

    from pipeline.config import load_config
    from pipeline.embed.backbones import backbone_of
    from pipeline.embed.resize import resized_chunks

    resize = backbone_of(load_config(None, ["embed.backbone=resnet18", f"embed.img_dim={IMG_DIM}"]).embed).preprocessing
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the resize in one thread, as in a decode worker
    try:
        started = time.process_time()
        frames = sum(len(chunk) for chunk in resized_chunks(decoder(path), resize, CHUNK))
        return frames / (time.process_time() - started), frames
    finally:
        torch.set_num_threads(threads)


def measure(files: dict[str, Path], rounds: int) -> dict:
    """Median frames/s per core of each available decoder on each file, rounds alternating between decoders."""
    status = available()
    names = [name for name, state in status.items() if state == "ok"]
    runs: dict = {name: {label: [] for label in files} for name in names}
    counts: dict = {name: {} for name in names}
    for _ in range(rounds):
        for name in names:
            for label, path in files.items():
                fps, counts[name][label] = per_core_fps(DECODERS[name], path)
                runs[name][label].append(round(fps, 1))
    medians = {name: {label: float(np.median(values)) for label, values in per_file.items()}
               for name, per_file in runs.items()}
    return {"status": status, "runs": runs, "medians": medians, "frames": counts}


def bench_decoders(work: Path, command: str, rounds: int = 3) -> dict:
    """The decoder row: the best other decoder's speed over OpenCV's on the slower-to-win of the two files."""
    footage = build_footage(work)
    files = {"xvid 320x240": footage / "full" / "Biking.avi", "H.264 1280x720": source("bigbuckbunny.mp4")}
    result = measure(files, rounds)
    medians = result["medians"]
    others = {name: min(medians[name][label] / medians["opencv"][label] for label in files)
              for name in medians if name != "opencv"}
    best = max(others, key=others.get) if others else None
    ratio = others[best] if best else None
    value = "; ".join(f"{name}: " + ", ".join(f"{medians[name][label]:.0f}" for label in files) for name in medians)
    return row("10", f"decoders on real footage, frames/s per core ({' / '.join(files)}), decode + resize to "
               f"{IMG_DIM}", value, ratio, f"report: OpenCV stays unless another is > {WINS_BY:g}x on both and "
               f"installs from the package index alone", None, command, best_other=best, **result,
               index_only=INDEX_ONLY, files={label: str(path) for label, path in files.items()})


def format_table(result: dict) -> str:
    """The decoder table of a ``bench_decoders`` row's details, as markdown."""
    details = result["details"]
    labels = list(details["files"])
    lines = [f"| decoder | {' | '.join(labels)} | vs OpenCV |", "|---|" + "---|" * (len(labels) + 1)]
    opencv = details["medians"]["opencv"]
    for name, state in details["status"].items():
        if state != "ok":
            lines.append(f"| {name} | " + " | ".join("-" for _ in labels) + f" | {state} |")
            continue
        fps = details["medians"][name]
        lines.append(f"| {name} | " + " | ".join(f"{fps[label]:.0f}" for label in labels) + " | "
                     + ", ".join(f"x{fps[label] / opencv[label]:.2f}" for label in labels) + " |")
    return "\n".join(lines) + "\n"
