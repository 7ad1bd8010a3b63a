"""Where and in what precision a stage runs: one vocabulary (device, precision, threads) for every stage.

Embed, train, evaluate and predict each have a ``device`` (``auto | cpu | cuda``), a ``precision``
(``auto | bf16 | fp16 | fp32``) and a CPU ``threads`` key; these functions turn them into torch objects.
``auto`` precision is bf16 on a GPU that computes it natively, fp16 on an older GPU (training then scales
the loss), and fp32 on the CPU, where autocast would only slow the small models down.
"""

from __future__ import annotations

import torch

from pipeline.errors import ActrecError


def resolve_device(name: str, option: str = "embed.device") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is an error naming ``option``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        fix = "--device auto or cpu" if option.startswith("--") else f"--set {option}=auto or cpu"
        raise ActrecError(f"{option} cuda: torch sees no CUDA device on this machine; use {fix}")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: bf16 or fp16 on CUDA, None (fp32) on the CPU."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if native_bf16() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def native_bf16() -> bool:
    """Whether the GPU computes bf16 in hardware (Ampere and later).

    torch's own query counts emulated bf16 too (V100, T4), where it runs far slower than fp16; ask for the
    native answer where the installed torch can give it.
    """
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.5 has no including_emulation and answers natively
        return torch.cuda.is_bf16_supported()


def dtype_name(dtype: torch.dtype | None) -> str:
    """'bfloat16', 'float16' or 'float32' (None = no autocast): how precision is written into artefacts."""
    return str(dtype or torch.float32).replace("torch.", "")


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch's intra-op work (0 = keep torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
