import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ActrecError
from pipeline.sequence.evaluate import compute_metrics, evaluate
from pipeline.sequence.train import train
from tests.orderdata import CLASSES, order_config, write_order_dataset


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """bilstm and meanpool trained on the same order-only tiny dataset (once for this module)."""
    root = tmp_path_factory.mktemp("order")
    runs = {}
    for name in ("bilstm", "meanpool"):
        cfg = order_config(root, "train.epochs=12", "train.lr=0.01", f"model.name={name}",
                           f"run.dir={root}/run_{name}")
        if name == "bilstm":
            write_order_dataset(cfg, clips=3)
        train(cfg)
        runs[name] = cfg
    return runs


def test_metrics_json_and_plots(trained_runs):
    cfg = trained_runs["bilstm"]
    returned = evaluate(cfg)
    run = Path(cfg.run.dir)
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("top1", "top5", "mean_class_accuracy", "clip_top1", "per_class", "num_videos",
                "split", "model", "checkpoint_epoch", "eval_clips", "leaks_groups", "pair_accuracy"):
        assert key in metrics, key
    assert metrics["top1"] == returned["top1"]
    assert metrics["num_videos"] == 4 * 2 * 3 and metrics["split"] == "1" and metrics["model"] == "bilstm"
    assert metrics["leaks_groups"] is False and metrics["leaked_groups"] == 0
    assert list(metrics["per_class"]) == CLASSES
    assert metrics["top5"] == 1.0  # four classes: every label is in the top five
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["num_videos"]
    assert (run / "confusion_matrix.png").stat().st_size > 0


def test_bilstm_beats_order_blind_meanpool_within_reversed_pairs(trained_runs):
    bilstm, meanpool = evaluate(trained_runs["bilstm"]), evaluate(trained_runs["meanpool"])
    # Chance is 0.25 overall and 0.5 within a pair; meanpool sees the same mean for both classes of a pair.
    assert bilstm["top1"] >= 0.75 and bilstm["pair_accuracy"] >= 0.8
    assert meanpool["pair_accuracy"] <= 0.7
    assert bilstm["pair_accuracy"] - meanpool["pair_accuracy"] >= 0.25


def test_several_clips_are_averaged_per_video(trained_runs):
    cfg = order_config(Path(trained_runs["bilstm"].run.dir).parent, "eval.clips=3",
                       f"run.dir={trained_runs['bilstm'].run.dir}", "train.epochs=12", "train.lr=0.01")
    metrics = evaluate(cfg)
    assert metrics["eval_clips"] == 3 and metrics["num_videos"] == 24
    assert 0.0 <= metrics["clip_top1"] <= 1.0


def test_video_prediction_averages_clip_probabilities():
    # Video 0: two clips mildly say class 1, one clip says class 0 very confidently -> averaged: class 0.
    # Video 1: all three clips say class 1.
    logits = np.array([[[0.0, 0.5], [0.0, 0.5], [8.0, 0.0]],
                       [[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]]])
    metrics = compute_metrics(logits, np.array([0, 1]), ["A", "B"])
    assert metrics["clip_top1"] == pytest.approx(4 / 6)  # 1 of 3 clips right, then 3 of 3
    assert metrics["top1"] == 1.0
    assert metrics["per_class"] == {"A": 1.0, "B": 1.0}


def test_checkpoint_of_another_split_is_refused(trained_runs):
    cfg = order_config(Path(trained_runs["bilstm"].run.dir).parent, "data.split=2",
                       f"run.dir={trained_runs['bilstm'].run.dir}", "train.epochs=12", "train.lr=0.01")
    with pytest.raises(ActrecError, match=r"trained on another split.*data.split: trained with 1, now 2"):
        evaluate(cfg)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    cfg = order_config(tmp_path)
    with pytest.raises(ActrecError, match=r"best.pt not found; run `actrec train` first"):
        evaluate(cfg)


def test_random_split_is_flagged_as_leaky(tmp_path):
    cfg = order_config(tmp_path, "data.split=random")
    write_order_dataset(cfg)
    train(cfg)
    metrics = evaluate(cfg)
    assert metrics["leaks_groups"] is True and metrics["leaked_groups"] > 0


