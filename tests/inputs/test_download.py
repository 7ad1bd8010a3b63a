"""Download (real HTTP server on 127.0.0.1) and safe unpack (real RAR fixtures, real zips)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path

import pytest

from pipeline.config import config_from_dict
from pipeline.errors import ActrecError
from pipeline.inputs.download import download_file, find_rar_tool, unpack_rar, unpack_zip
from pipeline.inputs.formats.ucf101 import acquire as download_ucf101
from tests.fileserver import FileServer
from tests.helpers import SHARED_FIXTURES

RAR_FIXTURES = SHARED_FIXTURES / "rar"
SPLIT_FIXTURES = SHARED_FIXTURES / "ucf101-splits"
PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every offset distinguishable


@pytest.fixture
def server():
    srv = FileServer({"data.bin": PAYLOAD})
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def rar_tool():
    try:
        return find_rar_tool()
    except ActrecError as exc:
        if os.environ.get("CI"):  # CI installs unar (.ci/run): there the extractor tests must run, never skip
            pytest.fail(f"no RAR extractor in CI: {exc}")
        pytest.skip(str(exc))


def fetch(server, dest, **kwargs):
    kwargs = {"retries": 2, "timeout": 5.0, "backoff": 0.001, **kwargs}
    return download_file(server.url("data.bin"), dest, **kwargs)


def test_download_writes_file_and_records_sha(server, tmp_path):
    dest = tmp_path / "dl" / "data.bin"
    assert fetch(server, dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "dl" / "data.bin.sha256").read_text() == f"{hashlib.sha256(PAYLOAD).hexdigest()}  data.bin\n"
    assert not (tmp_path / "dl" / "data.bin.part").exists()
    assert server.ranges == [None]


def test_resume_continues_from_partial_file(server, tmp_path):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    fetch(server, dest)
    assert server.ranges == ["bytes=1000-"]
    assert dest.read_bytes() == PAYLOAD


def test_dropped_connections_resume_where_they_stopped(server, tmp_path):
    server.drops, server.drop_after = 3, 3000
    fetch(server, tmp_path / "data.bin", retries=0)  # every attempt makes progress, so none counts as a failure
    assert server.ranges == [None, "bytes=3000-", "bytes=6000-", "bytes=9000-"]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_retries_connections_dropped_before_any_data(server, tmp_path):
    server.drops, server.drop_after = 2, 0
    fetch(server, tmp_path / "data.bin", retries=2)
    assert len(server.ranges) == 3
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD

    server.drops = 2
    with pytest.raises(ActrecError, match="failed 2 times in a row"):
        fetch(server, tmp_path / "other.bin", retries=1)
    assert not (tmp_path / "other.bin").exists()


def test_server_ignoring_range_restarts_instead_of_appending(server, tmp_path):
    server.ignore_range = True
    (tmp_path / "data.bin.part").write_bytes(b"x" * 500)
    fetch(server, tmp_path / "data.bin")
    assert server.ranges == ["bytes=500-"]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_short_body_is_refused_and_leaves_no_complete_file(server, tmp_path):
    server.ignore_range, server.claim_extra = True, 100
    with pytest.raises(ActrecError, match=f"closed at byte {len(PAYLOAD):,} of {len(PAYLOAD) + 100:,}"):
        fetch(server, tmp_path / "data.bin", retries=1)
    assert not (tmp_path / "data.bin").exists()
    assert not (tmp_path / "data.bin.sha256").exists()


def test_sha_mismatch_with_record_is_refused(server, tmp_path):
    sidecar = tmp_path / "data.bin.sha256"
    sidecar.write_text(f"{hashlib.sha256(b'another file').hexdigest()}  data.bin\n")
    with pytest.raises(ActrecError, match="SHA-256"):
        fetch(server, tmp_path / "data.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin.sha256"]


def test_verified_file_is_skipped_and_damaged_one_refused(server, tmp_path):
    dest = tmp_path / "data.bin"
    fetch(server, dest)
    server.files["data.bin"] = b"changed on the server"
    fetch(server, dest)
    assert len(server.ranges) == 1  # the second call made no request
    assert dest.read_bytes() == PAYLOAD

    dest.write_bytes(PAYLOAD[:-1] + b"!")
    with pytest.raises(ActrecError, match="data.bin: SHA-256 .* does not match"):
        fetch(server, dest)


def test_http_error_is_clear_and_not_retried(server, tmp_path):
    with pytest.raises(ActrecError, match="HTTP 404"):
        download_file(server.url("missing.bin"), tmp_path / "missing.bin", retries=3, timeout=5.0, backoff=0.001)
    assert len(server.ranges) == 1


def expected_entries(exp: Path) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """Files {name: (size, crc32)} and directory names listed in a fixture's .exp dump."""
    files, dirs = {}, set()
    for block in re.split(r"\n(?=\S*FILE:)", exp.read_text())[1:]:
        name = re.search(r"^\s+name=(.*)$", block, re.M)[1]
        if re.search(r"is=-D-", block):
            dirs.add(name.rstrip("/"))
        else:
            files[name] = (int(re.search(r" dec=(\d+)", block)[1]), int(re.search(r"crc=0x([0-9a-f]+)", block)[1], 16))
    return files, dirs


