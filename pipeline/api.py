"""The Python API: a config built in Python, embed, a cache's videos and clips, training (your own model too),
evaluation, prediction, features to and from other tools, and the factories and registries behind them.

Every function takes a ``Config`` (``make_config``) and does what the command of the same name does; nothing
heavy is imported until a function runs (``import pipeline`` stays fast)::

    cfg = pipeline.make_config("configs/synthetic.yaml", train={"epochs": 5})
    result = pipeline.train(cfg, model=MyGRU)   # a class: MyGRU(feature_dim, num_classes, length, **settings)
    metrics = pipeline.evaluate(result.config)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Config, load_config
from pipeline.errors import ActrecError
from pipeline.registry import registry

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


def make_config(path: str | Path | None = None, **sections: dict) -> Config:
    """The YAML config at ``path`` (or the defaults) with ``sections`` on top, validated: ``make_config(
    "configs/synthetic.yaml", model={"name": "tcn", "latent_dim": 64})``. ``Config.updated`` adds further layers."""
    return load_config(path).updated(**sections) if sections else load_config(path)


def embed_cache(config: Config) -> dict:
    """Stage one (``actrec embed``): every frame of every video through the frozen backbone into the cache.

    (Not ``pipeline.embed``: that name is stage one's package.)"""
    from pipeline.embed.run import embed as run

    return run(config)


@dataclass
class Cache:
    """A feature cache as stage two sees it, with the split of ``config``: videos, labels and clips."""

    config: Config
    features_file: Any  # pipeline.cache.reader.FeatureCache
    split: Any  # pipeline.inputs.splits.Split

    @property
    def videos(self) -> list[str]:
        return list(self.features_file.names)

    @property
    def class_names(self) -> list[str]:
        return list(self.features_file.class_names)

    def label(self, video: str) -> int:
        return int(self.features_file.labels[self.features_file.index_of(video)])

    def features(self, video: str, flip: bool = False) -> np.ndarray:
        """The cached features ``[T, D]`` of one video (its mirrored frames' with ``flip``)."""
        return self.features_file.sequence(self.features_file.index_of(video), flip=flip)

    def clips(self, subset: str = "train"):
        """A torch ``Dataset`` of clips drawn as training draws them: ``train`` (one random clip per video per
        epoch, ``train.sampler``), ``val`` or ``test`` (``eval.clips`` fixed clips per video)."""
        from pipeline.cache.reader import cache_rows
        from pipeline.sequence.datasets import EvalClips
        from pipeline.sequence.train import training_data

        if subset not in ("train", "val", "test"):
            raise ActrecError(f"clips({subset!r}): choose 'train', 'val' or 'test'")
        if subset == "test":
            rows, labels = cache_rows(self.features_file, self.split.test, "test")
            return EvalClips(self.features_file, rows, labels, self.config.train.sequence_length,
                             self.config.eval.clips)
        train_set, val_set, _ = training_data(self.config, self.features_file)
        return train_set if subset == "train" else val_set


def open_cache(config: Config) -> Cache:
    """The cache at ``cache.path``, checked against ``config`` as stage two checks it, with its split."""
    from pipeline.cache.reader import open_cache as open_checked
    from pipeline.inputs.formats import load_split

    return Cache(config, open_checked(config), load_split(config, check_videos=False))


@dataclass
class TrainResult:
    """A finished training run: its config (``model.name`` names your model), the best model, the summary."""

    config: Config
    model: nn.Module
    summary: dict
    run_dir: Path


def train(config: Config, model: type | str | None = None, resume: bool = False, on_epoch=None) -> TrainResult:
    """Stage two (``actrec train``, tracking included) of ``config``'s model, or of ``model``: a registered name,
    ``"module:attribute"``, or a network class built as ``model(feature_dim, num_classes, length, **settings)``
    whose settings are its ``Config`` dataclass (set them through ``config``'s ``model`` section). Returns the
    model of ``checkpoints/best.pt`` (refit.pt with ``train.refit``)."""
    from pipeline.experiments.tracked import train_run
    from pipeline.sequence.checkpoint import load_checkpoint, model_from_checkpoint

    if model is not None:
        config = config.updated(model={"name": register_model_class(model) if isinstance(model, type) else model})
    summary = train_run(config, resume=resume, on_epoch=on_epoch)
    run_dir = Path(config.run.dir)
    best = run_dir / "checkpoints" / ("refit.pt" if config.train.refit else "best.pt")
    return TrainResult(config, model_from_checkpoint(load_checkpoint(best)), summary, run_dir)


def register_model_class(cls: type) -> str:
    """Register a network class under ``"module:QualName"`` (its ``Config`` dataclass, if any, as its settings)."""
    from pipeline.registry import plugin_settings

    name = f"{cls.__module__}:{cls.__qualname__}"
    registry("model").register(name, plugin_settings(cls), cls, cls.__doc__ or "")
    return name


def evaluate(config: Config) -> dict:
    """``actrec evaluate``: the checkpoint ``eval.checkpoint`` of ``run.dir`` on the test list; the metrics."""
    from pipeline.experiments.tracked import evaluate_run

    return evaluate_run(config)


def probe(config: Config) -> dict:
    """``actrec probe``: a linear probe or kNN (``probe.method``) on each video's pooled features, its setting
    chosen on validation, refit, scored on the test list; the metrics (also written to ``probe.dir``)."""
    from pipeline.sequence.probe import probe as run

    return run(config)


def zeroshot(config: Config) -> dict:
    """``actrec zeroshot``: the test list of an OpenCLIP cache classified from class prompts by the same model's
    text tower (``zeroshot.templates``, ``zeroshot.prompts``, ``zeroshot.score``); the metrics (also written to
    ``zeroshot.dir``)."""
    from pipeline.zeroshot.run import zeroshot as run

    return run(config)


def search(config: Config, text: str | None = None, like: str | None = None, k: int = 10) -> list:
    """``actrec search``: the ``k`` videos of the cache (and their matching time spans) best matching a text query
    (an OpenCLIP cache) or an example ``like="Class/video@SECONDS"``; a list of ``Hit``."""
    from pipeline.zeroshot.search import search as run

    return run(config, text=text, like=like, k=k)


def predict_videos(video: str | Path, checkpoint: str | Path, out: str | None = None, json_path: str | None = None,
                   hop: float | None = None, device: str = "auto"):
    """``actrec predict``: label a video (or a folder of videos) with sliding windows; ``Predictor`` keeps a run
    loaded for many videos. (Not ``pipeline.predict``: that name is the prediction package.)"""
    from pipeline.predict.predictor import predict as run

    return run(Path(video), Path(checkpoint), out=out, json_path=json_path, hop=hop, device=device)


def export_features(cache_path: str | Path, out: str | Path, layout: str = "video_features",
                    key: str | None = None) -> dict:
    """``actrec export``: the cache's features per video in another tool's layout (``video_features`` or
    ``mmaction2``), bit for bit."""
    from pipeline.interchange.exporting import export_cache

    return export_cache(cache_path, out, layout, key)


def import_features(config: Config, folder: str | Path, made_by: str, layout: str = "video_features",
                    key: str | None = None) -> dict:
    """``actrec import``: the cache at ``cache.path`` built from another tool's per-video features in ``folder``
    for the videos of ``config``'s split lists; ``made_by`` says what made them (recorded in the fingerprint)."""
    from pipeline.interchange.importing import import_features as run

    return run(config, folder, layout, made_by, key)


def create_backbone(name: str, weights: str = "imagenet", device: str = "cpu", img_dim: int | None = None):
    """The frozen backbone ``name`` (``embed.backbone``'s names) with ``weights``; ``.feature_dim`` is its width."""
    from pipeline.embed.backbones import resolve_backbone

    return resolve_backbone(name, weights, img_dim=img_dim).build(device)


def create_model(name: str, feature_dim: int, num_classes: int, length: int = 40, **settings):
    """The sequence model ``name`` (``model.name``'s names) with ``settings`` checked as the config checks them."""
    from pipeline.sequence.models import build_model

    cfg = make_config(model={"name": name, **settings}, train={"sequence_length": length})
    return build_model(cfg, feature_dim, num_classes)


def _register(kind: str):
    def register(name: str, dataclass: type | None = None, build: Any = None, help: str = ""):
        return registry(kind).register(name, dataclass, build, help)
    register.__name__ = f"register_{kind}"
    register.__doc__ = (f"Register a {kind} plug-in under ``name`` with its settings ``dataclass`` and what builds it "
                        f"(a callable or ``\"module:attribute\"``); without ``build``, a decorator.")
    return register


register_model = _register("model")
register_format = _register("format")
register_sampler = _register("sampler")
register_optimizer = _register("optimizer")
register_schedule = _register("schedule")
register_probe = _register("probe")
register_backbone_library = _register("backbone")
