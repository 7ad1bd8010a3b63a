"""The embed stage on the tiny synthetic dataset: real .avi files, a real backbone, a real HDF5 cache."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cache.reader import FeatureCache
from pipeline.cli import cli
from pipeline.embed.backbone import embed_frames
from pipeline.embed.backbones import resolve_backbone
from pipeline.embed.fingerprint import embed_fingerprint
from pipeline.embed.run import embed
from pipeline.errors import ActrecError
from pipeline.inputs.extract import extract_frames
from pipeline.inputs.formats.ucf101 import embed_items
from tests.helpers import PROJECT_ROOT, read_video, tiny_overrides

CPU = torch.device("cpu")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def direct_features(cfg, video: Path, mirrored: bool = False) -> np.ndarray:
    """The backbone applied to a video's frames outside the embed stage."""
    frames = read_video(video)
    model = resolve_backbone(cfg.embed.backbone, cfg.embed.weights).build(CPU)
    return embed_frames(model, frames[:, :, ::-1] if mirrored else frames, cfg.embed.img_dim, CPU)


def test_embed_writes_every_frame_of_every_video(tiny_dataset_config, caplog):
    cfg = tiny_dataset_config
    class_names, items = embed_items(cfg)
    summary = embed(cfg)
    assert summary["embedded"] == len(items) == 32 and summary["failed"] == 0 and summary["skipped"] == 0
    assert summary["frames"] == 32 * cfg.synth.frames and summary["frames_per_second"] > 0

    cache = FeatureCache(cfg.cache.path, expected_fingerprint=embed_fingerprint(cfg))
    assert cache.names == [item.name for item in items]  # the dataset's sorted order
    assert list(cache.labels) == [item.label for item in items] and cache.class_names == class_names
    assert list(cache.lengths) == [len(read_video(item.path)) for item in items]
    assert cache.dim == 512 and not cache.has_flip
    assert cache.config == json.loads(json.dumps(cfg.to_dict(), default=str))
    for i in (0, 17):
        expected = direct_features(cfg, items[i].path)
        np.testing.assert_allclose(cache.sequence(i), expected, rtol=1e-2, atol=1e-2)  # float16 storage

    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline"):
        again = embed(cfg)
    assert again["embedded"] == 0 and again["skipped"] == 32
    assert "nothing to do" in caplog.text

    info = CliRunner().invoke(cli, ["info", cfg.cache.path])
    assert info.exit_code == 0, info.output
    assert "videos:     32" in info.output and f"frames:     {32 * cfg.synth.frames}" in info.output
    assert "failures:   0" in info.output and "backbone: resnet18" in info.output

    cfg.embed.img_dim = 48  # same cache.path, other settings: refused before anything is written
    with pytest.raises(ActrecError, match="img_dim: cache has 32, config gives 48"):
        embed(cfg)
    assert len(FeatureCache(cfg.cache.path)) == 32


def test_frames_source_agrees_with_videos(tiny_dataset_config, tmp_path):
    cfg = tiny_dataset_config
    embed(cfg)
    from_videos = FeatureCache(cfg.cache.path)

    cfg.data.frames = str(tmp_path / "frames")
    cfg.embed.source = "frames"
    cfg.cache.path = str(tmp_path / "frames.h5")
    with pytest.raises(ActrecError, match="run `actrec extract` first"):
        embed(cfg)
    extract_frames(cfg)
    embed(cfg)
    from_frames = FeatureCache(cfg.cache.path)
    assert from_frames.names == from_videos.names and from_frames.fingerprint["source"] == "frames"

    a = np.concatenate([from_videos.sequence(i) for i in range(len(from_videos))])
    b = np.concatenate([from_frames.sequence(i) for i in range(len(from_frames))])
    same = cosine(a, b)
    other = cosine(a, np.roll(b, cfg.synth.frames, axis=0))  # each frame against the next video's frame
    assert same.min() > 0.98, "JPEG round trip changed features more than compression explains"
    assert same.mean() > other.mean() + 0.02


