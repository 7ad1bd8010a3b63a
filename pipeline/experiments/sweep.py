"""Sweeps: many training runs on one feature cache (grid -> run dirs -> joblib -> leaderboard).

``actrec sweep`` expands ``--grid key=v1,v2`` options (their cross product) or a ``--runs`` file (one line of
``key=value`` pairs per run) into ordinary run directories under ``runs/sweeps/NAME/``, each named from the
keys it varies, so ``report``, ``predict`` and ``train --resume`` work on them as on any run. Every run is
checked as a config before the first one starts. Runs go through joblib: local processes (CPU threads
divided among the jobs, or one job per GPU, each pinned to its GPU), or a cluster through joblib's Dask or
Ray backend. A finished run is skipped; a failed one is recorded with its error and the sweep goes on; an
interrupted sweep resumes from the runs' last checkpoints. ``leaderboard.md/.csv/.png`` rank the runs by
validation accuracy, never by test accuracy.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import config_from_dict, keys_affecting, load_config
from pipeline.errors import ActrecError
from pipeline.fileio import write_atomic, write_json

log = logging.getLogger(__name__)

BACKENDS = ("loky", "dask", "ray")
RESULT_FILE = "sweep.json"  # in each run dir: what the sweep recorded about the run (done / failed)
# Keys a sweep may not vary: it trains on one cache and names the run dirs itself.
FIXED_KEYS = {"run.dir", "cache.path"}
LEADERBOARD_COLUMNS = ["val_top1", "val_loss", "test_top1", "mean_class_accuracy", "epochs", "seconds", "run_dir",
                       "error"]


@dataclass
class SweepRun:
    """One run of a sweep: its directory name, the keys it varies and the resolved config it trains with."""
    name: str
    varied: dict[str, str]
    config: dict

    @property
    def dir(self) -> Path:
        return Path(self.config["run"]["dir"])


def parse_grid(items) -> list[dict[str, str]]:
    """``["model.hidden_dim=256,512", "train.lr=1e-3"]`` -> the cross product as ``[{key: value}, ...]``."""
    axes = {}
    for item in items:
        key, values = _split_assignment(item, "--grid")
        if key in axes:
            raise ActrecError(f"--grid {item!r}: {key} is given twice; list all its values in one --grid")
        axes[key] = [v.strip() for v in values.split(",")]
        if any(not v for v in axes[key]):
            raise ActrecError(f"--grid {item!r}: an empty value; write values separated by commas, e.g. {key}=1,2")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def parse_runs_file(path) -> list[dict[str, str]]:
    """A ``--runs`` file: one run per line, ``key=value`` pairs (optionally written ``--set key=value``);
    blank lines and ``#`` comments are ignored."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ActrecError(f"--runs {path}: cannot read it ({exc.strerror})") from exc
    runs = []
    for number, line in enumerate(text.splitlines(), 1):
        words = [w for w in line.split("#", 1)[0].split() if w != "--set"]
        if words:
            pairs = [_split_assignment(w, f"--runs {path} line {number}") for w in words]
            runs.append(dict(pairs))
    if not runs:
        raise ActrecError(f"--runs {path} lists no runs; write one line of key=value pairs per run")
    return runs


def _split_assignment(item: str, where: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or "." not in key or not value.strip():
        raise ActrecError(f"{where} {item!r}: expected section.key=value, e.g. model.hidden_dim=256,512")
    return key.strip(), value.strip()


def plan_sweep(config_path, sets, variants: list[dict[str, str]], name: str | None, root="runs/sweeps"):
    """The sweep folder and its runs, every run validated as a config before any starts.

    Refuses keys a sweep cannot vary (features: a sweep trains on one cache) and any bad key or value,
    naming it.
    """
    features = set(keys_affecting("features")) | FIXED_KEYS
    for key in dict.fromkeys(k for variant in variants for k in variant):
        if key in features:
            raise ActrecError(f"{key} cannot vary in a sweep: a sweep trains runs on one feature cache in run dirs "
                              f"it names itself. Vary training keys (model.*, train.*, eval.*)")
    base = load_config(config_path, sets)  # the base config alone: its errors are not a run's
    folder = Path(root) / (name or default_name(base, variants))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=,+-]*", folder.name):
        raise ActrecError(f"--name {folder.name!r}: use letters, digits and _.=,+- only")
    runs, names = [], {}
    for variant in variants:
        run_name = run_name_of(variant, variants)
        if run_name in names:
            raise ActrecError(f"two runs of the sweep have the same settings ({run_name}); list each run once")
        names[run_name] = True
        overrides = ([f"track.experiment=sweep/{folder.name}"] + list(sets) + [f"{k}={v}" for k, v in variant.items()]
                     + [f"run.dir={folder / run_name}"])
        runs.append(SweepRun(run_name, variant, load_config(config_path, overrides).to_dict()))
    return folder, runs


