"""Evaluate stage: a trained checkpoint on the test list of its split.

Writes ``run.dir/metrics.json`` (top-1/top-5 at video level, clip top-1, mean class accuracy,
per-class accuracy, and for the synthetic dataset the accuracy within time-reversed class
pairs), ``run.dir/confusion_matrix.png`` and prints a summary. The test list is read here and
nowhere in training, and a checkpoint trained on another split is refused, so the numbers are
never computed on videos the model saw.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from pipeline.config import config_diff
from pipeline.errors import ActrecError
from pipeline.experiments.track import track_evaluation
from pipeline.fileio import write_json
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

# metrics.json key -> report column title
REPORT_COLUMNS = {"top1": "top1", "top5": "top5", "mean_class_accuracy": "mean_cls", "clip_top1": "clip_top1",
                  "pair_accuracy": "pair_acc"}


def evaluate(cfg) -> dict:
    """Evaluate ``eval.checkpoint`` of ``run.dir`` on the test list of ``data.split``; returns the metrics."""
    from pipeline.sequence.checkpoint import load_checkpoint

    path = checkpoint_path(cfg)
    ckpt = load_checkpoint(path)
    check_same_test_list(cfg, ckpt, path)
    dataset, split, unscored_labels = test_data(cfg, ckpt, path)
    logits, labels = score_test_clips(cfg, ckpt, dataset)
    metrics = compute_metrics(logits, labels, split.class_names, unscored_labels)
    metrics.update(describe_evaluation(cfg, ckpt, path, split))
    metrics["confusion_matrix"] = metrics.pop("confusion_matrix")  # last: the long field ends the file
    write_outputs(metrics, split.class_names, Path(cfg.run.dir))
    track_evaluation(cfg, metrics)  # the test metrics beside the run's hparams (TensorBoard, MLflow)
    return metrics


def test_data(cfg, ckpt: dict, path: Path):
    """Evaluation clips of the test videos of ``cfg``'s split, from a cache made as the checkpoint's was."""
    from pipeline.cache.reader import cache_rows, open_cache
    from pipeline.inputs.datasets import load_split
    from pipeline.sequence.resident import host_load
    from pipeline.sequence.sampling import EvalClips

    cache = open_cache(cfg)
    if ckpt["fingerprint"] != cache.fingerprint:
        raise ActrecError(f"{path} was trained on features made with other settings than {cfg.cache.path}; "
                          f"evaluate with the config it was trained with (see {cfg.run.dir}/config.yaml)")
    split = load_split(cfg, check_videos=False)
    if split.class_names != ckpt["class_names"]:
        raise ActrecError(f"{path} was trained on other classes than {cfg.data.splits}/classInd.txt lists")
    # The protocol: a test video without features is a wrong answer, not a smaller test set.
    unscored = [item for item in split.test if item.name not in cache or item.name in cache.failures]
    missing = {item.name for item in unscored}
    rows, labels = cache_rows(cache, [item for item in split.test if item.name not in missing], "test")
    if not rows:
        raise ActrecError(f"the test list of split {split.name} has no videos in {cfg.cache.path}")
    if unscored:
        log.warning(f"{len(unscored)} of {len(split.test)} test videos have no features in {cfg.cache.path} "
                    f"(e.g. {unscored[0].name}); they count as wrong answers. `actrec info {cfg.cache.path}` "
                    f"lists failures; `actrec embed` adds missing videos")
    cache.place(host_load(cfg.cache.load), flip=False)  # evaluation never reads mirrored features
    length = ckpt["config"]["train"]["sequence_length"]
    return EvalClips(cache, rows, labels, length, cfg.eval.clips), split, [item.label for item in unscored]


def score_test_clips(cfg, ckpt: dict, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, K, C]`` of every test clip on the eval device, and the labels ``[N]``."""
    from pipeline.device import autocast_dtype, resolve_device, set_threads
    from pipeline.sequence.checkpoint import model_from_checkpoint
    from pipeline.sequence.resident import ResidentFeatures, choose_placement, predict_resident
    from pipeline.sequence.train import predict_clips

    set_threads(cfg.eval.threads)
    device = resolve_device(cfg.eval.device, option="eval.device")
    model = model_from_checkpoint(ckpt).to(device)
    amp_dtype = autocast_dtype(device, cfg.eval.precision)
    if choose_placement(cfg.cache.load, dataset.cache, dataset.rows, False, device):
        # The test videos' features go to the device once; each forward gathers many videos' clips there.
        resident = ResidentFeatures(dataset.cache, dataset.rows, device, flip=False)
        return predict_resident(model, dataset, resident, cfg.eval.batch_size, amp_dtype)
    return predict_clips(model, dataset, cfg.eval.batch_size, device, amp_dtype, desc="evaluate")


