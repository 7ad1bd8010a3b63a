"""Your own videos: a folder per class (``data.videos/<class>/*.avi|mp4|mkv|mov|webm``) -> labelled video lists.

Classes are the sorted folder names. ``data.split=auto`` draws a seeded, stratified train/test
split (``data.test_fraction`` of each class; whole groups when ``data.group_pattern`` names
them) once, and writes it into ``data.splits`` as UCF-101-format files (classInd.txt,
trainlist01.txt, testlist01.txt): later runs read those files, so the split is fixed,
inspectable and can be edited. ``data.split=1`` reads such files written by you.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from pipeline.errors import ActrecError
from pipeline.inputs import VIDEO_SUFFIXES
from pipeline.inputs.formats import FORMATS
from pipeline.inputs.splits import (
    Split,
    VideoItem,
    check_disjoint,
    check_entry_name,
    files_signature,
    finish_split,
    hold_out,
    read_class_index,
    read_split_list,
    sorted_unique,
    video_stem_key,
    write_ucf_lists,
)
from pipeline.schema import key

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger(__name__)

NAME = "folder"
SPLITS = ("auto", 1)
URLS: dict[str, str] = {}  # your own videos: nothing to download
SPLIT_FILES = ("classInd.txt", "trainlist01.txt", "testlist01.txt")


@dataclass
class FolderConfig:
    split: Union[int, str] = key(1, "'auto' (drawn once, written to data.splits) or 1 (your own "
                                 "trainlist01.txt/testlist01.txt)", choices=list(SPLITS), affects="test list")
    test_fraction: float = key(0.3, "data.split=auto: share of each class's videos (or groups) drawn for the "
                                    "test list", min=0.01, max=0.9)
    group_pattern: str = key("", "data.split=auto: regex with one group that names a video's group (same actor or "
                                 "scene), e.g. '_g(\\d+)_'; a group stays on one side. Empty: every video is "
                                 "its own group")


FORMATS.register("folder", FolderConfig, __name__, "a folder of videos per class")


def acquire(cfg: Config) -> None:
    """Nothing to fetch: the videos in data.videos are the dataset."""
    log.info("data.format=folder: your videos in %s are the dataset; nothing to download", cfg.data.videos)


def write_synthetic_splits(splits: Path, names: list[str], entries, held_out) -> None:
    """None: data.split=auto draws the split on first use, as for your own videos."""


def group_regex(cfg: Config) -> re.Pattern | None:
    """data.group_pattern compiled, or None when empty; refused unless it has exactly one group."""
    pattern = cfg.data.group_pattern
    if not pattern:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ActrecError(f"data.group_pattern={pattern!r} is not a valid regular expression ({exc})") from exc
    if regex.groups != 1:
        raise ActrecError(f"data.group_pattern={pattern!r} has {regex.groups} groups; it needs exactly one, the part "
                          f"of a file name that names its group, e.g. '_g(\\d+)_'")
    return regex


def group_of(name: str, regex: re.Pattern | None, where: str) -> int:
    """The group number of a video (``Class/stem``): from data.group_pattern, else one group per video."""
    if regex is None:
        return video_stem_key(name)
    match = regex.search(name.split("/", 1)[1])
    if match is None:
        raise ActrecError(f"{where}: {name!r} does not match data.group_pattern={regex.pattern!r}; fix the pattern "
                          f"or rename the file")
    text = match.group(1)
    return int(text) if text.isdigit() else video_stem_key(text)


def scan_videos(videos: Path, regex: re.Pattern | None) -> tuple[list[str], list[VideoItem]]:
    """Sorted class names and every video under ``videos``; one clear error for anything else found there."""
    if not videos.is_dir():
        raise ActrecError(f"data.videos={videos}: no such folder; put your videos there, a folder per class")
    classes, items = [], []
    for entry in sorted(p for p in videos.iterdir() if not p.name.startswith(".")):
        if not entry.is_dir():
            raise ActrecError(f"{entry}: a file directly in data.videos; videos go into a folder per class "
                              f"({videos}/<class>/<video>), move it into one")
        if re.search(r"\s", entry.name):
            raise ActrecError(f"{entry}: class folder name contains whitespace, which classInd.txt cannot hold; "
                              f"rename the folder")
        found = _class_videos(entry, len(classes), regex)
        classes.append(entry.name)
        items += found
    if not classes:
        raise ActrecError(f"data.videos={videos} has no class folders; put your videos in {videos}/<class>/")
    return classes, items


def _class_videos(folder: Path, label: int, regex: re.Pattern | None) -> list[VideoItem]:
    items, stems = [], {}
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if path.is_dir():
            raise ActrecError(f"{path}: a folder inside class folder {folder.name!r}; videos go directly into "
                              f"{folder}/, move them up or remove the folder")
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ActrecError(f"{path}: not a video (expected {', '.join(VIDEO_SUFFIXES)}); move it out of "
                              f"data.videos")
        name = f"{folder.name}/{path.stem}"
        check_entry_name(name, str(path))
        if path.stem in stems:
            raise ActrecError(f"{path}: same name as {stems[path.stem].name} in class {folder.name!r} (a video is "
                              f"known by class and name, without extension); rename one of them")
        stems[path.stem] = path
        items.append(VideoItem(name=name, path=path, label=label, group=group_of(name, regex, str(path)), clip=0))
    if not items:
        raise ActrecError(f"{folder}: class folder with no videos ({', '.join(VIDEO_SUFFIXES)}); add videos or "
                          f"remove the folder")
    return items


def draw_split(cfg: Config, items: list[VideoItem]) -> tuple[list[VideoItem], list[VideoItem]]:
    """A seeded (training, test) split with ``hold_out``: ``data.test_fraction`` of the group numbers (or, without
    ``data.group_pattern``, of each class's videos) go to test."""
    held_out = hold_out(items, cfg.data.test_fraction, np.random.default_rng([cfg.data.seed, 3]))
    return [item for item in items if item.name not in held_out], [item for item in items if item.name in held_out]


def write_auto_split(cfg: Config) -> None:
    """Scan data.videos, draw the split and write it to data.splits; all checks run before anything is written."""
    splits = Path(cfg.data.splits)
    regex = group_regex(cfg)
    names, items = scan_videos(Path(cfg.data.videos), regex)
    training, test = draw_split(cfg, items)
    untested = sorted({names[item.label] for item in items} - {names[item.label] for item in test})
    splits.mkdir(parents=True, exist_ok=True)
    write_ucf_lists(splits, names, training, test)
    log.info("data.split=auto: %d classes, %d training and %d test videos (test_fraction %.2f, seed %d%s) "
             "written to %s; later runs read these files (delete them to draw again)", len(names), len(training),
             len(test), cfg.data.test_fraction, cfg.data.seed,
             f", groups by {cfg.data.group_pattern!r}" if regex else "", splits)
    if untested:
        log.warning("classes with a single %s have no test videos: %s", "group" if regex else "video",
                    ", ".join(untested))


def read_lists(cfg: Config, check_videos: bool) -> tuple[list[str], list[VideoItem], list[VideoItem]]:
    """Class names, training and test videos of the UCF-101-format files in data.splits."""
    splits = Path(cfg.data.splits)
    for name in SPLIT_FILES[1:]:
        if not (splits / name).is_file():
            raise ActrecError(f"split file {splits / name} not found. Set data.split=auto to draw a split, or write "
                              f"trainlist01.txt and testlist01.txt (UCF-101 format: 'Class/video.mp4 [label]')")
    names = (read_class_index(splits / "classInd.txt") if (splits / "classInd.txt").is_file()
             else scan_class_names(Path(cfg.data.videos)))
    regex, lookup, videos = group_regex(cfg), {n: i for i, n in enumerate(names)}, Path(cfg.data.videos)

    def parse(entry: str, where: str) -> VideoItem:
        relative = Path(entry.replace("\\", "/"))
        if len(relative.parts) != 2 or relative.suffix.lower() not in VIDEO_SUFFIXES:
            raise ActrecError(f"{where}: malformed video entry {entry!r}; expected 'Class/video.ext' with ext one of "
                              f"{', '.join(VIDEO_SUFFIXES)}")
        if relative.parts[0] not in lookup:
            raise ActrecError(f"{where}: class {relative.parts[0]!r} of {entry!r} is not a class ({splits}/"
                              f"classInd.txt, or the folders of data.videos)")
        name = relative.with_suffix("").as_posix()
        return VideoItem(name=name, path=videos / relative, label=lookup[relative.parts[0]],
                         group=group_of(name, regex, where), clip=0)

    hint = "Check data.videos; if the videos changed, delete the split files to draw the split again"
    training, test = (read_split_list(splits / f, names, parse, check_videos, hint) for f in SPLIT_FILES[1:])
    check_disjoint(training, test, f"{splits}: trainlist01.txt and testlist01.txt")
    return names, training, test


def scan_class_names(videos: Path) -> list[str]:
    """The sorted class folder names of data.videos (the classes when classInd.txt is absent)."""
    if not videos.is_dir():
        raise ActrecError(f"data.videos={videos}: no such folder, and no classInd.txt in data.splits to name the "
                          f"classes")
    return sorted(p.name for p in videos.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_split(cfg: Config, check_videos: bool = True) -> Split:
    """The train/test lists of data.splits (drawn and written first when data.split=auto and they are absent)."""
    if cfg.data.split == "auto" and not all((Path(cfg.data.splits) / name).is_file() for name in SPLIT_FILES):
        write_auto_split(cfg)
    names, training, test = read_lists(cfg, check_videos)
    return finish_split(str(cfg.data.split), names, training, test, cfg)


def embed_items(cfg: Config, check_videos: bool = True) -> tuple[list[str], list[VideoItem]]:
    """Class names and every video of the split (the folder format has one split: embed.splits makes no odds)."""
    split = load_split(cfg, check_videos)
    return split.class_names, sorted_unique(split.train + split.val + split.test)


def split_files_signature(cfg: Config) -> str:
    splits = Path(cfg.data.splits)
    names = [name for name in SPLIT_FILES if (splits / name).is_file()]
    return files_signature(splits, names, {"format": "folder", "group_pattern": cfg.data.group_pattern})
