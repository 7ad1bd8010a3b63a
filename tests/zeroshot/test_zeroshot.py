"""actrec zeroshot: class embeddings equal open_clip's own encode_text on the same prompts, video scores equal a
direct computation on the cached frame embeddings, stored embeddings are reused, bad prompts are one line."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import ActrecError
from pipeline.experiments.report import report_text
from pipeline.inputs.formats import load_split
from pipeline.zeroshot.prompts import CLIP_UCF101_TEMPLATES, class_prompts, class_words
from pipeline.zeroshot.run import zeroshot
from tests.helpers import PROJECT_ROOT, tiny_overrides

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def clip_cache(tiny_dataset_root, tmp_path_factory):
    """The tiny dataset embedded by a seeded random OpenCLIP ViT-S-32 saved as a state dict, and that model."""
    from pipeline.embed.run import embed

    root = tmp_path_factory.mktemp("clip")
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = open_clip.create_model("ViT-S-32", pretrained=None, force_image_size=64, pretrained_text=False)
    model.eval()
    weights = root / "clip.pt"
    torch.save(model.state_dict(), weights)
    cfg = load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", tiny_overrides(tiny_dataset_root) + [
        "embed.backbone=open_clip/ViT-S-32", f"embed.weights={weights}", "embed.img_dim=64", "embed.resize=crop",
        f"cache.path={root}/clip.h5", f"zeroshot.dir={root}/zeroshot"])
    embed(cfg)
    return cfg, model


def cached_frames(cfg) -> dict[str, np.ndarray]:
    """Every video's rows, read with h5py from the file itself."""
    with h5py.File(cfg.cache.path, "r") as f:
        n = int(f["index/count"][0])
        return {(name.decode() if isinstance(name, bytes) else name): f["features"][o:o + k].astype(np.float32)
                for name, o, k in zip(f["index/names"][:n], f["index/offsets"][:n], f["index/lengths"][:n])}


def test_scores_equal_open_clips_own_text_tower_on_the_cached_frames(clip_cache, tmp_path):
    cfg, model = clip_cache
    cfg = cfg.updated(zeroshot={"dir": str(tmp_path / "zs")})
    metrics = zeroshot(cfg)
    split = load_split(cfg, check_videos=False)
    tokenizer = open_clip.get_tokenizer("ViT-S-32")
    prompts = class_prompts(split.class_names, "clip-ucf101")
    with torch.no_grad():
        per_class = [model.encode_text(tokenizer(prompts[name]), normalize=True).mean(dim=0) for name in prompts]
        classes = torch.nn.functional.normalize(torch.stack(per_class), dim=-1).numpy()
        scale = float(model.logit_scale.exp())
    stored = np.load(metrics["zeroshot"]["text_embeddings"])
    np.testing.assert_allclose(stored["vectors"], classes, atol=1e-5)
    frames = cached_frames(cfg)
    expected = {}
    for item in split.test:
        unit = frames[item.name] / np.linalg.norm(frames[item.name], axis=1, keepdims=True)
        mean = unit.mean(axis=0)
        expected[item.name] = scale * (mean / np.linalg.norm(mean)) @ classes.T
    labels = np.array([item.label for item in split.test])
    predicted = np.array([expected[item.name].argmax() for item in split.test])
    assert metrics["top1"] == pytest.approx((predicted == labels).mean())
    rows = {row["video"]: row for row in csv.DictReader(open(tmp_path / "zs" / "predictions.csv"))}
    for item in split.test:
        probabilities = np.exp(expected[item.name] - expected[item.name].max())
        probabilities /= probabilities.sum()
        row = rows[item.name]
        assert row["label1"] == split.class_names[int(probabilities.argmax())]
        assert float(row["probability1"]) == pytest.approx(probabilities.max(), abs=1e-5)
    assert metrics["zeroshot"]["prompts_per_class"] == {name: 48 for name in split.class_names}
    assert "zeroshot-mean" in report_text([str(tmp_path / "zs")])


