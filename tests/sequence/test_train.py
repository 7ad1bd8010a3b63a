"""Stage two end to end on tiny real HDF5 caches whose classes differ only in temporal order."""

import csv
import re
from pathlib import Path

import pytest
import torch

from pipeline.embed.fingerprint import embed_fingerprint
from pipeline.errors import ActrecError
from pipeline.sequence.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from pipeline.sequence.train import train
from tests.orderdata import (
    CLASSES,
    assert_same_training_state,
    interrupt_at_validation,
    order_config,
    write_order_dataset,
)


@pytest.fixture
def order_run(tmp_path):
    cfg = order_config(tmp_path)
    write_order_dataset(cfg)
    return cfg


def test_bilstm_learns_temporal_order_and_writes_its_artefacts(tmp_path):
    cfg = order_config(tmp_path, "train.epochs=12", "train.lr=0.01", "model.name=bilstm")
    write_order_dataset(cfg, with_test=False)  # training must not need (or read) the test list
    summary = train(cfg)
    run = Path(cfg.run.dir)
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 12 and summary["epochs"] == 12 and not summary["skipped"]
    assert min(float(row["train_loss"]) for row in history[-4:]) < 0.6 * float(history[0]["train_loss"])
    # Chance is 0.25; an order-blind model gets about 0.5 (it can only tell the pairs apart).
    assert summary["best_val_acc"] >= 0.75
    for name in ("config.yaml", "curves.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).stat().st_size > 0
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt["class_names"] == CLASSES and ckpt["feature_dim"] == 6
    assert ckpt["fingerprint"] == embed_fingerprint(cfg) and ckpt["config"] == cfg.to_dict()
    assert ckpt["epoch"] == ckpt["best_epoch"] and ckpt["best_val_acc"] == summary["best_val_acc"]
    model = model_from_checkpoint(ckpt)
    x = torch.randn(2, 8, 6)
    assert model(x).shape == (2, 4) and not model.training


def test_one_epoch_then_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    keys = ["model.dropout=0.3", "cache.load=disk", "train.schedule=none"]  # cosine depends on train.epochs
    whole = order_config(tmp_path / "a", "train.epochs=2", *keys)
    write_order_dataset(whole)
    train(whole)
    shared = [f"cache.path={whole.cache.path}", f"data.splits={whole.data.splits}", *keys]
    train(order_config(tmp_path / "b", "train.epochs=1", *shared))
    resumed = order_config(tmp_path / "b", "train.epochs=2", *shared)
    train(resumed, resume=True)
    a = load_checkpoint(Path(whole.run.dir) / "checkpoints" / "last.pt")
    b = load_checkpoint(Path(resumed.run.dir) / "checkpoints" / "last.pt")
    assert a["epoch"] == 2
    assert_same_training_state(a, b)


def test_interrupted_cosine_run_resumes_exactly(tmp_path, monkeypatch):
    keys = ["train.epochs=3", "train.schedule=cosine", "train.optimizer=adamw", "train.weight_decay=0.01",
            "model.dropout=0.3"]
    whole = order_config(tmp_path / "a", *keys)
    write_order_dataset(whole)
    train(whole)
    interrupted = order_config(tmp_path / "b", *keys, f"cache.path={whole.cache.path}",
                               f"data.splits={whole.data.splits}")
    interrupt_at_validation(monkeypatch, call=2)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted)
    monkeypatch.undo()
    last = Path(interrupted.run.dir) / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1
    train(interrupted, resume=True)
    assert_same_training_state(load_checkpoint(Path(whole.run.dir) / "checkpoints" / "last.pt"),
                               load_checkpoint(last))


def test_interrupted_run_continues_when_run_again(order_run, monkeypatch):
    interrupt_at_validation(monkeypatch, call=2)
    with pytest.raises(KeyboardInterrupt):
        train(order_run)
    monkeypatch.undo()
    last = Path(order_run.run.dir) / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1
    summary = train(order_run)  # same config, no --resume needed: picks up after epoch 1
    assert summary["epochs"] == 2 and load_checkpoint(last)["epoch"] == 2


def test_finished_run_is_skipped_and_a_changed_one_refused(order_run, caplog):
    train(order_run)
    last = Path(order_run.run.dir) / "checkpoints" / "last.pt"
    stamp = last.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="pipeline"):
        summary = train(order_run)
    assert summary["skipped"] and "training already done" in caplog.text
    assert last.stat().st_mtime_ns == stamp

    root = Path(order_run.run.dir).parent
    with pytest.raises(ActrecError, match=r"model.hidden_dim: 16 -> 32.*another run.dir.*delete"):
        train(order_config(root, "model.hidden_dim=32"))
    with pytest.raises(ActrecError, match=r"train.epochs=2 \(2 done\); pass --resume"):
        train(order_config(root, "train.epochs=3"))
    assert last.stat().st_mtime_ns == stamp  # nothing was overwritten
    extended = train(order_config(root, "train.epochs=3"), resume=True)
    assert extended["epochs"] == 3 and not extended["skipped"]


