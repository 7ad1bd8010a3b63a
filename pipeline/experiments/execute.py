"""Running a sweep's runs: one worker process per run on this machine (one GPU each), or a Dask or Ray cluster.

Local runs each get a spawned process of their own, so a run that dies (the out-of-memory killer's signal 9)
is recorded as failed with its signal while the others go on, and a worker dies with the sweep's process
(kill -9 included) instead of writing on. On GPUs each run gets a GPU of its own: locally the sweep hands one
to each worker (``CUDA_VISIBLE_DEVICES``), on a cluster each run requests one from the backend (Ray
``num_gpus``, Dask worker resources) and trains on the one it was given; GPU training on a cluster that offers
no GPU is refused before anything is written. Every backend connects and checks before the sweep writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipeline.config import runtime_value
from pipeline.errors import ActrecError, error_line
from pipeline.experiments.job import (  # noqa: F401 (run_job: the workers' entry)
    base_record,
    cluster_job,
    failed_record,
    run_job,
)
from pipeline.experiments.plan import SweepRun
from pipeline.optional import require

log = logging.getLogger(__name__)

BACKENDS = ("local", "dask", "ray")
# What a Ray task's worker process starts with: no progress bars (the sweep or tune reports each run; tqdm reads
# this when first imported, before a task's code runs).
RAY_ENV = {"env_vars": {"TQDM_DISABLE": "1"}}
PR_SET_PDEATHSIG = 1  # linux/prctl.h
GPU_HOWTO = {"dask": "start one Dask worker per GPU with CUDA_VISIBLE_DEVICES set to it and --resources GPU=1 "
                     "(dask-cuda-worker does both)",
             "ray": "start Ray on machines with GPUs (ray start --num-gpus N)"}


def check_backend(backend: str, scheduler: str | None) -> None:
    """Refuse a backend that cannot run here (unknown, not installed, no scheduler) before anything is written."""
    if backend not in BACKENDS:
        raise ActrecError(f"--backend {backend}: unknown; use one of {', '.join(BACKENDS)}")
    if backend == "dask" and not scheduler:
        raise ActrecError("--backend dask needs --scheduler tcp://HOST:8786 (a running dask scheduler)")
    module = {"dask": "dask.distributed", "ray": "ray"}.get(backend)
    if module:
        require(module, f"--backend {backend}")


@contextlib.contextmanager
def connect(backend: str, scheduler: str | None, todo: list[SweepRun], jobs: int | None):
    """``(workers, jobs)`` for ``todo`` on ``backend``, connected and checked (GPUs included) before the sweep
    writes anything; the connection closes on exit."""
    if backend == "local":
        gpus = local_gpus(todo)
        jobs = local_jobs(jobs, gpus, len(todo))
        threads = 0 if gpus else thread_share(todo[0].config, jobs)
        log.info(f"running {len(todo)} runs, {jobs} at a time (local processes, "
                 + (f"{len(gpus)} GPU(s), one run per GPU)" if gpus else f"{threads} thread(s) each)"))
        yield LocalWorkers(gpus, threads), jobs
    elif backend == "dask":
        client = connect_dask(scheduler)
        try:
            gpu, device = cluster_gpu_request(todo, dask_gpu_offers(client), "dask")
            yield DaskWorkers(client, gpu, device), jobs or len(todo)
        finally:
            client.close()
    else:
        ray = connect_ray(scheduler)
        gpu, device = cluster_gpu_request(todo, ray_gpu_offers(ray), "ray")
        yield RayWorkers(gpu, device), jobs or len(todo)


def execute(todo: list[SweepRun], workers, jobs: int) -> None:
    """Run ``todo``, ``jobs`` at a time; each run's outcome is logged as it ends. On an interrupt or error the
    runs still going are stopped (they resume from their last checkpoint next time)."""
    pending, running = list(todo), 0
    try:
        while pending or running:
            while pending and running < jobs:
                workers.submit(pending.pop(0))
                running += 1
            record = workers.next_done()
            running -= 1
            if record["status"] == "done":
                log.info(f"sweep run {record['name']}: val top-1 {record['val_top1']:.3f}, test top-1 "
                         f"{record['test_top1']:.3f} ({record['seconds']:.0f} s)")
            else:
                log.warning(f"sweep run {record['name']} failed (the sweep goes on): {record['error']}")
    finally:
        workers.stop()


# ---- local worker processes -------------------------------------------------------------------------------


class LocalWorkers:
    """Worker processes on this machine, spawned as runs need them and each holding one run at a time (on its own
    GPU when the runs train on GPUs): a worker that dies fails exactly the run it held, and a fresh worker takes
    the next one."""

    def __init__(self, gpus: list[str], threads: int):
        self.context = multiprocessing.get_context("spawn")  # no forked torch or HDF5 state in a worker
        self.free_gpus, self.threads = list(gpus), threads
        self.idle, self.busy = [], {}  # busy: the worker's connection -> (worker, its run)

    def submit(self, run: SweepRun) -> None:
        while self.idle:
            worker = self.idle.pop()
            try:
                worker.conn.send(run)
            except OSError:  # it died while idle (killed from outside): a fresh worker takes the run
                worker.process.join()
                self.retire(worker)
                continue
            self.busy[worker.conn] = (worker, run)
            return
        worker = self.start_worker()
        worker.conn.send(run)
        self.busy[worker.conn] = (worker, run)

    def start_worker(self) -> LocalWorker:
        gpu = self.free_gpus.pop(0) if self.free_gpus else None
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=local_worker, args=(theirs, self.threads, os.getpid()),
                                       name="sweep worker")
        with worker_environment(gpu):
            process.start()
        theirs.close()
        return LocalWorker(process, ours, gpu)

    def next_done(self) -> dict:
        ends = {worker.process.sentinel: conn for conn, (worker, _) in self.busy.items()}
        ready = multiprocessing.connection.wait(list(self.busy) + list(ends))
        conn = next((end for end in ready if end in self.busy), None) or ends[ready[0]]
        worker, run = self.busy.pop(conn)
        try:
            record = conn.recv()
        except (EOFError, OSError):  # the worker died with the run
            worker.process.join()
            self.retire(worker)
            return failed_record(run, exit_reason(worker.process.exitcode), worker.process.pid)
        self.idle.append(worker)
        return record

    def retire(self, worker: LocalWorker) -> None:
        worker.conn.close()
        if worker.gpu is not None:
            self.free_gpus.append(worker.gpu)

    def stop(self) -> None:
        """Stop the workers; runs still going (Ctrl-C, an error) resume from their last checkpoint next time."""
        for worker in self.idle:
            worker.conn.send(None)
        for worker, _ in self.busy.values():
            worker.process.terminate()
        for worker in self.idle + [worker for worker, _ in self.busy.values()]:
            worker.process.join()
            self.retire(worker)
        self.idle, self.busy = [], {}


@dataclass
class LocalWorker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    gpu: str | None


def exit_reason(exitcode: int | None) -> str:
    """Why a worker ended without recording its run: the signal that killed it, or its exit status."""
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        return f"worker killed, signal {number}" + (": out of memory?" if number == signal.SIGKILL else "")
    return f"worker exited with status {exitcode} before recording the run"


@contextlib.contextmanager
def worker_environment(gpu: str | None):
    """What a worker process inherits at its start: its GPU alone, no progress bars (the sweep reports each run),
    and Ctrl-C ignored (it reaches the whole terminal; the sweep stops its workers itself, without tracebacks)."""
    saved = {key: os.environ.get(key) for key in ("CUDA_VISIBLE_DEVICES", "TQDM_DISABLE")}
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["TQDM_DISABLE"] = "1"
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, handler)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def local_worker(conn, threads: int, parent: int) -> None:
    """The body of a local worker process: die with the sweep's process, then run the runs it is sent (until
    None), logging warnings under each run's name."""
    from tqdm import tqdm

    die_with_parent(parent)
    # tqdm's default lock is a multiprocessing semaphore, which a worker killed mid-run would leak (the resource
    # tracker then warns at the sweep's end): a thread lock serves the one process.
    tqdm.set_lock(threading.RLock())
    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("pipeline")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING)
    while (run := conn.recv()) is not None:
        handler.setFormatter(logging.Formatter(f"%(levelname)s: sweep run {run.name}: %(message)s"))
        conn.send(run_job(run, threads))


