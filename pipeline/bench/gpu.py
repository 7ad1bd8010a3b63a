"""Row 6: stage-one throughput on a GPU (ResNet-152 bare forward, autocast, channels_last), and the device name."""

from __future__ import annotations

import logging

import torch

from pipeline.bench.common import UCF101_FRAMES, row

log = logging.getLogger(__name__)


def device_name() -> str:
    """The GPU the bench can use, or the CPU and its thread count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.get_num_threads()} threads)"


def bench_gpu(command: str) -> dict:
    """Row 6: ResNet-152 frames/s at 112 and 224 px in the GPU's autocast dtype; 'no GPU' without CUDA."""
    if not torch.cuda.is_available():
        return row("6", "GPU stage one (resnet152, bf16, channels_last)", "no GPU", None, "report", None, command)
    from pipeline.bench.embed import bare_forward_fps
    from pipeline.device import autocast_dtype, resolve_device
    from pipeline.features.backbone import load_backbone

    log.info("bench row 6: GPU stage one")
    device = resolve_device("cuda")
    model = load_backbone("resnet152", "none", device)
    amp = autocast_dtype(device, "auto")
    rates = {img: bare_forward_fps(model, 4096, 256, img, device, amp) for img in (112, 224)}
    return row("6", "GPU stage one: resnet152 bare forward, bf16, channels_last",
               ", ".join(f"{img}px: {fps:.0f} frames/s ({UCF101_FRAMES / fps / 60:.1f} min for UCF-101)"
                         for img, fps in rates.items()), None, "report", None, command,
               gpu=torch.cuda.get_device_name(0), frames_per_second={str(k): v for k, v in rates.items()})
