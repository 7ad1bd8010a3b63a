"""Fetch UCF-101 (resumable, verified) and unpack its archives safely.

A download streams into ``NAME.part`` and is renamed to ``NAME`` only once its size
(from Content-Length / Content-Range) and SHA-256 check out. The hash is recorded
on first success in ``NAME.sha256`` (``sha256sum -c`` format) and checked on later
runs, so a file that is present is a file that was verified.

Archives are inspected entry by entry before anything is written: one entry that
could land outside the target (``..``, an absolute path, a symlink, and therefore
anything under a symlinked folder) refuses the whole archive. Unpacking goes into
a hidden folder next to the target, renamed into place at the end; a single top
folder in the archive (``UCF-101/``, ``ucfTrainTestlist/``) becomes the target.
"""

from __future__ import annotations

import http.client
import logging
import re
import shutil
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import rarfile
from tqdm import tqdm

from pipeline.errors import ActrecError
from pipeline.fileio import sha256_file, write_atomic

log = logging.getLogger(__name__)

CHUNK = 1 << 20
INSTALL_HINT = ("Install a RAR extractor: 'sudo apt-get install unar' (Debian/Ubuntu), 'brew install unar' (macOS), "
                "'sudo dnf install unar' (Fedora); unrar, 7z or bsdtar work as well")


class _Retry(Exception):
    """A transfer problem that another attempt may fix (dropped connection, short body, 5xx)."""


def download_file(url: str, dest: Path, *, retries: int = 5, timeout: float = 60.0, backoff: float = 1.0) -> Path:
    """Download ``url`` to ``dest`` with resume, retries and size/SHA-256 checks; skip a verified file.

    ``retries`` counts consecutive attempts that got no further; the wait between them doubles from ``backoff``
    seconds. Network errors are retried; HTTP 4xx and a SHA-256 mismatch are not.
    """
    dest = Path(dest)
    sidecar = dest.with_name(dest.name + ".sha256")
    if dest.exists():
        _check_existing(dest, sidecar)
        log.info(f"{dest}: already downloaded and verified, skipping")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures, reached = 0, _size(part)
    while True:
        try:
            _fetch(url, part, timeout)
            break
        except _Retry as exc:
            # Only attempts that got no further than any before count against the retries.
            failures = 0 if _size(part) > reached else failures + 1
            reached = max(reached, _size(part))
            if failures > retries:
                raise ActrecError(f"downloading {url} failed {failures} times in a row: {exc}. Run again to retry "
                                  f"(download.retries={retries}); a partial download resumes from {part.name}") from exc
            delay = min(backoff * 2 ** max(failures - 1, 0), 60.0)
            log.info(f"{dest.name}: {exc}; retrying in {delay:.1f}s")
            time.sleep(delay)
    digest = sha256_file(part, progress=True)
    recorded = _recorded_sha256(sidecar)
    if recorded is not None and recorded != digest:
        part.unlink()
        raise ActrecError(f"{url}: the downloaded file has SHA-256 {digest} but {sidecar} records {recorded}; "
                          f"the download was discarded. If the file changed on the server, delete {sidecar}.")
    if recorded is None:
        write_atomic(sidecar, f"{digest}  {dest.name}\n")
    part.replace(dest)
    log.info(f"{dest}: downloaded {_size(dest):,} bytes, SHA-256 {digest}")
    return dest


def _check_existing(dest: Path, sidecar: Path) -> None:
    digest = sha256_file(dest, progress=True)
    recorded = _recorded_sha256(sidecar)
    if recorded is None:
        # Not fetched here (a file placed by hand): its hash becomes the record later runs check.
        write_atomic(sidecar, f"{digest}  {dest.name}\n")
    elif recorded != digest:
        raise ActrecError(f"{dest}: SHA-256 {digest} does not match {recorded} recorded in {sidecar}: the file is "
                          f"damaged. Delete {dest} to download it again.")


def _fetch(url: str, part: Path, timeout: float) -> None:
    """One attempt: continue ``part`` from its current size; raise _Retry when it ends short."""
    start = _size(part)
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            if _range_total(exc.headers.get("Content-Range")) == start:
                return  # the partial file is already whole (stopped before its rename)
            part.unlink()  # longer than the file on the server: not a prefix of it
            raise _Retry(f"server refused to resume at byte {start:,}; starting over") from exc
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from exc
        raise ActrecError(f"{url}: HTTP {exc.code} {exc.reason}. Check download.videos_url and "
                          f"download.splits_url.") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retry(str(getattr(exc, "reason", exc))) from exc
    except ValueError as exc:
        raise ActrecError(f"{url!r}: not a URL that can be downloaded ({exc})") from exc
    with response:
        if getattr(response, "status", None) == 206:
            first, total = _content_range(response.headers.get("Content-Range"), url)
            if first != start:
                part.unlink()
                raise _Retry(f"server resumed at byte {first:,} instead of {start:,}; starting over")
            mode = "ab"
        else:
            # The server ignored Range and sends the whole file: start over rather than append it.
            start, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
        _check_free_space(part, None if total is None else total - start)
        with open(part, mode) as out, tqdm(total=total, initial=start, desc=part.name.removesuffix(".part"),
                                           unit="B", unit_scale=True, unit_divisor=1024) as bar:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise _Retry(f"connection lost at byte {out.tell():,}: {exc}") from exc
    if total is not None and _size(part) != total:
        raise _Retry(f"connection closed at byte {_size(part):,} of {total:,}")


def _content_range(header: str | None, url: str) -> tuple[int, int | None]:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (header or "").strip())
    if not match:
        raise ActrecError(f"{url}: partial response with an unreadable Content-Range {header!r}")
    return int(match[1]), None if match[2] == "*" else int(match[2])


