"""The embed fingerprint: the keys a cache carries, and which settings change it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from pipeline.cache.fingerprint import MACHINE_KEYS, feature_keys, fingerprint_differences
from pipeline.embed.backbones import resolve_backbone
from pipeline.embed.fingerprint import embed_fingerprint
from pipeline.inputs.formats.ucf101 import split_files_signature


def expected_fingerprint(cfg) -> dict:
    """The fingerprint as a cache stores it: a change here refuses every existing cache (and is a new format)."""
    expected = {
        "name": cfg.data.name,
        "split_files": split_files_signature(cfg),
        "backbone": cfg.embed.backbone,
        "weights": resolve_backbone(cfg.embed.backbone, cfg.embed.weights).identity,
        "img_dim": cfg.embed.img_dim,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "resize": "bilinear+antialias, uint8, torch.nn.functional.interpolate on CPU",
        "source": cfg.embed.source,
        "frames": "every frame",
        "flip": cfg.embed.flip,
        "dtype": cfg.embed.dtype,
        "batch_size": cfg.embed.batch_size,
        "torch": ".".join(torch.__version__.split("+")[0].split(".")[:2]),
        "torchvision": ".".join(torchvision.__version__.split("+")[0].split(".")[:2]),
    }
    if cfg.embed.source == "frames":
        expected["jpeg_quality"] = cfg.extract.jpeg_quality
    return expected


@pytest.mark.parametrize("source", ["videos", "frames"])
def test_fingerprint_keeps_the_keys_and_values_existing_caches_hold(tiny_dataset_config, source):
    cfg = tiny_dataset_config
    cfg.embed.source = source
    cfg.embed.flip = True
    assert embed_fingerprint(cfg) == expected_fingerprint(cfg)
    assert fingerprint_differences(expected_fingerprint(cfg), embed_fingerprint(cfg)) == []
    without_batch_size = {k: v for k, v in expected_fingerprint(cfg).items() if k != "batch_size"}
    assert fingerprint_differences(without_batch_size, embed_fingerprint(cfg)) == [
        f"batch_size: cache has '<missing>', config gives {cfg.embed.batch_size}"]


def test_every_listed_config_key_changes_the_fingerprint(tiny_dataset_config):
    cfg = tiny_dataset_config
    before = embed_fingerprint(cfg)
    other = {"data.name": "other", "embed.backbone": "resnet34", "embed.img_dim": cfg.embed.img_dim * 2,
             "embed.source": "frames" if cfg.embed.source == "videos" else "videos",
             "embed.flip": not cfg.embed.flip, "embed.dtype": "float32" if cfg.embed.dtype != "float32" else "float16",
             "embed.batch_size": cfg.embed.batch_size + 1}
    assert set(other) == set(feature_keys().values())
    for key, name in feature_keys().items():
        section, field = name.split(".")
        saved = getattr(getattr(cfg, section), field)
        setattr(getattr(cfg, section), field, other[name])
        differences = fingerprint_differences(before, embed_fingerprint(cfg))
        setattr(getattr(cfg, section), field, saved)
        assert any(line.startswith(f"{key}: cache has {before[key]!r}, config gives {other[name]!r}")
                   for line in differences), (name, differences)


def test_machine_keys_compared_only_where_both_sides_record_them():
    assert MACHINE_KEYS == {"forward_dtype", "device"}
    cached = {"img_dim": 32, "forward_dtype": "bfloat16"}
    assert fingerprint_differences(cached, {"img_dim": 32}) == []  # stage two: the config cannot know it
    assert fingerprint_differences(cached, {"img_dim": 32, "forward_dtype": "bfloat16"}) == []
    [line] = fingerprint_differences(cached, {"img_dim": 32, "forward_dtype": "float32"})
    assert line.startswith("forward_dtype: cache has 'bfloat16', this machine")
    assert fingerprint_differences({"img_dim": 32}, {}) == ["img_dim: cache has 32, config gives '<missing>'"]


def test_every_key_the_schema_marks_as_changing_features_is_in_the_fingerprint(tiny_dataset_config, tmp_path):
    """The schema's `affects="features"` is the one list: each such key, changed, changes the fingerprint."""
    from pipeline.cache.fingerprint import DERIVED
    from pipeline.config import keys_affecting

    cfg = tiny_dataset_config
    cfg.embed.source = "frames"  # jpeg_quality counts only for frames
    weights = tmp_path / "w.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    splits = tmp_path / "splits"
    splits.mkdir()
    for f in __import__("pathlib").Path(cfg.data.splits).iterdir():
        (splits / f.name).write_text(f.read_text().replace("\n", "\n\n", 1) if f.name.startswith("test") else
                                     f.read_text())
    changed = {"data.splits": str(splits), "embed.weights": str(weights), "extract.jpeg_quality": 50,
               "data.name": "other", "embed.backbone": "resnet34", "embed.img_dim": 64, "embed.source": "videos",
               "embed.flip": True, "embed.dtype": "float32",
               "embed.resize": "crop", "embed.batch_size": 7, "embed.preprocess": "IMAGENET1K_V1"}
    assert DERIVED <= set(keys_affecting("features"))
    before = embed_fingerprint(cfg)
    for name in keys_affecting("features"):
        assert name in changed, f"add a changed value for the new features key {name} to this test"
        section, field = name.split(".")
        saved = getattr(getattr(cfg, section), field)
        assert changed[name] != saved
        setattr(getattr(cfg, section), field, changed[name])
        after = embed_fingerprint(cfg)
        setattr(getattr(cfg, section), field, saved)
        assert after != before, f"{name} changed but the fingerprint did not"


