"""What a prediction is asked to read and write, checked before anything heavy loads (no torch, no backbone).

``actrec predict`` calls ``check_request`` before it imports the predictor, so a missing checkpoint or a bad
``--out`` is one line at once; ``predict`` calls it too.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ActrecError
from pipeline.fileio import check_output


def check_request(video, checkpoint, out: str | None, json_path: str | None,
                  hop: float | None) -> tuple[Path, str | None]:
    """The video (or folder) and the ``--out`` to write (a folder's default CSV filled in), after checking that
    the inputs exist and every output may be written."""
    video = Path(video)
    if not video.exists():
        raise ActrecError(f"{video}: no such video file or folder")
    if hop is not None and not 0 < hop <= 3600:  # predict.hop's range; also refuses inf and nan
        raise ActrecError(f"--hop {hop}: seconds between windows must be above 0 and at most 3600")
    allowed = (".csv",) if video.is_dir() else (".mp4", ".gif")
    if out is not None and Path(out).suffix.lower() not in allowed:
        what = "a folder of videos gives a CSV" if video.is_dir() else "the annotated video is an MP4 or a GIF"
        raise ActrecError(f"--out {out}: {what}; use a name ending in {' or '.join(allowed)}")
    if video.is_dir() and out is None:
        out = str(video / "predictions.csv")
    if not Path(checkpoint).is_file():
        raise ActrecError(f"--checkpoint {checkpoint}: no such file; pass a checkpoint written by `actrec train` "
                          f"(RUN_DIR/checkpoints/best.pt)")
    check_outputs({"the input video": video, "the checkpoint": Path(checkpoint)}, {"--out": out, "--json": json_path},
                  {"--out": allowed, "--json": (".json",)})
    return video, out


def check_outputs(inputs: dict, outputs: dict, suffixes: dict | None = None) -> None:
    """Before any work: no output may be an input (after links) or another output, and each passes fileio's
    output guard (its suffix; never a checkpoint, cache or config; never in a checkpoints folder; writable)."""
    given = {option: Path(path) for option, path in outputs.items() if path is not None}
    seen = {}
    for option, path in given.items():
        for what, source in inputs.items():
            if _same_file(path, source):
                raise ActrecError(f"{option} {path} is {what}; writing it would destroy it. Choose another name")
        key = path.resolve()
        if key in seen:
            raise ActrecError(f"{option} {path} is also {seen[key]}; give each output its own name")
        seen[key] = option
    for option, path in given.items():
        check_output(path, option, (suffixes or {}).get(option))


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return a.samefile(b)  # also hard links
    return a.resolve() == b.resolve()
