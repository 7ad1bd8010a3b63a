"""A rank of a real gloo group, spawned by tests/embed/test_distributed.py: imports little, so it starts fast."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline import distributed
from pipeline.errors import ActrecError


def agree_on_rank(rank: int, store: str, out: str) -> None:
    """One rank of test_every_rank_stops_with_the_failing_ranks_line (spawned: a real gloo group of 2)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    me = distributed.Rank(rank, 2, rank)
    lines = [repr(distributed.agreed(me, lambda: sorted({"b", "a"}) if me.rank == 0 else None))]

    def fail(exc: Exception):
        raise exc

    for exc in (ActrecError("c.h5 is busy"), OSError(28, "No space left on device")):
        try:
            distributed.agreed(me, lambda exc=exc: fail(exc))
        except Exception as got:  # what each rank stops with is what is checked
            lines.append(f"{type(got).__name__}: {got}")
    try:  # rank 1 fails in the middle of work every rank does
        distributed.together(me, lambda: fail(ActrecError("disk full")) if me.rank == 1 else None)
    except ActrecError as got:
        lines.append(f"ActrecError: {got}")
    lines.append(repr(distributed.together(me, lambda: me.rank)))  # the group is still whole after the refusals
    Path(out, f"rank{rank}").write_text("\n".join(lines))
    distributed.shutdown()
