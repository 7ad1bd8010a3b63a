"""What `actrec serve` shows of a run, read from its folder: runs of a sweep, test videos, errors, leaderboard.

No web framework here: the page (``app``) only lays these tables out.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pipeline.config import Config, load_config
from pipeline.errors import ActrecError
from pipeline.fileio import read_json_object
from pipeline.inputs.splits import Split

log = logging.getLogger(__name__)

LEADERBOARD_COLUMNS = {"top1": "test top-1", "top5": "test top-5", "mean_class_accuracy": "mean class acc.",
                       "clip_top1": "clip top-1", "pair_accuracy": "pair acc."}


@dataclass
class ServedRun:
    """One run dir: its config, checkpoint, figures and evaluation outputs."""

    name: str
    dir: Path

    @cached_property
    def config(self) -> Config:
        return load_config(self.dir / "config.yaml")

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "best.pt"

    @cached_property
    def split(self) -> Split | None:
        """The run's split (None when its dataset is not where its config says, e.g. served from elsewhere)."""
        from pipeline.inputs.formats import load_split

        try:
            return load_split(self.config, check_videos=False)
        except ActrecError as exc:
            log.warning(f"{self.name}: its test videos cannot be listed: {exc}")
            return None

    @property
    def test_videos(self) -> dict[str, Path]:
        """The run's test videos, name -> file."""
        return {item.name: item.path for item in self.split.test} if self.split else {}

    @property
    def class_names(self) -> list[str]:
        return self.split.class_names if self.split else []

    def figure(self, name: str) -> str | None:
        path = self.dir / name
        return str(path) if path.is_file() else None


def find_runs(folders) -> list[ServedRun]:
    """Run dirs (a folder holding config.yaml) given directly or as the subfolders of a sweep or tune folder, each
    once, under names that tell them apart (``unique_names``)."""
    found = []  # (run dir, components its name has at least: 1 for a run dir, 2 for a sweep's run)
    for folder in map(Path, folders):
        if (folder / "config.yaml").is_file():
            found.append((folder.resolve(), 1))
            continue
        inside = sorted(p for p in folder.glob("*/config.yaml")) if folder.is_dir() else []
        if not inside:
            raise ActrecError(f"{folder}: neither a run dir (no config.yaml) nor a sweep folder of run dirs; pass "
                              f"what `actrec train` or `actrec sweep` wrote, e.g. runs/sweeps/demo")
        found += [(p.parent.resolve(), 2) for p in inside]
    shortest = {}
    for run_dir, least in found:  # the same run given twice (directly and through its sweep) is served once
        shortest[run_dir] = min(least, shortest.get(run_dir, least))
    names = unique_names(shortest)
    return [ServedRun(names[run_dir], run_dir) for run_dir in shortest]


def unique_names(least: dict[Path, int]) -> dict[Path, str]:
    """Each run dir's name: the shortest tail of its path (at least ``least[dir]`` folders) that no other run's
    name equals or ends the same way, so ``A/run`` and ``B/run`` are served as ``A/run`` and ``B/run``."""
    def tail(path: Path, count: int) -> str:
        return "/".join(path.parts[-count:]) if count < len(path.parts) else str(path)

    names = {}
    for run_dir, count in least.items():
        others = [other for other in least if other != run_dir]
        while count < len(run_dir.parts) and any(tail(other, count) == tail(run_dir, count) for other in others):
            count += 1
        names[run_dir] = tail(run_dir, count)
    return names


def read_predictions(run: ServedRun) -> list[dict]:
    """run.dir/predictions.csv as rows; a clear error when `actrec evaluate` has not written it yet."""
    path = run.dir / "predictions.csv"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as exc:
        raise ActrecError(f"{path}: not written yet; run `actrec evaluate -c {run.dir / 'config.yaml'}`") from exc
    if rows and not {"video", "true_label", "label1", "probability1", "failed"} <= set(rows[0]):
        raise ActrecError(f"{path} is not a predictions.csv of `actrec evaluate`; run it again for {run.dir}")
    return rows


def mistakes(rows: list[dict], true_label: str | None = None) -> list[dict]:
    """The scored test videos whose top-1 is wrong, most confident first; only those of ``true_label`` if given."""
    wrong = [row for row in rows if row["failed"] == "0" and row["label1"] != row["true_label"]
             and true_label in (None, row["true_label"])]
    return sorted(wrong, key=lambda row: -float(row["probability1"]))


def leaderboard(runs: list[ServedRun]) -> list[dict]:
    """One row per run with its test metrics (metrics.json) and best validation top-1 (history.csv), best first."""
    rows = []
    for run in runs:
        metrics = read_json_object(run.dir / "metrics.json")
        # A probe's metrics.json names it (probe-linear); its validation scores are its chosen setting's.
        row = {"run": run.name, "model": metrics.get("model") or run.config.model.name,
               "best val top-1": _best_validation(run) if "probe" not in metrics else _rounded(
                   max(metrics["probe"]["validation_top1"].values(), default=None))}
        row.update({title: _rounded(metrics.get(key)) for key, title in LEADERBOARD_COLUMNS.items()})
        rows.append(row)
    return sorted(rows, key=lambda row: -(row["test top-1"] if row["test top-1"] is not None else -1))


def _best_validation(run: ServedRun) -> float | None:
    try:
        with open(run.dir / "history.csv", newline="") as f:
            values = [float(row["val_acc"]) for row in csv.DictReader(f) if row.get("val_acc")]
    except (OSError, KeyError, ValueError):
        return None
    return _rounded(max(values)) if values else None



def _rounded(value) -> float | None:
    return round(float(value), 4) if isinstance(value, (int, float)) else None
