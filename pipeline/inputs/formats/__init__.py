"""The dataset-format registry: every module in this folder is one ``data.format``, registered with its keys.

A format module registers itself (``FORMATS.register(name, SettingsDataclass, __name__)``: the plug-in is the
module) and declares what the rest of the package asks of a dataset:

- its settings dataclass: ``data.split`` with the values it understands, and any keys of its own;
- ``URLS``: ``{"videos": ..., "splits": ...}``, the archives ``actrec download`` fetches when
  ``download.videos_url`` / ``download.splits_url`` are empty (``{}``: nothing to download);
- ``acquire(cfg)``: put the dataset on disk (``actrec download``);
- ``load_split(cfg, check_videos)`` and ``embed_items(cfg, check_videos)``: the labelled video lists;
- ``split_files_signature(cfg)``: a hash of the lists those come from (part of the cache fingerprint);
- ``write_synthetic_splits(splits, names, entries, held_out)``: the split files of the synthetic dataset;
- optionally ``class_pairs(cfg, class_names)``: classes that differ only in frame order (default: the pairs
  listed in ``data.splits``/classPairs.txt, as the synthetic dataset writes them).

Adding a format is one new file here (plus its tests): ``data.format``'s choices, ``actrec synth --format``
and ``actrec download`` all come from this registry.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from pipeline.registry import registry

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.inputs.splits import Split, VideoItem

FORMATS = registry("format")


def names() -> list[str]:
    """The format names, sorted."""
    return FORMATS.names()


def get(name: str) -> ModuleType:
    """The module of format ``name``."""
    return FORMATS.get(name, "data.format").load()


# The one entry point to a dataset, whatever its format: every caller (embed, extract, train, evaluate, the cache
# fingerprint) asks here, and every format returns the same ``Split`` and ``VideoItem`` lists.

def load_split(cfg: Config, check_videos: bool = True) -> Split:
    """The configured split: train, validation (carved from the training list) and test videos."""
    return get(cfg.data.format).load_split(cfg, check_videos)


def embed_items(cfg: Config, check_videos: bool = True) -> tuple[list[str], list[VideoItem]]:
    """Class names and every video stage one must embed (``embed.splits``), sorted by name, each once."""
    return get(cfg.data.format).embed_items(cfg, check_videos)


def split_files_signature(cfg: Config) -> str:
    """A hash of the split files the videos and labels come from: caches made from other lists differ."""
    return get(cfg.data.format).split_files_signature(cfg)


def class_pairs(cfg: Config, class_names: list[str]) -> list[tuple[int, int]]:
    """Label pairs of classes that differ only in frame order, for evaluation's pair accuracy: the format's own
    ``class_pairs(cfg, class_names)`` where it declares one, else the pairs listed beside its split files."""
    from pathlib import Path

    from pipeline.inputs.splits import read_class_pairs

    own = getattr(get(cfg.data.format), "class_pairs", None)
    return own(cfg, class_names) if own else read_class_pairs(Path(cfg.data.splits), class_names)
