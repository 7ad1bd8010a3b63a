"""One run of a sweep, in whichever worker runs it: train and evaluate with tracking, and its record (never an
exception: one bad run does not stop the sweep)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from pipeline.config import config_from_dict, set_runtime
from pipeline.errors import error_line
from pipeline.experiments.plan import SweepRun, comparable_settings
from pipeline.experiments.report import RESULT_FILE
from pipeline.fileio import write_json

log = logging.getLogger(__name__)


def base_record(run: SweepRun) -> dict:
    return {"name": run.name, "varied": run.varied, "run_dir": str(run.dir),
            "settings": comparable_settings(run.config)}


def failed_record(run: SweepRun, error: str, pid: int | None = None) -> dict:
    """Record ``run`` as failed with ``error`` (for runs whose worker could not record it) and return the record."""
    record = {**base_record(run), "pid": pid, "status": "failed", "error": error}
    write_json(run.dir / RESULT_FILE, record)
    return record


def run_job(run: SweepRun, threads: int = 0, device: str | None = None) -> dict:
    """Train and evaluate one run (in a worker); its record, also written to RUN_DIR/sweep.json.

    ``threads``: the run's share of the CPU threads (0: its config's); ``device``: the device it must use
    instead of its config's (a cluster without GPUs). Any error of the run is recorded rather than raised, so
    one bad run does not stop the sweep.
    """
    from pipeline.experiments.tracked import evaluate_run, train_run

    started = time.perf_counter()
    raw = json.loads(json.dumps(run.config))
    if threads:
        set_runtime(raw, threads=threads)
    if device:
        set_runtime(raw, device=device)
    record = {**base_record(run), "host": socket.gethostname(), "pid": os.getpid()}
    write_json(run.dir / RESULT_FILE, {**record, "status": "running"})
    try:
        cfg = config_from_dict(raw, source=f"sweep run {run.name}")
        summary = train_run(cfg, resume=(run.dir / "checkpoints" / "last.pt").exists())
        metrics = evaluate_run(cfg)
        record.update(status="done", val_top1=summary["best_val_acc"], val_loss=best_val_loss(run.dir),
                      test_top1=metrics["top1"], mean_class_accuracy=metrics["mean_class_accuracy"],
                      epochs=summary["epochs"], error="",
                      seconds=round(training_seconds(run.dir) + time.perf_counter() - started - summary["seconds"],
                                    2))
    except Exception as exc:  # noqa: BLE001 - recorded in the leaderboard; the sweep goes on
        record.update(status="failed", error=error_line(exc))
    write_json(run.dir / RESULT_FILE, record)
    return record


def training_seconds(run_dir: Path) -> float:
    """Seconds of all training epochs of the run (history.csv), across interruptions and resumes."""
    import csv

    try:
        with open(run_dir / "history.csv") as f:
            return sum(float(row["seconds"]) for row in csv.DictReader(f))
    except OSError:
        return 0.0


def best_val_loss(run_dir: Path) -> float | None:
    """Validation loss of the epoch best.pt holds (lowest loss among the epochs of best accuracy)."""
    from pipeline.sequence.checkpoint import load_checkpoint

    return float(load_checkpoint(run_dir / "checkpoints" / "best.pt")["best_val_loss"])


def cluster_job(cwd: str, run: SweepRun, threads: int = 0, device: str | None = None) -> dict:
    """``run_job`` on a cluster worker, in the sweep's working folder: relative run dirs and cache paths mean
    there what they mean where the sweep was started (the workers share its file system). No progress bars: the
    sweep reports each run (``RAY_ENV``; a Dask worker's bars are its own)."""
    os.chdir(cwd)
    return run_job(run, threads, device)
