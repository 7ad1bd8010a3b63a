"""Local weight files: read a state dict (.pt / .pth / .safetensors) safely, load it strictly, identify it.

Every library's backbone loads a local file through ``load_into``: ``torch.load(weights_only=True)``
(no pickled code runs), and a file that does not fit the architecture is refused with the first
missing, unexpected and mis-shaped keys named, never loaded half.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ActrecError
from pipeline.fileio import sha256_file
from pipeline.optional import require

SHOWN = 3  # mismatching keys named per kind: enough to see the pattern (a prefix, another model), still one line


def identity(path: str) -> str:
    """What the features' weights are when they come from a file: its SHA-256 (the cache fingerprint's value)."""
    file = Path(path)
    if not file.is_file():
        return f"missing file {file}"
    stat = file.stat()
    return "sha256:" + _file_sha256(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Cached per (path, size, mtime): the fingerprint is asked for more than once per run."""
    return sha256_file(path)


def read_state_dict(path: Path) -> dict:
    """Parameter name -> tensor from ``path``; unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints and
    DataParallel's ``module.`` prefix."""
    try:
        if path.suffix == ".safetensors":
            state = require("safetensors.torch", f"{path}: reading .safetensors").load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ActrecError:  # safetensors not installed: require's install line
        raise
    except Exception as exc:  # pickle, zip and safetensors errors differ; each means "not a state dict"
        raise ActrecError(f"{path}: cannot be read as a torch state dict ({' '.join(str(exc).split())[:200]})"
                          ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ActrecError(f"{path}: expected a state dict (parameter name -> tensor), got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(model: nn.Module, path: Path, what: str, ignored: tuple[str, ...] = ()) -> None:
    """Load the state dict at ``path`` into ``model`` strictly; keys under the ``ignored`` prefixes (a head the
    backbone removed) are dropped first. ``what`` names the architecture in the refusal."""
    if not path.is_file():
        raise ActrecError(f"embed.weights={path}: no such file")
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(ignored)}
    problems = mismatches(model.state_dict(), state)
    if problems:
        raise ActrecError(f"{path} does not fit {what} ({'; '.join(problems)}); it must be a state dict of the "
                          f"model named in embed.backbone")
    model.load_state_dict(state, strict=True)


def mismatches(expected: dict, state: dict) -> list[str]:
    """The first missing, unexpected and mis-shaped keys of ``state`` against ``expected``, one phrase per kind."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} is {list(state[k].shape)}, the model's {list(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    for kind, items in (("missing keys", missing), ("unexpected keys", unexpected), ("size mismatch", shapes)):
        if items:
            more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
            problems.append(f"{len(items)} {kind}: {', '.join(items[:SHOWN])}{more}")
    return problems


def hub_download_hint(repo: str) -> str:
    """Where weights from the Hugging Face Hub go on a machine without internet (timm and OpenCLIP say the same)."""
    from huggingface_hub import constants

    return (f"they come from the Hugging Face Hub repo {repo}: download it on a machine online "
            f"(`huggingface-cli download {repo}`), copy it into the Hugging Face cache {constants.HF_HUB_CACHE} "
            f"here and set HF_HUB_OFFLINE=1")
