"""Rows 11: start-up. What a command costs before its work, in fresh processes, beside bare imports in the same run.

- 11-refuse: a refused setting (``actrec embed --set embed.bogus=1``, the same for train, and ``actrec predict``
  with a missing checkpoint): seconds and peak memory of the process, against ``python -c "import torch"``.
- 11-embed: a whole ``actrec embed`` of 6 videos x 32 frames (192 frames, random-init ResNet-18 at 64) against
  ``python -c "import torch, torchvision, cv2, h5py"``; split by the stage's own start-up marks (``-v`` logs
  them) into the command's start, the decode workers' start, the stage's imports, the backbone's build, the
  first features and the rest of the work.
- 11-predict: ``actrec predict`` of one 32-frame video against ``python -c "import torch, torchvision, cv2"``.

Each is measured ``sizes.repeats`` times (medians); peak memory is the process's own (``wait4``'s
``ru_maxrss``), not its decode workers'.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.common import Sizes, derive, row, synthetic_dataset
from pipeline.config import Config

log = logging.getLogger(__name__)

SMALL = Sizes(videos=6, frames=32, width=64, height=48, img_dim=64, backbone="resnet18", batch_size=32)
REFUSE_SECONDS, REFUSE_MIB = 0.5, 150  # issue targets on the 2-core machine
EMBED_MARGIN, PREDICT_MARGIN = 1.5, 1.0  # seconds over the bare imports the job needs
MARKS = re.compile(r"embed: start-up, the stage began at Unix time ([0-9.]+); seconds from there: (.*)")


def bench_startup(cfg: Config, sizes: Sizes, work: Path, command: str) -> list[dict]:
    """Rows 11-refuse, 11-embed and 11-predict (module docstring)."""
    small = synthetic_dataset(cfg, SMALL, work / "data", groups=3, clips=1)  # 2 classes x 3 groups: 6 videos
    config = work / "small.yaml"
    config.write_text(yaml.safe_dump(small.to_dict()))
    video = str(_first_video(small))
    checkpoint = _checkpoint(small, work)
    repeats = max(1, sizes.repeats)
    bare = {name: _median([_process(["-c", f"import {name}"])[0] for _ in range(repeats)])
            for name in ("torch", "torch, torchvision, cv2, h5py", "torch, torchvision, cv2")}
    refusals = {
        "embed": ["embed", "-c", str(config), "--set", "embed.bogus=1"],
        "train": ["train", "-c", str(config), "--set", "train.bogus=1"],
        "predict": ["predict", video, "--checkpoint", str(work / "missing.pt")],
    }
    refused = {name: _median([_process(_actrec(args), expect=2)[0] for _ in range(repeats)])
               for name, args in refusals.items()}
    embeds = [_embed_run(config, work / f"embed-{rep}.h5") for rep in range(repeats)]
    predicts = [_process(_actrec(["predict", video, "--checkpoint", str(checkpoint),
                                  "--json", str(work / f"predict-{rep}.json")]))[0] for rep in range(repeats)]
    return [_refuse_row(refused, bare["torch"], command), _embed_row(embeds, bare["torch, torchvision, cv2, h5py"],
                                                                     command),
            _predict_row(_median(predicts), bare["torch, torchvision, cv2"], command)]


def _refuse_row(refused: dict, bare: dict, command: str) -> dict:
    worst = max(refused.values(), key=lambda m: m["seconds"])
    met = all(m["seconds"] < REFUSE_SECONDS and m["mib"] < REFUSE_MIB for m in refused.values())
    value = ", ".join(f"{name} {m['seconds']:.2f} s / {m['mib']:.0f} MiB" for name, m in refused.items())
    return row("11-refuse", "start-up: a refused setting answers before any stage import",
               f"{value}; `import torch` {bare['seconds']:.2f} s / {bare['mib']:.0f} MiB",
               worst["seconds"] / bare["seconds"], f"< {REFUSE_SECONDS} s and < {REFUSE_MIB} MiB", met, command,
               refused=refused, bare_import_torch=bare)


def _embed_row(runs: list[dict], bare: dict, command: str) -> dict:
    median = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    over = median["seconds"] - bare["seconds"]
    steps = median["steps"]
    split = ", ".join(f"{name} {seconds:.2f}" for name, seconds in steps.items())
    return row("11-embed", "start-up: a whole small embed (192 frames, resnet18 @ 64, random init)",
               f"{median['seconds']:.2f} s vs {bare['seconds']:.2f} s bare imports (+{over:.2f} s); {split}",
               median["seconds"] / bare["seconds"], f"within {EMBED_MARGIN} s of the imports", over <= EMBED_MARGIN,
               command, runs=runs, bare_imports=bare, imports="torch, torchvision, cv2, h5py")


def _predict_row(run: dict, bare: dict, command: str) -> dict:
    over = run["seconds"] - bare["seconds"]
    return row("11-predict", "start-up: a one-video predict (32 frames)",
               f"{run['seconds']:.2f} s / {run['mib']:.0f} MiB vs {bare['seconds']:.2f} s bare imports "
               f"(+{over:.2f} s)", run["seconds"] / bare["seconds"], f"within {PREDICT_MARGIN} s of the imports",
               over <= PREDICT_MARGIN, command, predict=run, bare_imports=bare, imports="torch, torchvision, cv2")


def _embed_run(config: Path, cache: Path) -> dict:
    """One ``actrec -v embed`` into a fresh cache: its wall time and its steps, as seconds since the process began
    (``command``: the interpreter, the CLI and the config check; then the stage's own marks up to ``finished``;
    ``exit``: the process's end, after the decode workers stop and the interpreter exits)."""
    measured, output = _process(_actrec(["-v", "embed", "-c", str(config), "--set", f"cache.path={cache}"]))
    found = MARKS.search(output)
    marks = {name: float(at) for name, at in (part.rsplit(" ", 1) for part in found.group(2).split(", "))}
    before = float(found.group(1)) - measured.pop("began")  # the interpreter, the CLI and the config check
    steps = {"command": before, **{name: before + at for name, at in marks.items()}, "exit": measured["seconds"]}
    return {**measured, "steps": {name: round(at, 3) for name, at in steps.items()}}


# Runs the measured process and reports its wall time, start time and peak memory. A process forked from this one
# would count this process's own memory (torch loaded) in its peak until it execs, so a small interpreter that
# has imported nothing heavy starts it instead.
LAUNCHER = """
import json, resource, subprocess, sys, time
began = time.time()
done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
seconds = time.time() - began
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
sys.stdout.write(done.stdout.decode(errors="replace"))
sys.stdout.write(json.dumps({"seconds": seconds, "mib": peak, "began": began, "rc": done.returncode}))
"""


def _process(args: list[str], expect: int = 0) -> tuple[dict, str]:
    """Run ``python ARGS`` in a fresh process: its wall seconds, its peak memory (MiB: the largest of it and the
    processes it waited for, such as decode workers) and ``began`` (Unix time); its output."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    output, report = done.stdout[:done.stdout.rindex('{"seconds"')], done.stdout[done.stdout.rindex('{"seconds"'):]
    measured = json.loads(report)
    if measured.pop("rc") != expect:
        raise RuntimeError(f"bench row 11: `python {' '.join(args)}` did not exit {expect}:\n{output[-2000:]}")
    return {key: round(value, 3) for key, value in measured.items()}, output


def _actrec(args: list[str]) -> list[str]:
    return ["-m", "pipeline", *args]


def _median(runs: list[dict]) -> dict:
    return {"seconds": round(statistics.median(r["seconds"] for r in runs), 3),
            "mib": round(statistics.median(r["mib"] for r in runs), 1)}


def _first_video(cfg: Config) -> Path:
    return sorted(Path(cfg.data.videos).rglob("*.avi"))[0]


def _checkpoint(cfg: Config, work: Path) -> Path:
    """A one-epoch run on the small dataset's cache, for the predict row."""
    from pipeline.embed.run import embed
    from pipeline.sequence.train import train

    trained = derive(cfg, {"cache.path": str(work / "train.h5"), "run.dir": str(work / "run"), "train.epochs": 1,
                           "train.sequence_length": 8})
    embed(trained)
    train(trained)
    return work / "run" / "checkpoints" / "best.pt"
