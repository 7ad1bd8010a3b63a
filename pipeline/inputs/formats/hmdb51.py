"""HMDB-51 split files -> lists of videos with labels.

HMDB-51 ships one file per class and split, ``<class>_test_split<k>.txt``, with lines
``<video>.avi <flag>`` (1 = train, 2 = test, 0 = not used in this split); the videos lie in
``data.videos/<class>/<video>.avi``. There is no classInd.txt: the class order is the sorted
class names. There are no groups either (no actor/scene ids in the names), so every video
is its own group and validation is a seeded random share of each class's training list.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from pipeline.errors import ActrecError
from pipeline.fileio import write_atomic
from pipeline.inputs.acquire import archive_path, fetch
from pipeline.inputs.download import find_rar_tool, has_content, unpack_rar
from pipeline.inputs.formats import FORMATS
from pipeline.inputs.splits import (
    Split,
    VideoItem,
    check_disjoint,
    check_entry_name,
    check_listed_once,
    every_video_of,
    files_signature,
    finish_split,
    sorted_unique,
    split_lines,
    video_stem_key,
)
from pipeline.schema import key

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger(__name__)

NAME = "hmdb51"
OFFICIAL_SPLITS = (1, 2, 3)
SPLITS = OFFICIAL_SPLITS
URLS = {"videos": "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar",
        "splits": "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar"}
_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<k>[123])\.txt$")
TRAIN, TEST, UNUSED = "1", "2", "0"


@dataclass
class HMDB51Config:
    split: Union[int, str] = key(1, "official split 1, 2 or 3", choices=list(SPLITS), affects="test list")


FORMATS.register("hmdb51", HMDB51Config, __name__, "HMDB-51: Class_test_splitN.txt")


def acquire(cfg: Config) -> None:
    """Download and unpack HMDB-51's split archive into data.splits and its 51 class archives into data.videos.

    The video archive is a RAR of 51 RARs, one per class; each class archive unpacks on its own, so an
    interrupted run resumes class by class."""
    splits, videos = Path(cfg.data.splits), Path(cfg.data.videos)
    archive = archive_path(cfg, "videos")
    done = archive.with_name(archive.name + ".unpacked")
    if not (has_content(splits) and done.exists()):
        find_rar_tool()  # fail before a 2 GB download, not after it
    if has_content(splits):
        log.info("%s: already unpacked, skipping its download", splits)
    else:
        unpack_rar(fetch(cfg, "splits", lambda part: unpack_rar(part, splits)), splits)
    if done.exists():
        log.info("%s: all class archives already unpacked (%s), skipping", videos, done)
    else:
        inner = archive.with_name(archive.stem)
        _unpack_classes(fetch(cfg, "videos", lambda part: unpack_rar(part, inner)), inner, videos)
        write_atomic(done, "every class archive of this file is unpacked into data.videos\n")
    classes = sorted(p for p in videos.iterdir() if p.is_dir() and not p.name.startswith("."))
    log.info("HMDB-51 ready: %d videos in %d class folders under %s; split files in %s",
             sum(len(list(c.glob("*.avi"))) for c in classes), len(classes), videos, splits)


def _unpack_classes(archive: Path, inner: Path, videos: Path) -> None:
    """The outer RAR into ``inner``, then each class RAR into data.videos/<class>/."""
    unpack_rar(archive, inner)
    class_archives = sorted(inner.rglob("*.rar"))
    if not class_archives:
        raise ActrecError(f"{archive}: holds no per-class .rar archives (unpacked into {inner}); is "
                          f"download.videos_url HMDB-51's hmdb51_org.rar?")
    for class_archive in class_archives:
        unpack_rar(class_archive, videos / class_archive.stem)


def write_synthetic_splits(splits: Path, names: list[str], entries: list[tuple[int, int, int]],
                           held_out: dict[int, set[int]]) -> None:
    """``<class>_test_split<k>.txt`` as HMDB-51 ships them (``<video>.avi <flag>``, 1 train, 2 test) for videos
    ``entries`` ((label, group, clip)); ``held_out[k]``: the test groups of split k."""
    for k, groups in held_out.items():
        for label, name in enumerate(names):
            lines = [f"v_{name}_g{group:02d}_c{clip:02d}.avi {2 if group in groups else 1} "
                     for lab, group, clip in entries if lab == label]
            write_atomic(splits / f"{name}_test_split{k}.txt", "".join(line + "\n" for line in lines))


def class_names(splits_dir: Path) -> list[str]:
    """The sorted class names that have split files in ``splits_dir`` (HMDB-51 has no classInd.txt)."""
    if not splits_dir.is_dir():
        raise ActrecError(f"data.splits={splits_dir}: no such folder. Run `actrec download` (HMDB-51) or "
                          f"`actrec synth --format hmdb51`, or point data.splits at the folder of "
                          f"<class>_test_split<k>.txt files")
    names = sorted({m["cls"] for p in splits_dir.iterdir() if (m := _SPLIT_FILE.match(p.name))})
    if not names:
        raise ActrecError(f"{splits_dir}: no HMDB-51 split files (<class>_test_split1.txt, ...); run `actrec "
                          f"download` or point data.splits at the folder that holds them")
    return names


def read_split(cfg: Config, k: int, names: list[str], check_videos: bool) -> tuple[list[VideoItem], list[VideoItem]]:
    """(training, test) videos of split ``k`` over every class."""
    splits_dir = Path(cfg.data.splits)
    training, test = [], []
    for label, name in enumerate(names):
        path = splits_dir / f"{name}_test_split{k}.txt"
        if not path.is_file():
            raise ActrecError(f"{path} not found: class {name!r} has split files for other splits but not split "
                              f"{k}. Restore the file (re-run `actrec download`) or use another data.split")
        for item, flag in _read_class_file(path, label, Path(cfg.data.videos), check_videos):
            (training if flag == TRAIN else test).append(item)
    check_disjoint(training, test, f"{splits_dir} (split {k})")
    return training, test


def _read_class_file(path: Path, label: int, videos: Path, check_videos: bool):
    """(VideoItem, flag) for the lines of one class's split file whose flag is 1 (train) or 2 (test)."""
    cls = _SPLIT_FILE.match(path.name)["cls"]
    seen: dict[str, int] = {}
    for lineno, line in split_lines(path):
        where = f"{path}:{lineno}"
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or parts[1] not in (TRAIN, TEST, UNUSED) or "/" in parts[0] or "\\" in parts[0]:
            raise ActrecError(f"{where}: malformed line {line!r}; expected '<video>.avi <flag>' with flag 0 "
                              f"(unused), 1 (train) or 2 (test)")
        name = f"{cls}/{Path(parts[0]).stem}"
        check_entry_name(name, where)
        item = VideoItem(name=name, path=videos / cls / parts[0], label=label, group=video_stem_key(name), clip=0)
        check_listed_once(item, seen, lineno, where, parts[0])
        if parts[1] == UNUSED:
            continue
        if check_videos and not item.path.is_file():
            raise ActrecError(f"{where}: video {parts[0]!r} not found at {item.path}. Check data.videos, or run "
                              f"`actrec download` (HMDB-51) or `actrec synth --format hmdb51`")
        yield item, parts[1]


