"""``make bench``: what the two-stage design buys, as ratios measured side by side in one run.

Absolute times on a shared machine are noise; each row therefore compares two things measured in the
same process, one right after the other, with the same thread count. Rows:

1. embed efficiency: whole ``embed`` frames/s over bare backbone forward frames/s (videos and frames sources)
2. embed vs the seed's loading path (PIL per frame, bicubic, fp32 NCHW, DataLoader)
3. a training epoch on the cache vs the seed's loop with the frozen backbone inside (plus the FLOP ratio)
4. disk: cache bytes per frame vs extracted-JPEG bytes per frame
5. scaling: embed time and peak memory for N and 4N videos; stage-two data loading share of a step
6. GPU stage-one throughput (only where CUDA is present)
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch

from pipeline.config import Config, config_from_dict
from pipeline.errors import ActrecError

UCF101_FRAMES = 2_500_000  # about 13,320 videos x 187 frames
UCF101_VIDEOS_TRAIN = 9537
ROWS = ("embed", "seed", "train", "disk", "scaling", "gpu")


@dataclass
class Sizes:
    """How much work each row does; ``quick`` is the smoke-test size."""
    videos: int = 16            # videos of the embed rows (UCF-101 frame size, 320x240); even, >= 6
    frames: int = 48            # frames per video
    width: int = 320
    height: int = 240
    img_dim: int = 112
    backbone: str = "resnet18"
    batch_size: int = 32
    seed_backbone: str = "resnet152"   # row 3: the seed's real backbone
    seed_clips: int = 2                # clips through the seed's loop (scaled to an epoch)
    cache_videos: int = 64             # videos of the 2048-d cache of rows 3-5
    cache_frames: int = 120
    train_steps: int = 8
    repeats: int = 3                   # row 1: alternating embed / bare-forward runs (medians compared)
    scaling_clips: int = 2             # row 5: N = 2 classes x 8 groups x scaling_clips videos, then 4N
    train_changes: dict = field(default_factory=dict)  # changes to configs/ucf101.yaml for rows 3-5


QUICK = Sizes(videos=6, frames=8, width=64, height=48, img_dim=32, batch_size=8, seed_backbone="resnet50",
              seed_clips=1, cache_videos=8, cache_frames=16, train_steps=2, scaling_clips=1, repeats=1,
              train_changes={"train.sequence_length": 8, "train.batch_size": 4, "embed.img_dim": 32,
                             "model.latent_dim": 32, "model.hidden_dim": 32})


def run_benchmarks(cfg: Config, quick: bool = False, out_dir: Path = Path("bench"), readme: Path | None = None,
                   only: tuple[str, ...] = ()) -> dict:
    """Run the rows (all, or ``only``), print the table and write results.json / results.md (and the README)."""
    sizes = QUICK if quick else Sizes()
    threads = cfg.embed.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    selected = [row for row in ROWS if not only or row in only]
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="actrec-bench-") as tmp:
        work = Path(tmp)
        cmd = "actrec bench" + (" --quick" if quick else "")
        if {"embed", "seed", "train", "disk"} & set(selected):
            dataset = _dataset(cfg, sizes, work / "embed", groups=sizes.videos // 2, clips=1)
        if "embed" in selected or "seed" in selected:
            rows += bench_embed(dataset, sizes, f"{cmd} --only embed", with_seed="seed" in selected)
        if {"train", "disk", "scaling"} & set(selected):
            cache_cfg = _feature_cache(cfg, sizes, work / "train")
        if "train" in selected:
            rows.append(bench_training(cache_cfg, dataset, sizes, work, f"{cmd} --only train"))
        if "disk" in selected:
            rows.append(bench_disk(cache_cfg, dataset, f"{cmd} --only disk"))
        if "scaling" in selected:
            rows += bench_scaling(cfg, cache_cfg, sizes, work / "scaling", f"{cmd} --only scaling")
        if "gpu" in selected:
            rows.append(bench_gpu(cfg, sizes, f"{cmd} --only gpu"))
    result = {"quick": quick, "threads": threads, "torch": torch.__version__, "device": _device_name(),
              "sizes": sizes.__dict__, "rows": rows}
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = format_markdown(result)
    (out_dir / "results.md").write_text(markdown)
    if readme is not None:
        write_readme_section(readme, markdown)
    click.echo(markdown)
    return result


# ---------------------------------------------------------------- helpers


def _derive(cfg: Config, changes: dict) -> Config:
    """A copy of ``cfg`` with dotted keys changed (validated like any config)."""
    raw = copy.deepcopy(cfg.to_dict())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    return config_from_dict(raw, source="bench")


def _dataset(cfg: Config, sizes: Sizes, root: Path, groups: int, clips: int) -> Config:
    """A synthetic dataset of 2 classes x ``groups`` x ``clips`` videos at UCF-101's frame size, frames extracted."""
    from pipeline.data.frames import extract_frames
    from pipeline.data.synthetic import generate_dataset

    bench_cfg = _derive(cfg, {
        "data.name": "bench", "data.videos": str(root / "videos"), "data.frames": str(root / "frames"),
        "data.splits": str(root / "splits"), "data.split": 1,
        "synth.classes": 2, "synth.groups": groups, "synth.clips_per_group": clips,
        "synth.frames": sizes.frames, "synth.width": sizes.width, "synth.height": sizes.height,
        "embed.backbone": sizes.backbone, "embed.weights": "none", "embed.img_dim": sizes.img_dim,
        "embed.batch_size": sizes.batch_size, "embed.device": "cpu", "embed.splits": "configured",
        "embed.flip": False, "cache.path": str(root / "cache.h5"),
    })
    generate_dataset(bench_cfg)
    extract_frames(bench_cfg)
    return bench_cfg