def strip_single_top(names):
    tops = {n.split("/")[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return {n: n.split("/", 1)[1] for n in names}
    return {n: n for n in names}


@pytest.mark.parametrize("name", ["rar3-subdirs.rar", "rar5-subdirs.rar", "rar3-solid.rar", "rar3-vols.part1.rar"])
def test_unpack_rar_gives_exactly_the_listed_files(rar_tool, tmp_path, name):
    if not (RAR_FIXTURES / name).exists():
        pytest.skip(f"fixture {RAR_FIXTURES / name} not present")
    files, dirs = expected_entries(RAR_FIXTURES / f"{name}.exp")
    target = tmp_path / "out" / "videos"
    written = unpack_rar(RAR_FIXTURES / name, target)

    rename = strip_single_top(list(files) + [d + "/x" for d in dirs])
    expected = {rename[n]: v for n, v in files.items()}
    assert {p.relative_to(target).as_posix() for p in written} == set(expected)
    for rel, (size, crc) in expected.items():
        data = (target / rel).read_bytes()
        assert (len(data), zlib.crc32(data)) == (size, crc), rel
    for d in dirs:
        assert (target / rename[d + "/x"]).parent.is_dir()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["videos"]  # staging folder gone


def test_symlink_traversal_rar_is_refused_before_writing_anything(tmp_path):
    evil = RAR_FIXTURES / "rar5-evil-symlink-traversal.rar"
    if not evil.exists():
        pytest.skip(f"fixture {evil} not present")
    archive = tmp_path / "in" / evil.name
    archive.parent.mkdir()
    shutil.copy(evil, archive)
    target = tmp_path / "out" / "videos"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ActrecError, match=rf"{re.escape(str(archive))}: refusing to unpack: entry 'up' is a symlink"):
        unpack_rar(archive, target)
    assert not target.exists()
    assert sorted(tmp_path.rglob("*")) == before + [tmp_path / "out"]
    assert not list(tmp_path.parent.rglob("pwned.txt"))


@pytest.mark.parametrize("entry, why", [("../evil.txt", "'..'"), ("/abs/evil.txt", "absolute path"),
                                        ("ok/../../evil.txt", "'..'"), ("link", "is a symlink")])
def test_unsafe_zip_entries_are_refused(tmp_path, entry, why):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "fine")
        info = zipfile.ZipInfo(entry)
        if entry == "link":
            info.external_attr = (0o120777 << 16)  # a symlink entry whose content is its target
        zf.writestr(info, "..")
    with pytest.raises(ActrecError, match=re.escape(why)):
        unpack_zip(archive, tmp_path / "out" / "target")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.zip", "out"]


