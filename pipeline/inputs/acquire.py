"""``actrec download`` for every data.format: generate the synthetic set, or let the format get its dataset.

Each format module (pipeline/inputs/formats/) says how it acquires its videos and split files;
this module holds what they share: the archive URLs (the config's, else the format's own) and
the resumable, verified fetch into download.dest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ActrecError
from pipeline.inputs import formats
from pipeline.inputs.download import archive_name, download_file

if TYPE_CHECKING:
    from pipeline.config import Config

URL_KEYS = {"videos": "download.videos_url", "splits": "download.splits_url"}


def acquire(cfg: Config) -> None:
    """Put the configured dataset on disk: data.synthetic generates it, else data.format's module fetches it."""
    if cfg.data.synthetic:
        from pipeline.inputs.synthetic import generate_dataset

        generate_dataset(cfg)
    else:
        formats.get(cfg.data.format).acquire(cfg)


def archive_url(cfg: Config, kind: str) -> str:
    """The URL of data.format's ``kind`` archive ('videos' or 'splits'): download.<kind>_url, or when that is
    empty the format's own. A URL another format declares is refused before any download."""
    key = URL_KEYS[kind]
    url = getattr(cfg.download, key.split(".")[1]) or formats.get(cfg.data.format).URLS[kind]
    for other in formats.names():
        if other != cfg.data.format and url == formats.get(other).URLS.get(kind):
            raise ActrecError(f"{key}={url} is data.format={other}'s archive but data.format={cfg.data.format}; "
                              f"empty {key} (the format's own archive) or point it at a {cfg.data.format} mirror")
    return url


def fetch(cfg: Config, kind: str, verify) -> Path:
    """Download data.format's ``kind`` archive into download.dest (resuming, checksummed); where the server gives
    no size, ``verify`` (unpacking it) decides whether the file is complete."""
    d, url = cfg.download, archive_url(cfg, kind)
    return download_file(url, Path(d.dest) / archive_name(url, URL_KEYS[kind]), retries=d.retries,
                         timeout=d.timeout, verify=verify)


def archive_path(cfg: Config, kind: str) -> Path:
    """Where ``fetch`` saves data.format's ``kind`` archive."""
    return Path(cfg.download.dest) / archive_name(archive_url(cfg, kind), URL_KEYS[kind])
