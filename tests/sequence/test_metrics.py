import numpy as np
import pytest

from pipeline.sequence.metrics import (
    confusion_matrix,
    mean_class_accuracy,
    pair_accuracy,
    per_class_accuracy,
    softmax,
    topk_accuracy,
    video_scores,
)

# Four examples over three classes; the ranks are written out by hand.
SCORES = np.array([
    [0.7, 0.2, 0.1],   # label 0: rank 1
    [0.5, 0.3, 0.2],   # label 1: rank 2
    [0.1, 0.3, 0.6],   # label 2: rank 1
    [0.6, 0.1, 0.3],   # label 1: rank 3
])
LABELS = np.array([0, 1, 2, 1])


def test_topk_accuracy_by_hand():
    assert topk_accuracy(SCORES, LABELS, 1) == pytest.approx(2 / 4)
    assert topk_accuracy(SCORES, LABELS, 2) == pytest.approx(3 / 4)
    assert topk_accuracy(SCORES, LABELS, 3) == pytest.approx(1.0)
    assert topk_accuracy(SCORES, LABELS, 5) == pytest.approx(1.0)  # capped at the number of classes


def test_confusion_and_class_accuracies_by_hand():
    predictions = SCORES.argmax(axis=1)  # [0, 0, 2, 0]
    matrix = confusion_matrix(LABELS, predictions, 3)
    assert matrix.tolist() == [[1, 0, 0], [2, 0, 0], [0, 0, 1]]
    assert per_class_accuracy(matrix).tolist() == [1.0, 0.0, 1.0]
    # Mean class accuracy weights classes equally: (1 + 0 + 1) / 3, not the 2/4 of plain accuracy.
    assert mean_class_accuracy(matrix) == pytest.approx(2 / 3)


def test_class_without_examples_is_left_out_of_the_mean():
    matrix = confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 3)
    per_class = per_class_accuracy(matrix)
    assert per_class[0] == pytest.approx(0.5) and per_class[1] == 1.0 and np.isnan(per_class[2])
    assert mean_class_accuracy(matrix) == pytest.approx(0.75)


def test_video_scores_average_clip_probabilities_not_logits():
    # Clip 1 is confident in class 0, clip 2 mildly prefers class 1.
    clip_logits = np.array([[[10.0, 0.0], [0.0, 1.0]]])
    expected = (softmax(np.array([10.0, 0.0])) + softmax(np.array([0.0, 1.0]))) / 2
    scores = video_scores(clip_logits)
    assert scores.shape == (1, 2)
    np.testing.assert_allclose(scores[0], expected)
    assert scores[0].argmax() == 0 and scores[0].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(softmax(np.array([0.0, np.log(3.0)])), [0.25, 0.75])


def test_pair_accuracy_only_compares_the_pair():
    # Classes 0/1 are a pair, class 2 is unpaired. Example 1's top class is 2, but within its pair
    # class 1 beats class 0, so it counts as right; the class-2 example is not counted.
    scores = np.array([
        [0.6, 0.3, 0.1],  # label 0: right within the pair
        [0.2, 0.3, 0.5],  # label 1: right within the pair
        [0.5, 0.4, 0.1],  # label 1: wrong within the pair
        [0.0, 0.0, 1.0],  # label 2: unpaired
    ])
    assert pair_accuracy(scores, np.array([0, 1, 1, 2]), [(0, 1)]) == pytest.approx(2 / 3)
    assert np.isnan(pair_accuracy(scores, np.array([2]), [(0, 1)]))
