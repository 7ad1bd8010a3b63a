"""`actrec download` per format: HMDB-51 (a RAR of RARs over real HTTP on 127.0.0.1), synthetic, folder."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import config_from_dict, load_config
from pipeline.errors import ActrecError
from pipeline.inputs.acquire import acquire, archive_url
from pipeline.inputs.formats import load_split
from tests.fileserver import FileServer
from tests.helpers import PROJECT_ROOT, tiny_overrides
from tests.rarwrite import write_rar

CLASSES = {"brush_hair": ["April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "Blonde_being_brushed_(1)_h_f_np1_le_goo_0.avi"],
           "clap": ["#20_Rhythm_clapping_aka_Shave_and_a_haircut_clap_u_nm_np1_fr_med_0.avi"]}


@pytest.fixture
def hmdb_server(tmp_path):
    """HMDB-51's two archives as they are built: hmdb51_org.rar holds one RAR per class; the splits RAR a folder."""
    inner = {}
    for cls, videos in CLASSES.items():
        write_rar(tmp_path / f"{cls}.rar", {f"{cls}/{v}": f"video {v}".encode() for v in videos})
        inner[f"{cls}.rar"] = (tmp_path / f"{cls}.rar").read_bytes()
    write_rar(tmp_path / "hmdb51_org.rar", inner)
    splits = {f"testTrainMulti_7030_splits/{cls}_test_split{k}.txt":
              "".join(f"{v} {1 + (i + k) % 2} \n" for i, v in enumerate(videos)).encode()
              for cls, videos in CLASSES.items() for k in (1, 2, 3)}
    write_rar(tmp_path / "test_train_splits.rar", splits)
    server = FileServer({name: (tmp_path / name).read_bytes() for name in ("hmdb51_org.rar", "test_train_splits.rar")})
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def hmdb_config(root: Path, server):
    return config_from_dict({
        "data": {"format": "hmdb51", "videos": str(root / "hmdb51" / "videos"),
                 "splits": str(root / "hmdb51" / "splits")},
        "download": {"videos_url": server.url("hmdb51_org.rar"), "splits_url": server.url("test_train_splits.rar"),
                     "dest": str(root / "hmdb51"), "retries": 1, "timeout": 5.0},
    })


def test_hmdb51_download_unpacks_every_class_archive_and_resumes(rar_tool, hmdb_server, tmp_path):
    cfg = hmdb_config(tmp_path / "out", hmdb_server)
    acquire(cfg)
    videos = Path(cfg.data.videos)
    for cls, names in CLASSES.items():
        assert sorted(p.name for p in (videos / cls).iterdir()) == sorted(names)
        assert (videos / cls / names[0]).read_bytes() == f"video {names[0]}".encode()
    assert sorted(p.name for p in Path(cfg.data.splits).iterdir()) == sorted(
        f"{cls}_test_split{k}.txt" for cls in CLASSES for k in (1, 2, 3))
    split = load_split(cfg)  # the videos are all there
    assert split.class_names == ["brush_hair", "clap"] and len(split.train + split.val + split.test) == 3
    assert (tmp_path / "out" / "hmdb51" / "hmdb51_org.rar.sha256").is_file()

    requests = len(hmdb_server.ranges)
    acquire(cfg)
    assert len(hmdb_server.ranges) == requests  # everything was already done

    # Interrupted after one class: the run goes on from where it stopped, and fetches nothing again.
    (tmp_path / "out" / "hmdb51" / "hmdb51_org.rar.unpacked").unlink()
    for path in (videos / "clap").iterdir():
        path.unlink()
    (videos / "clap").rmdir()
    acquire(cfg)
    assert sorted(p.name for p in (videos / "clap").iterdir()) == CLASSES["clap"]
    assert len(hmdb_server.ranges) == requests


def test_each_format_downloads_its_own_archives_and_refuses_another_formats(tmp_path):
    from pipeline.inputs import formats

    cfg = load_config(PROJECT_ROOT / "configs" / "hmdb51.yaml")
    assert archive_url(cfg, "videos") == formats.get("hmdb51").URLS["videos"]
    assert archive_url(cfg, "splits").endswith("/test_train_splits.rar")
    assert archive_url(load_config(None), "videos") == formats.get("ucf101").URLS["videos"]
    mirror = load_config(None, ["download.videos_url=http://127.0.0.1:1/UCF101.rar"])
    assert archive_url(mirror, "videos") == "http://127.0.0.1:1/UCF101.rar"

    wrong = load_config(None, ["data.format=hmdb51", f"data.videos={tmp_path}/v", f"data.splits={tmp_path}/s",
                               f"download.dest={tmp_path}/d",
                               f"download.videos_url={formats.get('ucf101').URLS['videos']}"])
    with pytest.raises(ActrecError, match=r"download.videos_url=\S+UCF101.rar is data.format=ucf101's archive but "
                                          r"data.format=hmdb51"):
        acquire(wrong)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_every_format_module_declares_what_the_registry_asks(tmp_path):
    from pipeline.config import DataConfig, key_choices
    from pipeline.inputs import formats

    assert formats.names() == ["folder", "hmdb51", "ucf101"]
    for name in formats.names():
        module = formats.get(name)
        assert module.NAME == name and module.SPLITS and set(module.URLS) <= {"videos", "splits"}
        for function in ("acquire", "load_split", "embed_items", "split_files_signature", "write_synthetic_splits"):
            assert callable(getattr(module, function)), (name, function)
        # data.split takes exactly the values the format reads
        split = next(f for f in dataclasses.fields(formats.FORMATS.get(name).settings) if f.name == "split")
        assert key_choices(split) == list(module.SPLITS)
    assert key_choices(next(f for f in dataclasses.fields(DataConfig) if f.name == "format")) == formats.names()
    result = CliRunner().invoke(cli, ["synth", "--format", "nope"])
    assert result.exit_code == 2 and "'nope' is not a format; one of folder, hmdb51, ucf101" in result.output
    with pytest.raises(ActrecError, match=r"data.format: unknown format 'nope'. Allowed: folder, hmdb51, ucf101"):
        formats.get("nope")


def test_synthetic_config_generates_and_a_folder_needs_nothing(tmp_path, caplog):
    result = CliRunner().invoke(cli, ["download", "-c", str(PROJECT_ROOT / "configs" / "synthetic.yaml"),
                                      *[f"--set={o}" for o in tiny_overrides(tmp_path)]])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "splits" / "classInd.txt").is_file() and len(list(tmp_path.glob("videos/*/*.avi"))) == 32
    assert not (tmp_path / "data").exists()  # nothing downloaded

    folder = load_config(PROJECT_ROOT / "configs" / "folder.yaml", [f"data.videos={tmp_path}/mine",
                                                                    f"data.splits={tmp_path}/mine_splits"])
    with caplog.at_level(logging.INFO, logger="pipeline.inputs.acquire"):
        acquire(folder)
    assert "nothing to download" in caplog.text
    assert not (tmp_path / "mine").exists() and not (tmp_path / "mine_splits").exists()


@pytest.fixture
def rar_tool():
    from pipeline.inputs.download import find_rar_tool

    try:
        return find_rar_tool()
    except ActrecError as exc:
        pytest.skip(str(exc))
