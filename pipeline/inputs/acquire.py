"""``actrec download`` for every data.format: fetch UCF-101 or HMDB-51, generate the synthetic set, or nothing.

HMDB-51's video archive is a RAR of 51 RARs, one per class; its split archive is another
RAR. Both go through pipeline/inputs/download.py's resumable, verified download and safe
unpack; each class archive unpacks on its own, so an interrupted run resumes class by class.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import UCF101_SPLITS_URL, UCF101_URL
from pipeline.errors import ActrecError
from pipeline.fileio import write_atomic
from pipeline.inputs.download import (
    archive_name,
    download_file,
    download_ucf101,
    find_rar_tool,
    has_content,
    unpack_rar,
)

log = logging.getLogger(__name__)

HMDB51_VIDEOS_URL = "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar"
HMDB51_SPLITS_URL = "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar"


def acquire(cfg) -> None:
    """Put the configured dataset on disk: data.synthetic generates it, else data.format says where it comes from."""
    if cfg.data.synthetic:
        from pipeline.inputs.synthetic import generate_dataset

        generate_dataset(cfg)
    elif cfg.data.format == "folder":
        log.info("data.format=folder: your videos in %s are the dataset; nothing to download", cfg.data.videos)
    elif cfg.data.format == "hmdb51":
        download_hmdb51(cfg)
    else:
        download_ucf101(cfg)


def download_hmdb51(cfg) -> None:
    """Download and unpack HMDB-51's split archive into data.splits and its 51 class archives into data.videos."""
    d = cfg.download
    if d.videos_url == UCF101_URL or d.splits_url == UCF101_SPLITS_URL:
        raise ActrecError(f"data.format=hmdb51 but download.videos_url / download.splits_url still name UCF-101's "
                          f"archives; set them to {HMDB51_VIDEOS_URL} and {HMDB51_SPLITS_URL} "
                          f"(configs/hmdb51.yaml does)")
    splits, videos, dest = Path(cfg.data.splits), Path(cfg.data.videos), Path(d.dest)
    done = dest / f"{archive_name(d.videos_url, 'download.videos_url')}.unpacked"
    if not (has_content(splits) and done.exists()):
        find_rar_tool()  # fail before a 2 GB download, not after it
    if has_content(splits):
        log.info("%s: already unpacked, skipping its download", splits)
    else:
        unpack_rar(_fetch(cfg, d.splits_url, "download.splits_url", lambda part: unpack_rar(part, splits)), splits)
    if done.exists():
        log.info("%s: all class archives already unpacked (%s), skipping", videos, done)
    else:
        inner = dest / Path(archive_name(d.videos_url, "download.videos_url")).stem
        archive = _fetch(cfg, d.videos_url, "download.videos_url", lambda part: unpack_rar(part, inner))
        _unpack_classes(archive, videos, dest)
        write_atomic(done, "every class archive of this file is unpacked into data.videos\n")
    classes = sorted(p for p in videos.iterdir() if p.is_dir() and not p.name.startswith("."))
    log.info("HMDB-51 ready: %d videos in %d class folders under %s; split files in %s",
             sum(len(list(c.glob("*.avi"))) for c in classes), len(classes), videos, splits)


def _fetch(cfg, url: str, key: str, verify) -> Path:
    """Download ``url`` into download.dest; where the server gives no size, ``verify`` (unpacking it) decides
    whether the file is complete."""
    d = cfg.download
    return download_file(url, Path(d.dest) / archive_name(url, key), retries=d.retries, timeout=d.timeout,
                         verify=verify)


def _unpack_classes(archive: Path, videos: Path, dest: Path) -> None:
    """The outer RAR into dest/<archive stem>/, then each class RAR into data.videos/<class>/."""
    inner = dest / archive.stem
    unpack_rar(archive, inner)
    class_archives = sorted(inner.rglob("*.rar"))
    if not class_archives:
        raise ActrecError(f"{archive}: holds no per-class .rar archives (unpacked into {inner}); is "
                          f"download.videos_url HMDB-51's hmdb51_org.rar?")
    for class_archive in class_archives:
        unpack_rar(class_archive, videos / class_archive.stem)