def load_split(cfg: Config, check_videos: bool = True) -> Split:
    """Split ``data.split`` (1, 2 or 3) with a random validation share carved from its training list."""
    names = class_names(Path(cfg.data.splits))
    training, test = read_split(cfg, cfg.data.split, names, check_videos)
    return finish_split(str(cfg.data.split), names, training, test, cfg)


def embed_items(cfg: Config, check_videos: bool = True) -> tuple[list[str], list[VideoItem]]:
    """Class names and the videos to embed: of the configured split, or of every split present (embed.splits)."""
    if cfg.embed.splits == "configured":
        split = load_split(cfg, check_videos)
        return split.class_names, sorted_unique(split.train + split.val + split.test)
    splits_dir = Path(cfg.data.splits)
    names = class_names(splits_dir)
    present = [k for k in OFFICIAL_SPLITS if (splits_dir / f"{names[0]}_test_split{k}.txt").is_file()]
    return names, every_video_of(read_split(cfg, k, names, check_videos) for k in present)


def split_files_signature(cfg: Config) -> str:
    splits = Path(cfg.data.splits)
    names = [p.name for p in splits.glob("*.txt") if _SPLIT_FILE.match(p.name)] if splits.is_dir() else []
    return files_signature(splits, names, {"format": "hmdb51"})