def default_name(cfg, variants) -> str:
    """``DATA_key1-key2``: the dataset and the short names of the varied keys."""
    keys = dict.fromkeys(k for variant in variants for k in variant)
    return f"{cfg.data.name}_" + "-".join(_short_keys(keys)[k] for k in keys)


def run_name_of(variant: dict[str, str], variants) -> str:
    """``hidden_dim=256_lr=0.001``: the run's varied keys (the key without its section unless two clash)."""
    short = _short_keys(dict.fromkeys(k for v in variants for k in v))
    name = "_".join(f"{short[key]}={value}" for key, value in variant.items())
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "-", name) or "base"


def _short_keys(keys) -> dict[str, str]:
    tails = [k.split(".", 1)[1] for k in keys]
    return {k: (t if tails.count(t) == 1 else k) for k, t in zip(keys, tails)}


def run_sweep(config_path, sets=(), variants=None, name=None, jobs=None, backend="loky", scheduler=None,
              root="runs/sweeps") -> dict:
    """Plan, run the runs not finished yet, and write the leaderboard (also when interrupted or a run fails)."""
    check_backend(backend, scheduler)
    folder, runs = plan_sweep(config_path, sets, variants or [{}], name, root)
    todo = [run for run in runs if not finished(run)]
    log.info(f"sweep {folder}: {len(runs)} runs, {len(runs) - len(todo)} already finished")
    write_json(folder / "plan.json", {"runs": [{"name": r.name, "varied": r.varied, "run_dir": str(r.dir)}
                                               for r in runs]})
    try:
        if todo:
            execute(todo, folder, jobs, backend, scheduler)
    finally:
        rows = write_leaderboard(folder, runs)
    return {"folder": str(folder), "rows": rows}


def finished(run: SweepRun) -> bool:
    """Whether the run's sweep.json says it finished with the settings it is asked to run with now."""
    record = read_record(run.dir)
    return record.get("status") == "done" and record.get("settings") == settings_of(run.config)


def settings_of(config: dict) -> dict:
    """The values that decide what a run computes (speed settings such as threads and devices left out)."""
    return {k: config[k.split(".")[0]][k.split(".")[1]] for k in keys_affecting("features", "test list", "training")}