def test_stored_class_embeddings_are_reused_and_remade_when_the_prompts_change(clip_cache, tmp_path, monkeypatch):
    from pipeline.embed.backbones import Backbone

    cfg, _ = clip_cache
    first = zeroshot(cfg.updated(zeroshot={"dir": str(tmp_path / "a")}))
    monkeypatch.setattr(Backbone, "build_text", lambda *a, **k: pytest.fail("the text tower ran again"))
    again = zeroshot(cfg.updated(zeroshot={"dir": str(tmp_path / "b"), "score": "max"}))
    assert again["zeroshot"]["text_embeddings"] == first["zeroshot"]["text_embeddings"]
    assert again["model"] == "zeroshot-max"
    monkeypatch.undo()
    templates = tmp_path / "templates.txt"
    templates.write_text("# one template\na clip of someone {}.\n")
    other = zeroshot(cfg.updated(zeroshot={"dir": str(tmp_path / "c"), "templates": str(templates)}))
    assert other["zeroshot"]["text_embeddings"] != first["zeroshot"]["text_embeddings"]
    assert other["zeroshot"]["prompts_per_class"] == {name: 1 for name in load_split(cfg, False).class_names}


def test_class_names_become_words_and_clips_templates_are_the_published_48():
    assert [class_words(n) for n in ("ApplyEyeMakeup", "brush_hair", "YoYo", "HTMLParser")] == [
        "apply eye makeup", "brush hair", "yo yo", "html parser"]
    assert len(CLIP_UCF101_TEMPLATES) == 48 and CLIP_UCF101_TEMPLATES[0] == "a photo of a person {}."
    assert CLIP_UCF101_TEMPLATES[-1] == "a demonstration of the person practicing {}."


BAD_PROMPTS = {
    "empty file": ("", r"is empty; give each class a list of prompts"),
    "a class without prompts": ("BlockMoveRight: ['a block moving right']\n", r"class '\w+' has no prompts"),
    "unknown class": ("Juggling: ['juggling']\n", r"'Juggling' is not a class of the split files"),
    "not a mapping": ("- a\n- b\n", r"expected a mapping of class name -> list of prompts"),
    "a 10,000-character prompt": (None, r"is 10000 characters \(at most 1000\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROMPTS))
def test_bad_prompt_files_are_one_line_and_write_nothing(clip_cache, tmp_path, case):
    cfg, _ = clip_cache
    text, message = BAD_PROMPTS[case]
    if text is None:
        names = load_split(cfg, check_videos=False).class_names
        text = "".join(f"{name}: ['{'x' * 10000 if i == 0 else 'y'}']\n" for i, name in enumerate(names))
    path = tmp_path / "prompts.yaml"
    path.write_text(text)
    with pytest.raises(ActrecError, match=message):
        zeroshot(cfg.updated(zeroshot={"prompts": str(path), "dir": str(tmp_path / "zs")}))
    assert not (tmp_path / "zs").exists()


def test_templates_and_caches_zero_shot_cannot_use_are_refused(clip_cache, tmp_path):
    from tests.orderdata import order_config, write_order_dataset

    cfg, _ = clip_cache
    bad = tmp_path / "bad.txt"
    bad.write_text("a video of someone\n")
    with pytest.raises(ActrecError, match=r"template 'a video of someone' must hold \{\} exactly once"):
        zeroshot(cfg.updated(zeroshot={"templates": str(bad), "dir": str(tmp_path / "zs")}))
    with pytest.raises(ActrecError, match=r"zeroshot.templates=nope.txt: neither a built-in set"):
        zeroshot(cfg.updated(zeroshot={"templates": "nope.txt", "dir": str(tmp_path / "zs")}))
    order = order_config(tmp_path / "order", f"cache.path={tmp_path}/order.h5", f"zeroshot.dir={tmp_path}/zs")
    write_order_dataset(order)
    with pytest.raises(ActrecError, match=r"holds features of resnet18; zero-shot classification needs a cache of an "
                                          r"OpenCLIP image tower"):
        zeroshot(order)
    assert not (tmp_path / "zs").exists()