def test_compute_metrics_by_hand():
    # Two videos, two clips each, three classes with no pairs.
    logits = np.log(np.array([
        [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]],   # label 0: clip 1 right, clip 2 wrong; mean (0.4, 0.5, 0.1) -> wrong
        [[0.1, 0.1, 0.8], [0.2, 0.2, 0.6]],   # label 2: both clips right
    ]))
    metrics = compute_metrics(logits, np.array([0, 2]), ["Alpha", "Beta", "Gamma"])
    assert metrics["clip_top1"] == pytest.approx(3 / 4)
    assert metrics["top1"] == pytest.approx(1 / 2) and metrics["top5"] == 1.0
    assert metrics["per_class"] == {"Alpha": 0.0, "Beta": None, "Gamma": 1.0}
    assert metrics["mean_class_accuracy"] == pytest.approx(0.5)
    assert metrics["confusion_matrix"] == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert "pair_accuracy" not in metrics


def test_class_pairs_come_from_the_dataset_not_from_class_names(tmp_path):
    """The synthetic dataset lists its time-reversed twins beside its split files; any dataset may do the same,
    and one without the file has none, whatever its classes are called."""
    from pipeline.config import load_config
    from pipeline.inputs.formats import class_pairs
    from pipeline.inputs.splits import write_class_pairs
    from pipeline.inputs.synthetic import class_pairs as synthetic_pairs
    from pipeline.inputs.synthetic import class_specs

    assert synthetic_pairs(class_specs(5)) == [("BlockMoveRight", "BlockMoveLeft"), ("TriangleGrow", "TriangleShrink")]
    cfg = load_config(None, [f"data.splits={tmp_path}"])
    names = ["BlockMoveRight", "BlockMoveLeft", "Walk", "WalkBack"]
    assert class_pairs(cfg, names) == []  # no file: no pairs, even for names that look paired
    write_class_pairs(tmp_path, [("Walk", "WalkBack")])
    assert class_pairs(cfg, names) == [(2, 3)]
    write_class_pairs(tmp_path, [("Walk", "Run")])
    with pytest.raises(ActrecError, match=r"classPairs.txt:1: expected two class names of the dataset, got 'Walk Run'"):
        class_pairs(cfg, names)


def test_test_videos_without_features_count_as_wrong_answers(trained_runs, tmp_path):
    """The UCF-101 protocol: a test video that failed to embed or is missing is an error, not a smaller test set."""
    cfg = trained_runs["bilstm"]
    test_names = [line.strip()[:-4] for line in (Path(cfg.data.splits) / "testlist01.txt").read_text().splitlines()]
    holed = order_config(tmp_path, "train.epochs=12", "train.lr=0.01", f"run.dir={tmp_path}/run",
                         f"eval.checkpoint={cfg.run.dir}/checkpoints/best.pt")
    write_order_dataset(holed, clips=3, failed=(test_names[0],), missing=(test_names[5],))
    metrics = evaluate(holed)
    assert metrics["num_videos"] == 24 and metrics["num_failed"] == 2
    assert np.array(metrics["confusion_matrix"]).sum() == 22  # the scored videos only
    assert metrics["top1"] == pytest.approx(metrics["top1_embedded"] * 22 / 24)
    for accuracy in metrics["per_class"].values():  # 6 test videos per class, the unscored ones included
        assert accuracy * 6 == pytest.approx(round(accuracy * 6))


def test_unscored_videos_lower_every_video_level_number():
    logits = np.array([[[3.0, 0.0]], [[0.0, 3.0]]])  # two right answers
    metrics = compute_metrics(logits, np.array([0, 1]), ["A", "B"], unscored_labels=[1, 1])
    assert metrics["top1_embedded"] == 1.0 and metrics["top1"] == 0.5 and metrics["top5"] == 0.5
    assert metrics["per_class"] == {"A": 1.0, "B": pytest.approx(1 / 3)}
    assert metrics["mean_class_accuracy"] == pytest.approx((1 + 1 / 3) / 2)
    assert metrics["num_videos"] == 4 and metrics["num_failed"] == 2
