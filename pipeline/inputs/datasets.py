"""The one entry point to a dataset, whatever its format: ``data.format`` picks the module that reads it.

Every caller (embed, extract, train, evaluate, the cache fingerprint) asks here; the format
modules (pipeline/inputs/formats/: ``ucf101``, ``hmdb51``, ``folder``, ...) all return the same
``Split`` and ``VideoItem`` lists, so nothing downstream knows which format it reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.errors import ActrecError
from pipeline.inputs import formats
from pipeline.inputs.splits import Split, VideoItem, frames_dir  # noqa: F401  (frames_dir: re-exported)

if TYPE_CHECKING:
    from pipeline.config import Config


def format_module(cfg: Config):
    """The module of ``data.format`` (pipeline/inputs/formats/), after checking that it understands ``data.split``."""
    module = formats.get(cfg.data.format)
    if cfg.data.split not in module.SPLITS:
        raise ActrecError(f"data.split={cfg.data.split!r} does not apply to data.format={module.NAME}; use one of "
                          f"{', '.join(map(str, module.SPLITS))}")
    return module


def load_split(cfg: Config, check_videos: bool = True) -> Split:
    """The configured split: train, validation (carved from the training list) and test videos."""
    return format_module(cfg).load_split(cfg, check_videos)


def embed_items(cfg: Config, check_videos: bool = True) -> tuple[list[str], list[VideoItem]]:
    """Class names and every video stage one must embed (``embed.splits``), sorted by name, each once."""
    return format_module(cfg).embed_items(cfg, check_videos)


def split_files_signature(cfg: Config) -> str:
    """A hash of the split files the videos and labels come from: caches made from other lists differ."""
    return format_module(cfg).split_files_signature(cfg)

