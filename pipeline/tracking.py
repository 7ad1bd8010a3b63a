"""Tracking: a training run's curves and results in TensorBoard (always) and MLflow (with ``track.mlflow``).

TensorBoard event files go to ``run.dir/tb/``: per epoch the train/val loss and accuracy and the learning rate;
when training stops, the run's settings as hyper-parameters with its best validation accuracy and loss, to which
``actrec evaluate`` adds the test top-1 (TensorBoard's HParams view). With ``track.mlflow: URI`` the same
settings become MLflow params and the same numbers MLflow metrics, under the experiment ``track.experiment``;
evaluation adds metrics.json, curves.png, the confusion matrix and the checkpoint path. The MLflow run's id is
kept in ``run.dir/mlflow.json``, so a resumed or evaluated run logs to the run that trained it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline.config import Config, keys_affecting
from pipeline.errors import ActrecError
from pipeline.fileio import read_json_object, write_error, write_json
from pipeline.optional import require

log = logging.getLogger(__name__)

TB_DIR = "tb"
MLFLOW_FILE = "mlflow.json"  # in the run dir: which MLflow run (tracking URI, id) the run logs to
# history.csv column -> TensorBoard tag / MLflow metric
EPOCH_METRICS = {"train_loss": "train/loss", "val_loss": "val/loss", "train_acc": "train/accuracy",
                 "val_acc": "val/accuracy", "lr": "lr"}
# Seconds a tracking server has to answer the up-front check; MLflow's own requests to a server are bounded too
# (its retries alone would wait minutes on a server that went away), unless the user's environment sets them.
CHECK_TIMEOUT_S = 10
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
FINAL_METRICS = ("hparams/val_top1", "hparams/val_loss", "hparams/test_top1", "hparams/test_mean_class_accuracy")


@contextmanager
def track_run(cfg: Config):
    """Yield ``track(report)``, the epoch callback a training run is handed (``train(cfg, on_epoch=track)``): each
    epoch's report (its history row with the run's best so far) goes to TensorBoard and MLflow. The store is
    checked first (one line before any work); on leaving, the run's settings are recorded with its best
    validation result, unless Ctrl-C or a kill interrupted it (the resumed run records them: TensorBoard keeps
    the first hparams a run dir states)."""
    check_tracking(cfg)
    writers = [writer for writer in (_tensorboard(cfg), _mlflow(cfg)) if writer is not None]
    last: dict = {}

    def track(report: dict) -> None:
        last.clear()
        last.update(report)
        for writer in writers:
            writer.epoch(report)

    outcome = "interrupted"
    try:
        yield track
        outcome = "finished"
    except Exception:
        outcome = "stopped"  # by another epoch callback (a pruned trial) or an error
        raise
    finally:
        for writer in writers:
            writer.close(last, outcome)


def track_evaluation(cfg: Config, metrics: dict) -> None:
    """Add the test metrics of an evaluation to the run's TensorBoard hparams and MLflow run."""
    step = int(metrics["checkpoint_epoch"])
    final = {"hparams/test_top1": metrics["top1"], "hparams/test_mean_class_accuracy": metrics["mean_class_accuracy"]}
    if cfg.track.tensorboard:
        with _summary_writer(cfg.run.dir) as writer:
            for tag, value in final.items():
                writer.add_scalar(tag, value, step)
    if cfg.track.mlflow:
        mlflow_run = MlflowRun.open(cfg, create=False)
        if mlflow_run is not None:
            mlflow_run.log_metrics({tag.split("/", 1)[1]: value for tag, value in final.items()}, step)
            mlflow_run.log_evaluation(Path(cfg.run.dir), metrics["checkpoint"])


def group_runs(raw: dict, experiment: str) -> dict:
    """``raw`` config sections whose runs log to MLflow experiment ``experiment`` (a sweep's or a study's), unless
    the config or a --set already names one."""
    track = dict(raw.get("track") or {})
    track.setdefault("experiment", experiment)
    return {**raw, "track": track}


