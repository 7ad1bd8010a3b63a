"""The built-in UCF-101-shaped dataset: real .avi videos and split files in data.format's layout.

UCF-101 (the default) gets its official split files, HMDB-51 its per-class split files and
the folder format none (``data.split=auto`` draws one on first use).

Classes come in time-reversed pairs (BlockMoveRight / BlockMoveLeft, TriangleGrow /
TriangleShrink, ...): clip gXX_cYY of the second class is clip gXX_cYY of the first played
backwards, frame for frame, so a model blind to frame order cannot beat chance within a
pair. Each group has its own scene (background colour and texture), shared by its
clips like an actor and room in UCF-101, so a random clip split leaks the way UCF-101's
does; position, speed, size, colour and noise vary per clip.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.errors import ActrecError
from pipeline.fileio import atomic_path, write_json
from pipeline.inputs import formats
from pipeline.inputs.motions import MOTIONS, UNPAIRED_MOTION
from pipeline.inputs.splits import PAIRS_FILE, write_class_pairs
from pipeline.inputs.written import check_written_video

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger(__name__)

MANIFEST = "synth.json"
GENERATOR_VERSION = 2  # bump when the rendering changes: a dataset made by another version is regenerated
# Intra-only: every frame is coded alone, so a reversed clip decodes to exactly the reversed frames.
# Inter-frame codecs (XVID) leave motion-direction artefacts in single frames that order-blind models can use.
FOURCC = "MJPG"

# Each motion is (forward name, reversed name); the reversed class plays forward clips backwards.

# Unit polygons (radius about 1, y down); none is rotationally symmetric under 120 degrees.
SHAPES = {
    "Block": [(-1.0, -0.6), (1.0, -0.6), (1.0, 0.6), (-1.0, 0.6)],
    "Triangle": [(0.0, -1.0), (0.87, 0.5), (-0.87, 0.5)],
    "Bar": [(-1.0, -0.25), (1.0, -0.25), (1.0, 0.25), (-1.0, 0.25)],
    "Tee": [(-1.0, -0.8), (1.0, -0.8), (1.0, -0.35), (0.25, -0.35), (0.25, 1.0), (-0.25, 1.0), (-0.25, -0.35),
            (-1.0, -0.35)],
    "Arrow": [(-1.0, -0.25), (0.2, -0.25), (0.2, -0.7), (1.0, 0.0), (0.2, 0.7), (0.2, 0.25), (-1.0, 0.25)],
    "Wedge": [(-1.0, -0.7), (1.0, 0.0), (-1.0, 0.7)],
    "Ell": [(-0.8, -1.0), (-0.3, -1.0), (-0.3, 0.5), (0.8, 0.5), (0.8, 1.0), (-0.8, 1.0)],
    "Kite": [(0.0, -1.0), (0.6, -0.3), (0.0, 1.0), (-0.6, -0.3)],
    "Flag": [(-0.8, -1.0), (0.9, -0.55), (-0.4, -0.1), (-0.4, 1.0), (-0.8, 1.0)],
}
MAX_CLASSES = len(MOTIONS) * len(SHAPES) * 2

_SUBPIXEL = 4  # cv2.fillPoly fixed-point bits: smooth sub-pixel motion


def class_specs(count: int) -> list[tuple[str, str, str, bool]]:
    """(class name, shape, motion, reversed) for ``count`` classes: pairs first, one unpaired for odd counts."""
    if count > MAX_CLASSES:
        raise ActrecError(f"synth.classes={count}: the synthetic dataset has at most {MAX_CLASSES} classes")
    specs = []
    for i in range(count // 2):
        motion = MOTIONS[i % len(MOTIONS)]
        # A different shape for each motion of a round, and never the same (shape, motion) twice.
        shape = list(SHAPES)[(i + i // len(MOTIONS)) % len(SHAPES)]
        specs.append((shape + motion[0], shape, motion[0], False))
        specs.append((shape + motion[1], shape, motion[0], True))
    if count % 2:
        shape = list(SHAPES)[(count // 2) % len(SHAPES)]
        specs.append((shape + UNPAIRED_MOTION, shape, UNPAIRED_MOTION, False))
    return specs


def held_out_groups(groups: int, split: int) -> list[int]:
    """The groups split ``split`` (1..3) tests on: UCF-101's blocks of 7 of 25 groups, scaled to ``groups``."""
    block = max(1, round(groups * 7 / 25))
    return list(range((split - 1) * block + 1, split * block + 1))


