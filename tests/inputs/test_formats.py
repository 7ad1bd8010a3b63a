"""Dataset formats: HMDB-51 split files, a folder of your own videos, the dispatch, and the whole pipeline on each."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cache.reader import FeatureCache
from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.embed.run import embed
from pipeline.errors import ActrecError
from pipeline.inputs.formats import embed_items, load_split, split_files_signature
from pipeline.inputs.synthetic import class_specs, generate_dataset
from pipeline.sequence.evaluate import evaluate
from pipeline.sequence.train import train
from tests.helpers import PROJECT_ROOT, tiny_overrides

GROUPS = r"_g(\d+)_"


def format_config(root: Path, fmt: str, *extra: str):
    split = ["data.split=auto", f"data.group_pattern={GROUPS}"] if fmt == "folder" else []
    return load_config(PROJECT_ROOT / "configs" / "synthetic.yaml",
                       tiny_overrides(root) + [f"data.format={fmt}"] + split + list(extra))


def touch(path: Path, data: bytes = b"not decoded here") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("fmt", ["ucf101", "hmdb51", "folder"])
def test_embed_train_evaluate_on_each_format(tmp_path, fmt):
    cfg = format_config(tmp_path, fmt)
    generate_dataset(cfg)
    summary = embed(cfg)
    assert summary["embedded"] == 4 * 8 and summary["failed"] == 0
    cache = FeatureCache(cfg.cache.path)
    names = [name for name, *_ in class_specs(4)]
    assert cache.class_names == (names if fmt == "ucf101" else sorted(names))  # no classInd: sorted names
    train(cfg)
    metrics = evaluate(cfg)
    # ucf101, hmdb51: split 1 tests on groups 1-2 of 8; folder: round(0.3 * 8) = 2 groups of each class.
    assert metrics["num_videos"] == 4 * 2 and metrics["split"] == str(cfg.data.split)
    assert metrics["leaked_groups"] == 0 and 0.0 <= metrics["top1"] <= 1.0
    assert metrics["backbone"] == "resnet18/none/32" and metrics["cache"] == cfg.cache.path
    split = load_split(cfg)
    assert {item.name for item in split.test} <= set(cache.names)
    test_groups = {(item.label, re.search(GROUPS, item.name)[1]) for item in split.test}
    assert len(test_groups) == 4 * 2  # two whole groups of each class
    if fmt != "folder":
        assert {group for _, group in test_groups} == {"01", "02"}
    if fmt == "hmdb51":
        assert len(list(Path(cfg.data.splits).glob("*_test_split1.txt"))) == 4
    elif fmt == "folder":
        assert sorted(p.name for p in Path(cfg.data.splits).glob("*.txt")) == [
            "classInd.txt", "classPairs.txt", "testlist01.txt", "trainlist01.txt"]


def write_hmdb(root: Path, classes=("ride_bike", "brush_hair", "clap"), videos=4) -> Path:
    """HMDB-51-format split files (as shipped: LF, a trailing space) and empty stand-in videos."""
    for cls in classes:
        for k in (1, 2, 3):
            lines = []
            for v in range(videos):
                flag = [1, 2, 0, 1][(v + k) % 4]
                lines.append(f"{cls}_clip#{v}_f_cm_np1_ri_med_{v}.avi {flag} \n")
                touch(root / "videos" / cls / f"{cls}_clip#{v}_f_cm_np1_ri_med_{v}.avi")
            touch(root / "splits" / f"{cls}_test_split{k}.txt", "".join(lines).encode())
    return root


def hmdb_config(root: Path, *extra: str):
    return load_config(None, [f"data.videos={root}/videos", f"data.splits={root}/splits", "data.format=hmdb51",
                              "data.val_fraction=0.5", *extra])


def test_hmdb51_split_files_give_sorted_classes_flags_and_a_random_validation_share(tmp_path):
    cfg = hmdb_config(write_hmdb(tmp_path))
    split = load_split(cfg)
    assert split.class_names == ["brush_hair", "clap", "ride_bike"]
    # split 1, flag [1, 2, 0, 1][(v + 1) % 4]: v=0 test, v=1 unused, v=2 and v=3 train.
    assert sorted(i.name for i in split.test) == sorted(f"{c}/{c}_clip#0_f_cm_np1_ri_med_0" for c in split.class_names)
    assert len(split.train) + len(split.val) == 3 * 2 and len(split.val) == 3  # one of each class's two
    assert not any(i.name.endswith("_1") for i in split.train + split.val + split.test)  # flag 0: unused
    assert all(i.label == split.class_names.index(i.name.split("/")[0]) for i in split.test)
    names, items = embed_items(load_config(None, [*_keys(cfg), "embed.splits=all"]))
    assert len(items) == 3 * 4 and names == split.class_names  # every video is used by one split or another


def _keys(cfg) -> list[str]:
    return [f"data.videos={cfg.data.videos}", f"data.splits={cfg.data.splits}", "data.format=hmdb51"]


def test_hmdb51_bad_files_are_named_with_their_line(tmp_path):
    root = write_hmdb(tmp_path)
    bad = root / "splits" / "clap_test_split1.txt"
    original = bad.read_bytes()
    bad.write_bytes(original + b"clap_extra.avi 3\n")
    with pytest.raises(ActrecError, match=r"clap_test_split1.txt:5: malformed line 'clap_extra.avi 3'.*flag 0"):
        load_split(hmdb_config(root))
    bad.write_bytes(original + b"clap_missing.avi 1\n")
    with pytest.raises(ActrecError, match=r"clap_test_split1.txt:5: video 'clap_missing.avi' not found.*"
                                          r"actrec download"):
        load_split(hmdb_config(root))
    assert load_split(hmdb_config(root), check_videos=False).train  # train/evaluate do not need the videos
    bad.write_bytes(original)
    (root / "splits" / "clap_test_split2.txt").unlink()
    with pytest.raises(ActrecError, match=r"clap_test_split2.txt not found: class 'clap'"):
        load_split(hmdb_config(root, "data.split=2"))
    with pytest.raises(ActrecError, match=r"no HMDB-51 split files"):
        load_split(hmdb_config(root, f"data.splits={tmp_path / 'videos'}"))


def write_folder(root: Path, classes=("walk", "run", "jump"), groups=5, clips=2) -> Path:
    for cls in classes:
        for g in range(1, groups + 1):
            for c in range(1, clips + 1):
                touch(root / "videos" / cls / f"{cls}_g{g:02d}_c{c}.{['mp4', 'avi', 'mkv'][c % 3]}")
    return root


def folder_config(root: Path, *extra: str):
    return load_config(None, [f"data.videos={root}/videos", f"data.splits={root}/splits", "data.format=folder",
                              "data.split=auto", *extra])


def test_folder_auto_split_is_stratified_group_aware_written_and_then_fixed(tmp_path):
    root = write_folder(tmp_path)
    cfg = folder_config(root, f"data.group_pattern={GROUPS}", "data.test_fraction=0.4")
    split = load_split(cfg)
    assert split.class_names == ["jump", "run", "walk"]
    for label in range(3):  # round(0.4 * 5) = 2 of each class's 5 groups, both clips of each
        test = [i for i in split.test if i.label == label]
        assert len(test) == 4 and len({i.group for i in test}) == 2
    train_groups = {(i.label, i.group) for i in split.train + split.val}
    assert not train_groups & {(i.label, i.group) for i in split.test} and split.leaked_groups == 0
    splits = Path(cfg.data.splits)
    assert (splits / "classInd.txt").read_bytes() == b"1 jump\r\n2 run\r\n3 walk\r\n"
    lines = (splits / "trainlist01.txt").read_text().splitlines()
    pattern = re.compile(r"(jump|run|walk)/\1_g\d\d_c\d\.(mp4|avi|mkv) [123]")
    assert len(lines) == 18 and all(pattern.fullmatch(line) for line in lines)
    assert len((splits / "testlist01.txt").read_text().splitlines()) == 12
    signature = split_files_signature(cfg)

    # A later run reads the files: another fraction or seed changes nothing until they are deleted.
    again = load_split(folder_config(root, f"data.group_pattern={GROUPS}", "data.test_fraction=0.2", "data.seed=5"))
    assert [i.name for i in again.test] == [i.name for i in split.test]
    assert split_files_signature(cfg) == signature
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        (splits / name).unlink()
    other = load_split(folder_config(root, f"data.group_pattern={GROUPS}", "data.test_fraction=0.4", "data.seed=5"))
    assert {i.name for i in other.test} != {i.name for i in split.test}


def test_folder_without_groups_draws_videos_and_reads_your_own_lists(tmp_path):
    root = write_folder(tmp_path, groups=5, clips=2)
    split = load_split(folder_config(root, "data.test_fraction=0.3"))
    assert len(split.test) == 3 * 3 and len({i.group for i in split.test}) == 9  # one group per video

    mine = tmp_path / "mine"
    touch(mine / "trainlist01.txt", b"walk/walk_g01_c1.avi 3\r\nrun/run_g01_c2.mkv\r\njump/jump_g02_c1.avi 1\r\n")
    touch(mine / "testlist01.txt", b"walk/walk_g02_c2.mkv\n")
    cfg = load_config(None, [f"data.videos={root}/videos", f"data.splits={mine}", "data.format=folder",
                             "data.split=1", "data.val_fraction=0"])
    split = load_split(cfg)  # no classInd.txt: the classes are the sorted folders
    assert [i.name for i in split.train] == ["walk/walk_g01_c1", "run/run_g01_c2", "jump/jump_g02_c1"]
    assert [i.label for i in split.train] == [2, 1, 0] and [i.name for i in split.test] == ["walk/walk_g02_c2"]
    touch(mine / "testlist01.txt", b"walk/walk_g02_c2.mkv\nwalk/walk_g09_c1.mp4\n")
    with pytest.raises(ActrecError, match=r"testlist01.txt:2: video 'walk/walk_g09_c1.mp4' not found.*delete the "
                                          r"split files"):
        load_split(cfg)


@pytest.mark.parametrize("make_bad, message", [
    (lambda v: (v / "sit").mkdir(), r"videos/sit: class folder with no videos"),
    (lambda v: touch(v / "run" / "notes.txt"), r"run/notes.txt: not a video \(expected .avi, .m4v, .mkv"),
    (lambda v: touch(v / "walk" / "walk_g01_c1.mov"), r"walk_g01_c1.mov: same name as walk_g01_c1.\w+ in class"),
    (lambda v: touch(v / "clip.avi"), r"videos/clip.avi: a file directly in data.videos"),
    (lambda v: touch(v / "run" / "more" / "x.avi"), r"run/more: a folder inside class folder 'run'"),
    (lambda v: touch(v / "run" / "run take 2.avi"), r"'run/run take 2' contains whitespace"),
    (lambda v: touch(v / "sit down" / "sit_g01_c1.avi"), r"videos/sit down: class folder name contains whitespace"),
    (lambda v: touch(v / "run" / "run_take2.avi"), r"run_take2.avi: 'run/run_take2' does not match "
                                                   r"data.group_pattern"),
])
def test_folder_bad_input_is_one_line_and_nothing_is_written(tmp_path, make_bad, message):
    root = write_folder(tmp_path, groups=3, clips=1)
    make_bad(root / "videos")
    touch(root / "videos" / "run" / ".DS_Store")  # hidden files are not videos and are ignored
    with pytest.raises(ActrecError, match=message):
        load_split(folder_config(root, f"data.group_pattern={GROUPS}"))
    assert not (root / "splits").exists()


def test_split_values_that_do_not_fit_the_format_are_refused(tmp_path):
    with pytest.raises(ActrecError, match=r"data.split: 'random' is not allowed. Allowed values: auto, 1 \(with "
                                          r"data.format=folder\)$"):
        folder_config(tmp_path, "data.split=random")
    with pytest.raises(ActrecError, match=r"data.split: 'auto' is not allowed. Allowed values: 1, 2, 3, random, "
                                          r"random-groups \(with data.format=ucf101\)$"):
        load_config(None, ["data.split=auto"])
    with pytest.raises(ActrecError, match=r"has 0 groups; it needs exactly one"):
        load_split(folder_config(write_folder(tmp_path), r"data.group_pattern=_g\d+_"))


def test_synth_switches_format_and_removes_the_other_formats_split_files(tmp_path):
    result = CliRunner().invoke(cli, ["synth", "-c", str(PROJECT_ROOT / "configs" / "synthetic.yaml"),
                                      *[f"--set={o}" for o in tiny_overrides(tmp_path)], "--format", "hmdb51"])
    assert result.exit_code == 0, result.output
    splits = tmp_path / "splits"
    assert len(list(splits.glob("*_test_split*.txt"))) == 4 * 3 and not (splits / "classInd.txt").exists()
    line = (splits / f"{class_specs(4)[0][0]}_test_split1.txt").read_text().splitlines()[0]
    assert re.fullmatch(r"v_\w+_g01_c01\.avi 2 ", line)  # group 1 is tested in split 1
    manifest = json.loads((splits / "synth.json").read_text())
    assert manifest["settings"]["format"] == "hmdb51"

    generate_dataset(format_config(tmp_path, "ucf101"))
    assert not list(splits.glob("*_test_split*.txt")) and (splits / "trainlist01.txt").is_file()
    assert "format" not in json.loads((splits / "synth.json").read_text())["settings"]  # UCF-101 as before
    generate_dataset(format_config(tmp_path, "folder"))
    assert sorted(p.name for p in splits.iterdir()) == ["classPairs.txt", "synth.json"]  # splits: on first use
