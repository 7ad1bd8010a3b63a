"""actrec: action recognition in video as a two-stage feature-caching pipeline.

The public API (``pipeline/api.py``), imported on first use so that ``import pipeline`` stays fast:
``make_config``, ``load_config``, ``embed_cache``, ``open_cache``, ``train``, ``evaluate``, ``probe``,
``zeroshot``, ``search``, ``predict_videos``, ``Predictor``, ``export_features``, ``import_features``,
``create_backbone``, ``create_model`` and ``register_model`` (and ``_format``, ``_sampler``, ``_optimizer``,
``_schedule``, ``_probe``, ``_backbone_library``).
"""

__version__ = "0.1.0"

_API = {name: "pipeline.api" for name in (
    "make_config", "embed_cache", "open_cache", "train", "evaluate", "probe", "zeroshot", "search", "predict_videos",
    "export_features", "import_features", "create_backbone", "create_model", "register_model", "register_format",
    "register_sampler", "register_optimizer", "register_schedule", "register_probe", "register_backbone_library",
    "Cache", "TrainResult")}
_API.update({"load_config": "pipeline.config", "Config": "pipeline.config", "ActrecError": "pipeline.errors",
             "Predictor": "pipeline.predict.predictor"})
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