def split_zip(path: Path) -> Path:
    """A zip shaped like the official one: every split file under ucfTrainTestlist/."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(SPLIT_FIXTURES.iterdir()):
            zf.write(f, f"ucfTrainTestlist/{f.name}")
    return path


@pytest.fixture
def splits_zip(tmp_path):
    if not SPLIT_FIXTURES.is_dir():
        pytest.skip(f"fixtures {SPLIT_FIXTURES} not present")
    return split_zip(tmp_path / "splits.zip")


def test_unpack_zip_strips_top_folder_and_skips_when_done(splits_zip, tmp_path):
    target = tmp_path / "ucf101" / "ucfTrainTestlist"
    stale = tmp_path / "ucf101" / ".ucfTrainTestlist.unpacking"
    stale.mkdir(parents=True)
    (stale / "half-written.txt").write_text("from an interrupted run")

    written = unpack_zip(splits_zip, target)
    assert [p.name for p in written] == sorted(f.name for f in SPLIT_FIXTURES.iterdir())
    for p in written:
        assert p.read_bytes() == (SPLIT_FIXTURES / p.name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "ucf101").iterdir()) == ["ucfTrainTestlist"]

    splits_zip.unlink()  # a finished target is not unpacked again, so the archive is not needed
    assert unpack_zip(splits_zip, target) == written


def test_damaged_zip_leaves_no_target(splits_zip, tmp_path):
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(splits_zip.read_bytes()[:-2000])
    with pytest.raises(ActrecError, match="damaged.zip: not a readable zip"):
        unpack_zip(damaged, tmp_path / "out" / "splits")
    assert list((tmp_path / "out").iterdir()) == []


def ucf_config(tmp_path, server):
    return config_from_dict({
        "download": {"videos_url": server.url("UCF101.rar"), "splits_url": server.url("splits.zip"),
                     "dest": str(tmp_path / "archives"), "retries": 1, "timeout": 5.0},
        "data": {"videos": str(tmp_path / "ucf101" / "UCF-101"),
                 "splits": str(tmp_path / "ucf101" / "ucfTrainTestlist")},
    })


def test_download_ucf101_splits_when_videos_are_already_unpacked(server, splits_zip, tmp_path):
    server.files["splits.zip"] = splits_zip.read_bytes()
    cfg = ucf_config(tmp_path, server)
    clip = Path(cfg.data.videos) / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(b"already here")

    download_ucf101(cfg)
    assert server.ranges == [None]  # only the zip was fetched
    assert (Path(cfg.data.splits) / "classInd.txt").read_bytes() == (SPLIT_FIXTURES / "classInd.txt").read_bytes()
    assert (tmp_path / "archives" / "splits.zip.sha256").exists()
    assert clip.read_bytes() == b"already here"


def test_download_ucf101_end_to_end(rar_tool, server, splits_zip, tmp_path):
    server.files["splits.zip"] = splits_zip.read_bytes()
    server.files["UCF101.rar"] = (RAR_FIXTURES / "rar5-subdirs.rar").read_bytes()
    cfg = ucf_config(tmp_path, server)

    download_ucf101(cfg)
    assert (Path(cfg.data.videos) / "dir1" / "file1.txt").is_file()
    assert sorted(p.name for p in Path(cfg.data.splits).iterdir()) == sorted(p.name for p in SPLIT_FIXTURES.iterdir())
    assert sorted(p.name for p in (tmp_path / "archives").iterdir()) == [
        "UCF101.rar", "UCF101.rar.sha256", "splits.zip", "splits.zip.sha256"]
    requests = len(server.ranges)
    download_ucf101(cfg)
    assert len(server.ranges) == requests  # everything was already done


def test_missing_extractor_says_what_to_install(monkeypatch):
    import rarfile

    for tool in ("UNRAR_TOOL", "UNAR_TOOL", "SEVENZIP_TOOL", "SEVENZIP2_TOOL", "BSDTAR_TOOL"):
        monkeypatch.setattr(rarfile, tool, f"/nonexistent/{tool.lower()}")
    with pytest.raises(ActrecError, match="apt-get install unar.*brew install unar"):
        find_rar_tool()


# -- a server that sends no size; archive entries that are neither files nor folders -------------------------------

def test_download_without_a_size_that_ends_early_stays_part_and_records_nothing(server, tmp_path):
    server.no_length, server.drops, server.drop_after = True, 1, 3000
    dest = tmp_path / "data.bin"
    with pytest.raises(ActrecError, match="sent no size, so the 3,000 bytes received are kept as .*data.bin.part"):
        fetch(server, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin.part"]  # no hash recorded, nothing trusted
    server.no_length = False  # the next run: a server that resumes with a Content-Range says the size
    assert fetch(server, dest).read_bytes() == PAYLOAD
    assert server.ranges[-1] == "bytes=3000-"
    assert (tmp_path / "data.bin.sha256").read_text().split()[0] == hashlib.sha256(PAYLOAD).hexdigest()


def test_download_without_a_size_is_kept_only_once_it_unpacks(server, splits_zip, tmp_path):
    server.files["splits.zip"] = splits_zip.read_bytes()
    server.no_length, server.drops, server.drop_after = True, 1, len(server.files["splits.zip"]) - 50
    dest, target = tmp_path / "dl" / "splits.zip", tmp_path / "splits"

    def get():
        return download_file(server.url("splits.zip"), dest, retries=1, timeout=5.0, backoff=0.001,
                             verify=lambda part: unpack_zip(part, target))

    with pytest.raises(ActrecError, match="does not unpack"):
        get()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["splits.zip.part"] and not target.exists()
    server.ignore_range = True  # this server cannot resume either: the whole file again, still without a size
    assert get().read_bytes() == splits_zip.read_bytes()
    assert (target / "classInd.txt").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["splits.zip", "splits.zip.sha256"]


def _patched(source: Path, target: Path, edits: dict[int, bytes], header: slice, crc_at: int, crc_bytes: int) -> Path:
    """A copy of a fixture archive with bytes replaced in one header, and that header's CRC recomputed."""
    data = bytearray(source.read_bytes())
    for offset, value in edits.items():
        data[offset:offset + len(value)] = value
    crc = zlib.crc32(bytes(data[header])) & ((1 << (8 * crc_bytes)) - 1)
    data[crc_at:crc_at + crc_bytes] = crc.to_bytes(crc_bytes, "little")
    target.write_bytes(bytes(data))
    return target


