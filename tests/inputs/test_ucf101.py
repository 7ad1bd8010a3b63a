from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ActrecError
from pipeline.inputs.formats.ucf101 import embed_items, frames_dir, load_split, read_class_index
from tests.helpers import PROJECT_ROOT, SHARED_FIXTURES, tiny_overrides

REAL_SPLITS = SHARED_FIXTURES / "ucf101-splits"


def make_config(root: Path, *extra: str):
    return load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", tiny_overrides(root) + list(extra))


def write_splits(folder: Path, classes, train, test, newline="\r\n", splits=(1,)):
    """Official-format split files: ``train`` lines get 1-based labels from ``classes`` unless given."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classInd.txt").write_bytes(newline.join(f"{i + 1} {c}" for i, c in enumerate(classes)).encode()
                                          + newline.encode())
    for k in splits:
        lines = [line if " " in line else f"{line} {classes.index(line.split('/')[0]) + 1}" for line in train]
        (folder / f"trainlist{k:02d}.txt").write_bytes((newline.join(lines) + newline * 2).encode())
        (folder / f"testlist{k:02d}.txt").write_bytes((newline.join(test) + newline).encode())


def video_lines(classes, groups, clips):
    return [f"{c}/v_{c}_g{g:02d}_c{k:02d}.avi" for c in classes for g in groups for k in clips]


def groups_of(items):
    return {(item.label, item.group) for item in items}


def numbers_of(items):
    return {item.group for item in items}


@pytest.mark.skipif(not REAL_SPLITS.is_dir(), reason="real UCF-101 split files not available")
def test_real_split_one_files(tmp_path):
    cfg = make_config(tmp_path, f"data.splits={REAL_SPLITS}", "data.videos=/nonexistent/UCF-101")
    split = load_split(cfg, check_videos=False)
    assert len(split.class_names) == 101
    assert len(split.train) + len(split.val) == 9537 and len(split.test) == 3783
    assert split.val and split.leaked_groups == 0
    train, val, test = groups_of(split.train), groups_of(split.val), groups_of(split.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert {item.group for item in split.test} == set(range(1, 8))
    assert {item.group for item in split.train + split.val} == set(range(8, 26))
    # classInd order, not sorted order: sorting would swap these pairs.
    names = split.class_names
    assert (names[34], names[35], names[46], names[47]) == ("Hammering", "HammerThrow", "JumpingJack", "JumpRope")
    by_name = {item.name: item for item in split.train + split.val + split.test}
    assert by_name["HammerThrow/v_HammerThrow_g01_c01"].label == 35
    assert by_name["JumpRope/v_JumpRope_g01_c01"].label == 47
    # The HandstandPushups folder holds v_HandStandPushups_* files.
    handstand = by_name["HandstandPushups/v_HandStandPushups_g01_c01"]
    assert handstand.label == 36 and handstand.path == Path("/nonexistent/UCF-101/HandstandPushups/"
                                                            "v_HandStandPushups_g01_c01.avi")
    assert (handstand.group, handstand.clip) == (1, 1)


def test_labels_come_from_class_index_not_folder_order(tmp_path):
    classes = ["Zebra", "Apple", "Mango"]
    write_splits(tmp_path / "splits", classes, video_lines(classes, [2, 3], [1]), video_lines(classes, [1], [1]))
    split = load_split(make_config(tmp_path, "data.val_fraction=0"), check_videos=False)
    assert split.class_names == classes
    assert {item.name.split("/")[0]: item.label for item in split.train} == {"Zebra": 0, "Apple": 1, "Mango": 2}
    assert split.val == []


def test_crlf_lf_and_blank_lines_parse_the_same(tmp_path):
    classes = ["Walk", "Run"]
    train, test = video_lines(classes, [3, 4, 5], [1, 2]), video_lines(classes, [1, 2], [1])
    write_splits(tmp_path / "a" / "splits", classes, train, test, newline="\r\n")
    write_splits(tmp_path / "b" / "splits", classes, train, test, newline="\n")
    a = load_split(make_config(tmp_path / "a"), check_videos=False)
    b = load_split(make_config(tmp_path / "b"), check_videos=False)
    assert [i.name for i in a.train + a.val] == [i.name for i in b.train + b.val]
    assert [i.name for i in a.test] == [i.name for i in b.test] and len(a.test) == 4
    assert read_class_index(tmp_path / "a" / "splits" / "classInd.txt") == classes


def test_validation_is_whole_training_groups_and_seeded(tmp_path):
    classes = ["Walk", "Run", "Jump"]
    write_splits(tmp_path / "splits", classes, video_lines(classes, range(3, 13), [1, 2, 3]),
                 video_lines(classes, [1, 2], [1]))
    split = load_split(make_config(tmp_path, "data.val_fraction=0.2"), check_videos=False)
    # Whole group numbers across all classes, as the official splits draw test groups: 20% of 10.
    assert len(numbers_of(split.val)) == 2 and not numbers_of(split.train) & numbers_of(split.val)
    assert {(label, len({g for lab, g in groups_of(split.val) if lab == label})) for label in range(3)} == {
        (0, 2), (1, 2), (2, 2)}  # every class holds out the same two group numbers
    assert not numbers_of(split.val) & numbers_of(split.test)
    again = load_split(make_config(tmp_path, "data.val_fraction=0.2"), check_videos=False)
    other = load_split(make_config(tmp_path, "data.val_fraction=0.2", "data.seed=7"), check_videos=False)
    assert again.val == split.val and other.val != split.val


def test_random_split_warns_and_counts_leaked_groups(tmp_path, caplog):
    classes = ["Walk", "Run"]
    write_splits(tmp_path / "splits", classes, video_lines(classes, range(3, 11), range(1, 6)),
                 video_lines(classes, [1, 2], range(1, 6)))
    split = load_split(make_config(tmp_path, "data.split=random", "data.val_fraction=0"), check_videos=False)
    assert len(split.test) == round(0.2 * 100) and len(split.train) == 80
    leaked = numbers_of(split.test) & numbers_of(split.train)
    assert split.leaked_groups == len(leaked) > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"{split.leaked_groups} of {len(numbers_of(split.test))} test group numbers" \
        in warnings[0]


def test_random_groups_split_keeps_groups_on_one_side(tmp_path, caplog):
    classes = ["Walk", "Run"]
    write_splits(tmp_path / "splits", classes, video_lines(classes, range(3, 11), range(1, 6)),
                 video_lines(classes, [1, 2], range(1, 6)))
    split = load_split(make_config(tmp_path, "data.split=random-groups"), check_videos=False)
    assert split.leaked_groups == 0 and split.name == "random-groups"
    sides = [numbers_of(split.train), numbers_of(split.val), numbers_of(split.test)]
    assert all(not (a & b) for i, a in enumerate(sides) for b in sides[i + 1:])
    assert len(split.test) == 2 * 2 * 5  # 20% of 10 groups per class, 5 clips each
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_synthetic_dataset_splits_load_with_videos(tiny_dataset_config):
    split = load_split(tiny_dataset_config)
    assert split.train and split.val and split.test
    assert all(item.path.is_file() for item in split.train + split.val + split.test)
    assert not groups_of(split.train + split.val) & groups_of(split.test)
    names, items = embed_items(tiny_dataset_config)
    assert names == split.class_names
    assert [i.name for i in items] == sorted(i.name for i in split.train + split.val + split.test)
    item = items[0]
    assert frames_dir(tiny_dataset_config, item) == Path(tiny_dataset_config.data.frames) / item.name


def test_embed_items_all_takes_the_union_of_present_splits(tmp_path):
    classes = ["Walk", "Run"]
    write_splits(tmp_path / "splits", classes, video_lines(classes, [3, 4], [1]), video_lines(classes, [1], [1]),
                 splits=(1, 2))
    (tmp_path / "splits" / "testlist02.txt").write_text("\r\n".join(video_lines(classes, [1, 2], [1])))
    cfg = make_config(tmp_path, "embed.splits=all")
    names, items = embed_items(cfg, check_videos=False)
    assert names == classes
    # g02 is only in testlist02: the union holds it once, and every other video once too.
    assert [i.name for i in items] == sorted(line[:-4] for line in video_lines(classes, [1, 2, 3, 4], [1]))
    for name in ("trainlist01.txt", "trainlist02.txt"):
        (tmp_path / "splits" / name).unlink()
    with pytest.raises(ActrecError, match="no official split files"):
        embed_items(cfg, check_videos=False)


def test_missing_split_file_names_it_and_the_fix(tmp_path):
    with pytest.raises(ActrecError, match=r"classInd\.txt not found.*actrec synth.*actrec download"):
        load_split(make_config(tmp_path))
    write_splits(tmp_path / "splits", ["Walk"], video_lines(["Walk"], [2, 3], [1]), video_lines(["Walk"], [1], [1]))
    (tmp_path / "splits" / "testlist01.txt").unlink()
    with pytest.raises(ActrecError, match=r"testlist01\.txt not found"):
        load_split(make_config(tmp_path), check_videos=False)


def test_missing_video_names_file_line_and_entry(tmp_path):
    write_splits(tmp_path / "splits", ["Walk"], video_lines(["Walk"], [2, 3], [1]), video_lines(["Walk"], [1], [1]))
    with pytest.raises(ActrecError, match=r"trainlist01\.txt:1: video 'Walk/v_Walk_g02_c01\.avi' not found"):
        load_split(make_config(tmp_path))


@pytest.mark.parametrize("line, message", [
    ("Swim/v_Swim_g02_c01.avi 1", r"trainlist01\.txt:2: class 'Swim'.*not in classInd"),
    ("Walk/v_Walk_g02_c01.avi 2", r"trainlist01\.txt:2: label 2 (\(Run\) )?disagrees"),
    ("Walk/v_Walk_g02_c01.avi 9", r"trainlist01\.txt:2: label '9' is not a class index"),
    ("Walk/v_Walk_g02.avi 1", r"trainlist01\.txt:2: malformed video entry 'Walk/v_Walk_g02\.avi'"),
    ("Walk/v_Run_g02_c01.avi 1", r"trainlist01\.txt:2: file 'v_Run_g02_c01\.avi' does not belong"),
    ("Walk/v_Walk_g02_c01.avi 1 extra", r"trainlist01\.txt:2: malformed line"),
    ("Walk/v_Walk_g03_c01.avi 1", r"trainlist01\.txt:2: .*already listed on line 1"),
])
def test_bad_split_lines_name_file_line_and_value(tmp_path, line, message):
    classes = ["Walk", "Run"]
    write_splits(tmp_path / "splits", classes, ["Walk/v_Walk_g03_c01.avi 1", line], video_lines(classes, [1], [1]))
    with pytest.raises(ActrecError, match=message):
        load_split(make_config(tmp_path), check_videos=False)


def test_bad_class_index_lines(tmp_path):
    path = tmp_path / "classInd.txt"
    path.write_bytes(b"1 Walk\r\n3 Run\r\n")
    with pytest.raises(ActrecError, match=r"classInd\.txt:2: class index 3 out of order"):
        read_class_index(path)
    path.write_bytes(b"1 Walk\r\nRun\r\n")
    with pytest.raises(ActrecError, match=r"classInd\.txt:2: malformed line 'Run'"):
        read_class_index(path)


@pytest.mark.parametrize("split_name", ["1", "random-groups"])
def test_no_clip_has_its_time_reversed_twin_on_the_other_side(tiny_dataset_config, split_name):
    """The synthetic twins share their frames within a group number: held-out sides share no group number."""
    cfg = tiny_dataset_config
    cfg.data.split = split_name if split_name != "1" else 1
    split = load_split(cfg, check_videos=False)
    train, val, test = numbers_of(split.train), numbers_of(split.val), numbers_of(split.test)
    assert val and not (train & val) and not (train & test) and not (val & test)
    assert split.leaked_groups == 0
