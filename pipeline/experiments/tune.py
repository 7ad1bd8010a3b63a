"""Hyper-parameter search with Optuna: a study in a database, each trial an ordinary run dir.

``actrec tune`` searches training settings (``--param key=int:LOW:HIGH[:log]``, ``float:LOW:HIGH[:log]`` or
``cat:A,B,...``) with a seeded TPE sampler and stops poor trials early: every epoch reports its validation
accuracy to a median or successive-halving pruner. The study lives in an SQLAlchemy database (SQLite at
``runs/tune/NAME/study.db`` by default), so the same command on several machines sharing that database and the
cache runs one study, and a rerun continues it. A trial left running by a killed process is marked failed and
queued again with its settings and run dir, so it resumes from its last checkpoint. Trials are ranked by
validation accuracy only; the best one is evaluated on the test list once, at the end, and its test top-1 shown
beside it. The leaderboard is the sweeps' (``leaderboard.md/.csv/.png``), so ``actrec report`` reads it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import warnings
from pathlib import Path

from pipeline.config import (
    config_from_dict,
)
from pipeline.errors import ActrecError, error_line
from pipeline.experiments.execute import RAY_ENV, thread_share
from pipeline.experiments.plan import SweepRun, comparable_settings, load_base
from pipeline.experiments.space import (  # noqa: F401 (parse_param, parse_space: the CLI's)
    Param,
    _describe,
    check_key_value,
    check_space,
    parse_param,
    parse_space,
    shown,
    suggest,
)
from pipeline.experiments.trials import (
    TuneSpec,
    evaluate_best,
    read_history,
    trial_config,
    write_record,
    write_tune_leaderboard,
)
from pipeline.fileio import safe_name
from pipeline.optional import require
from pipeline.tracking import check_tracking

log = logging.getLogger(__name__)

PRUNERS = ("median", "halving")
TUNE_BACKENDS = ("local", "ray")
# A worker's heartbeat: a trial whose process stopped beating for GRACE_S (a dead machine) is failed and retried.
HEARTBEAT_S, GRACE_S = 30, 120


def _optuna():
    """Optuna (with its trial and exceptions modules), or one line with the install command; its log goes
    through ours (``OptunaLog``)."""
    optuna = require("optuna", "`actrec tune`")
    require("optuna.trial", "`actrec tune`")
    require("sqlalchemy", "`actrec tune` (its study database)")
    route_optuna_log(optuna)
    return optuna


class OptunaLog(logging.Handler):
    """Optuna's log records as ours: one line each, never a traceback. A trial's own error reaches the terminal
    once, as the objective's warning (``trial N failed (recorded...): ERROR``), so Optuna's two lines about the same
    failure (with the traceback) are dropped; a failure the objective never saw (a value Optuna refuses) is one
    warning line."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Trial ") and (" failed with value " in message or record.exc_info):
            return
        log.log(record.levelno, " ".join(message.split()))


def route_optuna_log(optuna) -> None:
    """Optuna's logger without its own stderr handler, its records sent through ours (once per process)."""
    logger = logging.getLogger("optuna")
    if not any(isinstance(handler, OptunaLog) for handler in logger.handlers):
        optuna.logging.disable_default_handler()
        logger.handlers[:] = [OptunaLog()]
        logger.propagate = False


def plan_tune(config_path, sets, params, name: str, trials: int, storage: str | None, pruner: str,
              root="runs/tune") -> TuneSpec:
    """Check everything a tune needs before anything is written: the name, each parameter's values against the
    config schema, the base config and its cache."""
    from pipeline.cache.reader import open_cache

    _optuna()  # not installed: the install line before anything else
    safe_name(name, "--name")
    if pruner not in PRUNERS:
        raise ActrecError(f"--pruner {pruner}: unknown; use one of {', '.join(PRUNERS)}")
    raw, base, source = load_base(config_path, sets)
    for param in params:  # each value alone against its key (combinations: check_space)
        for value in param.examples():
            check_key_value(param.key, value, f"--param {param.key}={param.spec}: {value} is not a valid value")
    cache = open_cache(base)  # a missing or mismatched cache: one line now, not a failure per trial
    try:
        check_space(raw, params, Path(root) / name, source, cache.dim, len(cache.class_names))
    finally:
        cache.close()
    check_tracking(base)
    folder = Path(root) / name
    url = storage or default_storage(folder)
    return TuneSpec(str(config_path) if config_path else None, tuple(sets), tuple(params), name, folder, url,
                    trials, pruner, os.getcwd())


