"""Leaderboards and run reports: sweep records and metrics.json files -> tables (md, csv, png, text); no torch.

A sweep's ``leaderboard.md/.csv/.png`` rank runs by validation accuracy, never by test accuracy;
``actrec report`` prints sweep leaderboards and a table of plain run dirs with means over splits of runs that
share every training setting. ``write_leaderboard`` and ``rank_rows`` serve any ranked set of runs (``actrec
tune`` too).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import yaml

from pipeline.config import keys_affecting
from pipeline.errors import ActrecError
from pipeline.experiments.plan import SweepRun, comparable_settings
from pipeline.fileio import read_json_object, write_atomic

log = logging.getLogger(__name__)

RESULT_FILE = "sweep.json"  # in each run dir: what the sweep recorded about the run (running / done / failed)
LEADERBOARD_COLUMNS = ["val_top1", "val_loss", "test_top1", "mean_class_accuracy", "epochs", "seconds", "run_dir",
                       "error"]
# metrics.json key -> report column title
REPORT_COLUMNS = {"top1": "top1", "top5": "top5", "mean_class_accuracy": "mean_cls", "clip_top1": "clip_top1",
                  "pair_accuracy": "pair_acc"}
LEAKY_SPLITS = ("random",)  # splits that put a group on both sides: never averaged with the others


def read_record(run_dir) -> dict:
    """RUN_DIR/sweep.json, or {} when it is missing or not whole."""
    return read_json_object(Path(run_dir) / RESULT_FILE)


def read_metrics(run_dir) -> dict | None:
    """RUN_DIR/metrics.json when it parses as what `actrec evaluate` writes, else None."""
    try:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and {"model", "split", "top1"} <= set(metrics) else None


def finished(run: SweepRun) -> bool:
    """Whether the run is done with the settings it is asked to run with now: its record says so and its
    metrics.json is whole (one cut short by a kill is evaluated again)."""
    record = read_record(run.dir)
    return (record.get("status") == "done" and record.get("settings") == comparable_settings(run.config)
            and read_metrics(run.dir) is not None)


def leaderboard_rows(runs: list[SweepRun]) -> list[dict]:
    """One row per sweep run from its sweep.json, ranked (``rank_rows``); a record of other settings, or of a run
    whose metrics are not whole, counts as not run."""
    rows = []
    for run in runs:
        record = read_record(run.dir)
        if record.get("settings") != comparable_settings(run.config):
            record = {}  # a record of earlier settings says nothing about this run
        status = record.get("status", "pending")
        if status == "done" and not finished(run):
            status, record = "pending", {}
        if status == "running":
            status = "pending"
        rows.append({**run.varied, **{col: record.get(col) for col in LEADERBOARD_COLUMNS}, "run_dir": str(run.dir),
                     "status": status, "error": record.get("error") or ("" if status == "done" else "not run yet")})
    return rank_rows(rows)


def rank_rows(rows: list[dict]) -> list[dict]:
    """The best validation accuracy first (equal accuracies: the lower validation loss first, as training picks
    best.pt); failed and pending rows last. Test accuracy never takes part."""
    return sorted(rows, key=lambda row: (row["status"] != "done", -_number(row["val_top1"]),
                                         row["val_loss"] if _finite(row["val_loss"]) else math.inf))


def write_leaderboard(folder: Path, rows: list[dict], keys: list[str], title: str) -> None:
    """leaderboard.md, .csv and .png in ``folder`` from ranked rows (``keys``: the varied settings' columns)."""
    from pipeline.plots import plot_leaderboard

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys + LEADERBOARD_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(folder / "leaderboard.csv", buffer.getvalue())
    write_atomic(folder / "leaderboard.md", format_leaderboard(title, rows, keys))
    done = [row for row in rows if row["status"] == "done"]
    if done:
        plot_leaderboard([run_label(row, keys) for row in done], [row["test_top1"] for row in done],
                         [row["val_top1"] for row in done], folder / "leaderboard.png", title=title)
    log.info(f"leaderboard: {folder / 'leaderboard.md'} ({len(done)} of {len(rows)} runs done)")


def write_sweep_leaderboard(folder: Path, runs: list[SweepRun]) -> list[dict]:
    """The leaderboard of the sweep in ``folder``; returns its rows."""
    rows = leaderboard_rows(runs)
    write_leaderboard(folder, rows, list(dict.fromkeys(k for run in runs for k in run.varied)),
                      f"Sweep {folder.name}")
    return rows


def format_leaderboard(title: str, rows: list[dict], keys: list[str]) -> str:
    """The leaderboard as a markdown table, ranked by validation accuracy (the pick is the first row)."""
    titles = keys + ["val top-1", "val loss", "test top-1", "mean class acc", "epochs", "seconds", "run dir",
                     "error"]
    lines = [f"# {title}", "",
             "Ranked by validation accuracy (the first row is the pick); test accuracy is reported, never used "
             "to choose.", "",
             "| rank | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    for rank, row in enumerate(rows, 1):
        cells = [str(row.get(k, "")) for k in keys] + [
            _md_cell(row["val_top1"]), _md_cell(row["val_loss"]), _md_cell(row["test_top1"]),
            _md_cell(row["mean_class_accuracy"]), str(row["epochs"] or "-"), _md_cell(row["seconds"], 1),
            f"`{row['run_dir']}`", row["error"].replace("|", "/")]
        lines.append(f"| {rank if row['status'] == 'done' else '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_label(row: dict, keys: list[str]) -> str:
    return " ".join(f"{k.split('.', 1)[1]}={row.get(k, '')}" for k in keys) or Path(row["run_dir"]).name


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


def load_run_metrics(run_dir) -> dict:
    """A run's metrics.json (without the confusion matrix) and the training settings of its config.yaml."""
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except OSError as exc:
        raise ActrecError(f"{path}: cannot read it ({exc.strerror}); run `actrec evaluate` for {run_dir} first") \
            from exc
    except ValueError as exc:
        raise ActrecError(f"{path}: not valid JSON ({exc}); run `actrec evaluate` again") from exc
    if not isinstance(metrics, dict) or not {"model", "split", "top1"} <= set(metrics):
        raise ActrecError(f"{path} is not a metrics.json written by `actrec evaluate` (it needs model, split "
                          f"and top1); run `actrec evaluate` for {run_dir} again")
    metrics.pop("confusion_matrix", None)
    return {"run_dir": str(run_dir), **metrics, "settings": training_settings(run_dir, metrics)}


def training_settings(run_dir, metrics: dict) -> dict:
    """Every setting that decides a run's result except its split (what a mean over splits must share), from
    RUN_DIR/config.yaml; without one, only the model and backbone metrics.json names."""
    try:
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        settings = comparable_settings(config)
    except (OSError, yaml.YAMLError, TypeError, KeyError, AttributeError):
        return {"model": metrics["model"], "backbone": metrics.get("backbone"), "config.yaml": "missing"}
    for key in keys_affecting("test list"):  # the split and how it is drawn differ between the averaged runs
        settings.pop(key, None)
    settings["scored by"] = metrics["model"]  # a probe, a zero-shot run and a trained model never average together
    return settings


def summarize_runs(run_dirs) -> dict:
    """The metrics.json of several runs and their means over splits: one mean per group of runs that share every
    training setting, each split counted once, leaky splits (``random``) never averaged."""
    runs = []
    for run_dir in dict.fromkeys(str(Path(d)) for d in run_dirs):  # a dir named twice counts once
        runs.append(load_run_metrics(run_dir))
    groups = {}
    for run in runs:
        groups.setdefault(json.dumps(run["settings"], sort_keys=True), []).append(run)
    means = [mean_over_splits(group) for group in groups.values()]
    return {"runs": runs, "means": [mean for mean in means if mean is not None]}


def mean_over_splits(group: list[dict]) -> dict | None:
    """The mean of one group's runs, one run per split (the first named), leaky splits left out; None when
    fewer than two splits remain."""
    per_split = {}
    for run in group:
        if str(run["split"]) not in LEAKY_SPLITS and not run.get("leaks_groups"):
            per_split.setdefault(str(run["split"]), run)
    if len(per_split) < 2:
        return None
    chosen = list(per_split.values())
    return {"model": chosen[0]["model"], "backbone": chosen[0].get("backbone"), "splits": list(per_split),
            "run_dirs": [run["run_dir"] for run in chosen],
            "left_out": [run["run_dir"] for run in group if run not in chosen],
            **{f"mean_{key}": _mean(run.get(key) for run in chosen) for key in REPORT_COLUMNS}}


def format_report(summary: dict) -> str:
    """A table of the runs' metrics, then one row per mean over splits and which runs it averaged."""
    header = (f"{'run':<36} {'model':<9} {'backbone/weights/img_dim':<28} {'split':<13} {'videos':>7} "
              f"{'failed':>6} " + " ".join(f"{title:>10}" for title in REPORT_COLUMNS.values()))
    lines = [header, "-" * len(header)]
    for run in summary["runs"]:
        lines.append(f"{Path(run['run_dir']).name:<36} {run['model']:<9} {run.get('backbone') or '-':<28} "
                     f"{run['split']!s:<13} {run.get('num_videos', '-'):>7} {run.get('num_failed', '-'):>6} "
                     + " ".join(_cell(run.get(key)) for key in REPORT_COLUMNS))
    notes = []
    for number, mean in enumerate(summary["means"], 1):
        label = f"mean {number}"
        lines.append(f"{label:<36} {mean['model']:<9} {mean['backbone'] or '-':<28} {','.join(mean['splits']):<13} "
                     f"{'':>7} {'':>6} " + " ".join(_cell(mean[f'mean_{key}']) for key in REPORT_COLUMNS))
        notes.append(f"{label}: the runs {', '.join(Path(d).name for d in mean['run_dirs'])} (same training "
                     f"settings, one per split)"
                     + (f"; not counted again: {', '.join(Path(d).name for d in mean['left_out'])}"
                        if mean["left_out"] else ""))
    lines += [f"note: {note}" for note in notes]
    if any(run.get("num_failed") for run in summary["runs"]):
        lines.append("note: failed = test videos without features (failed to embed or missing from the cache); "
                     "top1 counts them as wrong answers")
    if any(run.get("leaks_groups") for run in summary["runs"]):
        lines.append("note: runs on split 'random' share groups between train and test; their numbers are inflated "
                     "and never averaged with other splits")
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:>10.4f}" if _finite(value) else f"{'-':>10}"


def _md_cell(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if _finite(value) else "-"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value) -> float:
    return float(value) if _finite(value) else -math.inf


def _mean(values) -> float | None:
    finite = [float(v) for v in values if _finite(v)]
    return sum(finite) / len(finite) if finite else None
