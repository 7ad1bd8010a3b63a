"""What tests share besides fixtures: project paths, the tiny dataset's settings, video reading, disk faults.

Import these as ``from tests.helpers import ...``; fixtures live in conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = PROJECT_ROOT.parent / "shared" / "fixtures"


def read_video(path) -> np.ndarray:
    """All frames of a video file as one uint8 RGB array ``[T, H, W, 3]`` (through the project's one decoder)."""
    from pipeline.inputs.video import iter_video_frames

    return np.stack(list(iter_video_frames(path)))


def read_frames_dir(folder) -> np.ndarray:
    """All frames of an extracted JPEG folder as one uint8 RGB array ``[T, H, W, 3]``."""
    from pipeline.inputs.video import iter_frames_dir

    return np.stack(list(iter_frames_dir(folder)))


def tiny_overrides(root: Path) -> list[str]:
    """--set overrides for a tiny synthetic dataset, cache and run under ``root``."""
    return [
        f"data.videos={root}/videos", f"data.frames={root}/frames", f"data.splits={root}/splits",
        "data.name=tiny", "data.split=1",
        "synth.classes=4", "synth.groups=8", "synth.clips_per_group=1", "synth.frames=12",
        "synth.width=32", "synth.height=32",
        "embed.backbone=resnet18", "embed.weights=none", "embed.img_dim=32", "embed.batch_size=16",
        "embed.workers=0", "embed.threads=1", "embed.device=cpu",
        f"cache.path={root}/cache/tiny.h5",
        "model.latent_dim=16", "model.hidden_dim=16",
        "train.sequence_length=8", "train.epochs=2", "train.batch_size=4", "train.device=cpu",
        f"run.dir={root}/run",
    ]


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """Write a filler file until ``folder``'s file system has at most ``leave`` bytes free; returns the filler."""
    import errno
    import shutil

    filler = Path(folder) / "filler"
    with open(filler, "ab") as f:
        try:
            while (free := shutil.disk_usage(folder).free) > leave:
                f.write(bytes(min(free - leave, 1 << 20)))
                f.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def remount_read_only(folder: Path) -> None:
    import subprocess

    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