def test_one_compatibility_check_for_a_resumed_writer_and_a_join(tmp_path):
    """The writer's resume check and the join's check of shards are the same comparison, worded for each."""
    from pipeline.cache.fingerprint import compatibility_differences
    from pipeline.cache.reader import FeatureCache
    from pipeline.cache.shards import join, shard_path
    from pipeline.cache.writer import FeatureCacheWriter
    from pipeline.errors import ActrecError

    cached = {"fingerprint": {"img_dim": 32}, "class_names": ["a", "b", "c", "d"], "dim": 8, "dtype": "float16",
              "has_flip": False}
    other = dict(cached, fingerprint={"img_dim": 64}, class_names=["a"], dim=16, has_flip=True)
    assert compatibility_differences(cached, cached) == []
    assert compatibility_differences(cached, other) == [
        "img_dim: cache has 32, config gives 64",
        "class_names: cache has 4 classes (a, b, c, ...), this embed writes 1 classes (a)",
        "dim: cache has 8, this embed writes 16", "has_flip: cache has False, this embed writes True"]
    assert compatibility_differences(cached, other, ("x.h5 has", "y.h5 has"), ignore={"img_dim"})[0] == \
        "class_names: x.h5 has 4 classes (a, b, c, ...), y.h5 has 1 classes (a)"

    cache = tmp_path / "c.h5"
    for rank, dim in ((0, 8), (1, 16)):
        with FeatureCacheWriter(shard_path(cache, rank, 2), {"img_dim": 32}, ["a"], dim) as writer:
            writer.add(f"a/v{rank}", 0, np.ones((2, dim), np.float32))
    with pytest.raises(ActrecError, match=r"\(dim: rank0000-of-0002.h5 has 8, rank0001-of-0002.h5 has 16\)"):
        join(cache)
    with pytest.raises(ActrecError, match=r"\(dim: cache has 8, this embed writes 16\)"):
        FeatureCacheWriter(shard_path(cache, 0, 2), {"img_dim": 32}, ["a"], 16)
    assert len(FeatureCache(shard_path(cache, 0, 2))) == 1 and not cache.exists()


def test_device_kind_is_a_machine_key():
    from pipeline.embed.fingerprint import device_kind

    assert device_kind(torch.device("cpu")) == "cpu"
    [line] = fingerprint_differences({"device": "cpu"}, {"device": "NVIDIA H200 (CUDA 12.8, cuDNN 91002)"})
    assert line.startswith("device: cache has 'cpu', this machine")
    assert fingerprint_differences({"device": "cpu"}, {}) == [] == fingerprint_differences({}, {"device": "cpu"})
