"""Shared fixtures: a tiny synthetic dataset and configs that point at it.

Tests use tiny backbones and frames (resnet18 at 32x32, a handful of videos) so the
whole suite runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_config

torch.set_num_threads(1)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = PROJECT_ROOT.parent / "shared" / "fixtures"


def read_video(path) -> np.ndarray:
    """All frames of a video file as one uint8 RGB array ``[T, H, W, 3]`` (through the project's one decoder)."""
    from pipeline.data.video import iter_video_frames

    return np.stack(list(iter_video_frames(path)))


def tiny_overrides(root: Path) -> list[str]:
    """--set overrides for a tiny synthetic dataset, cache and run under ``root``."""
    return [
        f"data.videos={root}/videos", f"data.frames={root}/frames", f"data.splits={root}/splits",
        "data.name=tiny", "data.split=1",
        "synth.classes=4", "synth.groups=8", "synth.clips_per_group=1", "synth.frames=12",
        "synth.width=32", "synth.height=32",
        "embed.backbone=resnet18", "embed.weights=none", "embed.img_dim=32", "embed.batch_size=16",
        "embed.workers=1", "embed.threads=1", "embed.device=cpu",
        f"cache.path={root}/cache/tiny.h5",
        "model.latent_dim=16", "model.hidden_dim=16",
        "train.sequence_length=8", "train.epochs=2", "train.batch_size=4", "train.device=cpu",
        f"run.dir={root}/run",
    ]


@pytest.fixture
def tiny_config(tmp_path):
    """A validated Config for a tiny dataset under a fresh tmp folder (nothing generated yet)."""
    return load_config(Path(PROJECT_ROOT / "configs" / "synthetic.yaml"), tiny_overrides(tmp_path))


@pytest.fixture(scope="session")
def tiny_dataset_root(tmp_path_factory):
    """A tiny synthetic dataset (real .avi files and split files), generated once per test session.

    Tests must not modify it; copy what you need to change.
    """
    from pipeline.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", tiny_overrides(root)))
    return root


@pytest.fixture
def tiny_dataset_config(tiny_dataset_root, tmp_path):
    """A Config reading the shared tiny dataset, with cache and run dir in a fresh tmp folder."""
    overrides = tiny_overrides(tiny_dataset_root) + [f"cache.path={tmp_path}/cache/tiny.h5", f"run.dir={tmp_path}/run"]
    return load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", overrides)


@pytest.fixture
def small_disk(tmp_path):
    """Factory: a folder on its own small tmpfs (``size_mib``), to fill up or make read-only for real.

    Mounting needs root (CI runs as root); elsewhere the tests that use it are skipped. Every mount is undone
    at teardown.
    """
    import shutil
    import subprocess

    mounts = []

    def mount(size_mib: int = 16) -> Path:
        if shutil.which("mount") is None or os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(folder)
        return folder

    yield mount
    for folder in reversed(mounts):
        subprocess.run(["umount", "-l", str(folder)], check=False)


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
