from pathlib import Path

import pytest

from pipeline.config import config_from_dict, load_config
from pipeline.config_doc import describe_keys
from pipeline.errors import ActrecError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    from pipeline.inputs import formats

    assert cfg.data.split in formats.get(cfg.data.format).SPLITS
    assert cfg.cache.path.endswith(".h5") and "{" not in cfg.cache.path
    assert "{" not in cfg.run.dir


def test_ucf101_config_has_seed_hyperparameters_and_the_weights_preprocessing():
    cfg = load_config(ROOT / "configs" / "ucf101.yaml")
    assert (cfg.embed.backbone, cfg.embed.weights, cfg.embed.img_dim, cfg.embed.resize) == ("resnet152", "imagenet",
                                                                                          224, "crop")
    assert (cfg.train.sequence_length, cfg.model.latent_dim, cfg.model.hidden_dim) == (40, 512, 1024)
    assert cfg.model.bidirectional and cfg.model.attention and cfg.train.batch_size == 16


def test_overrides_and_placeholders():
    cfg = load_config(ROOT / "configs" / "synthetic.yaml", ["embed.backbone=resnet50", "train.lr=1e-3", "data.split=2"])
    assert cfg.embed.backbone == "resnet50" and cfg.train.lr == 0.001 and cfg.data.split == 2
    assert "resnet50" in cfg.cache.path and cfg.run.dir.endswith("split2")


def test_weights_path_gives_file_name_safe_tag():
    cfg = load_config(None, ["embed.weights=/some/dir/my weights.pth"])
    assert "my-weights" in cfg.cache.path


@pytest.mark.parametrize("override, fragment", [
    ("train.foo=1", "unknown key 'train.foo'"),
    ("nosuch.key=1", "unknown section 'nosuch'"),
    ("train.lr=abc", "train.lr: expected a number"),
    ("train.lr=.nan", "expected a finite number"),
    ("train.grad_clip=.inf", "expected a finite number"),
    ("train.epochs=2.5", "train.epochs: expected a whole number"),
    ("train.epochs=0", "below the minimum 1"),
    ("data.split=4", "Allowed values: 1, 2, 3, random, random-groups"),
    ("model.attention=maybe", "expected true or false"),
    ("trainepochs", "expected section.key=value"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ActrecError, match="--set") as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_bad_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ActrecError, match=r"bad.yaml: unknown key 'train.epochz'"):
        load_config(path)


def test_roundtrip_through_dict():
    cfg = load_config(ROOT / "configs" / "synthetic.yaml")
    again = config_from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_every_key_documented():
    doc = (ROOT / "configs" / "README.md").read_text()
    missing = [key for key, *_ in describe_keys() if f"`{key}`" not in doc]
    assert not missing, f"configs/README.md lacks {missing}"


def test_config_reference_is_up_to_date():
    from pipeline.config_doc import render

    assert (ROOT / "configs" / "README.md").read_text() == render(), \
        "regenerate: python -m pipeline.config_doc > configs/README.md"


def test_empty_section_in_file_takes_overrides(tmp_path):
    path = tmp_path / "sparse.yaml"
    path.write_text("train:\nmodel:\n  name: meanpool\n")
    cfg = load_config(path, ["train.epochs=3"])
    assert cfg.train.epochs == 3 and cfg.model.name == "meanpool"


@pytest.mark.parametrize("text, message", [
    ("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n", r"'lr' is given twice \(lines 2 and 4\)"),
    ("train:\n  lr: 0.1\nmodel:\n  name: tcn\ntrain:\n  epochs: 3\n", r"'train' is given twice \(lines 1 and 5\)"),
])
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, text, message):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ActrecError, match=rf"twice.yaml: {message}"):
        load_config(path)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_config_is_refused_not_taken_as_the_ucf101_job(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ActrecError, match="empty.yaml is empty; a config needs at least one section"):
        load_config(path)


@pytest.mark.parametrize("override", ["model.hidden_dim=8000000", "model.latent_dim=100000000",
                                      "train.batch_size=10000000", "eval.batch_size=10000000"])
def test_sizes_that_cannot_fit_in_memory_are_refused(override):
    with pytest.raises(ActrecError, match=rf"--set {override}: {override.split('=')[0]}: .* above the maximum"):
        load_config(ROOT / "configs" / "synthetic.yaml", [override])


def test_plugins_lists_every_registered_plugin_with_its_keys():
    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.registry import BUILTINS, registry

    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for kind in BUILTINS:
        for name in registry(kind).names():
            assert any(line.split()[:2] == [kind, name] for line in lines), (kind, name)
    bilstm = next(line for line in lines if line.split()[:2] == ["model", "bilstm"])
    assert "latent_dim, hidden_dim, layers, bidirectional, attention, dropout" in bilstm
    only = CliRunner().invoke(cli, ["plugins", "optimizer"]).output.splitlines()
    assert [line.split()[1] for line in only[1:]] == ["adam", "adamw"]
