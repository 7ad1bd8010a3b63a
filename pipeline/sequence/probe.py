"""``actrec probe``: a linear probe or kNN (``probe.method``) on each video's pooled cached features, scored on
the test list as ``actrec evaluate`` scores a trained model.

The way papers compare frozen backbones: every video becomes one vector (the mean, or the max, of its frames'
features: ``probe.pool``), the probe's setting is chosen on the validation groups (``data.val_fraction``, as
training carves them), the probe is refit on training + validation with it, and the test videos are scored once.
``probe.dir`` gets what an evaluated run has (``config.yaml``, ``metrics.json`` with the same keys plus
``probe``, ``predictions.csv``, the confusion matrix), so ``actrec report`` and ``actrec serve`` rank probes
beside trained runs. No torch: the features come from the cache, the probe from scikit-learn.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Config, save_config
from pipeline.errors import ActrecError
from pipeline.inputs.formats import class_pairs
from pipeline.optional import require
from pipeline.sequence.evaluate import compute_metrics, test_list_fields, test_rows, write_run
from pipeline.sequence.probe_methods import PROBES

log = logging.getLogger(__name__)


def probe(cfg: Config) -> dict:
    """Fit ``cfg.probe.method`` on the pooled features of ``cfg``'s split and score its test list; the metrics."""
    from pipeline.cache.reader import cache_rows, open_cache
    from pipeline.inputs.formats import load_split

    require("sklearn", "`actrec probe`")  # before any work: the one line of a missing extra
    cache, split = open_cache(cfg), load_split(cfg, check_videos=False)
    if split.class_names != cache.class_names:
        raise ActrecError(f"{cfg.cache.path} lists other classes than the split files of {cfg.data.splits}; point "
                          f"cache.path at this dataset's cache")
    cache.place("auto", flip=False)
    train = pooled(cache, *cache_rows(cache, split.train, "training"), cfg.probe.pool)
    val = pooled(cache, *cache_rows(cache, split.val, "validation"), cfg.probe.pool)
    test_rows_, test_labels, unscored = test_rows(cfg, cache, split)
    test = pooled(cache, test_rows_, test_labels, cfg.probe.pool)
    if not len(train.labels):
        raise ActrecError(f"split {split.name} leaves no training videos in {cfg.cache.path}")
    method = PROBES.get(cfg.probe.method, "probe.method")
    started = time.perf_counter()
    fitted = method.build((train.features, train.labels), (val.features, val.labels), len(split.class_names),
                          **method.values(cfg.probe))
    seconds = time.perf_counter() - started
    probabilities = fitted.probabilities(test.features)
    log_probabilities = np.log(np.maximum(probabilities, 1e-12))[:, None, :]  # one "clip" per video
    metrics = compute_metrics(log_probabilities, test.labels, split.class_names, unscored,
                              class_pairs(cfg, split.class_names))
    metrics.update(describe_probe(cfg, split, fitted, seconds, len(train.labels), len(val.labels)))
    save_config(cfg, Path(cfg.probe.dir) / "config.yaml")
    write_run(Path(cfg.probe.dir), metrics, split, [cache.names[row] for row in test_rows_], probabilities)
    return metrics


@dataclass
class Pooled:
    """Videos of one list as one vector each: the features ``[N, D]`` and labels ``[N]``."""

    features: np.ndarray
    labels: np.ndarray


def pooled(cache, rows: list[int], labels: list[int], pool: str) -> Pooled:
    """Each video's frame features reduced over time by ``pool`` ('mean' or 'max'), float64."""
    reduce = np.mean if pool == "mean" else np.max
    features = np.stack([reduce(cache.sequence(row), axis=0) for row in rows]) if rows else np.zeros((0, cache.dim))
    return Pooled(features.astype(np.float64), np.asarray(labels, dtype=np.int64))


def describe_probe(cfg: Config, split, fitted, seconds: float, n_train: int, n_val: int) -> dict:
    """The metrics.json fields that say what was scored (evaluate's names, where they apply)."""
    return {
        "split": split.name,
        "model": f"probe-{cfg.probe.method}",
        "eval_clips": 1,
        "trained_on": "training+validation",
        **test_list_fields(cfg, split),
        "probe": {"method": cfg.probe.method, "pool": cfg.probe.pool, "chosen": fitted.chosen,
                  "validation_top1": fitted.validation, "fit_seconds": round(seconds, 3),
                  "training_videos": n_train, "validation_videos": n_val, **fitted.details},
    }
