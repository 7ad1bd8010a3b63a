"""`actrec evaluate` writes run.dir/predictions.csv: each test video's true label, top-5 and failed flag."""

import csv
import json
from pathlib import Path

import pytest

from pipeline.sequence.evaluate import PREDICTION_COLUMNS, evaluate
from pipeline.sequence.train import train
from tests.orderdata import CLASSES, order_config, write_order_dataset


def test_predictions_csv_agrees_with_metrics(tmp_path):
    cfg = order_config(tmp_path, "train.epochs=1")
    write_order_dataset(cfg, clips=1, failed=("BlockMoveRight/v_BlockMoveRight_g07_c01",),
                        missing=("TriangleGrow/v_TriangleGrow_g08_c01",))
    train(cfg)
    metrics = evaluate(cfg)
    with open(Path(cfg.run.dir) / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == PREDICTION_COLUMNS
    test_names = [line.strip()[:-4] for line in (Path(cfg.data.splits) / "testlist01.txt").read_text().splitlines()]
    assert [row["video"] for row in rows] == test_names  # every test video, in the test list's order
    assert {row["video"] for row in rows if row["failed"] == "1"} == {
        "BlockMoveRight/v_BlockMoveRight_g07_c01", "TriangleGrow/v_TriangleGrow_g08_c01"}
    for row in rows:
        assert row["true_label"] == row["video"].split("/")[0]
        if row["failed"] == "1":
            assert row["label1"] == "" and row["probability1"] == ""
            continue
        probabilities = [float(row[f"probability{k}"]) for k in range(1, 5)]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1, 1e-4)
        assert sorted(row[f"label{k}"] for k in range(1, 5)) == sorted(CLASSES) and row["label5"] == ""
    correct = sum(row["failed"] == "0" and row["label1"] == row["true_label"] for row in rows)
    assert correct / len(rows) == pytest.approx(metrics["top1"])
    assert json.loads((Path(cfg.run.dir) / "metrics.json").read_text())["num_failed"] == 2
