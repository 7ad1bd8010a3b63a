"""``actrec sweep``: many training runs on one feature cache (plan -> check -> connect -> run -> leaderboard).

``--grid key=v1,v2`` options (their cross product) or a ``--runs`` file (one line of ``key=value`` pairs per
run) become ordinary run directories under ``runs/sweeps/NAME/``, so ``report``, ``predict`` and ``train
--resume`` work on them as on any run. Everything that can be refused is refused before anything is written:
the plan (plan.py), the cache, the backend and its GPUs (execute.py). A finished run is skipped; a failed one
is recorded with its error and the sweep goes on; an interrupted sweep resumes from the runs' last
checkpoints. The leaderboard (report.py) ranks the runs by validation accuracy, never by test accuracy.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import config_from_dict
from pipeline.errors import ActrecError
from pipeline.experiments.execute import check_backend, connect, execute
from pipeline.experiments.plan import SweepRun, plan_sweep
from pipeline.experiments.report import finished, write_sweep_leaderboard
from pipeline.fileio import write_json
from pipeline.tracking import check_tracking

log = logging.getLogger(__name__)


def run_sweep(config_path, sets=(), grid=(), runs_file=None, name=None, jobs=None, backend="local",
              scheduler=None, root="runs/sweeps") -> dict:
    """Plan, check, run the runs not finished yet and write the leaderboard (also when interrupted or a run
    fails); returns the folder, the leaderboard rows and how many runs failed."""
    check_backend(backend, scheduler)
    folder, runs = plan_sweep(config_path, sets, grid, runs_file, name, root)
    todo = [run for run in runs if not finished(run)]
    if todo:
        check_cache(todo[0])
        check_tracking(config_from_dict(todo[0].config, source=todo[0].where))
        log.info(f"sweep {folder}: {len(runs)} runs, {len(runs) - len(todo)} already finished")
        with connect(backend, scheduler, todo, jobs) as (workers, jobs):
            write_plan(folder, runs)
            try:
                execute(todo, workers, jobs)
            finally:
                rows = write_sweep_leaderboard(folder, runs)
    else:
        log.info(f"sweep {folder}: all {len(runs)} runs already finished")
        rows = write_sweep_leaderboard(folder, runs)
    return {"folder": str(folder), "rows": rows, "failed": sum(row["status"] == "failed" for row in rows)}


def check_cache(run: SweepRun) -> None:
    """Refuse, once and before any run, a cache that is missing, made with other settings, or lacks videos of
    the training list (an embed that did not finish): every run would fail on it."""
    from pipeline.cache.reader import open_cache
    from pipeline.inputs.formats import load_split

    cfg = config_from_dict(run.config, source=run.where)
    cache = open_cache(cfg)
    try:
        split = load_split(cfg, check_videos=False)
        missing = [item.name for item in split.train + split.val
                   if item.name not in cache and item.name not in cache.failures]
    finally:
        cache.close()
    if missing:
        raise ActrecError(f"{cfg.cache.path} lacks {len(missing)} of the {len(split.train) + len(split.val)} training "
                          f"videos of split {split.name} (e.g. {missing[0]}); run `actrec embed` with the same "
                          f"config to complete it, then the sweep")


def write_plan(folder: Path, runs: list[SweepRun]) -> None:
    write_json(folder / "plan.json", {"runs": [{"name": r.name, "varied": r.varied, "run_dir": str(r.dir)}
                                               for r in runs]})