def generate_dataset(cfg: Config, force: bool = False) -> dict:
    """Write the synthetic videos to data.videos and the split files to data.splits; skip if already there."""
    started = time.perf_counter()
    videos, splits = Path(cfg.data.videos), Path(cfg.data.splits)
    settings = {**dataclasses.asdict(cfg.synth), "generator": GENERATOR_VERSION}
    if cfg.data.format != "ucf101":  # UCF-101's settings stay as they were: its caches keep their fingerprint
        settings["format"] = cfg.data.format
    specs = class_specs(cfg.synth.classes)
    names = [name for name, *_ in specs]
    entries = [(label, group, clip) for label in range(len(specs))
               for group in range(1, cfg.synth.groups + 1) for clip in range(1, cfg.synth.clips_per_group + 1)]
    summary = {"classes": len(specs), "videos": len(entries), "frames": len(entries) * cfg.synth.frames,
               "videos_dir": str(videos), "splits_dir": str(splits)}

    previous = _read_manifest(splits)
    if previous is None and split_files(splits):
        raise ActrecError(f"{splits} holds split files not written by `actrec synth` (no {MANIFEST}); refusing to "
                          f"overwrite them. Point data.splits and data.videos at an empty folder")
    if (not force and previous and previous.get("complete") and previous.get("settings") == settings
            and previous.get("videos") == str(videos) and all(_video_path(videos, names[e[0]], *e[1:]).is_file()
                                                                  for e in entries)):
        log.info(f"synthetic dataset already in {videos} and {splits} (same synth settings); skipping "
                 f"(use --force to regenerate)")
        return {**summary, "skipped": True, "seconds": 0.0}

    # Mark the folder as ours and incomplete first: an interrupted run is never taken for a finished one.
    splits.mkdir(parents=True, exist_ok=True)
    write_json(splits / MANIFEST, {"complete": False, "settings": settings, "videos": str(videos), "classes": names})
    for old in set((previous or {}).get("classes", [])) - set(names):
        shutil.rmtree(videos / old, ignore_errors=True)
    for label, group, clip in entries:
        _write_video(_video_path(videos, names[label], group, clip), render_clip(cfg.synth, specs[label], group, clip),
                     cfg.synth.fps)
    _write_format_splits(cfg, splits, names, entries)
    write_class_pairs(splits, class_pairs(specs))
    write_json(splits / MANIFEST, {"complete": True, "settings": settings, "videos": str(videos), "classes": names,
                             "fourcc": FOURCC, "count": len(entries)})
    summary.update(skipped=False, seconds=round(time.perf_counter() - started, 2))
    log.info(f"synthetic dataset: {summary['classes']} classes, {summary['videos']} videos, {summary['frames']} "
             f"frames of {cfg.synth.width}x{cfg.synth.height} in {summary['seconds']:.1f}s -> {videos} "
             f"(splits in {splits})")
    return summary


def _write_format_splits(cfg: Config, splits: Path, names: list[str], entries: list[tuple[int, int, int]]) -> None:
    """The split files of data.format (the folder format writes none: data.split=auto draws them on first use)."""
    for stale in split_files(splits):  # ours (the manifest says so), maybe of another format or an older split
        stale.unlink()
    held_out = {k: set(held_out_groups(cfg.synth.groups, k)) for k in (1, 2, 3)}
    formats.get(cfg.data.format).write_synthetic_splits(splits, names, entries, held_out)


def class_pairs(specs: list[tuple[str, str, str, bool]]) -> list[tuple[str, str]]:
    """(forward class, reversed class) names: each reversed class and the class it plays backwards."""
    forward = {(shape, motion): name for name, shape, motion, reverse in specs if not reverse}
    return [(forward[shape, motion], name) for name, shape, motion, reverse in specs if reverse]


def split_files(splits: Path) -> list[Path]:
    """The split files of any format in ``splits`` (UCF-101's, HMDB-51's, the folder format's)."""
    if not splits.is_dir():
        return []
    return sorted(p for p in splits.glob("*.txt") if p.name in ("classInd.txt", PAIRS_FILE)
                  or p.name.startswith(("trainlist", "testlist")) or "_test_split" in p.name)


def render_clip(synth, spec: tuple[str, str, str, bool], group: int, clip: int) -> np.ndarray:
    """The uint8 RGB frames ``[T, H, W, 3]`` of one clip; the same arguments always give the same frames.

    A class and its time-reversed twin draw the same random numbers (they share shape and motion), so
    clip ``gXX_cYY`` of the twin is exactly the same frames in reverse order.
    """
    _, shape, motion, reverse = spec
    width, height, count = synth.width, synth.height, synth.frames
    pair = [list(SHAPES).index(shape), [m for m, _ in MOTIONS + [(UNPAIRED_MOTION, None)]].index(motion)]
    background = _scene(np.random.default_rng([synth.seed, *pair, group, 0]), width, height)
    rng = np.random.default_rng([synth.seed, *pair, group, clip])
    # A pale object of any hue: colour must not tell the classes apart.
    colour = 255.0 * np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.35), rng.uniform(0.95, 1.0)))
    radius = 0.3 * min(width, height) * rng.uniform(0.85, 1.15)
    # Per-clip speed and timing: an eased, partial sweep of the motion.
    t = np.linspace(0.0, 1.0, count) ** rng.uniform(0.75, 1.33)
    u = rng.uniform(0.0, 0.12) + (1.0 - rng.uniform(0.0, 0.12) - rng.uniform(0.0, 0.12)) * t
    cx, cy, scale, angle, brightness = _trajectory(motion, u, rng, width, height, radius)
    noise = rng.uniform(2.0, 5.0)
    polygon = np.array(SHAPES[shape])
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        alpha = _polygon_mask(polygon, cx[i], cy[i], radius * scale[i], angle[i], width, height)
        frame = background * (1.0 - alpha) + colour * brightness[i] * alpha
        frame += rng.normal(0.0, noise, frame.shape)
        frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames[::-1].copy() if reverse else frames


