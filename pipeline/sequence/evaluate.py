"""Evaluate stage: a trained checkpoint on the test list of its split.

Writes ``run.dir/metrics.json`` (top-1/top-5 at video level, clip top-1, mean class accuracy,
per-class accuracy, and for the synthetic dataset the accuracy within time-reversed class
pairs), ``run.dir/confusion_matrix.png`` and prints a summary. The test list is read here and
nowhere in training, and a checkpoint trained on another split is refused, so the numbers are
never computed on videos the model saw.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from pipeline.config import Config, config_diff, runtime_option, stage_runtime
from pipeline.errors import ActrecError
from pipeline.fileio import write_json
from pipeline.inputs.formats import class_pairs
from pipeline.sequence.metrics import (
    confusion_matrix,
    mean_class_accuracy,
    pair_accuracy,
    per_class_accuracy,
    topk_accuracy,
    topk_hits,
    video_scores,
)

log = logging.getLogger(__name__)

def evaluate(cfg: Config) -> dict:
    """Evaluate ``eval.checkpoint`` of ``run.dir`` on the test list of ``data.split``; returns the metrics."""
    from pipeline.sequence.checkpoint import load_checkpoint

    path = checkpoint_path(cfg)
    ckpt = load_checkpoint(path)
    check_refit_finished(ckpt, path)
    check_same_test_list(cfg, ckpt, path)
    dataset, split, unscored_labels = test_data(cfg, ckpt, path)
    logits, labels = score_test_clips(cfg, ckpt, dataset)
    metrics = compute_metrics(logits, labels, split.class_names, unscored_labels,
                              class_pairs(cfg, split.class_names))
    metrics.update(describe_evaluation(cfg, ckpt, path, split))
    write_run(Path(cfg.run.dir), metrics, split, [dataset.cache.names[row] for row in dataset.rows],
              video_scores(logits))
    return metrics


def test_data(cfg: Config, ckpt: dict, path: Path):
    """Evaluation clips of the test videos of ``cfg``'s split, from a cache made as the checkpoint's was."""
    from pipeline.cache.reader import open_cache
    from pipeline.inputs.formats import load_split
    from pipeline.sequence.datasets import EvalClips
    from pipeline.sequence.resident import host_load

    cache = open_cache(cfg)
    if ckpt["fingerprint"] != cache.fingerprint:
        raise ActrecError(f"{path} was trained on features made with other settings than {cfg.cache.path}; "
                          f"evaluate with the config it was trained with (see {cfg.run.dir}/config.yaml)")
    split = load_split(cfg, check_videos=False)
    if split.class_names != ckpt["class_names"]:
        raise ActrecError(f"{path} was trained on other classes than {cfg.data.splits}/classInd.txt lists")
    rows, labels, unscored = test_rows(cfg, cache, split)
    cache.place(host_load(cfg.cache.load), flip=False)  # evaluation never reads mirrored features
    length = ckpt["config"]["train"]["sequence_length"]
    return EvalClips(cache, rows, labels, length, cfg.eval.clips), split, unscored


def test_rows(cfg: Config, cache, split) -> tuple[list[int], list[int], list[int]]:
    """The cache rows and labels of the test videos that have features, and the labels of those that have none:
    by the protocol, a test video without features is a wrong answer, not a smaller test set."""
    from pipeline.cache.reader import cache_rows

    unscored = [item for item in split.test if item.name not in cache or item.name in cache.failures]
    missing = {item.name for item in unscored}
    rows, labels = cache_rows(cache, [item for item in split.test if item.name not in missing], "test")
    if not rows:
        raise ActrecError(f"the test list of split {split.name} has no videos in {cfg.cache.path}")
    if unscored:
        log.warning(f"{len(unscored)} of {len(split.test)} test videos have no features in {cfg.cache.path} "
                    f"(e.g. {unscored[0].name}); they count as wrong answers. `actrec info {cfg.cache.path}` "
                    f"lists failures; `actrec embed` adds missing videos")
    return rows, labels, [item.label for item in unscored]


def score_test_clips(cfg: Config, ckpt: dict, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, K, C]`` of every test clip on the eval device, and the labels ``[N]``."""
    from pipeline.device import autocast_dtype, resolve_device, set_threads
    from pipeline.sequence.checkpoint import model_from_checkpoint
    from pipeline.sequence.clips import clip_source
    from pipeline.sequence.loop import predict_clips

    runtime = stage_runtime(cfg, "eval")
    set_threads(runtime.threads)
    device = resolve_device(runtime.device, option=runtime_option(cfg, "eval", "device"))
    model = model_from_checkpoint(ckpt).to(device)
    amp_dtype = autocast_dtype(device, runtime.precision)
    clips = clip_source(cfg.cache.load, dataset.cache, dataset.rows, False, device)
    return predict_clips(model, clips, dataset, cfg.eval.batch_size, amp_dtype, desc="evaluate")


