"""Frame preprocessing: our uint8 path equals each library's own transform for the weights' card; squash is the seed's.

The libraries' transforms run on PIL images, as their weights were evaluated; ours resizes uint8 tensors
(CPU) and normalises on the device. Real frame sizes, landscape and portrait, down- and upscaled.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pipeline.config import load_config
from pipeline.embed.backbone import normalize
from pipeline.embed.backbones import backbone_of
from pipeline.embed.resize import FrameResize

CPU = torch.device("cpu")
# (height, width): VGA-ish UCF-101, HD, their portrait forms, and QCIF (11:9, upscaled to 224).
FRAME_SIZES = [(240, 320), (320, 240), (720, 1280), (1280, 720), (144, 176)]


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB frame with smooth structure and noise, so a wrong crop or scale shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    return np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)


def ours(backbone: str, img_dim: int, frame: np.ndarray, weights: str = "imagenet") -> tuple[torch.Tensor, float]:
    """Our preprocessing of ``frame`` as embed does it, and one uint8 step after normalisation by its std."""
    cfg = load_config(None, [f"embed.backbone={backbone}", f"embed.weights={weights}", f"embed.img_dim={img_dim}",
                             "embed.resize=crop"])
    resize = backbone_of(cfg.embed).preprocessing
    return normalize(resize(frame[None]), CPU, resize.mean, resize.std)[0], 1 / 255 / min(resize.std) + 1e-5


def assert_within_one_step(backbone: str, img_dim: int, transform, weights: str = "imagenet") -> None:
    """Every value within one uint8 step of the library's, but for at most 1 in 10,000 within two: PIL's
    fixed-point bicubic rounds its intermediate (after the horizontal pass) a little differently from torch's,
    which shows on an odd pixel of portrait frames (measured: 1 of 150,528 or 691,200 values)."""
    for height, width in FRAME_SIZES:
        frame = photo_like(height, width)
        x, step = ours(backbone, img_dim, frame, weights)
        theirs = transform(Image.fromarray(frame))
        assert x.shape == theirs.shape == (3, img_dim, img_dim), (height, width)
        difference = (x - theirs).abs()
        assert difference.max() <= 2 * step, (height, width, float(difference.max()))
        assert (difference > step).float().mean() <= 1e-4, (height, width, int((difference > step).sum()))


@pytest.mark.parametrize("name, weights, interpolation, mean", [
    ("efficientnet_b0", "IMAGENET1K_V1", "bicubic", 0.485),
    ("efficientnet_v2_l", "IMAGENET1K_V1", "bicubic", 0.5),  # resize 480, crop 480, mean = std = 0.5
    ("swin_t", "IMAGENET1K_V1", "bicubic", 0.485),
    ("resnet152", "IMAGENET1K_V2", "bilinear", 0.485),  # resize 232, crop 224
])
def test_torchvision_crop_equals_the_weights_own_transforms(name, weights, interpolation, mean):
    enum = torchvision.models.get_model_weights(name)[weights]
    transforms = enum.transforms()  # metadata: nothing downloads
    assert transforms.interpolation.value == interpolation and transforms.mean[0] == mean
    assert_within_one_step(name, transforms.crop_size[0], transforms, weights)


@pytest.mark.parametrize("name, crop_pct, mean", [
    ("convnext_tiny", 0.95, 0.485),           # timm's default tag: in12k_ft_in1k, bicubic
    ("tf_efficientnet_lite0", 0.875, 0.5),    # mean = std = 0.5, bicubic
])
def test_timm_crop_equals_timms_own_eval_transform(name, crop_pct, mean):
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    data = resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    assert (data["crop_pct"], data["mean"][0], data["interpolation"]) == (crop_pct, mean, "bicubic")
    assert_within_one_step(f"timm/{name}", data["input_size"][-1], create_transform(**data))


@pytest.mark.parametrize("arch, tag, keep_aspect", [
    ("ViT-B-32", "laion2b_s34b_b79k", True),  # shortest side, centre crop, bicubic, CLIP mean/std
    ("ViT-H-14", "dfn5b", False),             # resize_mode squash: both sides
])
def test_open_clip_equals_open_clips_own_preprocess(arch, tag, keep_aspect):
    open_clip = pytest.importorskip("open_clip")
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    cfg = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), open_clip.get_pretrained_cfg(arch, tag)))
    transform = image_transform_v2(cfg, is_train=False)  # what create_model_and_transforms returns
    assert_within_one_step(f"open_clip/{arch}:{tag}", 224, transform)
    cfg_embed = load_config(None, [f"embed.backbone=open_clip/{arch}:{tag}", "embed.img_dim=224"]).embed
    assert backbone_of(cfg_embed).preprocessing.keep_aspect is keep_aspect


def test_open_clip_without_a_tag_follows_open_clips_default_preprocess():
    open_clip = pytest.importorskip("open_clip")
    # create_model_and_transforms(name, pretrained=None) sets up this transform for an untagged model.
    transform = open_clip.image_transform(224, is_train=False)
    assert_within_one_step("open_clip/ViT-B-32", 224, transform, weights="none")


def test_crop_keeps_the_aspect_and_squash_does_not():
    frame = photo_like(240, 320)
    frame[:, :40] = 0  # a black band on the left: centre crop cuts it away, squash keeps it
    cropped, squashed = FrameResize(112, 116)(frame[None])[0], FrameResize(112)(frame[None])[0]
    assert cropped.shape == squashed.shape == (3, 112, 112)
    assert cropped[:, :, :4].float().mean() > 30 and squashed[:, :, :4].float().mean() < 5


def test_crop_ratio_interpolation_and_statistics_follow_the_backbones_card():
    cfg = load_config(None, ["embed.img_dim=112", "embed.resize=crop"])
    expected = FrameResize(112, 116, source="ResNet152_Weights.IMAGENET1K_V2")  # 112 * 232 / 224
    assert backbone_of(cfg.embed).preprocessing == expected
    cfg = load_config(None, ["embed.img_dim=112", "embed.resize=crop", "embed.backbone=resnet18"])
    assert backbone_of(cfg.embed).preprocessing.short_side == 128  # resnet18 V1: 256 / 224
    lite = load_config(None, ["embed.img_dim=112", "embed.backbone=timm/tf_efficientnet_lite0",
                              "embed.resize=squash"])
    resize = backbone_of(lite.embed).preprocessing  # squash keeps the card's interpolation and statistics
    assert (resize.short_side, resize.interpolation, resize.mean, resize.std) == (None, "bicubic", (0.5,) * 3,
                                                                                  (0.5,) * 3)


def test_embed_preprocess_picks_the_card_of_a_random_init_or_a_file(tmp_path):
    def resize_of(*overrides):
        return backbone_of(load_config(None, ["embed.img_dim=224", *overrides]).embed).preprocessing

    assert resize_of("embed.weights=none").short_side == 232  # resnet152's default, IMAGENET1K_V2
    v1 = resize_of("embed.weights=none", "embed.preprocess=IMAGENET1K_V1")
    assert (v1.short_side, v1.source) == (256, "ResNet152_Weights.IMAGENET1K_V1")
    tag = resize_of("embed.backbone=timm/convnext_tiny", "embed.weights=none", "embed.preprocess=fb_in1k")
    assert (tag.short_side, tag.source) == (256, "timm convnext_tiny.fb_in1k")  # crop_pct 0.875
    assert resize_of("embed.backbone=timm/convnext_tiny", "embed.weights=none").short_side == 235  # 0.95

    from pipeline.errors import ActrecError

    with pytest.raises(ActrecError, match="embed.preprocess=IMAGENET1K_V1: applies to embed.weights=none or a state "
                                          "dict file; embed.weights=imagenet brings its own"):
        resize_of("embed.preprocess=IMAGENET1K_V1")
    with pytest.raises(ActrecError, match="embed.preprocess=nope: timm/convnext_tiny has no such weights or tag; "
                                          "use auto or one of .*fb_in1k"):
        resize_of("embed.backbone=timm/convnext_tiny", "embed.weights=none", "embed.preprocess=nope")