def _trajectory(motion: str, u: np.ndarray, rng: np.random.Generator, width: int, height: int, radius: float):
    """Per-frame centre x, y, scale, angle (radians) and brightness of the object for progress ``u`` in [0, 1]."""
    ones = np.ones_like(u)
    margin = 1.05 * radius
    edge = 0.4 * radius  # moving objects start and end partly outside the frame: longer, clearer sweeps
    cx = ones * width * rng.uniform(0.4, 0.6)
    cy = ones * height * rng.uniform(0.4, 0.6)
    scale, brightness = ones.copy(), ones.copy()
    angle = ones * rng.uniform(-0.3, 0.3)
    if motion == "MoveRight":
        cx = edge + (width - 2 * edge) * u
    elif motion == "MoveDown":
        cy = edge + (height - 2 * edge) * u
    elif motion == "Grow":
        scale = 0.25 + 1.25 * u
    elif motion == "RotateClockwise":
        angle = angle + np.pi * u  # y points down, so increasing angles turn clockwise on screen
        scale = 1.2 * ones
    elif motion == "Brighten":
        brightness = 0.1 + 0.9 * u
        scale = 1.2 * ones
    elif motion == "OrbitClockwise":
        theta = rng.uniform(0, 2 * np.pi) + 1.5 * np.pi * u
        cx = width / 2 + (width / 2 - margin) * np.cos(theta)
        cy = height / 2 + (height / 2 - 0.8 * margin) * np.sin(theta)
        scale = 0.8 * ones
    elif motion == UNPAIRED_MOTION:
        scale = 0.3 + 1.1 * np.sin(np.pi * u)
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return cx, cy, scale, angle, brightness


def _scene(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A group's background, float ``[H, W, 3]``: a mid-dark colour with a faint texture."""
    base = rng.uniform(40, 90, size=3)
    tint = rng.uniform(-1, 1, size=3)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    kind = rng.integers(4)
    if kind == 0:  # stripes
        direction = rng.uniform(0, np.pi)
        texture = np.sin(2 * np.pi * rng.uniform(2, 6) * (x * np.cos(direction) + y * np.sin(direction)))
    elif kind == 1:  # checkerboard
        cells = rng.uniform(3, 8)
        texture = np.sign(np.sin(np.pi * cells * x) * np.sin(np.pi * cells * y))
    elif kind == 2:  # linear gradient
        direction = rng.uniform(0, 2 * np.pi)
        texture = 2 * (x * np.cos(direction) + y * np.sin(direction))
    else:  # radial gradient
        texture = 2 * np.hypot(x - rng.uniform(0, 1), y - rng.uniform(0, 1))
    background = base + rng.uniform(5, 12) * texture[..., None] * tint
    return background


def _polygon_mask(polygon, cx, cy, size, angle, width, height) -> np.ndarray:
    """Anti-aliased coverage ``[H, W, 1]`` in [0, 1] of the polygon scaled, turned and moved into place."""
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = polygon @ rotation.T * size + (cx, cy)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(points * (1 << _SUBPIXEL)).astype(np.int32)], 255, cv2.LINE_AA, _SUBPIXEL)
    return (mask.astype(np.float32) / 255.0)[..., None]


def _video_path(videos: Path, name: str, group: int, clip: int) -> Path:
    return videos / name / f"v_{name}_g{group:02d}_c{clip:02d}.avi"


def _write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode RGB frames into ``path`` through a temp file beside it, so a video is whole or absent; a video
    whose frames do not all read back (a full disk) stops the run."""
    height, width = frames.shape[1:3]
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCC), fps, (width, height))
        if not writer.isOpened():
            raise ActrecError(f"{tmp}: OpenCV cannot write {FOURCC} .avi files here (check the folder and that "
                              f"opencv-python-headless is installed with FFmpeg)")
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        check_written_video(tmp, path, len(frames))


def _read_manifest(splits: Path) -> dict | None:
    try:
        return json.loads((splits / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