def test_flip_features_are_the_backbone_on_mirrored_frames(tiny_dataset_config):
    cfg = tiny_dataset_config
    cfg.embed.flip = True
    embed(cfg)
    cache = FeatureCache(cfg.cache.path)
    assert cache.has_flip and cache.fingerprint["flip"] is True
    video = embed_items(cfg)[1][5].path
    np.testing.assert_allclose(cache.sequence(5, flip=True), direct_features(cfg, video, mirrored=True),
                               rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(cache.sequence(5), direct_features(cfg, video), rtol=1e-2, atol=1e-2)
    assert not np.allclose(cache.sequence(5, flip=True), cache.sequence(5), atol=0.05)


def test_corrupt_and_empty_videos_are_recorded_not_fatal(tiny_dataset_root, tiny_dataset_config, tmp_path, caplog):
    cfg = tiny_dataset_config
    shutil.copytree(tiny_dataset_root / "videos", tmp_path / "videos")
    cfg.data.videos = str(tmp_path / "videos")
    items = embed_items(cfg)[1]
    empty, garbage = items[3], items[20]
    (tmp_path / "videos" / f"{empty.name}.avi").write_bytes(b"")
    (tmp_path / "videos" / f"{garbage.name}.avi").write_bytes(os.urandom(5000))

    with caplog.at_level("INFO", logger="pipeline"):
        summary = embed(cfg)
    assert summary["embedded"] == 30 and summary["failed"] == 2
    out = caplog.text
    assert f"failed: {empty.name}" in out and f"failed: {garbage.name}" in out
    cache = FeatureCache(cfg.cache.path)
    assert len(cache) == 30 and empty.name not in cache.names
    assert "0 bytes" in cache.failures[empty.name] and "cannot open" in cache.failures[garbage.name]

    again = embed(cfg)  # failures are retried; failing the same way adds no records
    assert again["embedded"] == 0 and again["failed"] == 2
    with h5py.File(cfg.cache.path, "r") as f:
        assert int(f["failures/count"][0]) == 2
    info = CliRunner().invoke(cli, ["info", cfg.cache.path])
    assert "failures:   2" in info.output and f"{empty.name}: " in info.output


def committed(path) -> int:
    try:
        return len(FeatureCache(path))
    except ActrecError:  # not created yet
        return 0


def wait_for(proc: subprocess.Popen, path, count: int) -> int:
    while (done := committed(path)) < count:
        assert proc.poll() is None, f"embed exited early: {proc.stderr.read()}"
        time.sleep(0.02)
    return done


@pytest.mark.slow
def test_concurrent_embed_refused_and_kill_9_resume_equals_clean_run(tiny_dataset_root, tiny_dataset_config,
                                                                     tmp_path, caplog):
    """A real `actrec embed` subprocess: a second embed is refused; kill -9 mid-run; the resumed cache equals
    an uninterrupted run's bit for bit."""
    cfg = tiny_dataset_config
    cfg.embed.batch_size = 5  # batches straddle the 12-frame videos
    cfg.embed.img_dim = 48
    killed = cfg.cache.path
    overrides = tiny_overrides(tiny_dataset_root) + [f"cache.path={killed}", "embed.batch_size=5",
                                                     "embed.img_dim=48"]
    command = [sys.executable, "-m", "pipeline", "embed", "-c", "configs/synthetic.yaml"]
    command += [arg for kv in overrides for arg in ("--set", kv)]
    proc = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(proc, killed, 2)
        proc.send_signal(signal.SIGSTOP)  # hold it mid-run while a second embed tries the same cache
        with pytest.raises(ActrecError, match=rf"another embed is writing .* \(pid {proc.pid}\)"):
            embed(cfg)
        before = committed(killed)
        proc.send_signal(signal.SIGCONT)
        wait_for(proc, killed, before + 1)  # the first embed carried on
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    left = committed(killed)
    assert 2 < left < 32

    caplog.clear()
    resumed = embed(cfg)
    assert "stopped abruptly" in caplog.text
    assert resumed["embedded"] == 32 - left and resumed["skipped"] == left

    cfg.cache.path = str(tmp_path / "clean.h5")
    embed(cfg)
    a, b = FeatureCache(killed), FeatureCache(cfg.cache.path)
    assert a.names == b.names and len(a) == 32
    for column in ("labels", "offsets", "lengths"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column))
    with h5py.File(killed, "r") as fa, h5py.File(cfg.cache.path, "r") as fb:
        assert fa["features"].shape == fb["features"].shape
        np.testing.assert_array_equal(fa["features"][:], fb["features"][:])
