"""``actrec zeroshot``: an OpenCLIP cache's test list classified by the same model's text tower, no training.

Each class is described by prompts (``zeroshot.templates`` or ``zeroshot.prompts``, ``prompts.py``) and becomes
one unit vector (``text.py``). A video's logits are the model's logit scale times the cosine between the class
vectors and its frames: the mean of its normalised frame embeddings (``zeroshot.score: mean``, the CLIP paper's
video protocol), or each frame's own cosine, maximised over time (``max``). The test list, its unscored videos,
``metrics.json``, ``predictions.csv`` and the confusion matrix are ``actrec evaluate``'s, written to
``zeroshot.dir``, so ``actrec report`` and ``actrec serve`` rank zero-shot runs beside trained ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.config import Config, save_config
from pipeline.inputs.formats import class_pairs
from pipeline.sequence.evaluate import compute_metrics, test_list_fields, test_rows, write_run
from pipeline.sequence.metrics import video_scores
from pipeline.zeroshot.prompts import class_prompts
from pipeline.zeroshot.text import check_open_clip_cache, check_text_tower, class_embeddings

log = logging.getLogger(__name__)


def zeroshot(cfg: Config) -> dict:
    """Score the test list of ``cfg``'s split with class prompts alone; the metrics (also in ``zeroshot.dir``)."""
    from pipeline.cache.reader import open_cache
    from pipeline.embed.backbones import backbone_of
    from pipeline.inputs.formats import load_split

    cache = open_cache(cfg)
    check_open_clip_cache(cache, "zero-shot classification needs a cache of an OpenCLIP image tower "
                                 "(embed.backbone=open_clip/ARCH:TAG), whose text tower it uses")
    split = load_split(cfg, check_videos=False)
    prompts = class_prompts(split.class_names, cfg.zeroshot.templates, cfg.zeroshot.prompts)
    backbone = backbone_of(cfg.embed)
    check_text_tower(backbone, cache.fingerprint, cfg.cache.path)
    classes = class_embeddings(backbone, prompts, cfg.cache.path)
    rows, labels, unscored = test_rows(cfg, cache, split)
    cache.place("auto", flip=False)
    logits = np.stack([video_logits(cache.sequence(row), classes.vectors, classes.logit_scale, cfg.zeroshot.score)
                       for row in rows])
    metrics = compute_metrics(logits[:, None, :], np.asarray(labels), split.class_names, unscored,
                              class_pairs(cfg, split.class_names))
    metrics.update(describe_zeroshot(cfg, split, prompts, classes.path))
    save_config(cfg, Path(cfg.zeroshot.dir) / "config.yaml")
    write_run(Path(cfg.zeroshot.dir), metrics, split, [cache.names[row] for row in rows],
              video_scores(logits[:, None, :]))
    return metrics


def video_logits(frames: np.ndarray, classes: np.ndarray, scale: float, score: str) -> np.ndarray:
    """Logits ``[C]`` of a video's frame embeddings ``[T, D]`` against unit class vectors ``[C, D]``."""
    unit = frames / np.maximum(np.linalg.norm(frames, axis=1, keepdims=True), 1e-12)
    if score == "max":
        return scale * (unit @ classes.T).max(axis=0)
    mean = unit.mean(axis=0)
    return scale * (mean / max(float(np.linalg.norm(mean)), 1e-12)) @ classes.T


def describe_zeroshot(cfg: Config, split, prompts: dict[str, list[str]], text_path: Path) -> dict:
    """The metrics.json fields that say what was scored (evaluate's names where they apply)."""
    return {
        "split": split.name,
        "model": f"zeroshot-{cfg.zeroshot.score}",
        "eval_clips": 1,
        "trained_on": "nothing (zero-shot)",
        **test_list_fields(cfg, split),
        "zeroshot": {"score": cfg.zeroshot.score, "templates": cfg.zeroshot.templates,
                     "prompts_file": cfg.zeroshot.prompts or None, "prompts_per_class": {
                         name: len(listed) for name, listed in prompts.items()}, "text_embeddings": str(text_path)},
    }