def test_resume_without_a_checkpoint_is_refused(order_run):
    with pytest.raises(ActrecError, match="no checkpoint at .*last.pt"):
        train(order_run, resume=True)


def test_cache_made_with_other_embed_settings_is_refused(order_run):
    other = order_config(Path(order_run.run.dir).parent, "embed.img_dim=48",
                         f"cache.path={order_run.cache.path}")
    with pytest.raises(ActrecError, match=r"img_dim: cache has 32, config gives 48"):
        train(other)
    assert not Path(other.run.dir, "checkpoints").exists()


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"format": 1, "epoch": 1, "weights": torch.ones(3)}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(ActrecError, match=f"no space left on device writing {path}; free space"):
        save_checkpoint({"format": 1, "epoch": 2, "weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["weights"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_truncated_or_foreign_checkpoint_gives_a_clear_error(order_run, tmp_path):
    train(order_run)
    last = Path(order_run.run.dir) / "checkpoints" / "last.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(ActrecError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(ActrecError, match="not an actrec checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(ActrecError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ActrecError, match="not a checkpoint written by"):
        load_checkpoint(tmp_path / "notes.txt")
    # A corrupt last.pt stops training with the same message instead of a traceback.
    last.write_bytes(b"\x00" * 100)
    with pytest.raises(ActrecError, match="truncated or corrupt"):
        train(order_run)


def test_dataloader_workers_read_from_disk_and_change_nothing(tmp_path):
    main = order_config(tmp_path / "a", "train.epochs=1", "cache.load=disk", "train.workers=0")
    write_order_dataset(main)
    shared = [f"cache.path={main.cache.path}", f"data.splits={main.data.splits}"]
    workers = order_config(tmp_path / "b", "train.epochs=1", "cache.load=disk", "train.workers=2", *shared)
    train(main)
    train(workers)
    assert_same_training_state(load_checkpoint(Path(main.run.dir) / "checkpoints" / "last.pt"),
                               load_checkpoint(Path(workers.run.dir) / "checkpoints" / "last.pt"))


def test_finished_run_accepts_other_eval_clips_but_an_unfinished_one_does_not(order_run, monkeypatch):
    order_run.eval.clips = 1
    interrupt_at_validation(monkeypatch, call=2)
    with pytest.raises(KeyboardInterrupt):
        train(order_run)
    monkeypatch.undo()
    order_run.eval.clips = 3  # would change which epoch becomes best.pt mid-run
    with pytest.raises(ActrecError, match="eval.clips: 1 -> 3"):
        train(order_run)
    order_run.eval.clips = 1
    train(order_run)
    order_run.eval.clips = 3  # finished: evaluating with more clips needs no retraining
    assert train(order_run)["skipped"] is True


def test_history_records_the_device_and_a_resume_elsewhere_warns(order_run, caplog):
    train(order_run)
    rows = list(csv.DictReader(open(Path(order_run.run.dir) / "history.csv")))
    assert [(row["device"], row["precision"]) for row in rows] == [("cpu", "float32")] * 2
    # As if the first two epochs had run on a GPU in bf16: resuming on the CPU continues, with a warning.
    last = Path(order_run.run.dir) / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    for row in ckpt["history"]:
        row.update(device="cuda", precision="bfloat16")
    torch.save(ckpt, last)
    more = order_config(Path(order_run.run.dir).parent, "train.epochs=3")
    with caplog.at_level("WARNING", logger="pipeline"):
        train(more, resume=True)
    assert "ran its first 2 epochs on cuda in bfloat16 and continues on cpu in float32" in caplog.text
    rows = list(csv.DictReader(open(Path(order_run.run.dir) / "history.csv")))
    assert [row["device"] for row in rows] == ["cuda", "cuda", "cpu"]


def test_extending_a_cosine_run_says_how_the_rate_jumps(tmp_path, caplog):
    cfg = order_config(tmp_path, "train.epochs=2", "train.schedule=cosine", "train.lr=0.01")
    write_order_dataset(cfg)
    train(cfg)
    longer = order_config(tmp_path, "train.epochs=4", "train.schedule=cosine", "train.lr=0.01")
    with caplog.at_level("WARNING", logger="pipeline"):
        train(longer, resume=True)
    # At epoch 2 the 2-epoch cosine had reached 0; the 4-epoch one is at half the rate.
    assert "train.epochs 2 -> 4 with the cosine schedule" in caplog.text and "goes from 0 to 0.005" in caplog.text


def refit_outputs(cfg):
    checkpoints = Path(cfg.run.dir) / "checkpoints"
    return load_checkpoint(checkpoints / "last.pt"), checkpoints / "refit.pt"


@pytest.mark.slow
def test_refit_trains_a_fresh_model_on_training_and_validation_for_the_chosen_epochs(tmp_path, caplog):
    from pipeline.sequence.evaluate import evaluate

    cfg = order_config(tmp_path, "train.epochs=3", "train.refit=true", "train.schedule=cosine")
    write_order_dataset(cfg)
    with caplog.at_level("INFO", logger="pipeline"):
        summary = train(cfg)
    selected, refit_path = refit_outputs(cfg)
    refit = load_checkpoint(refit_path)
    chosen = selected["best_epoch"]
    assert summary["best_epoch"] == chosen and selected["trained_on"] == "training"
    assert refit["trained_on"] == "training+validation" and refit["epoch"] == chosen
    assert refit["config"]["train"]["epochs"] == chosen and refit["best_epoch"] == chosen
    assert refit["best_val_acc"] == selected["best_val_acc"]
    history = list(csv.DictReader(open(Path(cfg.run.dir) / "refit_history.csv")))
    assert len(history) == chosen and all(row["val_acc"] == "nan" for row in history)
    train_videos, val_videos = (int(n) for n in re.search(r"on (\d+) videos \(validation: (\d+)\)",
                                                           caplog.text).groups())
    assert f"on the {train_videos + val_videos} training and validation videos for the {chosen} epochs" in caplog.text
    # A fresh model: its weights are not the selected model's.
    assert any(not torch.equal(refit["model"][k], selected["model"][k]) for k in refit["model"])
    metrics = evaluate(cfg)
    assert metrics["trained_on"] == "training+validation" and metrics["checkpoint"] == str(refit_path)
    assert metrics["checkpoint_epoch"] == chosen
    assert train(cfg)["skipped"]


@pytest.mark.slow
def test_a_finished_run_can_be_refit_and_an_interrupted_refit_continues_exactly(tmp_path, monkeypatch):
    from pipeline.sequence import train as loop
    from pipeline.sequence.evaluate import evaluate

    keys = ["train.epochs=4", "model.dropout=0.3", "train.lr=0.002"]
    whole = order_config(tmp_path / "a", *keys, "train.refit=true")
    write_order_dataset(whole)
    train(whole)
    shared = [f"cache.path={whole.cache.path}", f"data.splits={whole.data.splits}", *keys]
    plain = order_config(tmp_path / "b", *shared)
    train(plain)
    selected, refit_path = refit_outputs(plain)
    assert selected["best_epoch"] >= 2 and not refit_path.exists()
    real_save, saves = loop.save_checkpoint, []

    def save_then_stop(checkpoint, path):
        saves.append(Path(path).name)
        if saves.count("refit.pt") == 2:
            raise KeyboardInterrupt  # killed after the first refit epoch was saved
        real_save(checkpoint, path)

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)
    later = order_config(tmp_path / "b", *shared, "train.refit=true")  # refit switched on for the finished run
    with pytest.raises(KeyboardInterrupt):
        train(later)
    monkeypatch.undo()
    assert load_checkpoint(refit_path)["epoch"] == 1
    with pytest.raises(ActrecError, match=r"unfinished refit \(1 of \d epochs\); run `actrec train`"):
        evaluate(later)
    assert not train(later)["skipped"]  # continues the refit
    assert_same_training_state(load_checkpoint(Path(whole.run.dir) / "checkpoints" / "refit.pt"),
                               load_checkpoint(refit_path))


def test_refit_without_validation_videos_is_refused(tmp_path):
    cfg = order_config(tmp_path, "train.refit=true", "data.val_fraction=0")
    write_order_dataset(cfg)
    with pytest.raises(ActrecError, match="train.refit: true needs validation videos"):
        train(cfg)


def test_an_fp16_resume_after_bf16_epochs_starts_a_fresh_scaler():
    """bf16 and fp32 runs save the state of a disabled GradScaler ({}); fp16 continues from its initial scale."""
    from pipeline.sequence.checkpoint import restore_scaler

    disabled = torch.amp.GradScaler("cpu", enabled=False).state_dict()
    assert disabled == {}
    fp16 = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**10)
    restore_scaler(fp16, disabled)
    assert fp16.get_scale() == 2.0**10
    trained = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**5).state_dict()
    restore_scaler(fp16, trained)
    assert fp16.get_scale() == 2.0**5
    off = torch.amp.GradScaler("cpu", enabled=False)
    restore_scaler(off, trained)  # fp16 -> bf16: the scale is not needed
    assert not off.is_enabled()
