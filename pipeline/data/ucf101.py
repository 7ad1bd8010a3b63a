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

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ActrecError

log = logging.getLogger(__name__)

OFFICIAL_SPLITS = (1, 2, 3)
_VIDEO_STEM = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c(?P<clip>\d+)$")


@dataclass(frozen=True)
class VideoItem:
    name: str    # "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01": relative path without extension; the cache key
    path: Path   # the video file under data.videos
    label: int   # 0-based, from classInd.txt
    group: int   # XX of gXX
    clip: int    # YY of cYY


@dataclass
class Split:
    name: str                 # "1", "2", "3", "random", "random-groups"
    class_names: list[str]    # classInd.txt order; index = label
    train: list[VideoItem]    # training list minus the validation groups
    val: list[VideoItem]      # whole groups carved from the training list
    test: list[VideoItem]
    leaked_groups: int        # test (class, group) pairs that also appear in train; > 0 only for 'random'


def read_class_index(path: str | Path) -> list[str]:
    """Class names in classInd.txt order (``"1 ApplyEyeMakeup"`` -> index 0)."""
    path = Path(path)
    names = []
    for lineno, line in _split_lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ActrecError(f"{path}:{lineno}: malformed line {line!r}; expected '<index> <ClassName>'")
        if int(parts[0]) != len(names) + 1:
            raise ActrecError(f"{path}:{lineno}: class index {parts[0]} out of order; expected {len(names) + 1} "
                              f"(indices run 1, 2, 3, ... without gaps)")
        if parts[1] in names:
            raise ActrecError(f"{path}:{lineno}: class {parts[1]!r} listed twice")
        names.append(parts[1])
    if not names:
        raise ActrecError(f"{path}: no classes listed")
    return names


def read_split_list(path: str | Path, class_names: list[str], videos: str | Path,
                    check_videos: bool = True) -> list[VideoItem]:
    """The videos of one trainlistNN.txt or testlistNN.txt (a label, when present, must match the folder)."""
    path = Path(path)
    lookup = _class_lookup(class_names)
    items, seen = [], {}
    for lineno, line in _split_lines(path):
        where = f"{path}:{lineno}"
        parts = line.split()
        if len(parts) not in (1, 2):
            raise ActrecError(f"{where}: malformed line {line!r}; expected 'Class/v_Class_gXX_cYY.avi [label]'")
        item = _parse_video(parts[0], lookup, class_names, videos, where)
        if len(parts) == 2:
            _check_label(parts[1], item, class_names, where)
        if item.name in seen:
            raise ActrecError(f"{where}: {parts[0]!r} already listed on line {seen[item.name]}")
        if check_videos and not item.path.is_file():
            raise ActrecError(f"{where}: video {parts[0]!r} not found at {item.path}. Check data.videos, or "
                              f"run `actrec download` (UCF-101) or `actrec synth` (synthetic dataset)")
        seen[item.name] = lineno
        items.append(item)
    return items


def load_split(cfg, check_videos: bool = True) -> Split:
    """The configured split (``cfg.data.split``) with its validation groups carved from the training list."""
    split = cfg.data.split
    splits_dir = Path(cfg.data.splits)
    class_names = read_class_index(_require(splits_dir / "classInd.txt"))
    if split in OFFICIAL_SPLITS:
        training, test = _official_lists(cfg, split, class_names, check_videos)
    else:
        training, test = _random_split(cfg, class_names, check_videos, by_group=split == "random-groups")
    train, val = carve_validation(training, cfg.data.val_fraction, cfg.data.seed)
    leaked = len(_groups(test) & _groups(train))
    if split == "random":
        log.warning(f"split 'random' draws {cfg.data.random_test_fraction:.0%} of the clips at random, so "
                    f"clips of one group (same actor and scene) sit on both sides: {leaked} of "
                    f"{len(_groups(test))} test groups also appear in train and test accuracy is inflated. "
                    f"Use split 1, 2, 3 or 'random-groups' for honest numbers.")
    return Split(name=str(split), class_names=class_names, train=train, val=val, test=test, leaked_groups=leaked)


def embed_items(cfg, check_videos: bool = True) -> tuple[list[str], list[VideoItem]]:
    """Class names and every video stage one must embed, sorted by name, each once.

    ``embed.splits='configured'``: train, val and test of ``data.split``; ``'all'``: the union of the
    official splits whose trainlist and testlist files are present.
    """
    if cfg.embed.splits == "configured":
        split = load_split(cfg, check_videos)
        return split.class_names, _sorted_unique(split.train + split.val + split.test)
    splits_dir = Path(cfg.data.splits)
    class_names = read_class_index(_require(splits_dir / "classInd.txt"))
    present = [k for k in OFFICIAL_SPLITS
               if (splits_dir / f"trainlist{k:02d}.txt").is_file() and (splits_dir / f"testlist{k:02d}.txt").is_file()]
    if not present:
        raise ActrecError(f"{splits_dir}: no official split files (trainlist01.txt + testlist01.txt, ...) for "
                          f"embed.splits=all. Run `actrec synth` or `actrec download`, or set data.splits")
    items = []
    for k in present:
        training, test = _official_lists(cfg, k, class_names, check_videos)
        items += training + test
    return class_names, _sorted_unique(items)


