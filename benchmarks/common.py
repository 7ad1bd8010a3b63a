"""What every bench row shares: work sizes, derived configs, the synthetic dataset, timing and the row record.

Torch-free on purpose: the runner and the report import it without paying for torch.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Config, config_from_dict

log = logging.getLogger(__name__)

UCF101_FRAMES = 2_500_000  # about 13,320 videos x 187 frames
UCF101_VIDEOS_TRAIN = 9537


@dataclass
class Sizes:
    """How much work each row does; ``QUICK`` is the smoke-test size."""
    videos: int = 16            # videos of the embed rows (UCF-101 frame size, 320x240); even, >= 6
    frames: int = 48            # frames per video
    width: int = 320
    height: int = 240
    img_dim: int = 112
    backbone: str = "resnet18"
    batch_size: int = 32
    seed_backbone: str = "resnet152"   # row 3: the seed's real backbone
    seed_clips: int = 2                # clips through the seed's loop (scaled to an epoch)
    cache_videos: int = 64             # videos of the 2048-d cache of rows 3-5
    cache_frames: int = 120
    train_steps: int = 8
    repeats: int = 3                   # row 1: alternating embed / bare-forward runs (medians compared)
    real_groups: int = 2               # row 1-real: clips per class of the small run; the large run has 3x
    real_whole: bool = True            # row 1-real: each clip a whole source (482 frames a group), else 16 frames
    scaling_clips: int = 2             # row 5: N = 2 classes x 8 groups x scaling_clips videos, then 4N
    answer_videos: int = 13320         # rows 12: a UCF-101-sized cache (videos x frames, 512-d: a ViT-B CLIP's)
    answer_frames: int = 187
    answer_dim: int = 512
    train_changes: dict = field(default_factory=dict)  # changes to the UCF-101 defaults for rows 3-5


QUICK = Sizes(videos=6, frames=8, width=64, height=48, img_dim=32, batch_size=8, seed_backbone="resnet50",
              seed_clips=1, cache_videos=8, cache_frames=16, train_steps=2, scaling_clips=1, repeats=1, real_groups=1,
              real_whole=False, answer_videos=202, answer_frames=12, answer_dim=32,
              train_changes={"train.sequence_length": 8, "train.batch_size": 4, "embed.img_dim": 32,
                             "model.latent_dim": 32, "model.hidden_dim": 32})


def derive(cfg: Config, changes: dict) -> Config:
    """A copy of ``cfg`` with dotted keys changed (validated like any config)."""
    raw = copy.deepcopy(cfg.to_dict())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    return config_from_dict(raw, source="bench")


def synthetic_dataset(cfg: Config, sizes: Sizes, root: Path, groups: int, clips: int) -> Config:
    """A synthetic dataset of 2 classes x ``groups`` x ``clips`` videos at UCF-101's frame size, frames extracted."""
    from pipeline.inputs.extract import extract_frames
    from pipeline.inputs.synthetic import generate_dataset

    bench_cfg = derive(cfg, {
        "data.name": "bench", "data.videos": str(root / "videos"), "data.frames": str(root / "frames"),
        "data.splits": str(root / "splits"), "data.split": 1,
        "synth.classes": 2, "synth.groups": groups, "synth.clips_per_group": clips,
        "synth.frames": sizes.frames, "synth.width": sizes.width, "synth.height": sizes.height,
        "embed.backbone": sizes.backbone, "embed.weights": "none", "embed.img_dim": sizes.img_dim,
        "embed.batch_size": sizes.batch_size, "embed.device": "cpu", "embed.splits": "configured",
        "embed.flip": False, "cache.path": str(root / "cache.h5"),
    })
    log.info("bench: writing a synthetic dataset of %d videos under %s", 2 * groups * clips, root)
    generate_dataset(bench_cfg)
    extract_frames(bench_cfg)
    return bench_cfg


def timed(func, *args, **kwargs) -> tuple[float, object]:
    """Seconds ``func(*args, **kwargs)`` took, and what it returned."""
    started = time.perf_counter()
    value = func(*args, **kwargs)
    return time.perf_counter() - started, value


def row(row_id: str, name: str, value: str, ratio: float | None, target: str, met: bool | None, command: str,
        **details) -> dict:
    """One table row as written to results.json (``details`` keeps every raw measurement)."""
    return {"id": row_id, "name": name, "value": value, "ratio": None if ratio is None else round(ratio, 3),
            "target": target, "met": met, "command": command, "details": details}
