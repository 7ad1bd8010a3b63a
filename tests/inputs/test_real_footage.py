"""Real footage (tests/footage.py): our decoder against PyAV, frame rates, the crop on real aspect ratios, and
embed, train, evaluate and predict on xvid AVIs in UCF-101's and HMDB-51's format and on a folder of H.264 MP4s."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pipeline.cache.reader import FeatureCache
from pipeline.config import load_config
from pipeline.embed.backbone import normalize
from pipeline.embed.backbones import backbone_of
from pipeline.embed.run import embed
from pipeline.inputs.formats import load_split
from pipeline.inputs.video import iter_video_frames, video_fps
from pipeline.predict.predictor import predict
from pipeline.sequence.evaluate import evaluate
from pipeline.sequence.train import train
from tests.footage import footage_config, header_count, source
from tests.helpers import read_video

av = pytest.importorskip("av")

# Lossy codecs: the same bitstream decoded by OpenCV's FFmpeg and PyAV's may differ by an IDCT or colour-conversion
# rounding between FFmpeg builds. Measured here: 0 on every file; allowed: 2 levels at a pixel, 0.1 on average.
LOSSY_MAX, LOSSY_MEAN = 2, 0.1
CPU = torch.device("cpu")


def pyav_frames(path: Path) -> np.ndarray:
    """Every frame of ``path`` as uint8 RGB through PyAV (its own bundled FFmpeg): the independent decoder."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.mark.parametrize("relative", ["lossless/mjpg.avi", "lossless/ffv1.avi"])
def test_decoded_frames_equal_pyav_exactly_for_mjpg_and_lossless(real_footage, relative):
    path = real_footage / relative
    ours, theirs = read_video(path), pyav_frames(path)
    assert ours.shape == theirs.shape == (16, 240, 320, 3) and header_count(path) == 16
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("relative", ["ucf101/videos/Biking/v_Biking_g02_c01.avi",
                                      "hmdb51/videos/talk/v_talk_g01_c01.avi",
                                      "folder/videos/cartoon/v_cartoon_g03_c01.mp4",
                                      pytest.param("bigbuckbunny.mp4", marks=pytest.mark.slow),  # 132 frames, 720p
                                      "carphone_distorted.mp4"])
def test_decoded_frames_match_pyav_within_the_lossy_tolerance(real_footage, relative):
    path = source(relative) if "/" not in relative else real_footage / relative
    ours, theirs = read_video(path), pyav_frames(path)
    assert ours.shape == theirs.shape and len(ours) == header_count(path) > 0
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    assert diff.max() <= LOSSY_MAX and diff.mean() <= LOSSY_MEAN, (diff.max(), diff.mean())


def test_frame_rates_are_read_from_the_container_29_97_included(real_footage):
    ntsc = 30000 / 1001
    assert video_fps(source("carphone_pristine.mp4")) == pytest.approx(ntsc, abs=1e-3)
    assert video_fps(real_footage / "hmdb51/videos/talk/v_talk_g01_c01.avi") == pytest.approx(ntsc, abs=1e-3)
    assert video_fps(real_footage / "ucf101/videos/Phoning/v_Phoning_g01_c01.avi") == 25.0
    assert video_fps(real_footage / "folder/videos/talk/v_talk_g01_c01.mp4") == pytest.approx(ntsc, abs=1e-3)


@pytest.mark.parametrize("name, shape", [("bigbuckbunny.mp4", (720, 1280)), ("carphone_pristine.mp4", (144, 176))])
@pytest.mark.parametrize("backbone, weights", [("resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
                                               ("resnet152", torchvision.models.ResNet152_Weights.IMAGENET1K_V2)])
def test_crop_on_16_9_and_11_9_footage_equals_the_backbones_own_transform(name, shape, backbone, weights):
    frame = next(iter_video_frames(source(name)))
    assert frame.shape[:2] == shape  # 16:9 and 11:9 (CIF)
    cfg = load_config(None, [f"embed.backbone={backbone}", "embed.img_dim=224", "embed.resize=crop"])
    ours = normalize(backbone_of(cfg.embed).preprocessing(frame[None]), CPU)[0]
    theirs = weights.transforms()(torch.from_numpy(frame).permute(2, 0, 1))
    assert ours.shape == theirs.shape == (3, 224, 224)
    # Within one uint8 step of rounding, after normalisation by the smallest std (0.224).
    assert (ours - theirs).abs().max() <= 1 / 255 / 0.224 + 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["ucf101", "hmdb51", "folder"])
def test_embed_train_evaluate_predict_on_real_footage(real_footage, tmp_path, fmt):
    cfg = footage_config(real_footage, tmp_path, fmt)
    summary = embed(cfg)
    assert summary["embedded"] == 12 and summary["failed"] == 0
    cache = FeatureCache(cfg.cache.path)
    split = load_split(cfg)
    for item in split.train + split.val + split.test:
        assert cache.lengths[cache.index_of(item.name)] == header_count(item.path) == len(pyav_frames(item.path))
    expected_fps = {"ucf101": 25.0, "hmdb51": 30000 / 1001, "folder": 25.0}[fmt]  # folder: median of 25, 25, 29.97
    assert cache.fps == pytest.approx(expected_fps, abs=1e-3)

    train(cfg)
    metrics = evaluate(cfg)
    assert metrics["num_videos"] == len(split.test) == 3 and 0.0 <= metrics["top1"] <= 1.0

    video = source("carphone_pristine.mp4")  # the original H.264 clip, 29.97 fps, 120 frames
    report = predict(video, Path(cfg.run.dir) / "checkpoints" / "best.pt", json_path=str(tmp_path / "p.json"),
                     device="cpu")
    result = json.loads((tmp_path / "p.json").read_text())  # what predict wrote, as a user reads it
    assert len(report.predictions) == 1 and not report.failures
    assert result["frames"] == 120 and result["fps"] == pytest.approx(30000 / 1001, abs=1e-3)
    assert result["windows"] and {entry["label"] for entry in result["windows"][0]["top"]} <= set(split.class_names)