def _timed(func, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    value = func(*args, **kwargs)
    return time.perf_counter() - started, value


def _row(row_id: str, name: str, value: str, ratio: float | None, target: str, met: bool | None, command: str,
         **details) -> dict:
    return {"id": row_id, "name": name, "value": value, "ratio": None if ratio is None else round(ratio, 3),
            "target": target, "met": met, "command": command, "details": details}


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.get_num_threads()} threads)"


# ---------------------------------------------------------------- row 1 and 2: embedding


def bare_forward_fps(model, frames: int, batch_size: int, img_dim: int, device, amp_dtype=None) -> float:
    """Backbone frames/s on preloaded uint8 tensors of the embed stage's shape and batch (normalisation included)."""
    from pipeline.features.backbone import forward

    batch = torch.randint(0, 256, (batch_size, 3, img_dim, img_dim), dtype=torch.uint8)
    batch = batch.contiguous(memory_format=torch.channels_last)
    forward(model, batch, device, amp_dtype)  # warm-up: allocator and kernel selection
    if device.type == "cuda":
        torch.cuda.synchronize()
    steps = max(1, -(-frames // batch_size))
    started = time.perf_counter()
    for _ in range(steps):
        forward(model, batch, device, amp_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - started)


def seed_transform(img_dim: int):
    """The seed's per-frame preprocessing: PIL open, bicubic resize, ToTensor, Normalize."""
    from PIL import Image
    from torchvision import transforms

    from pipeline.features.backbone import IMAGENET_MEAN, IMAGENET_STD

    transform = transforms.Compose([transforms.Resize((img_dim, img_dim), Image.BICUBIC), transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return lambda path: transform(Image.open(path).convert("RGB"))


def jpeg_paths(cfg: Config) -> list[Path]:
    """Every extracted JPEG frame of the dataset's videos, in order."""
    from pipeline.data.datasets import embed_items, frames_dir
    from pipeline.data.video import frame_paths

    _, items = embed_items(cfg, check_videos=False)
    return [p for item in items for p in frame_paths(frames_dir(cfg, item))]


def seed_loading_fps(cfg: Config, model) -> float:
    """Frames/s of the seed's path: one PIL JPEG open per frame, per-frame transforms, fp32 NCHW, DataLoader."""
    from torch.utils.data import DataLoader, Dataset

    paths, load = jpeg_paths(cfg), seed_transform(cfg.embed.img_dim)

    class SeedFrames(Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return load(paths[i])

    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    loader = DataLoader(SeedFrames(), batch_size=cfg.embed.batch_size, num_workers=cfg.embed.workers)
    started = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            nchw(batch)
    return len(paths) / (time.perf_counter() - started)


def _embed_fps(cfg: Config, source: str, rep: int = 0) -> tuple[float, dict]:
    """Frames/s of a whole ``embed`` into a fresh cache (decode, preprocess, forward, HDF5 write)."""
    from pipeline.features.embed import embed

    path = cfg.cache.path.replace(".h5", f"-{source}-{rep}.h5")
    summary = embed(_derive(cfg, {"embed.source": source, "cache.path": path}))
    return summary["frames_per_second"], summary


def decode_fps(cfg: Config) -> float:
    """Frames/s of decoding plus resizing alone, in one thread (where the time outside the forward goes)."""
    from pipeline.data.datasets import embed_items
    from pipeline.features.embed import decode_resized

    _, items = embed_items(cfg, check_videos=False)
    seconds, decoded = _timed(lambda: [decode_resized(cfg, item) for item in items])
    return sum(d.length for d in decoded) / seconds


def bench_embed(cfg: Config, sizes: Sizes, command: str, with_seed: bool) -> list[dict]:
    """Rows 1 and 2. Whole embed and bare forward alternate ``sizes.repeats`` times; medians are compared,
    since the bare rate alone drifts by several percent within one process on a shared machine."""
    from pipeline.features.backbone import load_backbone

    device = torch.device("cpu")
    model = load_backbone(cfg.embed.backbone, cfg.embed.weights, device)
    frames = sizes.videos * sizes.frames
    rows, ours = [], {}
    for source in ("videos", "frames"):
        bare, embedded = [], []
        for rep in range(sizes.repeats):
            bare.append(bare_forward_fps(model, frames, cfg.embed.batch_size, cfg.embed.img_dim, device))
            embedded.append(_embed_fps(cfg, source, rep)[0])
        ours[source] = float(np.median(embedded))
        ratio = ours[source] / float(np.median(bare))
        decode = decode_fps(_derive(cfg, {"embed.source": source}))
        rows.append(_row(f"1-{source}", f"embed efficiency, source={source}",
                         f"{ours[source]:.0f} / {np.median(bare):.0f} frames/s", ratio, ">= 0.90", ratio >= 0.90,
                         command, embed_fps=embedded, bare_forward_fps=[round(b, 1) for b in bare],
                         frames=frames, backbone=cfg.embed.backbone, img_dim=cfg.embed.img_dim,
                         batch_size=cfg.embed.batch_size, threads=torch.get_num_threads(),
                         decode_resize_fps_one_thread=round(decode, 1),
                         # Every core runs the forward, so decoding can only hide in what it takes from it.
                         decode_share_of_cpu=round(1 / decode / (torch.get_num_threads() / np.median(bare)
                                                                 + 1 / decode), 3)))
    rows[0]["details"]["with_a_free_core"] = _efficiency_with_a_free_core(cfg, model, frames)
    if with_seed:
        seed = seed_loading_fps(cfg, model)
        speedup = ours["frames"] / seed
        rows.append(_row("2", "embed vs the seed's loading path (same JPEG frames)",
                         f"{ours['frames']:.0f} vs {seed:.0f} frames/s", speedup, "> 1", speedup > 1,
                         command.replace("--only embed", "--only embed --only seed"),
                         ours_frames_fps=ours["frames"], ours_videos_fps=ours["videos"], seed_fps=seed,
                         speedup_videos_source=round(ours["videos"] / seed, 3)))
    return rows


def _efficiency_with_a_free_core(cfg: Config, model, frames: int) -> dict:
    """Row 1 with one thread fewer for the forward pass than there are cores: decoding then has a core of its
    own, as it has next to a GPU. Shows whether the gap is the pipeline or the shared CPU."""
    threads = torch.get_num_threads()
    if threads < 2:
        return {}
    torch.set_num_threads(threads - 1)
    try:
        bare = bare_forward_fps(model, frames, cfg.embed.batch_size, cfg.embed.img_dim, torch.device("cpu"))
        embedded, _ = _embed_fps(_derive(cfg, {"embed.threads": threads - 1}), "videos", rep=99)
    finally:
        torch.set_num_threads(threads)
    return {"forward_threads": threads - 1, "embed_fps": embedded, "bare_forward_fps": round(bare, 1),
            "ratio": round(embedded / bare, 3)}


# ---------------------------------------------------------------- rows 3-5: stage two on a 2048-d cache


def _feature_cache(cfg: Config, sizes: Sizes, root: Path) -> Config:
    """A UCF-101-shaped cache (2048-d float16, 101 classes) of random features, and the config to train on it."""
    from pipeline.config import load_config
    from pipeline.features.cache import FeatureCacheWriter, embed_fingerprint

    ucf = load_config(Path(__file__).resolve().parents[1] / "configs" / "ucf101.yaml") \
        if (Path(__file__).resolve().parents[1] / "configs" / "ucf101.yaml").is_file() else Config()
    train_cfg = _derive(ucf, {"cache.path": str(root / "features.h5"), "cache.load": "memory",
                              "train.device": "cpu", "train.workers": 0, "embed.flip": False, **sizes.train_changes})
    rng = np.random.default_rng(0)
    classes = [f"Class{i:03d}" for i in range(101)]
    with FeatureCacheWriter(train_cfg.cache.path, embed_fingerprint(train_cfg), classes, 2048) as writer:
        for v in range(sizes.cache_videos):
            features = rng.standard_normal((sizes.cache_frames, 2048), dtype=np.float32)
            writer.add(f"Class{v % 101:03d}/v_bench_g01_c{v:03d}", v % 101, features)
    return train_cfg


def _training_parts(cfg: Config):
    from pipeline.features.cache import FeatureCache
    from pipeline.train.loop import build_optimizer
    from pipeline.train.models import build_model
    from pipeline.train.sampling import TrainClips

    cache = FeatureCache(cfg.cache.path)
    cache.load_all()
    torch.manual_seed(0)
    model = build_model(cfg, cache.dim, len(cache.class_names))
    clips = TrainClips(cache, list(range(len(cache.names))), [int(x) for x in cache.labels],
                       cfg.train.sequence_length, seed=0, flip=False)
    return cache, model, build_optimizer(cfg, model), clips


def cache_epoch_seconds_per_clip(cfg: Config, steps: int) -> tuple[float, float]:
    """Seconds per training clip on cached features (real loader and step), and the data loading share."""
    from pipeline.train.loop import make_loader, train_epoch

    _, model, optimizer, clips = _training_parts(cfg)
    batch = cfg.train.batch_size
    subset = torch.utils.data.Subset(clips, [k % len(clips) for k in range(steps * batch)])
    loader = make_loader(subset, batch, 0, order_seed=(0, 0))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loss_fn = torch.nn.CrossEntropyLoss()
    warm_up = torch.utils.data.Subset(clips, [k % len(clips) for k in range(batch)])
    train_epoch(model, make_loader(warm_up, batch, 0), optimizer, scaler, loss_fn, cfg, 0, torch.device("cpu"), None)
    total, _ = _timed(train_epoch, model, loader, optimizer, scaler, loss_fn, cfg, 0, torch.device("cpu"), None)
    loading, _ = _timed(lambda: [None for _ in loader])
    return total / len(subset), loading / total


def seed_seconds_per_clip(cfg: Config, backbone_name: str, clips: int, jpeg_cfg: Config) -> float:
    """Seconds per clip of the seed's loop: every frame of every clip is loaded from JPEG through the seed's
    PIL path and run through the frozen backbone, at every step."""
    from pipeline.features.backbone import load_backbone

    _, model, optimizer, _ = _training_parts(cfg)
    backbone = load_backbone(backbone_name, "none", torch.device("cpu")).to(memory_format=torch.contiguous_format)
    length, img = cfg.train.sequence_length, cfg.embed.img_dim
    loader_frames = _seed_jpeg_batches(jpeg_cfg, img)
    loss_fn = torch.nn.CrossEntropyLoss()
    labels = torch.zeros(1, dtype=torch.long)
    started = time.perf_counter()
    for _ in range(clips):
        frames = torch.stack([next(loader_frames) for _ in range(length)])
        with torch.no_grad():
            features = backbone(frames)
        model.train()
        loss = loss_fn(model(features[None]), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / clips


def _seed_jpeg_batches(cfg: Config, img_dim: int):
    """Endless stream of frames loaded the seed's way."""
    paths, load = jpeg_paths(cfg), seed_transform(img_dim)
    while True:
        for path in paths:
            yield load(path)


def flops_per_clip(cfg: Config, backbone_name: str) -> tuple[float, float]:
    """FLOPs of one training clip on the cache (model forward + backward) and of the seed's (plus the backbone)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.features.backbone import load_backbone

    _, model, _, _ = _training_parts(cfg)
    length, img = cfg.train.sequence_length, cfg.embed.img_dim
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(1, length, 2048)).sum().backward()
    model_flops = counter.get_total_flops()
    backbone = load_backbone(backbone_name, "none", torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        backbone(torch.randn(1, 3, img, img))
    # The LSTM's flops are not counted by FlopCounterMode (no formula for its fused op): add them by hand.
    lstm_flops = _lstm_train_flops(cfg, length)
    return model_flops + lstm_flops, model_flops + lstm_flops + length * counter.get_total_flops()


def _lstm_train_flops(cfg: Config, length: int) -> float:
    if cfg.model.name != "bilstm":
        return 0.0
    directions = 2 if cfg.model.bidirectional else 1
    hidden, flops, inputs = cfg.model.hidden_dim, 0.0, cfg.model.latent_dim
    for _ in range(cfg.model.layers):
        flops += directions * length * 2 * 4 * hidden * (inputs + hidden)
        inputs = hidden * directions
    return 3 * flops  # forward + backward (about twice the forward)


def bench_training(cfg: Config, jpeg_cfg: Config, sizes: Sizes, work: Path, command: str) -> dict:
    ours, _ = cache_epoch_seconds_per_clip(cfg, sizes.train_steps)
    seed = seed_seconds_per_clip(cfg, sizes.seed_backbone, sizes.seed_clips, jpeg_cfg)
    ours_flops, seed_flops = flops_per_clip(cfg, sizes.seed_backbone)
    ratio = seed / ours
    return _row("3", f"training epoch on the cache vs the seed's loop ({sizes.seed_backbone} @ {cfg.embed.img_dim}, "
                     f"L={cfg.train.sequence_length})",
                f"{ours * UCF101_VIDEOS_TRAIN / 60:.1f} vs {seed * UCF101_VIDEOS_TRAIN / 60:.0f} min per UCF-101 epoch",
                ratio, ">= 50x", ratio >= 50, command, seconds_per_clip_cache=ours, seconds_per_clip_seed=seed,
                flop_ratio=round(seed_flops / ours_flops, 1), flops_per_clip_cache=ours_flops,
                flops_per_clip_seed=seed_flops, seed_frames_from="JPEG, seed's PIL path",
                batch_size=cfg.train.batch_size)


def bench_disk(cache_cfg: Config, jpeg_cfg: Config, command: str) -> dict:
    from pipeline.features.cache import FeatureCache

    cache = FeatureCache(cache_cfg.cache.path)
    cache_bytes = Path(cache_cfg.cache.path).stat().st_size / int(np.sum(cache.lengths))
    jpegs = list(Path(jpeg_cfg.data.frames).rglob("*.jpg"))
    jpeg_bytes = sum(p.stat().st_size for p in jpegs) / len(jpegs)
    return _row("4", "disk per frame: float16 2048-d cache vs extracted JPEG",
                f"{cache_bytes:.0f} B vs {jpeg_bytes:.0f} B; UCF-101: {cache_bytes * UCF101_FRAMES / 1e9:.1f} GB "
                f"vs {jpeg_bytes * UCF101_FRAMES / 1e9:.1f} GB (seed reports 26 GB)",
                cache_bytes / jpeg_bytes, "report", None, command, cache_bytes_per_frame=cache_bytes,
                jpeg_bytes_per_frame=jpeg_bytes, jpeg_frame_size=f"{jpeg_cfg.synth.width}x{jpeg_cfg.synth.height}",
                note="synthetic frames compress better than real UCF-101 frames (26 GB / 2.5 M = about 10 KB)")


# ---------------------------------------------------------------- row 5: scaling


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _embed_child(config_json: str) -> None:
    """Entry point of the scaling subprocess: embed while sampling the resident memory, print JSON."""
    import threading

    from pipeline.features.embed import embed

    cfg = config_from_dict(json.loads(config_json), source="bench")
    baseline, samples, running = _rss_mib(), [], True

    def sample():
        while running:
            samples.append(_rss_mib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    summary = embed(cfg)
    running = False
    sampler.join()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": summary["seconds"], "frames": summary["frames"], "videos": summary["videos"],
                      "rss_before_mib": baseline, "rss_peak_mib": max(samples + [baseline]),
                      "maxrss_mib": peak_kib / 1024}))


def _embed_in_subprocess(cfg: Config) -> dict:
    code = "import sys; from pipeline.bench import _embed_child; _embed_child(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(cfg.to_dict())], capture_output=True, text=True)
    if done.returncode != 0:
        raise ActrecError(f"bench: the scaling embed failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_scaling(cfg: Config, cache_cfg: Config, sizes: Sizes, work: Path, command: str) -> list[dict]:
    runs = {}
    for factor in (1, 4):
        dataset = _dataset(cfg, sizes, work / f"x{factor}", groups=8, clips=sizes.scaling_clips * factor)
        runs[factor] = _embed_in_subprocess(dataset)
    # Per-frame time and memory growth during the embed: model loading and imports are the same for both.
    time_ratio = runs[4]["seconds"] / runs[1]["seconds"]
    per_frame = time_ratio * runs[1]["frames"] / runs[4]["frames"]
    growth = {k: r["rss_peak_mib"] - r["rss_before_mib"] for k, r in runs.items()}
    memory_ratio = runs[4]["rss_peak_mib"] / runs[1]["rss_peak_mib"]
    _, share = cache_epoch_seconds_per_clip(cache_cfg, sizes.train_steps)
    return [
        _row("5a", f"embed scaling: {runs[1]['videos']} -> {runs[4]['videos']} videos",
             f"time x{time_ratio:.2f} (per frame x{per_frame:.2f}); peak memory {runs[1]['rss_peak_mib']:.0f} -> "
             f"{runs[4]['rss_peak_mib']:.0f} MiB (growth during embed {growth[1]:.0f} -> {growth[4]:.0f} MiB)",
             memory_ratio, "time ~x4, memory ~x1", 0.8 <= per_frame <= 1.25 and memory_ratio <= 1.1, command,
             runs={str(k): v for k, v in runs.items()}, time_ratio=round(time_ratio, 3),
             per_frame_time_ratio=round(per_frame, 3)),
        _row("5b", "stage-two data loading share of a training step", f"{share:.1%}", share, "< 5%", share < 0.05,
             command, batch_size=cache_cfg.train.batch_size, sequence_length=cache_cfg.train.sequence_length),
    ]


# ---------------------------------------------------------------- row 6: GPU


def bench_gpu(cfg: Config, sizes: Sizes, command: str) -> dict:
    if not torch.cuda.is_available():
        return _row("6", "GPU stage one (resnet152, bf16, channels_last)", "no GPU", None, "report", None, command)
    from pipeline.device import autocast_dtype
    from pipeline.features.backbone import load_backbone

    device = torch.device("cuda")
    model = load_backbone("resnet152", "none", device)
    amp = autocast_dtype(device, "auto")
    rates = {img: bare_forward_fps(model, 4096, 256, img, device, amp) for img in (112, 224)}
    return _row("6", "GPU stage one: resnet152 bare forward, bf16, channels_last",
                ", ".join(f"{img}px: {fps:.0f} frames/s ({UCF101_FRAMES / fps / 60:.1f} min for UCF-101)"
                          for img, fps in rates.items()), None, "report", None, command,
                gpu=torch.cuda.get_device_name(0), frames_per_second={str(k): v for k, v in rates.items()})


# ---------------------------------------------------------------- output


def format_markdown(result: dict) -> str:
    lines = [f"Measured by `make bench` on {result['device']}, torch {result['torch']}"
             + (" (quick smoke size)" if result["quick"] else "") + ".", "",
             "| row | what | measured | ratio | target | met | reproduce |", "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:g}"
        lines.append(f"| {row['id']} | {row['name']} | {row['value']} | {ratio} | {row['target']} | {met} | "
                     f"`{row['command']}` |")
    return "\n".join(lines) + "\n"


def write_readme_section(readme: Path, markdown: str) -> None:
    """Replace what stands between the BENCH markers of ``readme`` with the table."""
    start, end = "<!-- BENCH:START -->", "<!-- BENCH:END -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise ActrecError(f"{readme}: no '{start}' ... '{end}' markers to write the table between")
    head, rest = text.split(start, 1)
    readme.write_text(f"{head}{start}\n{markdown}{end}{rest.split(end, 1)[1]}")
