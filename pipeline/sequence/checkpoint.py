"""Checkpoints: what a training run writes after each epoch, and how evaluate and predict read it back.

A checkpoint holds only tensors and plain Python values (loaded with ``weights_only=True``, so a
file that carries code is refused): model, optimizer and grad-scaler state, the RNG state, the
completed epoch count, the resolved config, class names, the cache fingerprint and the feature
width. Writes are atomic: a crash leaves the previous checkpoint in place.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

from pipeline.config import Config, config_from_dict
from pipeline.errors import ActrecError
from pipeline.fileio import atomic_path
from pipeline.sequence.models import MODELS, build_model

CHECKPOINT_FORMAT = 1
CHECKPOINT_KEYS = ("format", "epoch", "model", "optimizer", "scaler", "rng", "config", "class_names", "fingerprint",
                   "feature_dim", "best_val_acc", "best_val_loss", "best_epoch", "history")


def make_checkpoint(cfg: Config, model, optimizer, scaler, state: dict, cache, device, clip_seconds: float,
                    trained_on: str = "training") -> dict:
    """Everything a resumed run, evaluate and predict need, as tensors and plain values.

    ``clip_seconds`` is how much time a training clip covers on average: prediction windows span as much.
    ``trained_on``: 'training' (the model validation chose from) or 'training+validation' (train.refit's model,
    trained for the epoch count ``best_epoch`` that validation chose).
    """
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": state["epoch"],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng},
        "config": cfg.to_dict(),
        "class_names": list(cache.class_names),
        "fingerprint": cache.fingerprint,
        "feature_dim": int(cache.dim),
        "best_val_acc": float(state["best_val_acc"]),
        "best_val_loss": float(state["best_val_loss"]),
        "best_epoch": int(state["best_epoch"]),
        "history": [dict(row) for row in state["history"]],
        "clip_seconds": float(clip_seconds),
        "trained_on": trained_on,
        "model_source": MODELS.get(cfg.model.name).source(),  # what to install where the model is missing
    }


def restore_rng(rng: dict, device: torch.device) -> None:
    """Put back the torch (and CUDA) RNG state a checkpoint recorded, so dropout continues the same stream."""
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda"):
        torch.cuda.set_rng_state_all(rng["cuda"])


def restore_scaler(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Put back a checkpoint's grad-scaler state. A run that continues in fp16 after bf16 or fp32 epochs has no
    scale to restore (their scaler was off): its scaler starts from the initial scale (the resume warns that the
    precision changed)."""
    if state:
        scaler.load_state_dict(state)


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    """Write atomically: the old checkpoint survives any failure."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoint, f)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by ``actrec train`` (tensors and plain values only), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ActrecError(f"checkpoint {path} not found; run `actrec train` first (or check run.dir / the path)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways (zip, pickle, storage errors) on a damaged file
        with open(path, "rb") as f:
            head = f.read(4)
        foreign = head.strip(b"\x00") and head != b"PK\x03\x04"  # torch.save writes a zip; a crash leaves zeros
        # A complete zip that weights_only refuses holds more than tensors and plain values: someone else's file.
        if foreign or (zipfile.is_zipfile(path) and "Weights only" in str(exc)):
            raise ActrecError(f"{path} is not a checkpoint written by `actrec train`") from exc
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise ActrecError(f"checkpoint {path} is truncated or corrupt ({reason}). Delete "
                          f"it; best.pt / last.pt beside it may still be intact, or train again") from exc
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise ActrecError(f"{path} is not an actrec checkpoint (missing {', '.join(missing)})")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise ActrecError(f"{path}: checkpoint format {ckpt['format']} is not the supported {CHECKPOINT_FORMAT}; "
                          f"train again with this version")
    check_model_available(ckpt, path)
    return ckpt


def check_model_available(ckpt: dict, path: Path) -> None:
    """A checkpoint of a model from another package names that package when it is not installed here."""
    name = ckpt["config"]["model"]["name"]
    try:
        MODELS.get(name, "model.name")
    except ActrecError as exc:
        source = ckpt.get("model_source") or "a plug-in"
        raise ActrecError(f"{path} holds model {name!r}, which comes from {source}: not available here ({exc}). "
                          f"Install that package (or put its module on PYTHONPATH)") from None


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """The trained model of a loaded checkpoint, in eval mode on the CPU."""
    cfg = config_from_dict(ckpt["config"], source="checkpoint")
    model = build_model(cfg, ckpt["feature_dim"], len(ckpt["class_names"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()