def check_tracking(cfg: Config, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Open the MLflow store of ``track.mlflow`` (if any) once, so a bad URI is one line before work starts:
    every command that logs to MLflow (train, evaluate, sweep, tune) calls this first. A server is asked once,
    with ``timeout`` seconds to answer, rather than through MLflow's minutes of retries."""
    uri = cfg.track.mlflow
    if not uri:
        return
    client = mlflow_client(uri)  # MLflow missing: its install line first
    if _is_server(uri):
        check_server(uri, timeout)
    _mlflow_call(uri, client.search_experiments, max_results=1)


def _is_server(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def check_server(uri: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Refuse, in one line within ``timeout`` seconds, an MLflow server that does not answer HTTP at ``uri``; an
    answer of any status (an error, a login page) is left for MLflow's client to judge."""
    import urllib.error
    import urllib.request

    probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    started = time.monotonic()
    try:
        urllib.request.urlopen(probe, timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # something answers
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        reason = getattr(reason, "strerror", None) or str(reason) or type(exc).__name__
        raise ActrecError(f"track.mlflow={uri}: no MLflow server answered within {timeout:g} s ({reason}, after "
                          f"{time.monotonic() - started:.1f} s); start it (mlflow server) or fix the address, or "
                          f"set track.mlflow to an empty value") from exc


def run_settings(cfg: Config) -> dict:
    """The settings that decide what the run computes, as hyper-parameters (plain scalars)."""
    resolved = cfg.to_dict()
    settings = {}
    for dotted in keys_affecting("features", "test list", "training"):
        section, key = dotted.split(".")
        if key not in resolved[section]:  # a key of a plug-in this run does not use
            continue
        value = resolved[section][key]
        settings[dotted] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return settings


def best_of(report: dict) -> dict:
    """The best validation accuracy and loss the run reached by the epoch of ``report`` (nothing before an epoch
    has been validated)."""
    keys = (("hparams/val_top1", "best_val_acc"), ("hparams/val_loss", "best_val_loss"))
    return {tag: report[key] for tag, key in keys
            if isinstance(report.get(key), (int, float)) and math.isfinite(report[key]) and report[key] >= 0}


class _TensorBoard:
    """Per-epoch scalars and, at the end, the HParams session of one run in ``run.dir/tb``."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.writer = _open_summary_writer(cfg.run.dir)

    def epoch(self, row: dict) -> None:
        with tensorboard_errors(Path(self.cfg.run.dir) / TB_DIR):
            for column, tag in EPOCH_METRICS.items():
                if isinstance(row.get(column), (int, float)) and math.isfinite(row[column]):
                    self.writer.add_scalar(tag, row[column], row["epoch"])
            self.writer.flush()

    def close(self, report: dict, outcome: str) -> None:
        with tensorboard_errors(Path(self.cfg.run.dir) / TB_DIR):
            self._close(report, outcome)

    def _close(self, report: dict, outcome: str) -> None:
        from torch.utils.tensorboard.summary import hparams

        best = best_of(report)
        if best and outcome != "interrupted":
            # The metric tags are declared here; their values are scalars of this run (test ones added by evaluate).
            for summary in hparams(run_settings(self.cfg), dict.fromkeys(FINAL_METRICS, 0.0)):
                self.writer.file_writer.add_summary(summary)
            for tag, value in best.items():
                self.writer.add_scalar(tag, value, report["epoch"])
        self.writer.close()


def _tensorboard(cfg: Config):
    return _TensorBoard(cfg) if cfg.track.tensorboard else None


def _open_summary_writer(run_dir):
    """A SummaryWriter on ``run_dir/tb``, its folder checked by a real write first: a folder that cannot be
    written is one line naming it (as text) before training starts."""
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(run_dir) / TB_DIR
    _quiet_writer_threads()
    with tensorboard_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".actrec-probe"
        try:
            probe.write_bytes(b"")  # a real write: permission bits say nothing of read-only mounts (or of root)
        finally:
            probe.unlink(missing_ok=True)
        return SummaryWriter(log_dir=str(folder))


@contextmanager
def tensorboard_errors(folder: Path):
    """A failed TensorBoard write inside the block (raised again in this thread by the writer) becomes one line
    naming ``folder``; TensorBoard's own messages name the event file as bytes."""
    try:
        yield
    except ActrecError:
        raise
    except (OSError, RuntimeError) as exc:
        error = write_error(folder, exc)
        if error is None and not isinstance(exc, OSError):
            raise
        reason = getattr(exc, "strerror", None) or str(exc).split(":")[0]
        raise (error or ActrecError(f"cannot write TensorBoard events in {folder}: {reason}; choose a writable "
                                    f"run.dir or set track.tensorboard=false")) from None


def _quiet_writer_threads() -> None:
    """TensorBoard's writer thread raises its write error in its own thread too, which Python prints as a
    traceback; the same error reaches the caller (``tensorboard_errors``), so that thread's copy is logged at
    debug level instead. Installed once; every other thread's exceptions go to the previous hook."""
    import threading

    previous = threading.excepthook
    if getattr(previous, "actrec_quiet", False):
        return

    def hook(args):
        if type(args.thread).__name__ == "_AsyncWriterThread":
            log.debug(f"TensorBoard's writer thread stopped: {args.exc_type.__name__}: {args.exc_value}")
            return
        previous(args)

    hook.actrec_quiet = True
    threading.excepthook = hook


@contextmanager
def _summary_writer(run_dir):
    writer = _open_summary_writer(run_dir)
    with tensorboard_errors(Path(run_dir) / TB_DIR):
        try:
            yield writer
        finally:
            writer.close()


class _MlflowTraining:
    """The MLflow side of ``track_run``: per-epoch metrics, then the run's status and curves."""

    def __init__(self, mlflow_run: MlflowRun):
        self.run = mlflow_run

    def epoch(self, row: dict) -> None:
        self.run.log_metrics({column: row[column] for column in EPOCH_METRICS}, row["epoch"])

    def close(self, report: dict, outcome: str) -> None:
        best = best_of(report)
        if best:
            self.run.log_metrics({tag.split("/", 1)[1]: value for tag, value in best.items()}, report["epoch"])
        curves = Path(self.run.run_dir) / "curves.png"
        if curves.exists():
            self.run.client.log_artifact(self.run.run_id, str(curves))
        self.run.client.set_terminated(self.run.run_id, "FINISHED" if outcome == "finished" else "KILLED")


def _mlflow(cfg: Config):
    return _MlflowTraining(MlflowRun.open(cfg, create=True)) if cfg.track.mlflow else None


class MlflowRun:
    """One run dir's MLflow run, created once (params logged then) and reopened by the id in mlflow.json."""

    def __init__(self, client, run_id: str, run_dir: Path):
        self.client, self.run_id, self.run_dir = client, run_id, run_dir

    @classmethod
    def open(cls, cfg, create: bool) -> MlflowRun | None:
        """The run's MLflow run; a new one when ``create`` and the run dir has none on this tracking URI."""
        run_dir, uri = Path(cfg.run.dir), cfg.track.mlflow
        client = mlflow_client(uri)
        known = read_json_object(run_dir / MLFLOW_FILE)
        if known.get("tracking_uri") == uri and known.get("run_id"):
            return cls(client, known["run_id"], run_dir)
        if not create:
            log.warning(f"{run_dir} has no MLflow run on {uri} (it trained without track.mlflow); the evaluation "
                        f"is not logged to MLflow")
            return None
        experiment = experiment_id(client, cfg.track.experiment, uri)
        created = _mlflow_call(uri, client.create_run, experiment, run_name=run_dir.name,
                               tags={"actrec.run_dir": str(run_dir.resolve())})
        mlflow_run = cls(client, created.info.run_id, run_dir)
        mlflow_run.log_params(run_settings(cfg))
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / MLFLOW_FILE, {"tracking_uri": uri, "run_id": mlflow_run.run_id,
                                           "experiment": cfg.track.experiment})
        log.info(f"MLflow: run {mlflow_run.run_id} in experiment {cfg.track.experiment!r} on {uri}")
        return mlflow_run

    def log_params(self, params: dict) -> None:
        Param = require("mlflow.entities", "track.mlflow").Param

        self.client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def log_metrics(self, metrics: dict, step: int) -> None:
        Metric = require("mlflow.entities", "track.mlflow").Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, int(step)) for key, value in metrics.items()
                 if isinstance(value, (int, float)) and math.isfinite(value)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_evaluation(self, run_dir: Path, checkpoint: str) -> None:
        for name in ("metrics.json", "confusion_matrix.png"):
            if (run_dir / name).exists():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        self.client.set_tag(self.run_id, "actrec.checkpoint", str(Path(checkpoint).resolve()))


def mlflow_client(uri: str):
    """An MlflowClient on ``uri``; one line when MLflow is missing or the store cannot be opened."""
    MlflowClient = require("mlflow.tracking", f"track.mlflow={uri} (or set it to an empty value)").MlflowClient
    if "://" not in uri or uri.startswith("file:"):
        # MLflow 3 refuses a folder store unless asked for one; a folder in track.mlflow is that request.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    if _is_server(uri):
        for key, value in HTTP_LIMITS.items():
            os.environ.setdefault(key, value)
    return _mlflow_call(uri, MlflowClient, tracking_uri=uri)


def experiment_id(client, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if new (by whichever of several parallel runs comes first).

    A SQLite store keeps the artifacts in ``mlartifacts/`` beside its database file, not in the working
    folder (MLflow's default for a database store).
    """
    found = _mlflow_call(uri, client.get_experiment_by_name, name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - another run created it in the meantime; any other failure shows below
        found = _mlflow_call(uri, client.get_experiment_by_name, name)
        if found is None:
            raise
        return found.experiment_id


def _mlflow_call(uri: str, func, *args, **kwargs):
    """``func(*args, **kwargs)``; a store that cannot be opened or answer becomes one line naming ``uri``."""
    try:
        return func(*args, **kwargs)
    except ActrecError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds for a bad URI; all mean the same to a user
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ActrecError(f"track.mlflow={uri}: cannot use this MLflow store ({first}); give a local folder, "
                          f"sqlite:///PATH.db or a reachable server, or set track.mlflow to an empty value") from exc

