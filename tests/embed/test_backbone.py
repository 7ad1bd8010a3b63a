"""The frozen torchvision backbone: head removal, weights (random, state dict, ImageNet offline), preprocessing, flip,
the backbones table."""

from __future__ import annotations

import hashlib
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from pipeline.embed.backbone import IMAGENET_MEAN, IMAGENET_STD, embed_frames, normalize
from pipeline.embed.backbones import backbone_of, resolve_backbone, rows
from pipeline.embed.backbones.table import format_table
from pipeline.embed.backbones.torchvision import find_head, skeleton
from pipeline.embed.resize import FrameResize
from pipeline.errors import ActrecError

CPU = torch.device("cpu")


def random_frames(n=3, height=40, width=56, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def resnet18():
    return resolve_backbone("resnet18", "none").build(CPU)


def test_frozen_eval_headless_channels_last(resnet18):
    assert resnet18.feature_dim == 512 and isinstance(resnet18.fc, torch.nn.Identity)
    assert not resnet18.training
    assert not any(p.requires_grad for p in resnet18.parameters())
    assert resnet18.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    features = embed_frames(resnet18, random_frames(5), 32, CPU, batch_size=2)
    assert features.shape == (5, 512) and features.dtype == np.float32
    # Batching does not change a frame's features.
    np.testing.assert_allclose(embed_frames(resnet18, random_frames(5), 32, CPU, batch_size=5), features,
                               rtol=1e-4, atol=1e-5)


def test_random_init_is_seeded(resnet18):
    """weights=none must give the same network every time, or a resumed embed would mix two networks."""
    again = resolve_backbone("resnet18", "none").build(CPU)
    frames = random_frames()
    np.testing.assert_array_equal(embed_frames(again, frames, 32, CPU), embed_frames(resnet18, frames, 32, CPU))
    assert resolve_backbone("resnet18", "none").identity.startswith("none")


def test_classifier_heads_and_unsupported_models():
    mobilenet = resolve_backbone("mobilenet_v3_small", "none").build(CPU)
    assert mobilenet.feature_dim == 1024 and isinstance(mobilenet.classifier[-1], torch.nn.Identity)
    assert embed_frames(mobilenet, random_frames(2), 32, CPU).shape == (2, 1024)
    with pytest.raises(ActrecError, match="no nn.Linear in its head"):
        resolve_backbone("squeezenet1_0", "none").build(CPU)  # its classifier ends in a conv, not a Linear
    with pytest.raises(ActrecError, match="not a torchvision classification model.*resnet18"):
        resolve_backbone("resnet_nonexistent", "none").build(CPU)


def test_state_dict_weights_load_and_change_features(tmp_path, resnet18):
    with torch.random.fork_rng():
        torch.manual_seed(123)
        source = torchvision.models.resnet18()  # a full classifier, other weights than the seeded random init
    path = tmp_path / "resnet18_finetuned.pth"
    torch.save(source.state_dict(), path)  # includes fc.weight / fc.bias, which are ignored

    model = resolve_backbone("resnet18", str(path)).build(CPU)
    frames = random_frames()
    loaded = embed_frames(model, frames, 32, CPU)
    source.fc = torch.nn.Identity()
    source.eval()
    with torch.inference_mode():
        expected = source(normalize(FrameResize(32)(frames), CPU)).numpy()
    np.testing.assert_allclose(loaded, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(loaded, embed_frames(resnet18, frames, 32, CPU), atol=1e-3)
    assert resolve_backbone("resnet18", str(path)).identity == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()

    # Wrapped checkpoints ({"state_dict": ...}) and DataParallel's "module." prefix load too.
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, wrapped)
    wrapped_model = resolve_backbone("resnet18", str(wrapped)).build(CPU)
    np.testing.assert_array_equal(embed_frames(wrapped_model, frames, 32, CPU), loaded)


def test_bad_state_dicts_name_the_file(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save(state, bad_shape)
    with pytest.raises(ActrecError, match=r"bad_shape.pth does not fit torchvision resnet18 \(ResNet\) \(1 size "
                                          r"mismatch: layer1.0.conv1.weight is \[3, 3, 1, 1\], the model's "
                                          r"\[64, 64, 3, 3\]\)"):
        resolve_backbone("resnet18", str(bad_shape)).build(CPU)
    del state["layer4.1.bn2.bias"]
    state.pop("layer1.0.conv1.weight")
    missing = tmp_path / "missing_keys.pth"
    torch.save(state, missing)
    with pytest.raises(ActrecError, match="missing_keys.pth does not fit .*2 missing keys: layer1.0.conv1.weight, "
                                          "layer4.1.bn2.bias"):
        resolve_backbone("resnet18", str(missing)).build(CPU)
    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("not a checkpoint")
    with pytest.raises(ActrecError, match="notes.pth: cannot be read"):
        resolve_backbone("resnet18", str(not_torch)).build(CPU)
    with pytest.raises(ActrecError, match="nowhere.pth: no such file"):
        resolve_backbone("resnet18", str(tmp_path / "nowhere.pth")).build(CPU)


def test_imagenet_weights_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ActrecError, match=r"ResNet18_Weights.IMAGENET1K_V1.*place it at .*hub/checkpoints/"
                                          r"resnet18-f37072fd\.pth"):
        resolve_backbone("resnet18", "imagenet").build(CPU)
    assert resolve_backbone("resnet18", "imagenet").identity == "ResNet18_Weights.IMAGENET1K_V1"


def test_resize_and_normalize():
    frames = np.zeros((2, 48, 64, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 200, 100, 7
    resized = FrameResize(32)(frames)
    assert resized.shape == (2, 3, 32, 32) and resized.dtype == torch.uint8
    assert resized.is_contiguous(memory_format=torch.channels_last)
    assert resized[:, 0].eq(200).all() and resized[:, 1].eq(100).all() and resized[:, 2].eq(7).all()
    x = normalize(resized, CPU)
    expected = [(v / 255 - m) / s for v, m, s in zip((200, 100, 7), IMAGENET_MEAN, IMAGENET_STD)]
    np.testing.assert_allclose(x[0, :, 5, 5].numpy(), expected, rtol=1e-6)
    assert x.is_contiguous(memory_format=torch.channels_last)
    # Antialiasing: a one-pixel checkerboard averages to grey instead of aliasing into stripes.
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)[None, ..., None].repeat(3, axis=3)
    assert abs(int(FrameResize(16)(board).float().mean()) - 127) <= 2
    assert FrameResize(16)(board).float().std() < 3


def test_flip_features_are_features_of_mirrored_frames(resnet18):
    frames = random_frames(4, 32, 32)
    flipped = embed_frames(resnet18, frames, 32, CPU, flip=True)
    np.testing.assert_allclose(flipped, embed_frames(resnet18, frames[:, :, ::-1], 32, CPU), rtol=1e-4, atol=1e-5)
    assert not np.allclose(flipped, embed_frames(resnet18, frames, 32, CPU), atol=1e-3)



@pytest.mark.parametrize("name, head, dim", [
    ("vit_b_16", "heads.head", 768), ("swin_t", "head", 768), ("maxvit_t", "classifier.5", 512),
    ("regnet_y_16gf", "fc", 3024), ("convnext_tiny", "classifier.2", 768), ("efficientnet_v2_s", "classifier.1", 1280),
    ("vgg11", "classifier.6", 4096), ("resnet152", "fc", 2048),
])
def test_the_head_is_the_last_linear_of_the_models_own_head_attribute(name, head, dim):
    found, linear = find_head(skeleton(name))  # shapes only: no memory, no initialisation time
    assert (found, linear.in_features, linear.out_features) == (head, dim, 1000)


def test_random_vit_and_swin_embed_at_small_sizes():
    vit = resolve_backbone("vit_b_16", "none", img_dim=32).build(CPU)  # a random init is built for the asked size
    assert vit.feature_dim == 768 and isinstance(vit.heads.head, torch.nn.Identity)
    features = embed_frames(vit, random_frames(2), 32, CPU)
    assert features.shape == (2, 768) and np.isfinite(features).all() and features.std() > 0
    swin = resolve_backbone("swin_t", "none", img_dim=32).build(CPU)
    assert swin.feature_dim == 768 and isinstance(swin.head, torch.nn.Identity)
    assert embed_frames(swin, random_frames(2), 32, CPU).shape == (2, 768)


@pytest.mark.slow
def test_vit_at_its_imagenet_size_gives_the_pre_logits_features():
    vit = resolve_backbone("vit_b_16", "none", img_dim=224).build(CPU)
    frames = random_frames(2, 64, 64)
    features = embed_frames(vit, frames, 224, CPU)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # RANDOM_INIT_SEED: the same random network, head kept
        full = torchvision.models.vit_b_16().eval()
    x = normalize(FrameResize(224)(frames), CPU)
    with torch.inference_mode():
        tokens = full.encoder(torch.cat([full.class_token.expand(2, -1, -1), full._process_input(x)], dim=1))
    np.testing.assert_allclose(features, tokens[:, 0].numpy(), rtol=1e-3, atol=1e-4)


def test_fixed_size_models_refuse_other_sizes_with_the_sizes_they_take():
    with pytest.raises(ActrecError, match=r"embed.img_dim=112: vit_b_16 with weights ViT_B_16_Weights.IMAGENET1K_V1 "
                                          r"takes 224x224 input only; set embed.img_dim=224, or .*: 224 \(imagenet\), "
                                          r"384 \(IMAGENET1K_SWAG_E2E_V1\), 224 \(IMAGENET1K_SWAG_LINEAR_V1\)"):
        resolve_backbone("vit_b_16", "imagenet", img_dim=112).build(CPU)  # refused before any download
    with pytest.raises(ActrecError, match=r"IMAGENET1K_SWAG_E2E_V1 takes 384x384 input only"):
        resolve_backbone("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", img_dim=224).build(CPU)
    with pytest.raises(ActrecError, match=r"vit_b_16 cannot take embed.img_dim=40 .*indivisible by patch size.*224"):
        resolve_backbone("vit_b_16", "none", img_dim=40).build(CPU)
    with pytest.raises(ActrecError, match=r"maxvit_t cannot take embed.img_dim=112 .*partition size.*try "
                                          r"embed.img_dim=224"):
        resolve_backbone("maxvit_t", "none", img_dim=112).build(CPU)


def test_torchvision_weights_by_name(tmp_path, monkeypatch):
    assert resolve_backbone("vit_b_16", "IMAGENET1K_SWAG_E2E_V1").identity == "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1"
    assert resolve_backbone("vit_b_16", "imagenet").identity == "ViT_B_16_Weights.IMAGENET1K_V1"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    # The size fits these weights: what stops it is the download, and the message names the file.
    with pytest.raises(ActrecError, match=r"IMAGENET1K_SWAG_E2E_V1 .*place it at .*hub/checkpoints/"
                                          r"vit_b_16_swag-9ac1b537\.pth"):
        resolve_backbone("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", img_dim=384).build(CPU)
    with pytest.raises(ActrecError, match=r"IMAGENET2K_V9: no such file; use .* one of resnet18's torchvision "
                                          r"weights \(IMAGENET1K_V1, DEFAULT\)"):
        resolve_backbone("resnet18", "IMAGENET2K_V9").build(CPU)


def test_backbones_table_comes_from_the_weights_metadata():
    every = rows(["torchvision"], "vit_b_16", every_weights=True)
    assert [(r["weights"], r["trained_size"]) for r in every] == [
        ("imagenet", 224), ("IMAGENET1K_SWAG_E2E_V1", 384), ("IMAGENET1K_SWAG_LINEAR_V1", 224)]
    assert "IMAGENET1K_SWAG_E2E_V1     short 384 > crop 384 bicubic, mean/std imagenet" in format_table(every)
    found = {r["name"]: r for text in ("vit_b_16", "regnet_y_128gf", "resnet18", "squeezenet1_0")
             for r in rows(["torchvision"], text)}
    vit = found["vit_b_16"]
    assert (vit["dim"], vit["size"], vit["trained_size"]) == (768, "224 only", 224)
    assert vit["gflops"] == pytest.approx(17.564) and vit["top1"] == pytest.approx(81.072)
    assert found["regnet_y_128gf"]["dim"] == 7392 and found["regnet_y_128gf"]["trained_size"] == 384
    assert found["resnet18"]["dim"] == 512 and found["resnet18"]["size"] == ">=1"
    assert found["squeezenet1_0"]["dim"] is None  # its head ends in a convolution
    table = format_table(list(found.values()))
    assert table.index("regnet_y_128gf") < table.index("vit_b_16") < table.index("resnet18 ")  # best top-1 first
    assert "short 232 > crop 224 bilinear" not in table and "short 256 > crop 224 bilinear" in table
    assert "squeezenet" not in table and "squeezenet1_0" in format_table(list(found.values()), show_all=True)


def test_weights_without_a_trained_classifier_are_refused_by_name():
    """VGG-16 IMAGENET1K_FEATURES: NaN classifier layers, so the penultimate feature would be NaN."""
    with pytest.raises(ActrecError, match=r"embed.weights=IMAGENET1K_FEATURES: VGG16_Weights.IMAGENET1K_FEATURES "
                                          r"trains only the convolutional features.*Use vgg16's IMAGENET1K_V1"):
        resolve_backbone("vgg16", "IMAGENET1K_FEATURES").build(CPU)  # refused from the metadata, before any download
    [row] = [r for r in rows(["torchvision"], "vgg16", every_weights=True) if r["weights"] == "IMAGENET1K_FEATURES"]
    assert row["dim"] is None  # listed only with --all


def test_safetensors_state_dict_loads(tmp_path, resnet18):
    from safetensors.torch import save_file

    with torch.random.fork_rng():
        torch.manual_seed(7)
        source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(path))
    frames = random_frames()
    source.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = source.eval()(normalize(FrameResize(32)(frames), CPU)).numpy()
    model = resolve_backbone("resnet18", str(path)).build(CPU)
    np.testing.assert_allclose(embed_frames(model, frames, 32, CPU), expected, rtol=1e-4, atol=1e-5)


def test_the_crop_follows_the_named_weights_own_transforms():
    from pipeline.config import load_config


    swag = load_config(None, ["embed.backbone=vit_b_16", "embed.weights=IMAGENET1K_SWAG_E2E_V1", "embed.img_dim=384",
                              "embed.resize=crop"])
    assert backbone_of(swag.embed).preprocessing.short_side == 384  # SWAG E2E: resize 384, crop 384
    default = load_config(None, ["embed.backbone=vit_b_16", "embed.img_dim=224", "embed.resize=crop"])
    assert backbone_of(default.embed).preprocessing.short_side == 256  # IMAGENET1K_V1: resize 256, crop 224