def describe_evaluation(cfg, ckpt: dict, path: Path, split) -> dict:
    """The metrics.json fields that say what was evaluated: split, model, checkpoint, clips, leaks."""
    return {
        "split": split.name,
        "model": ckpt["config"]["model"]["name"],
        "eval_clips": cfg.eval.clips,
        "sequence_length": ckpt["config"]["train"]["sequence_length"],
        "checkpoint": str(path),
        "checkpoint_epoch": int(ckpt["epoch"]),
        "leaks_groups": split.name == "random" or split.leaked_groups > 0,
        "leaked_groups": int(split.leaked_groups),
        "backbone": f"{cfg.embed.backbone}/{cfg.embed.weights_tag}/{cfg.embed.img_dim}",  # the report compares them
        "cache": str(cfg.cache.path),
    }


def write_outputs(metrics: dict, class_names: list[str], run_dir: Path) -> None:
    """metrics.json and the confusion-matrix figure of the run."""
    from pipeline.plots import plot_confusion

    write_json(run_dir / "metrics.json", metrics)
    plot_confusion(np.array(metrics["confusion_matrix"]), class_names, run_dir / "confusion_matrix.png",
                   title=f"{metrics['model']}, split {metrics['split']}: top-1 {metrics['top1']:.3f}")
    log.info(f"wrote {run_dir / 'metrics.json'} and {run_dir / 'confusion_matrix.png'}")


def checkpoint_path(cfg) -> Path:
    """eval.checkpoint: 'best' / 'last' of run.dir, or a path."""
    if cfg.eval.checkpoint in ("best", "last"):
        return Path(cfg.run.dir) / "checkpoints" / f"{cfg.eval.checkpoint}.pt"
    return Path(cfg.eval.checkpoint)


def check_same_test_list(cfg, ckpt: dict, path: Path) -> None:
    """Refuse a checkpoint trained on another split than the evaluated one: it may have trained on these test videos."""
    changed = [f"{key}: trained with {trained!r}, now {current!r}"
               for key, (trained, current) in config_diff(ckpt["config"], cfg.to_dict(), "test list").items()]
    if changed:
        raise ActrecError(f"{path} was trained on another split than the one to evaluate ({'; '.join(changed)}); "
                          f"its training videos may be in this test list. Evaluate with the settings it was "
                          f"trained with, or train a run for this split")


def compute_metrics(clip_logits: np.ndarray, labels: np.ndarray, class_names: list[str],
                    unscored_labels=()) -> dict:
    """Video-level and clip-level metrics from clip logits ``[N, K, C]`` and labels ``[N]``.

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
    pairs = reversed_pairs(class_names)
    if pairs:
        metrics["pair_accuracy"] = pair_accuracy(scores, labels, pairs)
        metrics["pairs"] = [[class_names[a], class_names[b]] for a, b in pairs]
    return metrics


def reversed_pairs(class_names: list[str]) -> list[tuple[int, int]]:
    """(forward, reversed) label pairs of the synthetic dataset's time-reversed classes (none for UCF-101)."""
    from pipeline.inputs.motions import MOTIONS

    index = {name: label for label, name in enumerate(class_names)}
    pairs = []
    for name, label in index.items():
        for forward, backward in MOTIONS:
            partner = name[: -len(forward)] + backward
            if name.endswith(forward) and partner in index:
                pairs.append((label, index[partner]))
    return pairs