def describe_evaluation(cfg: Config, ckpt: dict, path: Path, split) -> dict:
    """The metrics.json fields that say what was evaluated: split, model, checkpoint, clips, leaks."""
    return {
        "split": split.name,
        "model": ckpt["config"]["model"]["name"],
        "eval_clips": cfg.eval.clips,
        "sequence_length": ckpt["config"]["train"]["sequence_length"],
        "checkpoint": str(path),
        "checkpoint_epoch": int(ckpt["epoch"]),
        # 'training+validation': train.refit's model, trained for the epochs validation chose (checkpoint_epoch).
        "trained_on": ckpt.get("trained_on", "training"),
        **test_list_fields(cfg, split),
    }


def test_list_fields(cfg: Config, split) -> dict:
    """What every scored run's metrics.json says of its test list and features (evaluate, probe, zero-shot)."""
    return {
        "leaks_groups": split.name == "random" or split.leaked_groups > 0,
        "leaked_groups": int(split.leaked_groups),
        "backbone": f"{cfg.embed.backbone}/{cfg.embed.weights_tag}/{cfg.embed.img_dim}",  # the report compares them
        "cache": str(cfg.cache.path),
    }


def write_run(run_dir: Path, metrics: dict, split, videos: list[str], scores: np.ndarray) -> None:
    """A scored run's files: metrics.json (the confusion matrix last: the long field ends the file), its figure
    and predictions.csv of ``videos``' scores ``[N, C]``."""
    metrics["confusion_matrix"] = metrics.pop("confusion_matrix")
    write_outputs(metrics, split.class_names, run_dir)
    write_predictions(run_dir / "predictions.csv", split, videos, scores)


def write_outputs(metrics: dict, class_names: list[str], run_dir: Path) -> None:
    """metrics.json and the confusion-matrix figure of the run."""
    from pipeline.plots import plot_confusion

    write_json(run_dir / "metrics.json", metrics)
    plot_confusion(np.array(metrics["confusion_matrix"]), class_names, run_dir / "confusion_matrix.png",
                   title=f"{metrics['model']}, split {metrics['split']}: top-1 {metrics['top1']:.3f}")
    log.info(f"wrote {run_dir / 'metrics.json'} and {run_dir / 'confusion_matrix.png'}")


PREDICTION_COLUMNS = ["video", "true_label"] + [f"{what}{k}" for k in range(1, 6)
                                                 for what in ("label", "probability")] + ["failed"]


def write_predictions(path: Path, split, videos: list[str], scores: np.ndarray) -> None:
    """predictions.csv: per test video its true label, video-level top-5 and whether it had no features
    (``failed``: 1, top-5 left empty). ``scores`` ``[N, C]`` are those of ``videos`` (names), in order."""
    import csv

    from pipeline.fileio import atomic_path

    names = split.class_names
    scored = dict(zip(videos, scores))
    rows = []
    for item in split.test:
        if item.name not in scored:
            rows.append([item.name, names[item.label]] + [""] * 10 + [1])
            continue
        top = np.argsort(-scored[item.name], kind="stable")[:5]
        pairs = [x for c in top for x in (names[c], f"{scored[item.name][c]:.6f}")]
        rows.append([item.name, names[item.label]] + pairs + [""] * (10 - len(pairs)) + [0])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([PREDICTION_COLUMNS] + rows)
    log.info(f"wrote {path}")


def checkpoint_path(cfg: Config) -> Path:
    """eval.checkpoint: 'best' (with train.refit: the refit model) / 'last' of run.dir, or a path."""
    if cfg.eval.checkpoint == "best" and cfg.train.refit:
        return Path(cfg.run.dir) / "checkpoints" / "refit.pt"
    if cfg.eval.checkpoint in ("best", "last"):
        return Path(cfg.run.dir) / "checkpoints" / f"{cfg.eval.checkpoint}.pt"
    return Path(cfg.eval.checkpoint)


def check_refit_finished(ckpt: dict, path: Path) -> None:
    """Refuse a refit model that has not trained all the epochs validation chose (an interrupted refit)."""
    epochs = ckpt["config"]["train"]["epochs"]
    if ckpt.get("trained_on") == "training+validation" and ckpt["epoch"] < epochs:
        raise ActrecError(f"{path} is an unfinished refit ({ckpt['epoch']} of {epochs} epochs); run `actrec train` "
                          f"with the same config again to finish it")


