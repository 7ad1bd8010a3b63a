"""The Python API (``import pipeline``) and plug-ins from outside the package."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import pipeline
from pipeline.errors import ActrecError
from tests.helpers import PROJECT_ROOT, tiny_overrides


def test_importing_the_package_loads_nothing_heavy():
    code = "import sys, pipeline; pipeline.make_config; print(sorted({'torch', 'cv2', 'h5py'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert set(pipeline.__all__) >= {"make_config", "embed_cache", "open_cache", "train", "evaluate", "Predictor",
                                     "create_backbone", "create_model", "register_model"}


def test_a_config_built_in_python_is_validated_like_a_file():
    cfg = pipeline.make_config("configs/synthetic.yaml", train={"epochs": 3}, model={"name": "tcn"})
    assert cfg.train.epochs == 3 and cfg.to_dict()["model"] == {"name": "tcn", "latent_dim": 256,
                                                                "hidden_dim": 256, "dropout": 0.5}
    with pytest.raises(ActrecError, match=r"updated\(train.epochs=0\): train.epochs: 0 is below the minimum 1"):
        cfg.updated(train={"epochs": 0})
    with pytest.raises(ActrecError, match="'model.heads' is not a key of model.name=tcn"):
        cfg.updated(model={"heads": 2})


def test_create_model_checks_its_settings_and_builds_the_network():
    import torch

    model = pipeline.create_model("transformer", feature_dim=8, num_classes=3, length=6, latent_dim=12, heads=3)
    assert model(torch.randn(2, 6, 8)).shape == (2, 3)
    with pytest.raises(ActrecError, match="model.latent_dim=12 is not a multiple of model.heads=5"):
        pipeline.create_model("transformer", 8, 3, latent_dim=12, heads=5)


def test_open_cache_gives_videos_features_and_the_projects_clips(tiny_dataset_config):
    pipeline.embed_cache(tiny_dataset_config)
    cache = pipeline.open_cache(tiny_dataset_config)
    video = cache.split.test[0].name
    assert video in cache.videos and cache.label(video) == cache.split.test[0].label
    assert cache.features(video).shape[1] == 512 and np.isfinite(cache.features(video)).all()
    train_clips = cache.clips("train")
    features, label = train_clips[0]
    assert tuple(features.shape) == (tiny_dataset_config.train.sequence_length, 512) and 0 <= label < 4
    test_clips = cache.clips("test")
    assert len(test_clips) == len(cache.split.test)
    with pytest.raises(ActrecError, match="choose 'train', 'val' or 'test'"):
        cache.clips("all")


PLUGIN = '''
"""A GRU from someone else's package."""
from dataclasses import dataclass

from torch import nn

from pipeline.schema import key


class TinyGRU(nn.Module):
    """A GRU over the cached features."""

    @dataclass
    class Config:
        hidden_dim: int = key(8, "GRU width", min=1, affects="training")

    def __init__(self, feature_dim, num_classes, length, hidden_dim):
        super().__init__()
        self.gru = nn.GRU(feature_dim, hidden_dim, batch_first=True)
        self.head = nn.Linear(hidden_dim, num_classes)

    def forward(self, x):
        return self.head(self.gru(x)[0].mean(dim=1))
'''


@pytest.mark.slow
def test_a_model_from_an_installed_package_works_in_train_predict_and_a_sweep(tiny_dataset_root, tiny_dataset_config,
                                                                              tmp_path):
    """A package on the path with an ``actrec.models`` entry point: listed, trained, predicting, swept; where it is
    missing, its checkpoint names the package to install."""
    site = tmp_path / "site"
    (site / "my_plugin").mkdir(parents=True)
    (site / "my_plugin" / "__init__.py").write_text(PLUGIN)
    dist = site / "my_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[actrec.models]\ntinygru = my_plugin:TinyGRU\n")
    (dist / "top_level.txt").write_text("my_plugin\n")
    pipeline.embed_cache(tiny_dataset_config)
    tiny = [s for s in tiny_overrides(tiny_dataset_root) if not s.startswith("model.")]  # keys of the BiLSTM
    sets = [item for s in tiny + [f"cache.path={tiny_dataset_config.cache.path}", "train.epochs=1",
                                  "runtime.threads=1"] for item in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{PROJECT_ROOT}"}

    def actrec(*args, env=env):
        return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=tmp_path, env=env,  # runs/ goes here
                              capture_output=True, text=True)

    listed = actrec("plugins", "model")
    assert any(line.split()[:3] == ["model", "tinygru", "hidden_dim"] for line in listed.stdout.splitlines())
    run = tmp_path / "run"
    config = str(PROJECT_ROOT / "configs" / "synthetic.yaml")
    trained = actrec("train", "-c", config, *sets, "--set", "model.name=tinygru",
                     "--set", "model.hidden_dim=6", "--set", f"run.dir={run}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    video = next((tiny_dataset_root / "videos").rglob("*.avi"))
    predicted = actrec("predict", str(video), "--checkpoint", str(run / "checkpoints" / "best.pt"),
                       "--json", str(tmp_path / "p.json"))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert (tmp_path / "p.json").is_file()
    swept = actrec("sweep", "-c", config, *sets, "--grid", "model.name=tinygru,meanpool",
                   "--name", "plugin", "--jobs", "1")
    assert swept.returncode == 0, swept.stderr[-2000:]
    assert "tinygru" in swept.stdout and "meanpool" in swept.stdout
    missing = actrec("predict", str(video), "--checkpoint", str(run / "checkpoints" / "best.pt"),
                     env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "holds model 'tinygru', which comes from my_plugin (package my-plugin)" in missing.stderr


def test_a_model_named_module_colon_attribute_is_imported_where_it_is_asked_for(tmp_path, monkeypatch):
    from pipeline.registry import registry

    monkeypatch.setattr(registry("model"), "_plugins", dict(registry("model")._plugins))  # registered here only
    (tmp_path / "lab_models.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = pipeline.make_config(model={"name": "lab_models:TinyGRU", "hidden_dim": 5})
    assert cfg.to_dict()["model"] == {"name": "lab_models:TinyGRU", "hidden_dim": 5}
    with pytest.raises(ActrecError, match=r"model.name=nowhere:GRU: cannot import nowhere"):
        pipeline.make_config(model={"name": "nowhere:GRU"})
    with pytest.raises(ActrecError, match=r"model.name=lab_models:LSTM: lab_models has no 'LSTM'"):
        pipeline.make_config(model={"name": "lab_models:LSTM"})