def format_summary(metrics: dict) -> str:
    title = (f"{metrics['model']} on the test list of split {metrics['split']}: {metrics['num_videos']} videos, "
             f"{metrics['eval_clips']} clip(s) of {metrics['sequence_length']} frames each, checkpoint epoch "
             f"{metrics['checkpoint_epoch']}")
    lines = [title,
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


def summarize_runs(run_dirs) -> dict:
    """The metrics.json of several runs, and per model the mean over its runs (e.g. splits 1, 2 and 3)."""
    runs = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "metrics.json"
        try:
            metrics = json.loads(path.read_text())
        except OSError as exc:
            message = f"{path}: cannot read it ({exc.strerror}); run `actrec evaluate` for {run_dir} first"
            raise ActrecError(message) from exc
        except ValueError as exc:
            raise ActrecError(f"{path}: not valid JSON ({exc}); run `actrec evaluate` again") from exc
        if not isinstance(metrics, dict) or not {"model", "split", "top1"} <= set(metrics):
            raise ActrecError(f"{path} is not a metrics.json written by `actrec evaluate` (it needs model, split "
                              f"and top1); run `actrec evaluate` for {run_dir} again")
        metrics.pop("confusion_matrix", None)
        runs.append({"run_dir": str(run_dir), **metrics})
    by_model = {}  # one mean per model and backbone: runs on other features are not averaged together
    for model, backbone in dict.fromkeys((run["model"], run.get("backbone")) for run in runs):
        mine = [run for run in runs if (run["model"], run.get("backbone")) == (model, backbone)]
        key = model if backbone is None else f"{model} {backbone}"
        by_model[key] = {"model": model, "backbone": backbone, "splits": [run["split"] for run in mine], **{
            f"mean_{key}": _mean(run.get(key) for run in mine) for key in REPORT_COLUMNS}}
    return {"runs": runs, "by_model": by_model, "mean_top1": _mean(run["top1"] for run in runs)}


def report_text(dirs) -> str:
    """What ``actrec report`` prints: each sweep folder's leaderboard, then the table of the plain run dirs."""
    parts, run_dirs = [], []
    for folder in dirs:
        board = Path(folder) / "leaderboard.md"
        if board.exists():
            parts.append(board.read_text().rstrip("\n"))
        elif (Path(folder) / "plan.json").exists():
            raise ActrecError(f"{folder} is a sweep without a leaderboard yet; run its `actrec sweep` command again")
        else:
            run_dirs.append(folder)
    if run_dirs:
        parts.append(format_report(summarize_runs(run_dirs)))
    return "\n\n".join(parts)


def format_report(summary: dict) -> str:
    """A table of the runs' metrics and, for models run on several splits, their means."""
    header = (f"{'run':<36} {'model':<9} {'backbone/weights/img_dim':<28} {'split':<13} {'videos':>7} "
              f"{'failed':>6} " + " ".join(f"{title:>10}" for title in REPORT_COLUMNS.values()))
    lines = [header, "-" * len(header)]
    for run in summary["runs"]:
        lines.append(f"{Path(run['run_dir']).name:<36} {run['model']:<9} {run.get('backbone') or '-':<28} "
                     f"{run['split']!s:<13} {run.get('num_videos', '-'):>7} {run.get('num_failed', '-'):>6} "
                     + " ".join(_cell(run.get(key)) for key in REPORT_COLUMNS))
    for stats in summary["by_model"].values():
        if len(stats["splits"]) > 1:
            splits = ",".join(map(str, stats["splits"]))
            lines.append(f"{'mean':<36} {stats['model']:<9} {stats['backbone'] or '-':<28} {splits:<13} "
                         f"{'':>7} {'':>6} " + " ".join(_cell(stats[f"mean_{key}"]) for key in REPORT_COLUMNS))
    if any(run.get("num_failed") for run in summary["runs"]):
        lines.append("note: failed = test videos without features (failed to embed or missing from the cache); "
                     "top1 counts them as wrong answers")
    if any(run.get("leaks_groups") for run in summary["runs"]):
        lines.append("note: runs on split 'random' share groups between train and test; their numbers are inflated")
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:>10.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else f"{'-':>10}"


def _mean(values) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