def default_storage(folder: Path) -> str:
    """The study's own SQLite database in its folder (an absolute path: workers may start elsewhere)."""
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def run_tune(spec: TuneSpec, jobs: int = 1, backend: str = "local", scheduler: str | None = None) -> dict:
    """Run the study to ``spec.trials`` finished trials (``jobs`` worker processes here, or ``jobs`` Ray tasks with
    ``backend="ray"``), then evaluate the best trial on the test list and write the leaderboard (also when
    interrupted)."""
    if backend not in TUNE_BACKENDS:
        raise ActrecError(f"--backend {backend}: unknown for a tune; use one of {', '.join(TUNE_BACKENDS)}")
    base = load_base(spec.config_path, spec.sets)[1].to_dict()
    cluster = connect_ray_workers(spec, base, scheduler) if backend == "ray" else None  # before the study is made
    study = open_study(spec, worker=0, create=True)
    recover(study)
    finished = finished_count(study)
    jobs = max(1, min(jobs, spec.trials - finished))  # no worker without a trial to run
    threads = thread_share(base, jobs) if jobs > 1 else 0
    log.info(f"tune {spec.name}: {finished} of {spec.trials} trials finished; study in {spec.storage}")
    try:
        if cluster is not None:
            run_ray_workers(cluster, jobs, threads)
        elif jobs == 1:
            run_worker(spec, 0, threads)
        else:
            run_workers(spec, jobs, threads)
        recover(study, spec)  # a worker killed just now (on Ray): its trial is failed and queued for the next run
    finally:
        rows = write_tune_leaderboard(spec, study)
    best = evaluate_best(spec, study, rows)
    if best is None:
        failed = [trial for trial in study.get_trials(deepcopy=False) if trial.user_attrs.get("error")]
        first = f"; the first, trial {failed[0].number}: {failed[0].user_attrs['error']}" if failed else ""
        raise ActrecError(f"no trial of study {spec.name} finished ({sum(r['status'] == 'failed' for r in rows)} "
                          f"failed{first}); every error is in {spec.folder / 'leaderboard.md'}")
    return {"folder": str(spec.folder), "storage": spec.storage, "best": best,
            "rows": write_tune_leaderboard(spec, study)}


def open_study(spec: TuneSpec, worker: int, create: bool = False):
    """The study on its storage with this worker's seeded sampler and the pruner; refuses a study of the same
    name that searches another space or trains with other base settings."""
    optuna = _optuna()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_base(spec.config_path, spec.sets)[1]
    if create and spec.storage == default_storage(spec.folder):
        spec.folder.mkdir(parents=True, exist_ok=True)
    storage = open_storage(spec.storage)
    if spec.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=cfg.tune.startup_trials,
                                             n_warmup_steps=cfg.tune.warmup_epochs)
    else:
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, cfg.tune.warmup_epochs))
    study = optuna.create_study(storage=storage, study_name=spec.name, pruner=pruner, direction="maximize",
                                load_if_exists=True)
    study.sampler = optuna.samplers.TPESampler(
        seed=sampler_seed(cfg.tune.seed, worker, len(study.get_trials(deepcopy=False))),
        n_startup_trials=cfg.tune.startup_trials, constant_liar=True)
    if create:
        check_same_study(study, spec, comparable_settings(cfg.to_dict()))
    return study


def sampler_seed(seed: int, worker: int, trials_so_far: int) -> int:
    """The TPE seed of one worker: from tune.seed, the worker's index and the study's trials so far, so parallel
    workers and a rerun of an interrupted study do not repeat each other's random draws."""
    import numpy as np

    return int(np.random.SeedSequence([seed, worker, trials_so_far]).generate_state(1)[0])


def open_storage(url: str):
    """Optuna's RDBStorage on ``url`` with a heartbeat; one line when it cannot be opened."""
    optuna = _optuna()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                              heartbeat_stale_trial_callback=requeue)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy and the drivers raise many kinds; all mean "cannot open"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ActrecError(f"--storage {url}: cannot open it ({first}); give an SQLAlchemy URL of a reachable "
                          f"database, e.g. sqlite:///runs/tune/study.db or postgresql://user@host/db") from exc


def check_same_study(study, spec: TuneSpec, settings: dict) -> None:
    """Record the space and base settings on a new study; refuse to continue one that had others."""
    space = {param.key: param.spec for param in spec.params}
    recorded = study.user_attrs
    if "space" not in recorded:
        study.set_user_attr("space", space)
        study.set_user_attr("settings", settings)
        return
    if recorded["space"] != space:
        raise ActrecError(f"study {spec.name} in {spec.storage} searches {recorded['space']}, not {space}; use "
                          f"another --name for another search space")
    changed = [f"{key}: {recorded['settings'].get(key)!r} -> {value!r}" for key, value in settings.items()
               if key not in space and recorded["settings"].get(key) != value]
    if changed:
        raise ActrecError(f"study {spec.name} in {spec.storage} was started with other settings "
                          f"({'; '.join(changed)}); use another --name, or the settings it was started with")