def read_record(run_dir) -> dict:
    try:
        return json.loads((Path(run_dir) / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return {}


def execute(todo: list[SweepRun], folder: Path, jobs: int | None, backend: str, scheduler: str | None) -> None:
    """Run ``todo`` through joblib: local processes (CPU or one per GPU), or a Dask / Ray cluster."""
    from joblib import Parallel, delayed, parallel_config

    gpus = local_gpus(todo) if backend == "loky" else 0
    if backend == "loky":
        wanted = jobs or max(gpus, 1)
        jobs = max(1, min(wanted, gpus or wanted, len(todo)))
        if gpus and wanted > jobs:
            log.info(f"--jobs {wanted}: {gpus} GPU(s), one run per GPU at a time")
    threads = thread_share(todo[0].config, jobs) if backend == "loky" and not gpus else 0
    calls = [delayed(run_job)(run, threads, str(folder), gpus) for run in todo]
    log.info(f"running {len(todo)} runs, {jobs or 'all cluster'} at a time ({backend}"
             f"{f', {gpus} GPU(s)' if gpus else f', {threads} thread(s) each' if threads else ''})")
    with cluster_backend(backend, scheduler):
        with parallel_config(backend=backend, n_jobs=jobs or -1):
            for record in Parallel(return_as="generator_unordered")(calls):
                if record["status"] == "done":
                    log.info(f"sweep run {record['name']}: val top-1 {record['val_top1']:.3f}, test top-1 "
                             f"{record['test_top1']:.3f} ({record['seconds']:.0f} s)")
                else:
                    log.warning(f"sweep run {record['name']} failed (recorded in the leaderboard; the sweep goes "
                                f"on): {record['error']}")


def check_backend(backend: str, scheduler: str | None) -> None:
    """Refuse a backend that cannot run here (unknown, not installed, no scheduler) before anything is written."""
    if backend not in BACKENDS:
        raise ActrecError(f"--backend {backend}: unknown; use one of {', '.join(BACKENDS)}")
    if backend == "dask" and not scheduler:
        raise ActrecError("--backend dask needs --scheduler tcp://HOST:8786 (a running dask scheduler)")
    module = {"dask": "dask.distributed", "ray": "ray.util.joblib"}.get(backend)
    if module:
        import importlib.util

        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise ActrecError(f"--backend {backend} needs {module.split('.')[0]}: pip install -e '.[cluster]'")


def local_gpus(todo: list[SweepRun]) -> int:
    """GPUs the runs will use on this machine (0 when they train on the CPU)."""
    if all(run.config["train"]["device"] == "cpu" for run in todo):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def thread_share(config: dict, jobs: int) -> int:
    """train.threads (or the machine's cores) divided among ``jobs`` parallel runs, at least 1 each."""
    total = config["train"]["threads"] or os.cpu_count() or 1
    return max(1, total // jobs)


class cluster_backend:
    """Connect joblib to the cluster of ``backend`` for the duration of the block (nothing for local runs)."""

    def __init__(self, backend: str, scheduler: str | None):
        self.backend, self.scheduler, self.client = backend, scheduler, None

    def __enter__(self):
        if self.backend == "dask":
            from dask.distributed import Client

            try:
                self.client = Client(self.scheduler, timeout=30)
            except OSError as exc:
                raise ActrecError(f"--scheduler {self.scheduler}: cannot connect ({exc}); start `dask scheduler` "
                                  f"there or fix the address") from exc
        elif self.backend == "ray":
            import ray
            from ray.util.joblib import register_ray

            register_ray()
            ray.init(address=self.scheduler, ignore_reinit_error=True)
        return self

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        return False


def run_job(run: SweepRun, threads: int, folder: str, gpus: int) -> dict:
    """Train and evaluate one run (in a worker); its record, also written to RUN_DIR/sweep.json.

    Any error of the run is recorded rather than raised, so one bad run does not stop the sweep.
    """
    from pipeline.sequence.evaluate import evaluate
    from pipeline.sequence.train import train

    started = time.perf_counter()
    raw = json.loads(json.dumps(run.config))
    if threads:
        raw["train"]["threads"] = raw["eval"]["threads"] = threads
    record = {"name": run.name, "varied": run.varied, "run_dir": str(run.dir), "settings": settings_of(run.config),
              "host": socket.gethostname(), "pid": os.getpid()}
    try:
        with gpu_slot(Path(folder), gpus):
            cfg = config_from_dict(raw, source=f"sweep run {run.name}")
            summary = train(cfg, resume=(run.dir / "checkpoints" / "last.pt").exists())
            metrics = evaluate(cfg)
        record.update(status="done", val_top1=summary["best_val_acc"], val_loss=best_val_loss(run.dir),
                      test_top1=metrics["top1"],
                      mean_class_accuracy=metrics["mean_class_accuracy"], epochs=summary["epochs"],
                      seconds=round(training_seconds(run.dir) + time.perf_counter() - started
                                    - summary["seconds"], 2), error="")
    except Exception as exc:  # noqa: BLE001 - recorded in the leaderboard; the sweep goes on
        record.update(status="failed", error=" ".join(f"{type(exc).__name__}: {exc}".split())[:300])
    write_json(run.dir / RESULT_FILE, record)
    return record


def training_seconds(run_dir: Path) -> float:
    """Seconds of all training epochs of the run (history.csv), across interruptions and resumes."""
    return sum(float(row["seconds"]) for row in _history(run_dir))


def best_val_loss(run_dir: Path) -> float | None:
    """Validation loss of the epoch best.pt holds (lowest loss among the epochs of best accuracy)."""
    from pipeline.sequence.checkpoint import load_checkpoint

    return float(load_checkpoint(run_dir / "checkpoints" / "best.pt")["best_val_loss"])


def _history(run_dir: Path) -> list[dict]:
    try:
        with open(run_dir / "history.csv") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


class gpu_slot:
    """Hold one of ``gpus`` GPUs (a file lock per GPU in the sweep folder) and make it torch's current device.

    With as many jobs as GPUs there is always a free one; the lock keeps two runs off one GPU whatever order
    the workers finish in.
    """

    def __init__(self, folder: Path, gpus: int):
        self.folder, self.gpus, self.lock = folder, gpus, None

    def __enter__(self):
        if not self.gpus:
            return None
        import torch
        from filelock import FileLock, Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            for gpu in range(self.gpus):
                lock = FileLock(str(self.folder / f".gpu{gpu}.lock"))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                self.lock = lock
                torch.cuda.set_device(gpu)
                return gpu
            time.sleep(0.5)

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()
        return False


def leaderboard_rows(runs: list[SweepRun]) -> list[dict]:
    """One row per run from its sweep.json, the best validation accuracy first (equal accuracies: the lower
    validation loss first, as training picks best.pt); failed and pending runs last."""
    rows = []
    for run in runs:
        record = read_record(run.dir)
        if record and record.get("settings") != settings_of(run.config):
            record = {}  # a record of earlier settings says nothing about this run
        status = record.get("status", "pending")
        rows.append({**run.varied, **{col: record.get(col) for col in LEADERBOARD_COLUMNS}, "run_dir": str(run.dir),
                     "status": status, "error": record.get("error") or ("" if status == "done" else "not run yet")})
    return sorted(rows, key=_rank)


def _rank(row: dict) -> tuple:
    """Sort key: finished first, then higher validation accuracy, then lower validation loss (missing: last)."""
    loss = row["val_loss"] if isinstance(row["val_loss"], (int, float)) and math.isfinite(row["val_loss"]) else math.inf
    return row["status"] != "done", -_number(row["val_top1"]), loss


def write_leaderboard(folder: Path, runs: list[SweepRun]) -> list[dict]:
    """leaderboard.md, .csv and .png of the sweep in ``folder``."""
    from pipeline.plots import plot_leaderboard

    rows = leaderboard_rows(runs)
    keys = list(dict.fromkeys(k for run in runs for k in run.varied))
    columns = keys + LEADERBOARD_COLUMNS
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(folder / "leaderboard.csv", buffer.getvalue())
    write_atomic(folder / "leaderboard.md", format_leaderboard(folder.name, rows, keys))
    done = [row for row in rows if row["status"] == "done"]
    if done:
        plot_leaderboard([run_label(row, keys) for row in done], [row["test_top1"] for row in done],
                         [row["val_top1"] for row in done], folder / "leaderboard.png", title=f"sweep {folder.name}")
    log.info(f"leaderboard: {folder / 'leaderboard.md'} ({len(done)} of {len(rows)} runs done)")
    return rows


def format_leaderboard(name: str, rows: list[dict], keys: list[str]) -> str:
    """The leaderboard as a markdown table, ranked by validation accuracy (the pick is the first row)."""
    titles = keys + ["val top-1", "val loss", "test top-1", "mean class acc", "epochs", "seconds", "run dir",
                     "error"]
    lines = [f"# Sweep {name}", "",
             "Ranked by validation accuracy (the first row is the pick); test accuracy is reported, never used "
             "to choose.", "",
             "| rank | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    for rank, row in enumerate(rows, 1):
        cells = [str(row.get(k, "")) for k in keys] + [_cell(row["val_top1"]), _cell(row["val_loss"]),
                                                       _cell(row["test_top1"]),
                                                       _cell(row["mean_class_accuracy"]), str(row["epochs"] or "-"),
                                                       _cell(row["seconds"], 1), f"`{row['run_dir']}`",
                                                       row["error"].replace("|", "/")]
        lines.append(f"| {rank if row['status'] == 'done' else '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_label(row: dict, keys: list[str]) -> str:
    return " ".join(f"{k.split('.', 1)[1]}={row.get(k, '')}" for k in keys) or Path(row["run_dir"]).name


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def _cell(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"
