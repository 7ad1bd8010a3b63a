"""The file layouts other tools keep features in, and reading and writing one video's arrays in them.

``video_features`` (the layout of v-iashin/video_features' ``on_extraction=save_numpy``): one flat folder holding,
per video, ``STEM_KEY.npy`` (features ``[T, D]``; KEY is the feature type, e.g. ``resnet``, ``clip``, ``i3d``),
``STEM_fps.npy`` (a scalar: rows per second) and ``STEM_timestamps_ms.npy`` (``[T]``: each row's time in ms);
STEM is the video's file name without its extension.

``mmaction2`` (the layout of MMAction2's ``tools/misc/clip_feature_extraction.py --long-video-mode``): per video
``NAME.pkl``, a pickled ndarray ``[T, D]`` (one row per clip), NAME being the video list's entry with its class
folder; beside them ``video_list.txt`` (``NAME LABEL`` per line).

Both: ``classes.txt`` (one class name per line, in label order), written by export and checked by import when
present. Pickles are read with an unpickler that rebuilds numpy arrays and nothing else, so a file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ActrecError
from pipeline.inputs import VIDEO_SUFFIXES

LAYOUTS = ("video_features", "mmaction2")
META_KEYS = ("fps", "timestamps_ms")  # video_features' per-video files beside the features
CLASSES_FILE = "classes.txt"
VIDEO_LIST = "video_list.txt"


def default_key(backbone: str) -> str:
    """The video_features feature type for a cache of ``backbone``: its own names where it has the model
    (``resnet`` for any ResNet, ``clip`` for OpenCLIP), else the model's name."""
    library, _, model = backbone.rpartition("/")
    if library == "open_clip":
        return "clip"
    base = re.split(r"[:.]", model)[0]
    return "resnet" if re.fullmatch(r"resnet\d+", base) else re.sub(r"[^\w-]", "_", base)


@dataclass(frozen=True)
class VideoFiles:
    """Where one video's arrays are: its features and, for video_features, its fps and timestamps (if any)."""

    features: Path
    fps: Path | None = None
    timestamps: Path | None = None


def files_for(layout: str, folder: Path, name: str, key: str) -> VideoFiles:
    """The files video ``name`` (``Class/stem``) has in ``layout`` under ``folder``."""
    if layout == "mmaction2":
        return VideoFiles(folder / f"{name}.pkl")
    stem = name.rsplit("/", 1)[-1]
    return VideoFiles(folder / f"{stem}_{key}.npy", folder / f"{stem}_fps.npy", folder / f"{stem}_timestamps_ms.npy")


def video_key(layout: str, name: str) -> str:
    """How ``layout`` tells video ``name`` (``Class/stem``) apart: its whole name, or (video_features) its stem."""
    return name if layout == "mmaction2" else name.rsplit("/", 1)[-1]


def found_files(layout: str, folder: Path, key: str | None) -> dict[str, VideoFiles]:
    """Every video's files under ``folder`` (subfolders too), by ``video_key``; two files for one video are one
    line naming both. MMAction2's names may keep the video's extension (``v_x.avi.pkl``)."""
    found: dict[str, VideoFiles] = {}
    suffix = ".pkl" if layout == "mmaction2" else f"_{key}.npy"
    for path in sorted(p for p in folder.rglob(f"*{suffix}") if p.is_file()):
        if layout == "mmaction2":
            name = path.relative_to(folder).as_posix()[:-len(suffix)]
            stem, ext = os.path.splitext(name)
            files, name = VideoFiles(path), stem if ext.lower() in VIDEO_SUFFIXES else name
        else:
            name = path.name[:-len(suffix)]
            files = VideoFiles(path, path.with_name(f"{name}_fps.npy"), path.with_name(f"{name}_timestamps_ms.npy"))
        if name in found:
            raise ActrecError(f"{found[name].features} and {path}: two files for one video ({name}); keep one")
        found[name] = files
    return found


def save_array(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` or as a pickled ndarray (``.pkl``), by the name's suffix."""
    with open(path, "wb") as f:
        if path.suffix == ".pkl":
            pickle.dump(np.ascontiguousarray(array), f, protocol=4)
        else:
            np.save(f, array, allow_pickle=False)


def load_array(path: Path) -> np.ndarray:
    """An ``.npy`` or pickled-ndarray ``.pkl`` file's array; anything else is one line naming the file."""
    try:
        if path.suffix == ".pkl":
            with open(path, "rb") as f:
                value = _ArrayUnpickler(f).load()
        else:
            value = np.load(path, allow_pickle=False)
    except ActrecError:
        raise
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ActrecError(f"{path}: not a readable {path.suffix} array ({exc})") from None
    if not isinstance(value, np.ndarray):
        raise ActrecError(f"{path} holds a {type(value).__name__}, not a numpy array")
    return value


# What pickling an ndarray refers to (numpy 1 and 2 module names, protocols 2 to 5).
_ARRAY_GLOBALS = {(module, name) for core in ("numpy.core", "numpy._core")
                  for module, name in ((f"{core}.multiarray", "_reconstruct"), (f"{core}.multiarray", "scalar"),
                                       (f"{core}.numeric", "_frombuffer"))} | {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_GLOBALS:
            raise ActrecError(f"{Path(getattr(self, '_path', '?'))}: the pickle refers to {module}.{name}; only "
                              f"numpy arrays are read from a .pkl (nothing in it is run)")
        return super().find_class(module, name)

    def __init__(self, f: io.BufferedReader):
        super().__init__(f)
        self._path = f.name