def die_with_parent(parent: int) -> None:
    """Kill this process as soon as ``parent`` (the sweep) dies, however it dies, so that no run writes after it:
    the kernel's parent-death signal on Linux, a thread watching the parent elsewhere."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch the sweep").start()
    if os.getppid() != parent:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


def local_gpus(todo: list[SweepRun]) -> list[str]:
    """The GPUs the runs train on here, as CUDA_VISIBLE_DEVICES entries ([] when they train on the CPU)."""
    devices = run_devices(todo)
    if devices == {"cpu"}:
        return []
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count and "cuda" in devices:
        raise ActrecError("the runs train on cuda (train.device or eval.device) but torch sees no GPU here; set "
                          "train.device=auto or cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(count)]
    return ids[:count]


def run_devices(todo: list[SweepRun]) -> set[str]:
    return {runtime_value(run.config, stage, "device") for run in todo for stage in ("train", "eval")}


def local_jobs(jobs: int | None, gpus: list[str], runs: int) -> int:
    """Runs at a time: --jobs (default one per GPU, else 1), at most one per GPU and one per run."""
    wanted = jobs or max(len(gpus), 1)
    chosen = max(1, min(wanted, len(gpus) or wanted, runs))
    if gpus and wanted > len(gpus):
        log.info(f"--jobs {wanted}: {len(gpus)} GPU(s), one run per GPU at a time")
    return chosen


def thread_share(config: dict, jobs: int) -> int:
    """Training's threads (or the machine's cores) divided among ``jobs`` parallel runs, at least 1 each."""
    total = runtime_value(config, "train", "threads") or os.cpu_count() or 1
    return max(1, total // jobs)


# ---- clusters -----------------------------------------------------------------------------------------------


def cluster_gpu_request(todo: list[SweepRun], offers: list[float], backend: str) -> tuple[bool, str | None]:
    """Whether each run requests one GPU from the cluster, and the device the runs must use instead of their
    config's (None: theirs). GPU training where no worker offers a GPU is refused; ``auto`` trains on the CPU
    there, said in one line."""
    devices = run_devices(todo)
    if devices == {"cpu"}:
        return False, None
    if any(offers):
        return True, None
    if "cuda" in devices:
        raise ActrecError(f"--backend {backend}: the runs train on cuda but no {backend} worker offers a GPU; "
                          f"{GPU_HOWTO[backend]}, or set train.device=cpu")
    log.info(f"no {backend} worker offers a GPU: the runs train on the CPU (train.device=auto)")
    return False, "cpu"


def connect_dask(scheduler: str):
    """A Dask client of the scheduler at ``scheduler``; an address nothing answers at is one line at once."""
    parts = urlsplit(scheduler if "://" in scheduler else f"tcp://{scheduler}")
    if parts.hostname and parts.port:
        try:
            socket.create_connection((parts.hostname, parts.port), timeout=10).close()
        except OSError as exc:
            raise ActrecError(f"--scheduler {scheduler}: cannot connect ({exc.strerror or exc}); start `dask "
                              f"scheduler` there or fix the address") from exc
    Client = require("dask.distributed", "--backend dask").Client

    try:
        client = Client(scheduler, timeout=30)
    except (OSError, TimeoutError) as exc:
        raise ActrecError(f"--scheduler {scheduler}: cannot connect ({exc}); start `dask scheduler` there or fix "
                          f"the address") from exc
    if not client.scheduler_info()["workers"]:
        client.close()
        raise ActrecError(f"--scheduler {scheduler}: the scheduler has no workers; start `dask worker {scheduler}`")
    return client


def dask_gpu_offers(client) -> list[float]:
    """The GPU resource of each Dask worker; refuses a worker that offers GPUs but not exactly one GPU it sees
    alone (then every run on it would train on its cuda:0)."""
    workers = client.scheduler_info()["workers"]
    offers = {address: info.get("resources", {}).get("GPU", 0) for address, info in workers.items()}
    with_gpus = [address for address, offer in offers.items() if offer]
    if with_gpus:
        seen = client.run(visible_gpu_count, workers=with_gpus)
        for address in with_gpus:
            if offers[address] != 1 or seen[address] != 1:
                raise ActrecError(f"--backend dask: worker {address} offers GPU={offers[address]:g} and sees "
                                  f"{seen[address]} GPU(s); {GPU_HOWTO['dask']}")
    return list(offers.values())


def visible_gpu_count() -> int:
    """GPUs torch sees in this process (run on each Dask worker that offers GPUs)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class DaskWorkers:
    """Runs as tasks of a Dask cluster, each requesting one GPU resource when the runs train on GPUs."""

    def __init__(self, client, gpu: bool, device: str | None):
        as_completed = require("dask.distributed", "--backend dask").as_completed

        self.client, self.gpu, self.device = client, gpu, device
        self.done, self.runs = as_completed(), {}

    def submit(self, run: SweepRun) -> None:
        future = self.client.submit(cluster_job, os.getcwd(), run, 0, self.device, pure=False,
                                    resources={"GPU": 1} if self.gpu else None)
        self.runs[future.key] = (future, run)
        self.done.add(future)

    def next_done(self) -> dict:
        future = next(self.done)
        _, run = self.runs.pop(future.key)
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 - a worker lost to the cluster is a failed run, not a failed sweep
            return failed_record(run, f"the Dask task failed: {error_line(exc)}")

    def stop(self) -> None:
        self.client.cancel([future for future, _ in self.runs.values()])
        self.runs.clear()