def finished_count(study) -> int:
    TrialState = _optuna().trial.TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def recover(study, spec: TuneSpec | None = None) -> None:
    """Fail the trials this machine's killed processes left running (with ``spec``, their leaderboard records
    too), and queue again every trial stopped by a kill or Ctrl-C (not by its own error), so it resumes from its
    run dir's last checkpoint."""
    UpdateFinishedTrialError = _optuna().exceptions.UpdateFinishedTrialError
    TrialState = _optuna().trial.TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        if trial.state == TrialState.RUNNING and attrs.get("host") == host and not _alive(attrs.get("pid")):
            error = f"its process (pid {attrs.get('pid')}) was killed mid-trial; it runs again, from its last.pt"
            try:  # as Optuna's own fail_stale_trials does it: there is no public call to end another's trial
                study._storage.set_trial_user_attr(trial._trial_id, "error", error)
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue
            if spec is not None and attrs.get("run_dir"):
                record_killed(spec, trial, error)
            log.warning(f"trial {trial.number} was left running by a killed process (pid {attrs.get('pid')}): "
                        f"marked failed and queued again")
            requeue(study, trial)
        elif trial.state == TrialState.FAIL and attrs.get("interrupted"):
            requeue(study, trial)


def record_killed(spec: TuneSpec, trial, error: str) -> None:
    """The leaderboard record of a trial whose process was killed: failed, with its epochs so far."""
    run_dir = trial.user_attrs["run_dir"]
    params = {param.key: trial.params[param.key] for param in spec.params if param.key in trial.params}
    run = SweepRun(Path(run_dir).name, shown(params), trial_config(spec, params, run_dir))
    write_record(run, trial.number, {row["epoch"]: row for row in read_history(Path(run_dir))}, "failed", error)


def requeue(study, trial) -> None:
    """Queue a trial stopped from outside again with its settings and run dir (once)."""
    run_dir = trial.user_attrs.get("run_dir")
    if run_dir and not any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial(trial.params, user_attrs={"run_dir": run_dir, "retry_of": trial.number})


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_workers(spec: TuneSpec, jobs: int, threads: int) -> None:
    """``jobs`` worker processes on the study, each dying with this process (a kill leaves no trial training)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    level = logging.getLogger("pipeline").getEffectiveLevel()
    workers = [context.Process(target=worker_main, args=(spec, i, threads, os.getpid(), level))
               for i in range(jobs)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        for worker in workers:
            worker.join(timeout=30)  # Ctrl-C reaches the workers too: let them record their trials as stopped
            if worker.is_alive():
                worker.terminate()
    failed = [worker.exitcode for worker in workers if worker.exitcode]
    if failed:
        raise ActrecError(f"{len(failed)} of {jobs} tune workers stopped with an error (exit status "
                          f"{', '.join(map(str, failed))}); see the messages above, then run the command again to "
                          f"continue the study")


def connect_ray_workers(spec: TuneSpec, base: dict, scheduler: str | None) -> tuple:
    """(ray, the workers' spec, whether each requests a GPU): connected, and GPU training where the cluster has
    no GPU refused, before the study is created."""
    import dataclasses

    from pipeline.experiments.execute import cluster_gpu_request, connect_ray, ray_gpu_offers

    ray = connect_ray(scheduler)
    gpu, device = cluster_gpu_request([SweepRun(spec.name, {}, base)], ray_gpu_offers(ray), "ray")
    if device:  # train.device=auto on a cluster without GPUs: the trials train on its CPUs
        spec = dataclasses.replace(spec, sets=spec.sets + (f"train.device={device}", f"eval.device={device}"))
    return ray, spec, gpu


def run_ray_workers(cluster: tuple, jobs: int, threads: int) -> None:
    """``jobs`` workers of the study as Ray tasks (one GPU each when the trials train on GPUs). A task whose
    worker dies is not retried: the others go on, and its trial, left running under a dead pid, is failed and
    queued again (``recover``), so the next run resumes it from its last checkpoint."""
    ray, spec, gpu = cluster
    remote = ray.remote(num_gpus=1 if gpu else 0, num_cpus=1, max_retries=0, runtime_env=RAY_ENV)(ray_worker)
    level = logging.getLogger("pipeline").getEffectiveLevel()
    refs = {remote.remote(spec, worker, threads, level): worker for worker in range(jobs)}
    log.info(f"tune {spec.name}: {jobs} worker(s) as Ray tasks")
    stopped = []
    try:
        for ref, worker in refs.items():
            try:
                ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a worker lost to the cluster; the study goes on
                stopped.append(worker)
                log.warning(f"tune worker {worker} on Ray stopped ({error_line(exc, 200)}); its trial is recorded "
                            f"failed and runs again when the same command runs again")
    finally:
        for ref in refs:  # Ctrl-C or an error here: no worker goes on training
            ray.cancel(ref, force=True)


def ray_worker(spec: TuneSpec, worker: int, threads: int, level: int) -> None:
    """A tune worker as a Ray task: log as the command does, under the worker's number (no progress bars),
    then run trials."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[worker {worker}] %(levelname)s: %(message)s"))
    logger = logging.getLogger("pipeline")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    run_worker(spec, worker, threads)


