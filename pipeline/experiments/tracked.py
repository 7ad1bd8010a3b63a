"""Train and evaluate one run with its tracking (TensorBoard, MLflow): what the CLI, sweeps and tune call.

The stages know nothing of tracking: training is handed it as its epoch callback, and an evaluation's metrics are
added to the run's records after it.
"""

from __future__ import annotations

from typing import Callable

from pipeline.config import Config
from pipeline.tracking import check_tracking, track_evaluation, track_run


def train_run(cfg: Config, resume: bool = False, on_epoch: Callable | None = None) -> dict:
    """``train(cfg, resume)`` with its epochs tracked; ``on_epoch(report)`` is called after the tracker's turn."""
    from pipeline.sequence.train import train

    with track_run(cfg) as track:
        def epoch_done(report: dict) -> None:
            track(report)
            if on_epoch is not None:
                on_epoch(report)

        return train(cfg, resume=resume, on_epoch=epoch_done)


def evaluate_run(cfg: Config) -> dict:
    """``evaluate(cfg)``, its test metrics added beside the run's hyper-parameters."""
    from pipeline.sequence.evaluate import evaluate

    check_tracking(cfg)  # an MLflow store that cannot be used: one line now, not after scoring
    metrics = evaluate(cfg)
    track_evaluation(cfg, metrics)
    return metrics
