"""Classification metrics on plain numpy arrays: scores ``[N, C]``, integer labels ``[N]``."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def video_scores(clip_logits: np.ndarray) -> np.ndarray:
    """Clip logits ``[N, K, C]`` -> video scores ``[N, C]``: the mean of the clips' softmax probabilities."""
    return softmax(np.asarray(clip_logits, dtype=np.float64)).mean(axis=1)


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> np.ndarray:
    """Per row, whether its label is among the ``k`` highest scores (k is capped at the number of classes)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    k = min(k, scores.shape[1])
    # A stable sort breaks ties toward the lower class index, the same way argmax does.
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (topk == labels[:, None]).any(axis=1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Share of rows whose label is among the ``k`` highest scores (NaN without rows)."""
    if len(labels) == 0:
        return float("nan")
    return float(topk_hits(scores, labels, k).mean())


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[C, C]``: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray, unscored: np.ndarray | None = None) -> np.ndarray:
    """Recall of each class from a confusion matrix; NaN for classes with no examples.

    ``unscored`` counts, per class, examples that got no prediction (wrong answers in the total).
    """
    totals = matrix.sum(axis=1) + (0 if unscored is None else unscored)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)


def mean_class_accuracy(matrix: np.ndarray, unscored: np.ndarray | None = None) -> float:
    """The mean of per-class accuracies over the classes that have examples (UCF-101's usual second number)."""
    per_class = per_class_accuracy(matrix, unscored)
    return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")


def pair_accuracy(scores: np.ndarray, labels: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    """Accuracy of choosing between the two classes of a pair, for examples of paired classes.

    Only the two scores of the example's own pair compete, so a model that cannot tell a
    clip from its time reversal scores about 0.5.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    partner = {}
    for a, b in pairs:
        partner[a], partner[b] = b, a
    rows = [i for i, label in enumerate(labels) if int(label) in partner]
    if not rows:
        return float("nan")
    correct = [scores[i, labels[i]] > scores[i, partner[int(labels[i])]] for i in rows]
    return float(np.mean(correct))