def worker_main(spec: TuneSpec, worker: int, threads: int, parent: int, level: int) -> None:
    """A worker process: log as the command does, die with the command, run trials. A killed worker leaves its
    trial RUNNING under its dead pid: the next run fails and requeues it."""
    from pipeline.experiments.execute import die_with_parent

    die_with_parent(parent)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[worker {worker}] %(message)s"))
    logger = logging.getLogger("pipeline")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    try:
        run_worker(spec, worker, threads)
    except KeyboardInterrupt:
        sys.exit(130)


def run_worker(spec: TuneSpec, worker: int, threads: int) -> None:
    """One process of the study: trials until the study has ``spec.trials`` finished ones."""
    os.chdir(spec.cwd)  # relative run dirs and config paths mean the same in every worker
    study = open_study(spec, worker)
    remaining = spec.trials - finished_count(study)
    if remaining > 0:
        study.optimize(lambda trial: objective(trial, spec, threads), n_trials=remaining, catch=(Exception,),
                       callbacks=[lambda study, trial: stop_when_enough(study, spec.trials)])


def stop_when_enough(study, trials: int) -> None:
    """Stop this worker once the finished trials and those running elsewhere make ``trials``: the study ends with
    that many, not one extra per worker (a running one that fails leaves it short; a rerun completes it)."""
    TrialState = _optuna().trial.TrialState

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                    TrialState.RUNNING))) >= trials:
        study.stop()


def objective(trial, spec: TuneSpec, threads: int) -> float:
    """Train one trial, reporting each epoch's validation accuracy to the pruner; its best validation accuracy."""
    optuna = _optuna()

    from pipeline.experiments.tracked import train_run

    params = suggest(trial, spec.params, load_base(spec.config_path, spec.sets)[1].to_dict())
    run_dir = trial.user_attrs.get("run_dir") or str(spec.folder / f"trial-{trial.number:04d}")
    for key, value in (("run_dir", run_dir), ("host", socket.gethostname()), ("pid", os.getpid())):
        trial.set_user_attr(key, value)
    run = SweepRun(Path(run_dir).name, shown(params), trial_config(spec, params, run_dir, threads))
    cfg = config_from_dict(run.config, source=f"tune {spec.name} trial {trial.number}")
    rows = {int(row["epoch"]): row for row in read_history(Path(run_dir))}  # a resumed trial's earlier epochs
    for epoch, row in rows.items():
        trial.report(float(row["val_acc"]), epoch)

    def on_epoch(row: dict) -> None:
        if row["epoch"] not in rows:
            trial.report(row["val_acc"], row["epoch"])
        rows[row["epoch"]] = row
        if row["epoch"] < cfg.train.epochs and trial.should_prune():  # after the last epoch there is nothing to save
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

    try:
        if rows and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {max(rows)}")
        train_run(cfg, resume=(Path(run_dir) / "checkpoints" / "last.pt").exists(), on_epoch=on_epoch)
    except optuna.TrialPruned as exc:
        write_record(run, trial.number, rows, "pruned", str(exc))
        log.info(f"trial {trial.number} {exc} ({_describe(params)})")
        raise
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)
        raise
    except Exception as exc:
        error = error_line(exc)
        trial.set_user_attr("error", error)
        write_record(run, trial.number, rows, "failed", error)
        log.warning(f"trial {trial.number} failed (recorded; the study goes on): {error}")
        raise
    record = write_record(run, trial.number, rows, "done", "")
    log.info(f"trial {trial.number}: val top-1 {record['val_top1']:.3f} ({_describe(params)})")
    return record["val_top1"]


