"""Fetch a dataset's archives (resumable, verified) and unpack them safely.

A download streams into ``NAME.part`` and is renamed to ``NAME`` only once its size
(from Content-Length / Content-Range) and SHA-256 check out. The hash is recorded
on first success in ``NAME.sha256`` (``sha256sum -c`` format) and checked on later
runs, so a file that is present is a file that was verified. A server that sends no
size cannot say whether the body ended early: such a download stays ``NAME.part``
until it unpacks whole, and only then is it renamed and its hash recorded.

Archives are inspected entry by entry before anything is written: one entry that
is not a plain file or folder (a symlink, hard link, file copy, junction, device)
or that could land outside the target (``..``, an absolute path) refuses the whole
archive. Unpacking goes into
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
from pipeline.fileio import reporting_write_errors, sha256_file, write_atomic

log = logging.getLogger(__name__)

CHUNK = 1 << 20
INSTALL_HINT = ("Install a RAR extractor: 'sudo apt-get install unar' (Debian/Ubuntu), 'brew install unar' (macOS), "
                "'sudo dnf install unar' (Fedora); unrar, 7z or bsdtar work as well")


class _Retry(Exception):
    """A transfer problem that another attempt may fix (dropped connection, short body, 5xx)."""


def download_file(url: str, dest: Path, *, retries: int = 5, timeout: float = 60.0, backoff: float = 1.0,
                  verify=None) -> Path:
    """Download ``url`` to ``dest`` with resume, retries and size/SHA-256 checks; skip a verified file.

    ``retries`` counts consecutive attempts that got no further; the wait between them doubles from ``backoff``
    seconds. Network errors are retried; HTTP 4xx and a SHA-256 mismatch are not. When the server gives no size,
    ``verify(part)`` (e.g. unpacking it) must succeed before the file is kept; without ``verify`` it is refused.
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
            total = _fetch(url, part, timeout)
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
    if total is None:
        _verify_unsized(url, part, verify)
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


def _verify_unsized(url: str, part: Path, verify) -> None:
    """A body of unknown size is whole only if it unpacks; else it stays ``.part`` (and nothing is recorded)."""
    kept = (f"the server sent no size, so the {_size(part):,} bytes received are kept as {part} and not trusted; "
            f"run again to resume, or download the file another way into {part.parent}")
    if verify is None:
        raise ActrecError(f"{url}: {kept}")
    try:
        verify(part)
    except ActrecError as exc:
        raise ActrecError(f"{url}: the download does not unpack ({exc}); {kept}") from exc


def _check_existing(dest: Path, sidecar: Path) -> None:
    digest = sha256_file(dest, progress=True)
    recorded = _recorded_sha256(sidecar)
    if recorded is None:
        # Not fetched here (a file placed by hand): its hash becomes the record later runs check.
        write_atomic(sidecar, f"{digest}  {dest.name}\n")
    elif recorded != digest:
        raise ActrecError(f"{dest}: SHA-256 {digest} does not match {recorded} recorded in {sidecar}: the file is "
                          f"damaged. Delete {dest} to download it again.")


def _fetch(url: str, part: Path, timeout: float) -> int | None:
    """One attempt: continue ``part`` from its current size; raise _Retry when it ends short. Returns the file's
    full size, or None when the server did not say (then nothing tells a whole body from a cut one)."""
    start = _size(part)
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            if _range_total(exc.headers.get("Content-Range")) == start:
                return start  # the partial file is already whole (stopped before its rename)
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
        _stream(response, part, mode, total, start)
    if total is not None and _size(part) != total:
        raise _Retry(f"connection closed at byte {_size(part):,} of {total:,}")
    return total


def _stream(response, part: Path, mode: str, total: int | None, start: int) -> None:
    """Append the body to ``part``: a network fault is worth a retry, a full disk or unwritable folder is not."""
    with reporting_write_errors(part), open(part, mode) as out, tqdm(
            total=total, initial=start, desc=part.name.removesuffix(".part"), unit="B", unit_scale=True,
            unit_divisor=1024) as bar:
        while True:
            try:
                chunk = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _Retry(f"connection lost at byte {out.tell():,}: {exc}") from exc
            if not chunk:
                return
            out.write(chunk)
            bar.update(len(chunk))


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
            _check_entries(archive, [(i.filename, _rar_entry_kind(i)) for i in infos])
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
            _check_entries(archive, [(i.filename, _unix_kind(i.external_attr >> 16)) for i in zf.infolist()])
            zf.extractall(into)
    except zipfile.BadZipFile as exc:
        raise ActrecError(f"{archive}: not a readable zip ({exc}). Delete it and run again.") from exc


# RAR5 redirection records; each makes an entry something else than a plain file.
_RAR5_REDIRECTS = {rarfile.RAR5_XREDIR_UNIX_SYMLINK: "a symlink",
                   rarfile.RAR5_XREDIR_WINDOWS_SYMLINK: "a Windows symlink",
                   rarfile.RAR5_XREDIR_WINDOWS_JUNCTION: "a Windows junction",
                   rarfile.RAR5_XREDIR_HARD_LINK: "a hard link", rarfile.RAR5_XREDIR_FILE_COPY: "a file copy"}
_REPARSE_POINT = 0x400  # FILE_ATTRIBUTE_REPARSE_POINT: how RAR3 marks a Windows symlink or junction


def _unix_kind(mode: int) -> str | None:
    """None for a plain file or folder (or no type recorded), else what the Unix mode says the entry is."""
    kind = stat.S_IFMT(mode)
    if kind in (0, stat.S_IFREG, stat.S_IFDIR):
        return None
    return "a symlink" if kind == stat.S_IFLNK else "a device, pipe or socket"


def _rar_entry_kind(info) -> str | None:
    """None for a plain file or folder; else what the entry is (every other kind is refused)."""
    redirect = getattr(info, "file_redir", None)
    if redirect:
        return _RAR5_REDIRECTS.get(redirect[0], f"a redirection of type {redirect[0]}")
    mode = info.mode or 0
    if info.host_os == rarfile.RAR_OS_UNIX and _unix_kind(mode):
        return _unix_kind(mode)
    if info.host_os in (rarfile.RAR_OS_WIN32, rarfile.RAR_OS_MSDOS) and mode & _REPARSE_POINT:
        return "a Windows symlink or junction"
    if not (info.is_file() or info.is_dir()):
        return "not a plain file or folder"
    return None


def _check_entries(archive: Path, entries: list[tuple[str, str | None]]) -> None:
    """Refuse the whole archive if any entry is not a plain file or folder, or could land outside the target."""
    for name, kind in entries:
        if kind:
            why = (f"is {kind}, not a plain file or folder (links could point anywhere; anything beneath one would "
                   f"follow it)")
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