def _range_total(header: str | None) -> int | None:
    match = re.fullmatch(r"bytes \*/(\d+)", (header or "").strip())
    return int(match[1]) if match else None


def _check_free_space(path: Path, need: int | None) -> None:
    free = shutil.disk_usage(path.parent).free
    if need is not None and need > free:
        raise ActrecError(f"{path.parent}: {need / 1e9:.1f} GB needed for {path.name} but only {free / 1e9:.1f} GB "
                          f"free. Free some space or set download.dest to another disk.")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _recorded_sha256(sidecar: Path) -> str | None:
    fields = sidecar.read_text().split() if sidecar.exists() else []
    return fields[0].lower() if fields else None


def find_rar_tool() -> str:
    """The command rarfile will drive (unrar, unar, 7z or bsdtar); ActrecError saying what to install if none."""
    try:
        setup = rarfile.tool_setup(force=True)
    except rarfile.RarCannotExec as exc:
        raise ActrecError(f"no RAR extractor found (tried {rarfile.UNRAR_TOOL}, {rarfile.UNAR_TOOL}, "
                          f"{rarfile.SEVENZIP_TOOL}, {rarfile.BSDTAR_TOOL}). {INSTALL_HINT}.") from exc
    return getattr(rarfile, setup.setup["open_cmd"][0])


def unpack_rar(archive: Path, target: Path) -> list[Path]:
    """Unpack a RAR (multi-volume: the first part) into ``target``; the files written, sorted."""
    return _unpack(Path(archive), Path(target), _extract_rar)


def unpack_zip(archive: Path, target: Path) -> list[Path]:
    """Unpack a zip into ``target`` with the same safety checks; the files written, sorted."""
    return _unpack(Path(archive), Path(target), _extract_zip)


def _extract_rar(archive: Path, into: Path) -> None:
    try:
        with rarfile.RarFile(archive) as rf:
            infos = rf.infolist()
            _check_entries(archive, [(i.filename, not (i.is_file() or i.is_dir())) for i in infos])
            tool = find_rar_tool()
            # One extractor run for the whole archive: a run per member re-reads the archive each time,
            # which for UCF-101's 13,320 members costs far more than the unpacking itself.
            log.info(f"unpacking {len(infos):,} entries of {archive.name} with {tool} (several minutes for UCF-101)")
            rf.extractall(into)
    except rarfile.Error as exc:
        raise ActrecError(f"{archive}: cannot unpack: {exc}. If the download is damaged, delete it and run "
                          f"again.") from exc


def _extract_zip(archive: Path, into: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            _check_entries(archive, [(i.filename, stat.S_ISLNK(i.external_attr >> 16)) for i in zf.infolist()])
            zf.extractall(into)
    except zipfile.BadZipFile as exc:
        raise ActrecError(f"{archive}: not a readable zip ({exc}). Delete it and run again.") from exc


def _check_entries(archive: Path, entries: list[tuple[str, bool]]) -> None:
    """Refuse the whole archive if any entry could be written outside the target folder."""
    for name, is_link in entries:
        if is_link:
            why = "is a link (links could point anywhere; anything beneath one would follow it)"
        elif name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
            why = "has an absolute path"
        elif ".." in re.split(r"[\\/]", name):
            why = "climbs out of the target with '..'"
        else:
            continue
        raise ActrecError(f"{archive}: refusing to unpack: entry {name!r} {why}. Nothing was extracted; this is not "
                          f"a plain archive of files.")


def _unpack(archive: Path, target: Path, extract) -> list[Path]:
    if has_content(target):
        log.info(f"{target}: already unpacked, skipping")
        return _files(target)
    staging = target.with_name(f".{target.name}.unpacking")
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted run
    staging.mkdir(parents=True)
    try:
        extract(archive, staging)
        top = list(staging.iterdir())
        root = top[0] if len(top) == 1 and top[0].is_dir() and not top[0].is_symlink() else staging
        if target.exists():
            target.rmdir()  # an empty folder; one with content was skipped above
        root.rename(target)
    except OSError as exc:
        raise ActrecError(f"unpacking {archive} into {target} failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = _files(target)
    log.info(f"{target}: unpacked {len(files):,} files from {archive.name}")
    return files


def has_content(folder: Path) -> bool:
    """True for a folder with anything in it: an unpacked archive (unpacking renames a whole folder into place)."""
    return folder.is_dir() and any(folder.iterdir())


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def archive_name(url: str, key: str) -> str:
    """The file name a download of ``url`` is saved under (config key ``key`` named the URL)."""
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ActrecError(f"{key}={url!r}: the URL names no file; point it at the archive itself")
    return name


def download_ucf101(cfg) -> None:
    """Download the split zip and UCF101.rar into download.dest; unpack them into data.splits and data.videos."""
    d = cfg.download
    jobs = [("download.splits_url", d.splits_url, Path(cfg.data.splits), unpack_zip),
            ("download.videos_url", d.videos_url, Path(cfg.data.videos), unpack_rar)]
    if not has_content(Path(cfg.data.videos)):
        find_rar_tool()  # fail before a 6.5 GB download, not after it
    for key, url, target, unpack in jobs:
        if has_content(target):
            log.info(f"{target}: already unpacked, skipping its download")
            continue
        archive = download_file(url, Path(d.dest) / archive_name(url, key), retries=d.retries, timeout=d.timeout)
        unpack(archive, target)
    videos = Path(cfg.data.videos)
    classes = [p for p in videos.iterdir() if p.is_dir()]
    log.info(f"UCF-101 ready: {sum(len(list(c.glob('*.avi'))) for c in classes):,} videos in {len(classes)} class "
             f"folders under {videos}; {len(_files(Path(cfg.data.splits)))} split files in {cfg.data.splits}")
