"""timm and OpenCLIP behind the backbone registry: names, the library's own feature, weight files, refusals, listing.

Random-init models at small sizes (timm's ``test_*`` models, OpenCLIP ``ViT-S-32``): nothing downloads.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.embed.backbone import embed_frames, normalize
from pipeline.embed.backbones import RANDOM_INIT_SEED, resolve_backbone, rows
from pipeline.embed.resize import FrameResize
from pipeline.errors import ActrecError

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

CPU = torch.device("cpu")


def random_frames(n=3, height=40, width=56, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def seeded(build):
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_INIT_SEED)
        return build()


def test_timm_feature_is_forward_head_pre_logits():
    model = resolve_backbone("timm/test_convnext", "none", img_dim=32).build(CPU)
    reference = seeded(lambda: timm.create_model("test_convnext", pretrained=False)).eval()
    assert model.feature_dim == reference.num_features and not any(p.requires_grad for p in model.parameters())
    frames = random_frames()
    x = normalize(FrameResize(32)(frames), CPU)
    with torch.inference_mode():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True).numpy()
        logits = reference(x)
    features = embed_frames(model, frames, 32, CPU)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    assert features.shape == (3, model.feature_dim) and logits.shape[1] == 1000  # the head is not the feature


def test_timm_fixed_size_models_are_built_for_img_dim():
    vit = resolve_backbone("timm/test_vit", "none", img_dim=32).build(CPU)  # pretrained at 160; built for 32
    assert embed_frames(vit, random_frames(2), 32, CPU).shape == (2, vit.feature_dim)


@pytest.mark.slow
def test_open_clip_feature_is_encode_image_before_normalisation():
    model = resolve_backbone("open_clip/ViT-S-32", "none", img_dim=64).build(CPU)
    reference = seeded(lambda: open_clip.create_model("ViT-S-32", pretrained=None, force_image_size=64,
                                                      pretrained_text=False)).eval()
    frames = random_frames()
    x = normalize(FrameResize(64)(frames), CPU)
    with torch.inference_mode():
        expected = reference.encode_image(x, normalize=False).numpy()
        normalised = reference.encode_image(x, normalize=True).numpy()
    features = embed_frames(model, frames, 64, CPU)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    assert model.feature_dim == 384 and not np.allclose(np.linalg.norm(features, axis=1), 1.0)
    assert np.allclose(np.linalg.norm(normalised, axis=1), 1.0)
    assert not hasattr(model, "transformer")  # the text tower is not kept


def test_timm_state_dict_file_loads_strictly_or_is_refused_naming_keys(tmp_path):
    from safetensors.torch import save_file

    with torch.random.fork_rng():
        torch.manual_seed(5)
        source = timm.create_model("test_convnext", pretrained=False).eval()
    path = tmp_path / "model.safetensors"  # what the Hub's timm repos hold
    save_file(source.state_dict(), str(path))
    frames = random_frames()
    with torch.inference_mode():
        expected = source.forward_head(source.forward_features(normalize(FrameResize(32)(frames), CPU)),
                                       pre_logits=True).numpy()
    loaded = resolve_backbone("timm/test_convnext", str(path), img_dim=32).build(CPU)
    np.testing.assert_allclose(embed_frames(loaded, frames, 32, CPU), expected, rtol=1e-4, atol=1e-5)
    assert resolve_backbone("timm/test_convnext", str(path)).identity.startswith("sha256:")
    with pytest.raises(ActrecError, match=r"model.safetensors does not fit timm test_vit \(\d+ missing keys: .*"
                                          r"\d+ unexpected keys: head.fc.bias"):
        resolve_backbone("timm/test_vit", str(path), img_dim=32).build(CPU)


@pytest.mark.slow
def test_open_clip_state_dict_file_loads(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(5)
        source = open_clip.create_model("ViT-S-32", pretrained=None, force_image_size=64,
                                        pretrained_text=False).eval()
    path = tmp_path / "open_clip_model.pt"
    torch.save(source.state_dict(), path)
    frames = random_frames(2)
    with torch.inference_mode():
        expected = source.encode_image(normalize(FrameResize(64)(frames), CPU)).numpy()
    model = resolve_backbone("open_clip/ViT-S-32", str(path), img_dim=64).build(CPU)
    np.testing.assert_allclose(embed_frames(model, frames, 64, CPU), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ActrecError, match=r"does not fit open_clip ViT-S-32 \(1 size mismatch: "
                                          r"visual.positional_embedding is \[5, 384\], the model's \[50, 384\]\)"):
        resolve_backbone("open_clip/ViT-S-32", str(path), img_dim=224).build(CPU)  # the file is for 64 x 64


def test_names_weights_and_tags_are_checked_before_anything_is_built():
    with pytest.raises(ActrecError, match="timm has no model 'convnext_nope'"):
        resolve_backbone("timm/convnext_nope", "none")
    with pytest.raises(ActrecError, match="convnext_tiny has no pretrained tag 'nope'; its tags: .*fb_in1k"):
        resolve_backbone("timm/convnext_tiny.nope", "imagenet")
    with pytest.raises(ActrecError, match="OpenCLIP has no architecture 'ViT-Q-99'"):
        resolve_backbone("open_clip/ViT-Q-99", "none")
    with pytest.raises(ActrecError, match="open_clip/ViT-B-32:nope: no such pretrained tag; ViT-B-32's tags: .*openai"):
        resolve_backbone("open_clip/ViT-B-32:nope", "imagenet")
    with pytest.raises(ActrecError, match="open_clip/ViT-B-32 names no pretrained tag: use open_clip/ViT-B-32:<tag> "
                                          r"\(tags: .*laion2b_s34b_b79k"):
        resolve_backbone("open_clip/ViT-B-32", "imagenet").build(CPU)
    with pytest.raises(ActrecError, match="embed.weights=fb_in1k: no such file; .*put a pretrained tag in the name "
                                          r"instead \(timm/convnext_tiny.<tag>\)"):
        resolve_backbone("timm/convnext_tiny", "fb_in1k").build(CPU)
    # Named weights are identified with the tag resolved: timm's default tag may change across versions.
    assert resolve_backbone("timm/convnext_tiny", "imagenet").identity == "timm convnext_tiny.in12k_ft_in1k"
    assert resolve_backbone("open_clip/ViT-B-32:openai", "imagenet").identity == "open_clip ViT-B-32:openai"


def test_a_library_that_is_not_installed_is_refused_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails, as where it is not installed
    with pytest.raises(ActrecError, match=r"timm is not installed .*timm backbones needs it: "
                                          r"pip install -e '\.\[timm\]'"):
        resolve_backbone("timm/convnext_tiny", "none").build(CPU)
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ActrecError, match=r"pip install -e '\.\[clip\]'"):
        resolve_backbone("open_clip/ViT-B-32", "none")
    assert {r["source"].split()[0] for r in rows(None, "resnet18")} == {"ResNet18_Weights.IMAGENET1K_V1"}


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache with HF_HUB_OFFLINE=1: a download fails at once, as on a machine offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_missing_downloads_say_where_to_put_the_weights(offline_hub):
    with pytest.raises(ActrecError, match=r"cannot load the weights of timm test_convnext.r160_in1k .*Hugging Face "
                                          r"Hub repo timm/test_convnext.r160_in1k.*HF_HUB_OFFLINE=1; or set "
                                          r"embed.weights to the file's path \(embed.preprocess=r160_in1k\)"):
        resolve_backbone("timm/test_convnext", "imagenet").build(CPU)
    with pytest.raises(ActrecError, match=r"cannot load the weights of open_clip/ViT-B-32:laion2b_s34b_b79k .*repo "
                                          r"laion/CLIP-ViT-B-32-laion2B-s34B-b79K.*HF_HUB_OFFLINE=1; or set "
                                          r"embed.backbone=open_clip/ViT-B-32, embed.weights to the file's path and "
                                          r"embed.preprocess=laion2b_s34b_b79k"):
        resolve_backbone("open_clip/ViT-B-32:laion2b_s34b_b79k", "imagenet").build(CPU)


@pytest.mark.slow
def test_backbones_lists_every_library_from_metadata_quickly():
    from pipeline.cli import cli

    started = time.process_time()  # CPU time: the shared test machine's load does not count
    result = CliRunner().invoke(cli, ["backbones", "--library", "timm", "--filter", "convnext_tiny"])
    assert result.exit_code == 0, result.output
    assert time.process_time() - started < 15  # a handful of shape-only builds, no download
    line = next(x for x in result.output.splitlines() if x.startswith("timm/convnext_tiny.fb_in1k "))
    assert " 768 " in line and "short 256 > crop 224 bicubic, mean/std imagenet" in line
    clip = CliRunner().invoke(cli, ["backbones", "--library", "open_clip", "--filter", "ViT-B-32:laion2b_s34b"])
    line = next(x for x in clip.output.splitlines() if x.startswith("open_clip/ViT-B-32:laion2b_s34b_b79k "))
    assert " 512 " in line and "short 224 > crop 224 bicubic, mean/std clip" in line
    tv = CliRunner().invoke(cli, ["backbones", "--filter", "efficientnet_b0"])
    line = next(x for x in tv.output.splitlines() if x.startswith("efficientnet_b0 "))
    assert "77.69" in line and "short 256 > crop 224 bicubic" in line  # torchvision's metadata has top-1
    unfiltered = rows(["timm"], "")
    assert len(unfiltered) > 1000 and all(r["dim"] is None for r in unfiltered)  # widths only for short lists
