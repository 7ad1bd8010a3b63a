"""Row 6: stage one on a GPU: ResNet-152 at 112 and 224 px (bf16, channels_last), bare and as a whole embed.

For each image size: the bare forward's frames/s (batches already normalised on the device), the whole
embed's frames/s on a synthetic set at UCF-101's frame size (320x240) with embed.workers 2, 4, 8 and all
cores, the efficiency (best embed / bare), where the embed's time went (waiting for decode, packing,
submitting, waiting for the device, writing) and the projected minutes for all of UCF-101. Sized to
finish in a few minutes on one GPU. Without CUDA the real run reports "no GPU"; ``--quick`` runs the
same code on the CPU with a tiny model so the row is exercised by the smoke test.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import UCF101_FRAMES, Sizes, derive, row, synthetic_dataset
from pipeline.config import Config

log = logging.getLogger(__name__)


@dataclass
class GpuSizes:
    """The GPU rows' work: ``groups`` x ``clips`` x 2 classes videos of ``frames`` frames."""
    backbone: str = "resnet152"
    img_dims: tuple = (112, 224)
    workers: tuple = (2, 4, 8, "all")
    groups: int = 25
    clips: int = 4               # 200 videos
    frames: int = 120            # 24,000 frames per embed
    width: int = 320
    height: int = 240
    batch_size: int = 256
    bare_frames: int = 8192


GPU = GpuSizes()
# The smoke test's job is to run every line of the row, not to measure: in-process decode and one worker.
CPU_SMOKE = GpuSizes(backbone="resnet18", img_dims=(32, 48), workers=(0, 1), groups=3, clips=1, frames=8,
                     width=64, height=48, batch_size=8, bare_frames=32)


def device_name() -> str:
    """The GPU the bench can use, or the CPU and its thread count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.get_num_threads()} threads)"


def bench_gpu(cfg: Config, quick: bool, work: Path, command: str) -> list[dict]:
    """Rows 6-112 and 6-224 (6-32 / 6-48 in the CPU smoke test); 'no GPU' rows without CUDA outside --quick."""
    cuda = torch.cuda.is_available()
    if not cuda and not quick:
        return [row(f"6-{img}", f"GPU stage one at {img}px: resnet152, bf16, channels_last", "no GPU", None,
                    "report", None, command) for img in GPU.img_dims]
    sizes = GPU if cuda else CPU_SMOKE
    device = torch.device("cuda" if cuda else "cpu")
    dataset = synthetic_dataset(cfg, Sizes(frames=sizes.frames, width=sizes.width, height=sizes.height,
                                           backbone=sizes.backbone, batch_size=sizes.batch_size),
                                work, groups=sizes.groups, clips=sizes.clips)
    dataset = derive(dataset, {"embed.device": device.type, "embed.precision": "auto"})
    return [_row(dataset, sizes, img, device, command) for img in sizes.img_dims]


def bare_device_fps(model, frames: int, batch_size: int, img_dim: int, device, amp_dtype) -> float:
    """The ceiling: forward passes on a batch already normalised on the device, one synchronisation at the end."""
    from pipeline.embed.backbone import normalize

    batch = torch.randint(0, 256, (batch_size, 3, img_dim, img_dim), dtype=torch.uint8)
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        x = normalize(batch.contiguous(memory_format=torch.channels_last), device)
        model(x)  # warm-up: allocator and kernel selection
        _sync(device)
        steps = max(1, -(-frames // batch_size))
        started = time.perf_counter()
        for _ in range(steps):
            model(x)
        _sync(device)
    return steps * batch_size / (time.perf_counter() - started)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _row(dataset: Config, sizes: GpuSizes, img: int, device, command: str) -> dict:
    from pipeline.device import autocast_dtype
    from pipeline.embed.backbones import resolve_backbone
    from pipeline.embed.run import embed
    from pipeline.embed.workers import auto_workers

    log.info("bench row 6: stage one at %dpx on %s", img, device)
    amp = autocast_dtype(device, "auto")
    model = resolve_backbone(sizes.backbone, "none").build(device)
    bare = bare_device_fps(model, sizes.bare_frames, sizes.batch_size, img, device, amp)
    del model
    runs = {}
    for workers in sizes.workers:
        count = auto_workers() + 1 if workers == "all" else workers  # all cores decode; the feeder mostly waits
        cfg = derive(dataset, {"embed.img_dim": img, "embed.workers": count,
                               "cache.path": dataset.cache.path.replace(".h5", f"-{img}-{workers}.h5")})
        summary = embed(cfg)
        runs[str(workers)] = {"workers": count, "frames_per_second": summary["frames_per_second"],
                              "timing": summary["timing"]}
    best_key = max(runs, key=lambda k: runs[k]["frames_per_second"])
    best = runs[best_key]["frames_per_second"]
    minutes = UCF101_FRAMES / best / 60 if best else float("inf")
    prefix = "" if device.type == "cuda" else "no GPU; CPU smoke run: "
    value = (f"{prefix}bare {bare:.0f} frames/s; embed {best:.0f} frames/s (workers {best_key}); "
             f"UCF-101 in {minutes:.1f} min")
    precision = str(amp).replace("torch.", "") if amp else "fp32"
    name = f"stage one at {img}px: {sizes.backbone}, {precision}, channels_last, embed / bare"
    return row(f"6-{img}", name, value, best / bare, "report", None, command,
               device=device_name(), backbone=sizes.backbone, img_dim=img, batch_size=sizes.batch_size,
               bare_forward_fps=round(bare, 1), embed=runs, best_workers=best_key,
               where_the_time_went=runs[best_key]["timing"], ucf101_minutes=round(minutes, 2),
               videos=2 * sizes.groups * sizes.clips, frames_per_video=sizes.frames,
               frame_size=f"{sizes.width}x{sizes.height}")
