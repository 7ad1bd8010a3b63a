"""UCF-101 split files -> lists of videos with labels and groups.

The official files (``classInd.txt``, ``trainlistNN.txt``, ``testlistNN.txt``) are
parsed as they really are: CRLF line ends, trailing blank lines, 1-based labels on
trainlist lines only. Labels always come from ``classInd.txt`` (sorted folder names
would swap Hammering/HammerThrow and JumpingJack/JumpRope).

A *group* is one (class, gXX) pair: the clips of one actor and scene. The official
splits keep every group on one side; the validation subset is carved from the
training list by whole groups, so no stage ever selects on the test list.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from pipeline.errors import ActrecError
from pipeline.fileio import write_atomic
from pipeline.inputs.acquire import fetch
from pipeline.inputs.download import find_rar_tool, has_content, unpack_rar, unpack_zip
from pipeline.inputs.formats import FORMATS
from pipeline.inputs.splits import (  # noqa: F401  (VideoItem, Split, carve_validation, frames_dir: re-exported)
    Split,
    VideoItem,
    carve_validation,
    check_disjoint,
    draw_groups,
    every_video_of,
    files_signature,
    finish_split,
    frames_dir,
    groups_of,
    hold_out,
    read_class_index,
    read_split_list,
    sorted_unique,
)
from pipeline.schema import key

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger(__name__)

NAME = "ucf101"
OFFICIAL_SPLITS = (1, 2, 3)
SPLITS = (*OFFICIAL_SPLITS, "random", "random-groups")
URLS = {"videos": "https://www.crcv.ucf.edu/data/UCF101/UCF101.rar",
        "splits": "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip"}
_VIDEO_STEM = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c(?P<clip>\d+)$")
MISSING_HINT = "Check data.videos, or run `actrec download` (UCF-101) or `actrec synth` (synthetic dataset)"


@dataclass
class UCF101Config:
    split: Union[int, str] = key(1, "official split 1, 2 or 3; 'random' (the seed's leaky 20% clip split) or "
                                 "'random-groups' (random but no group on both sides)", choices=list(SPLITS),
                                 affects="test list")
    random_test_fraction: float = key(0.2, "test share for the random splits", min=0.01, max=0.9,
                                      affects="test list")


FORMATS.register("ucf101", UCF101Config, __name__, "UCF-101: classInd.txt, trainlistNN.txt, testlistNN.txt")


def acquire(cfg: Config) -> None:
    """Download the split zip and UCF101.rar into download.dest; unpack them into data.splits and data.videos."""
    jobs = [("splits", Path(cfg.data.splits), unpack_zip), ("videos", Path(cfg.data.videos), unpack_rar)]
    if not has_content(Path(cfg.data.videos)):
        find_rar_tool()  # fail before a 6.5 GB download, not after it
    for kind, target, unpack in jobs:
        if has_content(target):
            log.info(f"{target}: already unpacked, skipping its download")
            continue
        unpack(fetch(cfg, kind, lambda part, unpack=unpack, target=target: unpack(part, target)), target)
    classes = [p for p in Path(cfg.data.videos).iterdir() if p.is_dir()]
    log.info(f"UCF-101 ready: {sum(len(list(c.glob('*.avi'))) for c in classes):,} videos in {len(classes)} class "
             f"folders under {cfg.data.videos}; split files in {cfg.data.splits}")


def write_synthetic_splits(splits: Path, names: list[str], entries: list[tuple[int, int, int]],
                           held_out: dict[int, set[int]]) -> None:
    """classInd.txt, trainlistNN.txt and testlistNN.txt of videos ``entries`` ((label, group, clip)) in the
    official format (CRLF, 1-based labels); ``held_out[k]``: the test groups of split k."""
    write_atomic(splits / "classInd.txt", _crlf([f"{label + 1} {name}" for label, name in enumerate(names)]))
    for k, groups in held_out.items():
        rows = [(f"{names[label]}/v_{names[label]}_g{group:02d}_c{clip:02d}.avi", label, group in groups)
                for label, group, clip in entries]
        write_atomic(splits / f"trainlist{k:02d}.txt", _crlf([f"{path} {label + 1}" for path, label, test in rows
                                                               if not test]))
        write_atomic(splits / f"testlist{k:02d}.txt", _crlf([path for path, _, test in rows if test]))


def _crlf(lines: list[str]) -> str:
    return "".join(line + "\r\n" for line in lines)


def load_split(cfg: Config, check_videos: bool = True) -> Split:
    """The configured split (``cfg.data.split``) with its validation groups carved from the training list."""
    split = cfg.data.split
    splits_dir = Path(cfg.data.splits)
    class_names = read_class_index(_require(splits_dir / "classInd.txt"))
    if split in OFFICIAL_SPLITS:
        training, test = _official_lists(cfg, split, class_names, check_videos)
    else:
        training, test = _random_split(cfg, class_names, check_videos, by_group=split == "random-groups")
    result = finish_split(str(split), class_names, training, test, cfg)
    leaked = result.leaked_groups
    if split == "random":
        log.warning(f"split 'random' draws {cfg.data.random_test_fraction:.0%} of the clips at random, so "
                    f"clips of one group (same actor and scene) sit on both sides: {leaked} of "
                    f"{len({item.group for item in test})} test group numbers also appear in train and test "
                    f"accuracy is inflated. "
                    f"Use split 1, 2, 3 or 'random-groups' for honest numbers.")
    return result


def embed_items(cfg: Config, check_videos: bool = True) -> tuple[list[str], list[VideoItem]]:
    """Class names and every video stage one must embed, sorted by name, each once.

    ``embed.splits='configured'``: train, val and test of ``data.split``; ``'all'``: the union of the
    official splits whose trainlist and testlist files are present.
    """
    if cfg.embed.splits == "configured":
        split = load_split(cfg, check_videos)
        return split.class_names, sorted_unique(split.train + split.val + split.test)
    splits_dir = Path(cfg.data.splits)
    class_names = read_class_index(_require(splits_dir / "classInd.txt"))
    present = [k for k in OFFICIAL_SPLITS
               if (splits_dir / f"trainlist{k:02d}.txt").is_file() and (splits_dir / f"testlist{k:02d}.txt").is_file()]
    if not present:
        raise ActrecError(f"{splits_dir}: no official split files (trainlist01.txt + testlist01.txt, ...) for "
                          f"embed.splits=all. Run `actrec synth` or `actrec download`, or set data.splits")
    return class_names, every_video_of(_official_lists(cfg, k, class_names, check_videos) for k in present)


def split_files_signature(cfg: Config) -> str:
    """A hash of the split files (and the synthetic generator's settings): caches made from other lists differ."""
    splits = Path(cfg.data.splits)
    return files_signature(splits, [p.name for p in splits.glob("*.txt")
                                    if p.name == "classInd.txt" or p.name.startswith(("trainlist", "testlist"))])


def _official_lists(cfg: Config, k: int, class_names: list[str], check_videos: bool):
    splits_dir = Path(cfg.data.splits)
    lookup = _class_lookup(class_names)

    def parse(entry: str, where: str) -> VideoItem:
        return _parse_video(entry, lookup, class_names, cfg.data.videos, where)

    training, test = (read_split_list(_require(splits_dir / f"{kind}{k:02d}.txt"), class_names, parse, check_videos,
                                      MISSING_HINT) for kind in ("trainlist", "testlist"))
    check_disjoint(training, test, f"{splits_dir}: trainlist{k:02d}.txt and testlist{k:02d}.txt")
    return training, test


def _random_split(cfg: Config, class_names: list[str], check_videos: bool, by_group: bool):
    """The random splits, drawn over every video of split 1 (train + test lists cover the whole dataset)."""
    training, test = _official_lists(cfg, 1, class_names, check_videos)
    pool = sorted_unique(training + test)
    rng = np.random.default_rng([cfg.data.seed, 2])
    fraction = cfg.data.random_test_fraction
    if by_group:
        held_out = hold_out(pool, fraction, rng)
        is_test = [item.name in held_out for item in pool]
    else:
        chosen = set(rng.permutation(len(pool))[:round(fraction * len(pool))].tolist())
        is_test = [i in chosen for i in range(len(pool))]
    return ([item for item, t in zip(pool, is_test) if not t], [item for item, t in zip(pool, is_test) if t])


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ActrecError(f"split file {path} not found. Run `actrec synth` (synthetic dataset) or "
                          f"`actrec download` (UCF-101), or point data.splits at the folder that holds it")
    return path


def _class_lookup(class_names: list[str]) -> dict[str, int]:
    """Exact names, plus lower-cased ones where that is unambiguous (``HandStandPushups`` files)."""
    lookup = {name.lower(): label for label, name in enumerate(class_names)}
    lookup.update({name: label for label, name in enumerate(class_names)})
    return lookup


def _parse_video(entry: str, lookup: dict[str, int], class_names: list[str], videos: str | Path,
                 where: str) -> VideoItem:
    relative = Path(entry.replace("\\", "/"))
    match = _VIDEO_STEM.match(relative.stem)
    if len(relative.parts) != 2 or not relative.suffix or match is None:
        raise ActrecError(f"{where}: malformed video entry {entry!r}; expected 'Class/v_Class_gXX_cYY.avi'")
    folder = relative.parts[0]
    label = lookup.get(folder, lookup.get(folder.lower()))
    if label is None:
        raise ActrecError(f"{where}: class {folder!r} of {entry!r} is not in classInd.txt")
    # UCF-101's HandstandPushups/ folder holds v_HandStandPushups_* files: compare case-insensitively.
    if match["cls"].lower() != class_names[label].lower():
        raise ActrecError(f"{where}: file {relative.name!r} does not belong to folder {folder!r} "
                          f"(expected v_{class_names[label]}_gXX_cYY)")
    name = relative.with_suffix("").as_posix()
    return VideoItem(name=name, path=Path(videos) / relative, label=label,
                     group=int(match["group"]), clip=int(match["clip"]))

