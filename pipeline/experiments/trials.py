"""What a tune's trials are and leave behind: the study's spec every worker gets, each trial's config and record,
the study's leaderboard, and the one test evaluation of the validation pick."""

from __future__ import annotations

import csv
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import (
    config_from_dict,
    set_runtime,
)
from pipeline.experiments.plan import SweepRun, comparable_settings, load_base, run_config
from pipeline.experiments.report import LEADERBOARD_COLUMNS, RESULT_FILE, rank_rows, read_record, write_leaderboard
from pipeline.experiments.space import shown
from pipeline.fileio import write_json
from pipeline.tracking import group_runs


@dataclass(frozen=True)
class TuneSpec:
    """Everything a worker process needs to take part in the study (plain, picklable values)."""
    config_path: str | None
    sets: tuple
    params: tuple
    name: str
    folder: Path
    storage: str
    trials: int
    pruner: str
    cwd: str  # relative paths (run dirs, the config) are relative to it, in every worker process


def trial_config(spec: TuneSpec, params: dict, run_dir: str, threads: int = 0) -> dict:
    """The resolved config (``to_dict`` form) of one trial: the base config grouped under the study's MLflow
    experiment, the trial's values (as exact text), its thread share and its run dir."""
    raw, _, source = load_base(spec.config_path, spec.sets)
    values = {key: str(value) for key, value in params.items()}
    config = run_config(group_runs(raw, f"tune/{spec.name}"), values, Path(run_dir), f"tune {spec.name}", source)
    return set_runtime(config, threads=threads) if threads else config


def read_history(run_dir: Path) -> list[dict]:
    try:
        with open(run_dir / "history.csv") as f:
            return [{**row, "epoch": int(row["epoch"]), "val_acc": float(row["val_acc"]),
                     "val_loss": float(row["val_loss"]), "seconds": float(row["seconds"])} for row in csv.DictReader(f)]
    except OSError:
        return []


def write_record(run: SweepRun, number: int, rows: dict, status: str, error: str) -> dict:
    """The trial's sweep.json (what the leaderboard reads): its best epoch as training picks it (higher
    validation accuracy, then lower loss), epochs and seconds trained."""
    best = max(rows.values(), key=lambda row: (row["val_acc"], -row["val_loss"])) if rows else {}
    record = {"name": run.name, "trial": number, "varied": run.varied, "run_dir": str(run.dir),
              "settings": comparable_settings(run.config), "host": socket.gethostname(), "pid": os.getpid(),
              "status": status, "val_top1": best.get("val_acc"), "val_loss": best.get("val_loss"),
              "test_top1": None, "mean_class_accuracy": None, "epochs": len(rows),
              "seconds": round(sum(float(row["seconds"]) for row in rows.values()), 2), "error": error}
    write_json(run.dir / RESULT_FILE, record)
    return record


def trial_runs(spec: TuneSpec, study) -> list[SweepRun]:
    """The study's trials as sweep runs, one per run dir (a trial queued again replaces the one it resumes)."""
    latest = {}
    for trial in study.get_trials(deepcopy=False):
        if "run_dir" in trial.user_attrs:
            latest[trial.user_attrs["run_dir"]] = trial
    runs = []
    for run_dir, trial in latest.items():
        drawn = trial.params or trial.system_attrs.get("fixed_params", {})  # a queued trial has its values there
        params = {param.key: drawn[param.key] for param in spec.params if param.key in drawn}
        runs.append(SweepRun(Path(run_dir).name, shown(params), trial_config(spec, params, run_dir)))
    return runs


def write_tune_leaderboard(spec: TuneSpec, study) -> list[dict]:
    """The study's leaderboard (as a sweep's: ranked by validation; pruned, failed and running trials last)."""
    runs = trial_runs(spec, study)
    rows = rank_rows([trial_row(run) for run in runs])
    spec.folder.mkdir(parents=True, exist_ok=True)
    write_leaderboard(spec.folder, rows, list(dict.fromkeys(k for run in runs for k in run.varied)),
                      f"Tune {spec.name}")
    return rows


def trial_row(run: SweepRun) -> dict:
    """A trial's leaderboard row from its record; a record of other settings counts as not run."""
    record = read_record(run.dir)
    if record.get("settings") != comparable_settings(run.config):
        record = {}
    status = record.get("status", "pending")
    return {**run.varied, **{column: record.get(column) for column in LEADERBOARD_COLUMNS}, "run_dir": str(run.dir),
            "status": status, "error": record.get("error") or ("" if status == "done" else "running or not run")}


def evaluate_best(spec: TuneSpec, study, rows: list[dict]) -> dict | None:
    """Evaluate the validation pick (the leaderboard's first row) on the test list once; write best.json."""
    from pipeline.experiments.tracked import evaluate_run

    if not rows or rows[0]["status"] != "done":
        return None
    pick = rows[0]
    record = read_record(pick["run_dir"])
    if record.get("test_top1") is None:
        trial_run = next(run for run in trial_runs(spec, study) if str(run.dir) == pick["run_dir"])
        metrics = evaluate_run(config_from_dict(trial_run.config, source=f"tune trial {trial_run.name}"))
        record.update(test_top1=metrics["top1"], mean_class_accuracy=metrics["mean_class_accuracy"])
        write_json(Path(pick["run_dir"]) / RESULT_FILE, record)
    best = {"trial": record.get("trial"), "run_dir": pick["run_dir"], "params": record.get("varied"),
            "val_top1": record["val_top1"], "val_loss": record["val_loss"], "test_top1": record["test_top1"],
            "note": "chosen by validation accuracy; test top-1 computed once for the pick, never used to choose"}
    write_json(spec.folder / "best.json", best)
    return best
