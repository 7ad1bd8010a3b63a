"""What stage one records of its preprocessing: caches written before keep their fingerprint; new cards show.

The expected texts below were computed by the code before preprocessing came from each backbone's card
(ImageNet mean/std and bilinear resizing for every model); they are the cache format, so they are written
out here rather than computed.
"""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.embed.fingerprint import _derived_entries

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "frames": "every frame"}
TAIL = "bilinear+antialias, uint8, torch.nn.functional.interpolate on CPU"


@pytest.mark.parametrize("overrides, weights, resize", [
    ([], "ResNet152_Weights.IMAGENET1K_V2", f"short side to 116, centre crop 112; {TAIL}"),
    (["embed.img_dim=224"], "ResNet152_Weights.IMAGENET1K_V2", f"short side to 232, centre crop 224; {TAIL}"),
    (["embed.resize=squash"], "ResNet152_Weights.IMAGENET1K_V2", TAIL),
    (["embed.backbone=resnet18"], "ResNet18_Weights.IMAGENET1K_V1", f"short side to 128, centre crop 112; {TAIL}"),
    (["embed.backbone=resnet50", "embed.weights=none", "embed.img_dim=64"], "none (random init, seed 0)",
     f"short side to 66, centre crop 64; {TAIL}"),
    (["embed.backbone=resnet18", "embed.weights=none", "embed.img_dim=32", "embed.resize=squash"],
     "none (random init, seed 0)", TAIL),
    (["embed.weights=IMAGENET1K_V1", "embed.img_dim=224"], "ResNet152_Weights.IMAGENET1K_V1",
     f"short side to 256, centre crop 224; {TAIL}"),
    (["embed.backbone=vit_b_16", "embed.img_dim=224"], "ViT_B_16_Weights.IMAGENET1K_V1",
     f"short side to 256, centre crop 224; {TAIL}"),
    (["embed.backbone=resnet101", "embed.img_dim=160"], "ResNet101_Weights.IMAGENET1K_V2",
     f"short side to 166, centre crop 160; {TAIL}"),
])
def test_resnet_style_preprocessing_keeps_the_fingerprint_caches_were_written_with(overrides, weights, resize):
    entries = _derived_entries(load_config(None, overrides))
    for machine_dependent in ("split_files", "torch", "torchvision"):
        entries.pop(machine_dependent)
    assert entries == {"weights": weights, "resize": resize, **IMAGENET}


def test_each_backbones_own_card_is_recorded():
    effnet = _derived_entries(load_config(None, ["embed.backbone=efficientnet_b0", "embed.img_dim=224"]))
    assert effnet["resize"] == "short side to 256, centre crop 224; bicubic+antialias, uint8, " \
                               "torch.nn.functional.interpolate on CPU"  # the card's, no longer ResNet's
    v2l = _derived_entries(load_config(None, ["embed.backbone=efficientnet_v2_l", "embed.img_dim=480"]))
    assert v2l["mean"] == v2l["std"] == [0.5, 0.5, 0.5]
    lite = _derived_entries(load_config(None, ["embed.backbone=timm/tf_efficientnet_lite0", "embed.img_dim=224"]))
    assert (lite["weights"], lite["mean"]) == ("timm tf_efficientnet_lite0.in1k", [0.5, 0.5, 0.5])
    assert lite["resize"].startswith("short side to 256, centre crop 224; bicubic") and lite["timm"].count(".") == 1
    clip = _derived_entries(load_config(None, ["embed.backbone=open_clip/ViT-H-14:dfn5b", "embed.img_dim=224"]))
    assert clip["resize"].startswith("both sides to 224, centre crop 224; bicubic") and "open_clip" in clip
    assert "preprocess" not in lite  # recorded only where embed.preprocess names a card
    chosen = _derived_entries(load_config(None, ["embed.weights=none", "embed.preprocess=IMAGENET1K_V1"]))
    assert chosen["preprocess"] == "ResNet152_Weights.IMAGENET1K_V1"


def test_default_cache_paths_of_library_names_are_file_names():
    paths = [load_config(None, [f"embed.backbone={name}"]).cache.path
             for name in ("resnet152", "timm/convnext_base.fb_in22k_ft_in1k", "open_clip/ViT-B-32:laion2b_s34b_b79k")]
    assert paths == ["cache/ucf101_resnet152_imagenet_112_videos.h5",
                     "cache/ucf101_timm-convnext_base.fb_in22k_ft_in1k_imagenet_112_videos.h5",
                     "cache/ucf101_open_clip-ViT-B-32-laion2b_s34b_b79k_imagenet_112_videos.h5"]
