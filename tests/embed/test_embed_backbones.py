"""The embed stage with timm and OpenCLIP backbones end to end, and features that float16 storage cannot hold."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torchvision

from pipeline.cache.reader import FeatureCache, describe_cache
from pipeline.embed.feed import check_storable
from pipeline.embed.fingerprint import embed_fingerprint
from pipeline.embed.run import embed
from pipeline.errors import ActrecError
from pipeline.sequence.train import train


@pytest.mark.slow
@pytest.mark.parametrize("backbone, library, dim", [("timm/test_convnext", "timm", 64),
                                                     ("open_clip/ViT-S-32", "open_clip", 384)])
def test_timm_and_open_clip_backbones_embed_and_train(tiny_dataset_config, backbone, library, dim):
    pytest.importorskip(library)
    cfg = tiny_dataset_config  # 32 videos of 12 frames, 32 x 32, decoded in-process
    cfg.embed.backbone, cfg.embed.resize, cfg.train.epochs = backbone, "crop", 1
    summary = embed(cfg)
    assert summary["embedded"] == 32 and summary["failed"] == 0
    cache = FeatureCache(cfg.cache.path, expected_fingerprint=embed_fingerprint(cfg))
    assert cache.dim == dim and np.isfinite(cache.sequence(0)).all() and cache.sequence(0).std() > 0
    assert library in cache.fingerprint and cache.fingerprint["backbone"] == backbone
    info = describe_cache(cfg.cache.path)  # `actrec info`: what preprocessing was applied
    assert f"resize: short side to {cache.fingerprint['resize'].split()[3]}" in info and "bicubic" in info
    assert f"mean: {cache.fingerprint['mean']}" in info
    assert train(cfg)["epochs"] == 1


def exploding_resnet18(path, bias: float):
    """A resnet18 state dict whose features are ``bias`` everywhere: layer4's first block outputs zero, the second
    adds ``bias`` after a zeroed branch."""
    state = torchvision.models.resnet18().state_dict()
    for bn in ("layer4.0.bn2", "layer4.0.downsample.1", "layer4.1.bn1", "layer4.1.bn2"):
        state[f"{bn}.weight"].zero_()
        state[f"{bn}.bias"].fill_(-1e3 if bn.startswith("layer4.0") else 0.0)
    state["layer4.1.bn2.bias"].fill_(bias)
    torch.save(state, path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("bias, problem", [(1e6, r"float16 storage turns values beyond \+-65504 into inf"),
                                           (1e-9, "float16 storage rounds a frame's whole feature to zero")])
def test_features_float16_cannot_hold_stop_the_embed_before_anything_is_committed(tiny_dataset_config, tmp_path,
                                                                                   bias, problem):
    cfg = tiny_dataset_config
    cfg.embed.weights = exploding_resnet18(tmp_path / "exploding.pth", bias)
    first = "BlockMoveLeft/v_BlockMoveLeft_g01_c01"
    span = re.escape(f"[{bias:.3g}, {bias:.3g}]")
    with pytest.raises(ActrecError, match=rf"embed stopped: resnet18 gives features of {first} in {span} .*{problem}"
                                          rf".*Nothing of {first} was written; set embed.dtype=float32"):
        embed(cfg)
    assert FeatureCache(cfg.cache.path).names == []
    cfg.embed.dtype = "float32"  # the same features, stored whole
    cfg.cache.path = str(tmp_path / "float32.h5")
    assert embed(cfg)["embedded"] == 32
    assert np.allclose(FeatureCache(cfg.cache.path).sequence(0), bias, rtol=1e-3)


def test_non_finite_features_are_refused_whatever_the_dtype():
    features = np.ones((2, 4), np.float32)
    check_storable(features, "float16", "x", "v")
    features[1, 2] = np.nan
    with pytest.raises(ActrecError, match=r"x gives features of v in \[1, 1\] .*not finite"):
        check_storable(features, "float32", "x", "v")
