"""Where this process stands among torchrun's workers: rank, world size, its device, and how ranks agree.

Launched by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment), each process is one
rank; otherwise the process is the whole world (rank 0 of 1) and nothing is initialised. The process
group uses gloo on the CPU and nccl on CUDA, where each rank drives ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from pipeline.errors import ActrecError

log = logging.getLogger(__name__)
T = TypeVar("T")

# ``together`` waits for the slowest rank's whole share of stage one, which can take hours; torchrun's agent,
# not this timeout, is what notices a dead rank (it stops the others and restarts or gives up).
BARRIER_TIMEOUT = datetime.timedelta(days=7)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Rank:
    """This process's place: ``rank`` of ``world_size`` (``local_rank`` on its machine)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def launched(self) -> bool:
        """True when there is more than this one process."""
        return self.world_size > 1

    def __str__(self) -> str:
        return f"rank {self.rank}/{self.world_size}"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ActrecError(f"environment variable {name}={value!r} is not a whole number; launch with torchrun "
                          f"or unset it") from None


def current() -> Rank:
    """The rank of this process from torchrun's environment (rank 0 of 1 when not launched by torchrun)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ActrecError(f"RANK={rank} does not fit WORLD_SIZE={world}; launch with torchrun")
    return Rank(rank, world, local)


def rank_device(device: torch.device, rank: Rank) -> torch.device:
    """``cuda:LOCAL_RANK`` for a CUDA device (each rank its own GPU), the device as is otherwise."""
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if rank.local_rank >= count:
        raise ActrecError(f"{rank} has LOCAL_RANK {rank.local_rank} but this machine has {count} GPU(s); run "
                          f"torchrun with --nproc_per_node={count} or fewer")
    torch.cuda.set_device(rank.local_rank)
    return torch.device("cuda", rank.local_rank)


def init(rank: Rank, device: torch.device) -> None:
    """Join the process group (gloo on the CPU, nccl on CUDA); nothing to do for a single process."""
    if not rank.launched or torch.distributed.is_initialized():
        return
    _die_with_launcher()
    backend = "nccl" if device.type == "cuda" else "gloo"
    store, _, _ = next(torch.distributed.rendezvous("env://", rank.rank, rank.world_size, timeout=BARRIER_TIMEOUT))
    # Keys per restart: after torchrun restarts the ranks (--max-restarts), the store still holds the dead
    # ranks' addresses, and gloo would try to connect to them.
    store = torch.distributed.PrefixStore(f"actrec/restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    try:
        torch.distributed.init_process_group(backend, store=store, rank=rank.rank, world_size=rank.world_size,
                                             timeout=BARRIER_TIMEOUT, **kwargs)
    except TypeError:  # torch without device_id
        torch.distributed.init_process_group(backend, store=store, rank=rank.rank, world_size=rank.world_size,
                                             timeout=BARRIER_TIMEOUT)
    log.info("%s: process group up (%s, %s)", rank, backend, device)


def _die_with_launcher() -> None:
    """Ask Linux to SIGTERM this rank when torchrun's agent dies: an agent killed with ``kill -9`` would
    otherwise leave its ranks waiting in a barrier for days."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not Linux
        return
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the agent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def agreed(rank: Rank, action: Callable[[], T]) -> T:
    """Run ``action`` on rank 0 and give every rank its result, or its refusal: then every rank raises the same
    one-line error and none is left waiting in a later collective for a rank that has gone (which gloo reports
    as a "Connection closed by peer" traceback). Just runs ``action`` in a single process."""
    if not rank.launched or not torch.distributed.is_initialized():
        return action()
    outcome: list = [None]
    failure = None
    if rank.rank == 0:
        try:
            outcome[0] = (True, action())
        except Exception as exc:  # whatever stops rank 0 must stop the others too
            failure = exc
            outcome[0] = (False, _refusal(exc, 0))
    torch.distributed.broadcast_object_list(outcome, src=0)
    if failure is not None:
        raise failure
    ok, value = outcome[0]
    if not ok:
        raise ActrecError(value)
    return value


def together(rank: Rank, action: Callable[[], T]) -> T:
    """Run ``action`` on every rank and wait for all (a barrier that hears how each rank did): when it failed on
    one, that rank raises its own error and every other rank the same line (or one naming that rank), rather
    than waiting in a later collective for a rank that has gone. Just runs ``action`` in a single process."""
    if not rank.launched or not torch.distributed.is_initialized():
        return action()
    result, failure = None, None
    try:
        result = action()
    except Exception as exc:  # whatever stops one rank must stop the others too
        failure = exc
    outcomes: list = [None] * rank.world_size
    torch.distributed.all_gather_object(outcomes, None if failure is None else _refusal(failure, rank.rank))
    if failure is not None:
        raise failure
    for message in outcomes:
        if message is not None:
            raise ActrecError(message)
    return result


def _refusal(exc: Exception, rank: int) -> str:
    """The line the other ranks stop with when ``exc`` stopped ``rank``: its own line if it has one."""
    if isinstance(exc, ActrecError):
        return str(exc)
    first = (str(exc).splitlines() or [""])[0][:300]
    return f"rank {rank} stopped ({type(exc).__name__}: {first}); see its error"


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def share(items: list, rank: Rank) -> list:
    """This rank's share of ``items``: every ``world_size``-th from ``rank`` on, with no padding duplicates."""
    return items[rank.rank::rank.world_size]