def check_same_test_list(cfg: Config, ckpt: dict, path: Path) -> None:
    """Refuse a checkpoint trained on another split than the evaluated one: it may have trained on these test videos."""
    changed = [f"{key}: trained with {trained!r}, now {current!r}"
               for key, (trained, current) in config_diff(ckpt["config"], cfg.to_dict(), "test list").items()]
    if changed:
        raise ActrecError(f"{path} was trained on another split than the one to evaluate ({'; '.join(changed)}); "
                          f"its training videos may be in this test list. Evaluate with the settings it was "
                          f"trained with, or train a run for this split")


def compute_metrics(clip_logits: np.ndarray, labels: np.ndarray, class_names: list[str],
                    unscored_labels=(), pairs: list[tuple[int, int]] = ()) -> dict:
    """Video-level and clip-level metrics from clip logits ``[N, K, C]`` and labels ``[N]``; with ``pairs``
    (label pairs of classes that differ only in frame order), the accuracy within them.

    ``unscored_labels`` are the labels of test videos with no features (missing from the cache or failed to
    embed): wrong answers in top-1, top-5 and the per-class numbers, as the UCF-101 protocol counts them.
    ``top1_embedded`` is top-1 over the scored videos alone; the confusion matrix holds scored videos only.
    """
    n, k, c = clip_logits.shape
    scores = video_scores(clip_logits)
    matrix = confusion_matrix(labels, scores.argmax(axis=1), c)
    unscored = np.bincount(np.asarray(unscored_labels, dtype=np.int64), minlength=c)
    total = n + len(unscored_labels)
    metrics = {
        # Video level: a video's score is the mean of its clips' probabilities.
        "top1": float(topk_hits(scores, labels, 1).sum() / total),
        "top5": float(topk_hits(scores, labels, 5).sum() / total),
        "top1_embedded": topk_accuracy(scores, labels, 1),
        "mean_class_accuracy": mean_class_accuracy(matrix, unscored),
        "clip_top1": topk_accuracy(clip_logits.reshape(n * k, c), np.repeat(labels, k), 1),
        "num_videos": total,
        "num_failed": len(unscored_labels),
        "per_class": {name: _finite(acc) for name, acc in zip(class_names, per_class_accuracy(matrix, unscored))},
        "confusion_matrix": matrix.tolist(),
    }
    if pairs:
        metrics["pair_accuracy"] = pair_accuracy(scores, labels, pairs)
        metrics["pairs"] = [[class_names[a], class_names[b]] for a, b in pairs]
    return metrics


def format_summary(metrics: dict) -> str:
    lines = [_title(metrics),
             f"  top-1 (video)         {metrics['top1']:.4f}",
             f"  top-5 (video)         {metrics['top5']:.4f}",
             f"  mean class accuracy   {metrics['mean_class_accuracy']:.4f}",
             f"  clip top-1            {metrics['clip_top1']:.4f}"]
    if metrics.get("num_failed"):
        lines.append(f"  {metrics['num_failed']} test videos have no features and count as wrong; top-1 over the "
                     f"{metrics['num_videos'] - metrics['num_failed']} embedded ones: {metrics['top1_embedded']:.4f}")
    if "pair_accuracy" in metrics:
        lines.append(f"  pair accuracy         {metrics['pair_accuracy']:.4f}   (within time-reversed class pairs; "
                     f"0.5 = blind to order)")
    if metrics["leaks_groups"]:
        lines.append(f"  warning: split '{metrics['split']}' puts {metrics['leaked_groups']} groups on both sides; "
                     f"these numbers are inflated")
    per_class = [(acc, name) for name, acc in metrics["per_class"].items() if acc is not None]
    shown = sorted(per_class)[:5] if len(per_class) > 10 else sorted(per_class, key=lambda x: x[1])
    lines.append("  per class" + (" (5 worst)" if len(per_class) > 10 else "") + ":")
    lines += [f"    {name:<32} {acc:.3f}" for acc, name in shown]
    return "\n".join(lines)


def _title(metrics: dict) -> str:
    what = f"{metrics['model']} on the test list of split {metrics['split']}: {metrics['num_videos']} videos"
    if "zeroshot" in metrics:  # `actrec zeroshot`: prompts against frame embeddings, nothing trained
        return f"{what}, zero-shot ({metrics['zeroshot']['score']} over frames), prompts from " \
               f"{metrics['zeroshot']['prompts_file'] or metrics['zeroshot']['templates']}"
    if "probe" in metrics:  # `actrec probe`: one pooled vector per video, no clips, no checkpoint
        chosen = ", ".join(f"{k} = {v:g}" for k, v in metrics["probe"]["chosen"].items())
        return f"{what}, {metrics['probe']['pool']}-pooled features, {chosen} chosen on validation, refit on " \
               f"training + validation"
    return (f"{what}, {metrics['eval_clips']} clip(s) of {metrics['sequence_length']} frames each, checkpoint epoch "
            f"{metrics['checkpoint_epoch']}"
            + (", refit on training + validation" if metrics.get("trained_on") == "training+validation" else ""))


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
