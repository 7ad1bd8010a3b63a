"""The one device/precision vocabulary every stage uses."""

from __future__ import annotations

import pytest
import torch

from pipeline.device import autocast_dtype, dtype_name, resolve_device
from pipeline.errors import ActrecError

CPU = torch.device("cpu")


def test_devices_and_precision():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert autocast_dtype(CPU, "auto") is None and autocast_dtype(CPU, "bf16") is None
    assert autocast_dtype(torch.device("cuda"), "fp16") == torch.float16
    assert autocast_dtype(torch.device("cuda"), "fp32") is None
    assert dtype_name(None) == "float32" and dtype_name(torch.bfloat16) == "bfloat16"
    if not torch.cuda.is_available():
        with pytest.raises(ActrecError, match="no CUDA device.*--set train.device=auto or cpu"):
            resolve_device("cuda", option="train.device")


def emulating_gpu(native: bool):
    """torch.cuda.is_bf16_supported as a GPU answers it: emulated bf16 counts unless including_emulation=False."""
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native or including_emulation
    return is_bf16_supported


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_precision_picks_bf16_only_where_the_gpu_has_it(monkeypatch, native, expected):
    # A V100 or T4 "supports" bf16 only by emulation: auto must pick fp16 there (training then scales the loss).
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulating_gpu(native))
    assert autocast_dtype(torch.device("cuda"), "auto") == expected
    assert autocast_dtype(torch.device("cuda"), "bf16") == torch.bfloat16  # asked for explicitly: honoured