def rar5_redirect(tmp_path: Path, kind: int) -> Path:
    """rar5-evil-symlink-traversal.rar with its first entry ('up', a symlink to '..') turned into a RAR5 hard link
    (``kind`` 4) or file copy (5) of mode -rw-r--r--: rarfile calls such an entry a file."""
    evil = RAR_FIXTURES / "rar5-evil-symlink-traversal.rar"
    # File header: CRC32 at 0x17, header from 0x1b to 0x41; attributes vint at 0x23, redirection type at 0x3c.
    edits = {0x23: bytes([0xA4, 0x83, 0x02]), 0x3C: bytes([kind, 0])}
    return _patched(evil, tmp_path / f"redirect{kind}.rar", edits, slice(0x1B, 0x41), 0x17, 4)


def rar3_windows_symlink(tmp_path: Path) -> Path:
    """rar3-solid.rar with its first entry marked as made on Windows with FILE_ATTRIBUTE_REPARSE_POINT, the way
    RAR3 stores a Windows symlink or junction."""
    solid = RAR_FIXTURES / "rar3-solid.rar"
    # First file header at 0x14 (CRC16 = low half of CRC32 of 0x16..0x40): host OS at 0x23, attributes at 0x30.
    edits = {0x23: bytes([2]), 0x30: (0x420).to_bytes(4, "little")}
    return _patched(solid, tmp_path / "winlink.rar", edits, slice(0x16, 0x40), 0x14, 2)


@pytest.mark.parametrize("make, name, kind", [
    (lambda tmp: rar5_redirect(tmp, 4), "up", "a hard link"),
    (lambda tmp: rar5_redirect(tmp, 5), "up", "a file copy"),
    (rar3_windows_symlink, "stest1.txt", "a Windows symlink or junction"),
])
def test_rar_entries_that_are_not_plain_files_or_folders_are_refused(tmp_path, make, name, kind):
    import rarfile

    if not RAR_FIXTURES.is_dir():
        pytest.skip(f"fixtures {RAR_FIXTURES} not present")
    archive = make(tmp_path)
    entry = rarfile.RarFile(archive).infolist()[0]
    assert entry.filename == name and entry.is_file()  # what the guard used to trust
    target = tmp_path / "out"
    with pytest.raises(ActrecError, match=rf"refusing to unpack: entry '{name}' is {kind}, not a plain file"):
        unpack_rar(archive, target)
    assert not target.exists() and not list(tmp_path.glob(".out*"))


def test_download_onto_a_full_disk_stops_at_once_and_resumes(server, small_disk):
    from tests.helpers import fill_disk

    disk = small_disk(4)
    filler = fill_disk(disk, leave=4096)
    server.no_length = True  # no size to check ahead: the disk fills mid-write
    dest = disk / "data.bin"
    with pytest.raises(ActrecError) as err:
        fetch(server, dest)
    part = disk / "data.bin.part"
    assert str(err.value) == (f"no space left on device writing {part}; free space and run the command again to "
                              f"resume")
    assert len(server.ranges) == 1  # a full disk is not a network fault: no retries
    assert not dest.exists() and not (disk / "data.bin.sha256").exists()
    filler.unlink()
    server.no_length = False
    assert fetch(server, dest).read_bytes() == PAYLOAD