def connect_ray(scheduler: str | None):
    """Ray connected to the cluster at ``scheduler`` (a local one without it)."""
    ray = require("ray", "--backend ray")

    try:
        ray.init(address=scheduler, ignore_reinit_error=True, logging_level=logging.WARNING,
                 configure_logging=True, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ActrecError(f"--scheduler {scheduler}: cannot connect to Ray ({first}); start `ray start --head` "
                          f"there or fix the address") from exc
    return ray


def ray_gpu_offers(ray) -> list[float]:
    """The GPUs the Ray cluster offers (one number: Ray schedules each task onto a node with a free one)."""
    return [ray.cluster_resources().get("GPU", 0)]


class RayWorkers:
    """Runs as Ray tasks, each requesting ``num_gpus=1`` when the runs train on GPUs (Ray then shows the task
    only the GPU it was given). A task whose worker dies is not retried by Ray: its run is recorded failed (the
    others go on) and the sweep's next run resumes it from its last checkpoint."""

    def __init__(self, gpu: bool, device: str | None):
        ray = require("ray", "--backend ray")

        self.ray, self.device = ray, device
        self.remote = ray.remote(num_gpus=1 if gpu else 0, num_cpus=1, max_retries=0, runtime_env=RAY_ENV)(cluster_job)
        self.refs = {}

    def submit(self, run: SweepRun) -> None:
        self.refs[self.remote.remote(os.getcwd(), run, 0, self.device)] = run

    def next_done(self) -> dict:
        (ref,), _ = self.ray.wait(list(self.refs), num_returns=1)
        run = self.refs.pop(ref)
        try:
            return self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a crashed task is a failed run, not a failed sweep
            return failed_record(run, f"the Ray task failed: {error_line(exc)}")

    def stop(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        self.refs.clear()