def split_files_signature(cfg) -> str:
    """A hash of the split files (and the synthetic generator's settings): caches made from other lists differ."""
    from pipeline.config import stable_hash

    splits = Path(cfg.data.splits)
    contents = {p.name: p.read_text().replace("\r\n", "\n") for p in sorted(splits.glob("*.txt"))
                if p.name == "classInd.txt" or p.name.startswith(("trainlist", "testlist"))}
    manifest = splits / "synth.json"
    if manifest.is_file():
        contents["synth"] = json.loads(manifest.read_text()).get("settings")
    return stable_hash(contents) if contents else "no split files"


def frames_dir(cfg, item: VideoItem) -> Path:
    """Where the extracted JPEG frames of a video live: data.frames / Class / v_Class_gXX_cYY."""
    return Path(cfg.data.frames) / item.name


def carve_validation(training: list[VideoItem], fraction: float, seed: int) -> tuple[list[VideoItem], list[VideoItem]]:
    """Split a training list into (train, val) by whole groups, per class, so both keep every class.

    Each class gives ``round(fraction * its groups)`` groups (at least one when fraction > 0), always
    keeping one group for training.
    """
    val_groups = _draw_groups(training, fraction, np.random.default_rng([seed, 1]), keep_one=True)
    train = [item for item in training if (item.label, item.group) not in val_groups]
    val = [item for item in training if (item.label, item.group) in val_groups]
    return train, val


def _official_lists(cfg, k: int, class_names: list[str], check_videos: bool):
    splits_dir = Path(cfg.data.splits)
    training = read_split_list(_require(splits_dir / f"trainlist{k:02d}.txt"), class_names, cfg.data.videos,
                               check_videos)
    test = read_split_list(_require(splits_dir / f"testlist{k:02d}.txt"), class_names, cfg.data.videos,
                           check_videos)
    both = {item.name for item in training} & {item.name for item in test}
    if both:
        raise ActrecError(f"{splits_dir}: {len(both)} videos are in both trainlist{k:02d}.txt and "
                          f"testlist{k:02d}.txt (e.g. {min(both)}); the split files are inconsistent")
    return training, test


def _random_split(cfg, class_names: list[str], check_videos: bool, by_group: bool):
    """The random splits, drawn over every video of split 1 (train + test lists cover the whole dataset)."""
    training, test = _official_lists(cfg, 1, class_names, check_videos)
    pool = _sorted_unique(training + test)
    rng = np.random.default_rng([cfg.data.seed, 2])
    fraction = cfg.data.random_test_fraction
    if by_group:
        test_groups = _draw_groups(pool, fraction, rng, keep_one=True)
        is_test = [(item.label, item.group) in test_groups for item in pool]
    else:
        chosen = set(rng.permutation(len(pool))[:round(fraction * len(pool))].tolist())
        is_test = [i in chosen for i in range(len(pool))]
    return ([item for item, t in zip(pool, is_test) if not t], [item for item, t in zip(pool, is_test) if t])


def _draw_groups(items: list[VideoItem], fraction: float, rng: np.random.Generator, keep_one: bool) -> set:
    """A random ``fraction`` of each class's groups (at least one when fraction > 0), as (label, group) pairs."""
    per_class: dict[int, list[int]] = {}
    for label, group in sorted(_groups(items)):
        per_class.setdefault(label, []).append(group)
    drawn = set()
    for label, groups in per_class.items():
        count = max(1, round(fraction * len(groups))) if fraction > 0 else 0
        count = min(count, len(groups) - 1) if keep_one else count
        drawn |= {(label, int(g)) for g in rng.permutation(groups)[:count]}
    return drawn


def _groups(items: list[VideoItem]) -> set:
    return {(item.label, item.group) for item in items}


def _sorted_unique(items: list[VideoItem]) -> list[VideoItem]:
    return sorted({item.name: item for item in items}.values(), key=lambda item: item.name)


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ActrecError(f"split file {path} not found. Run `actrec synth` (synthetic dataset) or "
                          f"`actrec download` (UCF-101), or point data.splits at the folder that holds it")
    return path


def _split_lines(path: Path):
    """(1-based line number, stripped text) of the non-blank lines; CRLF and LF alike."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ActrecError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ActrecError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield lineno, line.strip()


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


def _check_label(text: str, item: VideoItem, class_names: list[str], where: str) -> None:
    if not text.isdigit() or not 1 <= int(text) <= len(class_names):
        raise ActrecError(f"{where}: label {text!r} is not a class index 1..{len(class_names)} of classInd.txt")
    if int(text) - 1 != item.label:
        raise ActrecError(f"{where}: label {text} ({class_names[int(text) - 1]}) disagrees with the folder of "
                          f"{item.name!r} ({class_names[item.label]}, label {item.label + 1} in classInd.txt)")
