"""What every dataset format shares: the video and split records, split-list parsing and the validation carve.

A format module (ucf101, hmdb51, folder) turns its own files into ``VideoItem`` lists
and hands them to ``finish_split``; everything downstream sees one shape. Split lists in
UCF-101's format (``Class/video.ext [label]``, CRLF) are read and written here, since the
folder format uses them as well.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from pipeline.errors import ActrecError

if TYPE_CHECKING:
    from pipeline.config import Config


@dataclass(frozen=True)
class VideoItem:
    name: str    # "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01": relative path without extension; the cache key
    path: Path   # the video file under data.videos
    label: int   # 0-based, index into the class names
    group: int   # UCF-101: XX of gXX; formats without groups: one group per video
    clip: int    # UCF-101: YY of cYY; else 0


@dataclass
class Split:
    name: str                 # "1", "2", "3", "random", "random-groups", "auto"
    class_names: list[str]    # index = label
    train: list[VideoItem]    # training list minus the validation groups
    val: list[VideoItem]      # whole groups carved from the training list
    test: list[VideoItem]
    leaked_groups: int        # group numbers with videos in test and train; > 0 only for 'random'


ParseEntry = Callable[[str, str], VideoItem]  # (entry as written, "file:line") -> VideoItem


def finish_split(name: str, class_names: list[str], training: list[VideoItem], test: list[VideoItem],
                 cfg) -> Split:
    """The Split of a training and a test list: validation carved from training by whole groups."""
    train, val = carve_validation(training, cfg.data.val_fraction, cfg.data.seed)
    leaked = leaked_groups(test, train)
    return Split(name=name, class_names=class_names, train=train, val=val, test=test, leaked_groups=leaked)


def frames_dir(cfg: Config, item: VideoItem) -> Path:
    """Where the extracted JPEG frames of a video live: data.frames / Class / video name."""
    return Path(cfg.data.frames) / item.name


def read_class_index(path: str | Path) -> list[str]:
    """Class names in classInd.txt order (``"1 ApplyEyeMakeup"`` -> index 0)."""
    path = Path(path)
    names = []
    for lineno, line in split_lines(path):
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


def read_split_list(path: str | Path, class_names: list[str], parse: ParseEntry, check_videos: bool = True,
                    missing_hint: str = "Check data.videos") -> list[VideoItem]:
    """The videos of one UCF-101-format list (``Class/video.ext [label]``); a label must match the folder."""
    path = Path(path)
    items, seen = [], {}
    for lineno, line in split_lines(path):
        where = f"{path}:{lineno}"
        parts = line.split()
        if len(parts) not in (1, 2):
            raise ActrecError(f"{where}: malformed line {line!r}; expected 'Class/video.avi [label]'")
        item = parse(parts[0], where)
        if len(parts) == 2:
            check_label(parts[1], item, class_names, where)
        check_listed_once(item, seen, lineno, where, parts[0])
        if check_videos and not item.path.is_file():
            raise ActrecError(f"{where}: video {parts[0]!r} not found at {item.path}. {missing_hint}")
        items.append(item)
    return items


def check_listed_once(item: VideoItem, seen: dict, lineno: int, where: str, entry: str) -> None:
    """Refuse a video listed twice in one file (``seen``: name -> first line)."""
    if item.name in seen:
        raise ActrecError(f"{where}: {entry!r} already listed on line {seen[item.name]}; list each video once")
    seen[item.name] = lineno


def check_label(text: str, item: VideoItem, class_names: list[str], where: str) -> None:
    if not text.isdigit() or not 1 <= int(text) <= len(class_names):
        raise ActrecError(f"{where}: label {text!r} is not a class index 1..{len(class_names)} of classInd.txt")
    if int(text) - 1 != item.label:
        raise ActrecError(f"{where}: label {text} ({class_names[int(text) - 1]}) disagrees with the folder of "
                          f"{item.name!r} ({class_names[item.label]}, label {item.label + 1} in classInd.txt)")


def check_disjoint(training: list[VideoItem], test: list[VideoItem], where: str) -> None:
    both = {item.name for item in training} & {item.name for item in test}
    if both:
        raise ActrecError(f"{where}: {len(both)} videos are in both the training and the test list (e.g. "
                          f"{min(both)}); the split files are inconsistent")


def write_ucf_lists(splits: Path, class_names: list[str], train: list[VideoItem], test: list[VideoItem],
                    k: int = 1) -> None:
    """classInd.txt, trainlistNN.txt (with 1-based labels) and testlistNN.txt as UCF-101 ships them (CRLF)."""
    from pipeline.fileio import write_atomic

    def entry(item: VideoItem) -> str:
        return f"{item.name.split('/')[0]}/{item.path.name}"

    write_atomic(splits / "classInd.txt", crlf([f"{i + 1} {name}" for i, name in enumerate(class_names)]))
    write_atomic(splits / f"trainlist{k:02d}.txt", crlf([f"{entry(item)} {item.label + 1}" for item in train]))
    write_atomic(splits / f"testlist{k:02d}.txt", crlf([entry(item) for item in test]))


def crlf(lines: list[str]) -> str:
    """Split files as UCF-101 ships them: CRLF line endings."""
    return "".join(line + "\r\n" for line in lines)


def files_signature(splits: Path, names: list[str], extra: dict | None = None) -> str:
    """A hash of the named split files in ``splits`` (and the synthetic generator's settings, when present)."""
    from pipeline.config import stable_hash

    contents = {name: (splits / name).read_text().replace("\r\n", "\n") for name in sorted(names)}
    manifest = splits / "synth.json"
    if manifest.is_file():
        contents["synth"] = json.loads(manifest.read_text()).get("settings")
    if not contents:
        return "no split files"
    return stable_hash({**contents, **(extra or {})})


def carve_validation(training: list[VideoItem], fraction: float, seed: int) -> tuple[list[VideoItem], list[VideoItem]]:
    """Split a training list into (train, val) with ``hold_out``: no group on both sides."""
    val = hold_out(training, fraction, np.random.default_rng([seed, 1]))
    return [item for item in training if item.name not in val], [item for item in training if item.name in val]


def hold_out(items: list[VideoItem], fraction: float, rng: np.random.Generator) -> set[str]:
    """Names of a held-out ``fraction`` of ``items`` that keeps every group on one side.

    Whole group *numbers* are drawn across all classes, as the official UCF-101 splits draw their test
    groups: clips of one group number share actors and scenes, and the synthetic dataset's time-reversed
    twins share their frames, so drawing per class would put a clip's twin on the other side. At least one
    group number stays behind. Formats without groups (every video its own group) get a per-class random
    share instead, so each class keeps videos on both sides.
    """
    numbers = sorted({item.group for item in items})
    if len(numbers) == len(items):
        drawn = draw_groups(items, fraction, rng, keep_one=True)
        return {item.name for item in items if (item.label, item.group) in drawn}
    count = min(max(1, round(fraction * len(numbers))) if fraction > 0 else 0, len(numbers) - 1)
    chosen = {int(g) for g in rng.permutation(numbers)[:count]}
    return {item.name for item in items if item.group in chosen}


def leaked_groups(test: list[VideoItem], train: list[VideoItem]) -> int:
    """Group numbers with videos on both sides (for the synthetic twins, a shared group number is shared frames)."""
    return len({item.group for item in test} & {item.group for item in train})


def draw_groups(items: list[VideoItem], fraction: float, rng: np.random.Generator, keep_one: bool) -> set:
    """A random ``fraction`` of each class's groups (at least one when fraction > 0), as (label, group) pairs."""
    per_class: dict[int, list[int]] = {}
    for label, group in sorted(groups_of(items)):
        per_class.setdefault(label, []).append(group)
    drawn = set()
    for label, groups in per_class.items():
        count = max(1, round(fraction * len(groups))) if fraction > 0 else 0
        count = min(count, len(groups) - 1) if keep_one else count
        drawn |= {(label, int(g)) for g in rng.permutation(groups)[:count]}
    return drawn


def every_video_of(list_pairs) -> list[VideoItem]:
    """Each video of some (training, test) list pairs once, sorted by name: what ``embed.splits=all`` embeds."""
    return sorted_unique([item for training, test in list_pairs for item in training + test])


def groups_of(items: list[VideoItem]) -> set:
    return {(item.label, item.group) for item in items}


def sorted_unique(items: list[VideoItem]) -> list[VideoItem]:
    return sorted({item.name: item for item in items}.values(), key=lambda item: item.name)


def split_lines(path: Path):
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


def video_stem_key(name: str) -> int:
    """A stable group number for a video that has no group of its own (formats without groups)."""
    import zlib

    return zlib.crc32(name.encode())


_UNSAFE_NAME = re.compile(r"[\s\x00-\x1f]")
NAME_BYTES = 255  # the feature cache stores names in fixed-length fields of this size


def check_entry_name(name: str, where: str) -> None:
    """Refuse names a split list or the cache cannot hold (whitespace, control characters, too long)."""
    if _UNSAFE_NAME.search(name):
        raise ActrecError(f"{where}: video name {name!r} contains whitespace or control characters, which split "
                          f"lists cannot hold; rename the file")
    if len(name.encode()) > NAME_BYTES:
        raise ActrecError(f"{where}: video name {name!r} is longer than {NAME_BYTES} bytes; rename the file")


# Classes that differ only in frame order (the synthetic dataset's time-reversed twins), one "A B" per line of
# data.splits/classPairs.txt: evaluation reports the accuracy within each pair (an order-blind model's is 0.5).
PAIRS_FILE = "classPairs.txt"


def write_class_pairs(splits: Path, pairs: list[tuple[str, str]]) -> None:
    from pipeline.fileio import write_atomic

    write_atomic(splits / PAIRS_FILE, "".join(f"{a} {b}\n" for a, b in pairs))


def read_class_pairs(splits: Path, class_names: list[str]) -> list[tuple[int, int]]:
    """The label pairs listed in ``splits``/classPairs.txt ([] without the file); a name that is not one of
    ``class_names`` is refused naming the file."""
    path = Path(splits) / PAIRS_FILE
    if not path.is_file():
        return []
    index = {name: label for label, name in enumerate(class_names)}
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        names = line.split()
        if not names:
            continue
        if len(names) != 2 or not all(name in index for name in names):
            raise ActrecError(f"{path}:{number}: expected two class names of the dataset, got {line.strip()!r}; fix "
                              f"or delete the file")
        pairs.append((index[names[0]], index[names[1]]))
    return pairs
