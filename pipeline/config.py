"""The one config schema: defaults, YAML loading, ``--set`` overrides, validation.

Every key lives in a dataclass below with its default, its allowed values and a
one-line help text; ``_check_value`` is the only place values are checked. The
resolved config (a plain dict from ``to_dict``) travels into every artefact:
cache attributes, run directories and checkpoints.

String values may refer to other keys with ``{section.key}`` placeholders
(``cache.path: cache/{data.name}_{embed.backbone}.h5``); they are filled in
after overrides, so ``--set embed.backbone=resnet18`` moves the cache too.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union

import yaml

from pipeline.errors import ActrecError
from pipeline.inputs import formats
from pipeline.sequence.models import model_names

# One device/precision vocabulary for every stage (pipeline/device.py turns it into torch objects).
DEVICES = ["auto", "cpu", "cuda"]
PRECISIONS = ["auto", "bf16", "fp16", "fp32"]
DEVICE_HELP = "'auto' picks CUDA when present"
PRECISION_HELP = ("autocast dtype on CUDA: 'auto' = bf16 where the GPU computes it natively, else fp16; "
                  "the CPU always runs fp32")


# What a key's value changes, recorded next to the key so every check derives from the schema:
#   features   the cached features (part of the cache fingerprint: a change needs a new cache)
#   test list  which videos are tested (a checkpoint is evaluated only on the test list it was trained beside)
#   training   what a training run computes (a run continues only with the same values)
#   None       nothing a later stage depends on (paths to inputs, speed and device settings, outputs)
# A key that changes the features or the test list also changes what training computes.
AFFECTS = ("features", "test list", "training")


def _key(default, help, choices=None, min=None, max=None, nonempty=False, affects=None, auto=False):
    """A config key: its default, help text, allowed values (checked in ``_check_value``; a list, or a function
    that returns it) and what it ``affects``.

    ``auto``: a whole number in min..max, or the string 'auto' (the code decides)."""
    assert affects in AFFECTS + (None,), affects
    meta = {"help": help, "choices": choices, "min": min, "max": max, "nonempty": nonempty, "affects": affects,
            "auto": auto}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    name: str = _key("ucf101", "dataset name, used in default cache and run paths", nonempty=True, affects="features")
    # format, test_fraction and group_pattern reach the cache fingerprint through the split files' signature
    # (pipeline/inputs/datasets.py), which UCF-101 caches made before these keys existed keep matching.
    format: str = _key("ucf101", "layout of data.videos and data.splits, one of pipeline/inputs/formats/: 'ucf101' "
                       "(classInd.txt, trainlistNN.txt, testlistNN.txt), 'hmdb51' (Class_test_splitN.txt) or "
                       "'folder' (a folder of videos per class)", choices=formats.names())
    synthetic: bool = _key(False, "the dataset is the generated one: `actrec download` (and `make all`) runs "
                                  "`actrec synth` instead of downloading")
    videos: str = _key("data/ucf101/UCF-101", "video root: a folder per class (UCF-101: Class/v_Class_gXX_cYY.avi)")
    frames: str = _key("data/ucf101/frames", "extracted frames root: Class/v_Class_gXX_cYY/000001.jpg")
    splits: str = _key("data/ucf101/ucfTrainTestlist", "folder with the split files (classInd.txt, trainlistNN.txt, "
                       "testlistNN.txt; HMDB-51: Class_test_splitN.txt)", affects="features")
    split: Union[int, str] = _key(
        1, "official split 1, 2 or 3; 'random' (the seed's leaky 20% clip split) or "
        "'random-groups' (random but no group on both sides); data.format=folder: 'auto' (drawn once, written "
        "to data.splits) or 1 (your own trainlist01.txt/testlist01.txt); hmdb51: 1, 2 or 3",
        choices=formats.split_values, affects="test list")
    random_test_fraction: float = _key(0.2, "test share for the random splits", min=0.01, max=0.9, affects="test list")
    test_fraction: float = _key(0.3, "data.split=auto: share of each class's videos (or groups) drawn for the "
                                     "test list", min=0.01, max=0.9)
    group_pattern: str = _key("", "data.split=auto: regex with one group that names a video's group (same actor or "
                                  "scene), e.g. '_g(\\d+)_'; a group stays on one side. Empty: every video is "
                                  "its own group")
    val_fraction: float = _key(0.2, "share of training groups held out for validation", min=0.0, max=0.9,
                               affects="training")
    seed: int = _key(0, "seed for the random splits and the validation carve-out", min=0, affects="test list")


@dataclass
class SynthConfig:
    classes: int = _key(8, "number of classes (at least half come in time-reversed pairs)", min=2, max=101)
    groups: int = _key(25, "groups per class (UCF-101 has 25; each official split tests on 7)", min=3, max=25)
    clips_per_group: int = _key(4, "clips per group", min=1, max=50)
    frames: int = _key(32, "frames per clip", min=2, max=10000)
    width: int = _key(64, "frame width in pixels", min=16, max=1920)
    height: int = _key(48, "frame height in pixels", min=16, max=1080)
    fps: int = _key(25, "frames per second written into the .avi", min=1, max=240)
    seed: int = _key(0, "seed: the same seed gives the same videos", min=0)


@dataclass
class DownloadConfig:
    videos_url: str = _key("", "URL of the video archive; empty: the one data.format declares (UCF101.rar, "
                               "hmdb51_org.rar)")
    splits_url: str = _key("", "URL of the split archive; empty: the one data.format declares (UCF-101's zip, "
                               "HMDB-51's test_train_splits.rar)")
    dest: str = _key("data/ucf101", "folder for the archives; videos unpack to data.videos")
    retries: int = _key(5, "retries per file on network errors (exponential backoff)", min=0, max=100)
    timeout: float = _key(60.0, "socket timeout in seconds", min=1.0, max=3600.0)


@dataclass
class ExtractConfig:
    workers: int = _key(2, "parallel videos (joblib processes)", min=1, max=256)
    jpeg_quality: int = _key(95, "JPEG quality of extracted frames", min=1, max=100, affects="features")


@dataclass
class EmbedConfig:
    source: str = _key("videos", "decode the .avi files directly, or read extracted JPEG frames",
                       choices=["videos", "frames"], affects="features")
    backbone: str = _key("resnet152", "a torchvision classification model (resnet152, vit_b_16, swin_t, ...), "
                         "timm/<model>[.<tag>] (timm/convnext_base.fb_in22k_ft_in1k) or open_clip/<architecture>"
                         "[:<tag>] (open_clip/ViT-B-32:laion2b_s34b_b79k); `actrec backbones` lists them",
                         nonempty=True, affects="features")
    weights: str = _key("imagenet", "'imagenet': the backbone's pretrained weights (torchvision: the model's default "
                        "weights; timm: the name's tag; OpenCLIP: the tag after ':'); another of a torchvision "
                        "model's weights by name (e.g. IMAGENET1K_SWAG_E2E_V1; `actrec backbones --every-weights`); "
                        "'none' (seeded random init); or a path to a state dict (.pt/.pth/.safetensors)",
                        nonempty=True, affects="features")
    preprocess: str = _key("auto", "with embed.weights none or a state dict file: whose preprocessing to follow "
                           "(resize, crop, interpolation, mean/std): 'auto' = the backbone's default (its tag's, "
                           "if the name has one), or a torchvision weights name / timm or OpenCLIP pretrained tag "
                           "of the backbone (e.g. IMAGENET1K_V1, fb_in1k, laion2b_s34b_b79k). Named weights bring "
                           "their own", nonempty=True, affects="features")
    img_dim: int = _key(112, "frames are resized to img_dim x img_dim (the backbone's crop size, e.g. 224: its "
                        "own preprocessing; smaller keeps its resize/crop ratio)", min=16, max=1024,
                        affects="features")
    resize: str = _key("crop", "'crop': resize and centre-crop img_dim as the backbone's "
                       "preprocessing card says (torchvision transforms, timm crop_pct/crop_mode, OpenCLIP "
                       "resize_mode); 'squash': the whole frame to img_dim x img_dim (the "
                       "seed's way: aspect distorted)", choices=["crop", "squash"], affects="features")
    batch_size: int = _key(64, "frames per forward pass (batches span video boundaries; kernels may round "
                           "differently at another batch shape, so it is part of the cache fingerprint)", min=1,
                           max=8192, affects="features")
    device: str = _key("auto", DEVICE_HELP, choices=DEVICES)
    precision: str = _key("auto", PRECISION_HELP, choices=PRECISIONS)
    workers: Union[int, str] = _key("auto", "decode/resize worker processes running ahead of the forward pass (0 = "
                                    "decode in the main process; auto = usable cores / ranks on the machine - 1)",
                                    min=0, max=64, auto=True)
    threads: int = _key(0, "torch intra-op threads on CPU (0 = torch's default)", min=0, max=256)
    flip: bool = _key(False, "also cache features of horizontally mirrored frames", affects="features")
    splits: str = _key("configured", "embed the videos of the configured split, or of all three splits",
                       choices=["configured", "all"])
    dtype: str = _key("float16", "storage dtype of cached features", choices=["float16", "float32"], affects="features")

    @property
    def resize_tag(self) -> str:
        """'' for crop, 'sq' for squash: the default cache path tells the two preprocessings apart."""
        return "sq" if self.resize == "squash" else ""

    @property
    def backbone_tag(self) -> str:
        """The backbone's name as a file name: timm/x.y -> timm-x.y, open_clip/A:t -> open_clip-A-t."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.backbone)

    @property
    def weights_tag(self) -> str:
        """Short file-name-safe name for the weights (a path becomes its stem)."""
        if self.weights in ("imagenet", "none"):
            return self.weights
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(self.weights).stem)


@dataclass
class CacheConfig:
    path: str = _key("cache/{data.name}_{embed.backbone_tag}_{embed.weights_tag}_{embed.img_dim}{embed.resize_tag}_"
                     "{embed.source}.h5",
                     "HDF5 feature cache; one file per dataset/backbone/weights/img_dim/resize/source")
    join: str = _key("copy", "how an embed under torchrun joins the ranks' shards into cache.path: a copy, or an "
                     "HDF5 virtual dataset over the shards (no copy; keep the shards)", choices=["copy", "virtual"])
    load: str = _key("auto", "stage two reads features into memory ('memory'), by index from disk ('disk'), "
                     "or copies the run's videos to the training device once and gathers clips there ('device'); "
                     "'auto' = 'device' on a GPU when they fit in half of its free memory, else memory when they "
                     "fit in a quarter of RAM, else disk", choices=["auto", "memory", "disk", "device"])


@dataclass
class ModelConfig:
    # Each model reads some of these keys (its module in pipeline/sequence/models/ declares which); `train` warns
    # about a key set for a model that ignores it.
    name: str = _key("bilstm", "sequence model (one module each in pipeline/sequence/models/)",
                     choices=model_names(), affects="training")
    latent_dim: int = _key(512, "width of the trainable projection of cached features (every model but linear; "
                           "transformer: its model width)", min=1, max=16384, affects="training")
    hidden_dim: int = _key(1024, "bilstm: LSTM hidden size per direction and the head's hidden layer; meanpool, "
                           "tcn: the head's hidden layer; transformer: the feed-forward width of each encoder layer "
                           "and the head's hidden layer; linear: unused", min=1, max=16384, affects="training")
    layers: int = _key(1, "bilstm: LSTM layers; transformer: encoder layers", min=1, max=16, affects="training")
    heads: int = _key(4, "transformer: attention heads (a divisor of model.latent_dim)", min=1, max=64,
                      affects="training")
    pooling: str = _key("cls", "transformer: read the clip out of a class token ('cls') or the mean of the encoded "
                        "frames ('mean')", choices=["cls", "mean"], affects="training")
    bidirectional: bool = _key(True, "bilstm: bidirectional LSTM", affects="training")
    attention: bool = _key(True, "bilstm: attention pooling over time (else mean over all timesteps)",
                           affects="training")
    dropout: float = _key(0.5, "dropout before the head's layers (bilstm: also between LSTM layers; tcn: in each "
                          "block; transformer: in each encoder layer); linear: unused", min=0.0, max=0.95,
                          affects="training")


@dataclass
class TrainConfig:
    sequence_length: int = _key(40, "frames per training clip", min=2, max=10000, affects="training")
    epochs: int = _key(30, "training epochs", min=1, max=100000, affects="training")
    batch_size: int = _key(16, "clips per step", min=1, max=65536, affects="training")
    lr: float = _key(1e-4, "learning rate", min=0.0, max=10.0, affects="training")
    weight_decay: float = _key(0.0, "weight decay (decoupled with adamw)", min=0.0, max=10.0, affects="training")
    optimizer: str = _key("adam", "optimizer", choices=["adam", "adamw"], affects="training")
    schedule: str = _key("none", "learning-rate schedule", choices=["none", "cosine"], affects="training")
    grad_clip: float = _key(1.0, "max gradient norm (0 = no clipping)", min=0.0, max=1e6, affects="training")
    seed: int = _key(0, "seed for sampling and initialisation (CPU runs are bit-reproducible)", min=0,
                     affects="training")
    sampler: str = _key("segments", "training clips: a random frame of each of sequence_length equal segments "
                         "(one time scale with evaluation and prediction), or the seed's random stride and start",
                         choices=["segments", "stride"], affects="training")
    flip: Union[bool, str] = _key("auto", "train on mirrored features half the time; 'auto' = when the cache has "
                                  "them (embed.flip). Switch it off where left and right matter (MoveLeft vs "
                                  "MoveRight)", choices=["auto", True, False], affects="training")
    refit: bool = _key(False, "after validation chooses the best epoch count, train a fresh model with the same "
                       "settings on the training + validation videos for that many epochs (checkpoints/refit.pt; "
                       "a cosine spans those epochs); evaluate scores that model", affects="training")
    workers: int = _key(0, "DataLoader workers (0 = load in the main process)", min=0, max=64)
    threads: int = _key(0, "torch intra-op threads on CPU (0 = torch's default; 1 is fastest for small models "
                           "on a busy machine)", min=0, max=256)
    device: str = _key("auto", DEVICE_HELP, choices=DEVICES)
    precision: str = _key("auto", PRECISION_HELP, choices=PRECISIONS)


@dataclass
class EvalConfig:
    clips: int = _key(1, "clips spread uniformly over each test video; scores averaged per video", min=1, max=100,
                      affects="training")
    batch_size: int = _key(64, "clips per evaluation batch", min=1, max=65536)
    checkpoint: str = _key("best", "'best' (with train.refit: the refit model, refit.pt), 'last' or a path to a "
                           "checkpoint", nonempty=True)
    device: str = _key("auto", DEVICE_HELP, choices=DEVICES)
    precision: str = _key("auto", PRECISION_HELP, choices=PRECISIONS)
    threads: int = _key(0, "torch intra-op threads on CPU (0 = torch's default)", min=0, max=256)


@dataclass
class PredictConfig:
    hop: float = _key(0.5, "seconds between the starts of consecutive windows (a window spans as long as a "
                      "training clip did on average, at the video's own frame rate)", min=0.01, max=3600.0)
    topk: int = _key(3, "labels shown per window", min=1, max=20)
    gif_max_frames: int = _key(150, "GIF output keeps at most this many frames (evenly spaced)", min=1,
                              max=10000)


@dataclass
class SweepConfig:
    max_runs: int = _key(1000, "`actrec sweep` refuses a grid or runs file of more runs than this (counted before "
                         "anything is planned)", min=1, max=10_000_000)


@dataclass
class ServeConfig:
    max_upload_mb: int = _key(500, "largest video `actrec serve` accepts as an upload, in MB (larger ones get an "
                              "error message in the page)", min=1, max=1_000_000)
    timeline_labels: int = _key(5, "labels drawn on `actrec serve`'s timeline charts: the video's most probable "
                                "ones", min=1, max=10)
    thumbnails: int = _key(6, "frames in each thumbnail strip of `actrec serve`'s Errors tab", min=1, max=32)


@dataclass
class RunConfig:
    dir: str = _key("runs/{data.name}_{model.name}_split{data.split}",
                    "where checkpoints, history, metrics and plots of a run go")


@dataclass
class TrackConfig:
    tensorboard: bool = _key(True, "write TensorBoard event files to run.dir/tb/: loss, accuracy and learning rate "
                             "per epoch, and the run's settings with its final metrics in the HParams view")
    mlflow: str = _key("", "MLflow tracking URI to also log params, per-epoch metrics and artifacts to: a local "
                       "folder (e.g. mlruns) or sqlite:///mlflow.db (pip install -e '.[mlflow]'); empty = off")
    experiment: str = _key("{data.name}", "MLflow experiment of the run; `actrec sweep` and `actrec tune` set it to "
                           "sweep/NAME or tune/NAME so their runs are grouped", nonempty=True)


@dataclass
class TuneConfig:
    seed: int = _key(0, "seed of `actrec tune`'s TPE sampler (each worker mixes in its index and the study's trial "
                        "count, so parallel workers and reruns do not repeat each other's draws)", min=0)
    startup_trials: int = _key(5, "trials drawn at random before TPE models the results; the pruner stops no "
                               "trial before this many have finished", min=1, max=100000)
    warmup_epochs: int = _key(2, "epochs each trial trains before the pruner may stop it", min=0, max=100000)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    run: RunConfig = field(default_factory=RunConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    source: str = field(default="<defaults>", compare=False, repr=False)

    def to_dict(self) -> dict:
        """The resolved config as plain data (what artefacts record)."""
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self) if f.name != "source"}


SECTIONS = {f.name: f.default_factory for f in fields(Config) if f.name != "source"}


def keys_affecting(*what: str) -> list[str]:
    """Dotted names of the keys whose ``affects`` is one of ``what`` (e.g. 'features'), in schema order."""
    return [f"{section}.{f.name}" for section, factory in SECTIONS.items() for f in fields(factory())
            if f.metadata["affects"] in what]


def config_diff(old: dict, new: dict, *affects: str) -> dict:
    """``{dotted key: (old value, new value)}`` for the keys whose ``affects`` is one of ``affects`` and whose
    values differ between two resolved configs (``Config.to_dict()`` form). Values compare as their text, so a
    config read back from JSON or YAML (1 vs '1') equals the one it was written from; a key missing on one
    side (a config written before the key existed) reads as None."""
    changes = {}
    for dotted in keys_affecting(*affects):
        section, key = dotted.split(".")
        before, after = old.get(section, {}).get(key), new.get(section, {}).get(key)
        if str(before) != str(after):
            changes[dotted] = (before, after)
    return changes


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Read a YAML config (or the defaults), apply ``section.key=value`` overrides, validate, resolve."""
    return config_with_overrides(read_config_file(path), overrides, source=str(path) if path else "<defaults>")


def read_config_file(path: str | Path | None) -> dict:
    """The sections of the YAML config at ``path`` as written (placeholders unresolved); {} for the defaults."""
    if path is None:
        return {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ActrecError(f"cannot read config {path}: {exc.strerror}. Pass an existing YAML file "
                          f"(see configs/).") from exc
    return read_yaml(text, path)


def config_with_overrides(raw: dict, overrides: list[str] | tuple, source: str) -> Config:
    """``raw`` (left unchanged) with ``section.key=value`` overrides applied, validated and resolved: a file read
    once serves many configs (a sweep's runs)."""
    raw, origins = apply_overrides(raw, overrides)
    return config_from_dict(raw, source=source, origins=origins)


def apply_overrides(raw: dict, overrides: list[str] | tuple) -> tuple[dict, dict]:
    """A copy of ``raw`` with ``section.key=value`` overrides applied (not validated), and where each overridden
    key's value came from (``--set ...``)."""
    raw = copy.deepcopy(raw)
    origins = {}
    for item in overrides:
        origins[_apply_override(raw, item)] = f"--set {item}"
    return raw, origins


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node, _ in node.value:
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            if key in lines:
                raise ActrecError(f"'{key}' is given twice (lines {lines[key]} and {line}); keep one")
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, path) -> dict:
    """The sections of a config file; refuses invalid YAML, duplicate keys and a file without any section."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ActrecError(f"{path}: not valid YAML: {exc}") from exc
    except ActrecError as exc:
        raise ActrecError(f"{path}: {exc}") from None
    if raw is None or raw == {}:
        raise ActrecError(f"{path} is empty; a config needs at least one section (data:, embed:, train:, ...). "
                          f"Start from configs/synthetic.yaml or configs/ucf101.yaml (every key: configs/README.md)")
    if not isinstance(raw, dict):
        raise ActrecError(f"{path}: expected a mapping of sections (data:, embed:, ...) at the top level")
    return raw


def config_from_dict(raw: dict, source: str = "<dict>", origins: dict | None = None) -> Config:
    """Build and validate a Config from nested plain data (YAML, a checkpoint's record).

    ``origins`` maps a dotted key to where its value came from (a ``--set``), for error messages.
    """
    origins = origins or {}
    cfg = Config(source=source)
    for section, values in raw.items():
        section_source = next((o for k, o in origins.items() if k.startswith(f"{section}.")), source)
        if section not in SECTIONS:
            raise ActrecError(f"{section_source}: unknown section '{section}'. Allowed: {', '.join(SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ActrecError(f"{source}: section '{section}' must be a mapping of keys, got {values!r}")
        target = getattr(cfg, section)
        known = {f.name: f for f in fields(target)}
        for key, value in values.items():
            name = f"{section}.{key}"
            if key not in known:
                raise ActrecError(f"{origins.get(name, source)}: unknown key '{name}'. Allowed in '{section}': "
                                  f"{', '.join(known)}")
            setattr(target, key, _check_value(name, value, known[key], origins.get(name, source)))
    _resolve_placeholders(cfg)
    return cfg


def _apply_override(raw: dict, item: str) -> str:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ActrecError(f"--set {item!r}: expected section.key=value, for example --set train.epochs=5")
    dotted, text = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    value = copy.deepcopy(_override_value(text))
    if raw.get(section) is None:  # `train:` with nothing under it in the file
        raw[section] = {}
    section_values = raw[section]
    if not isinstance(section_values, dict):
        raise ActrecError(f"--set {item!r}: section '{section}' in the config file is not a mapping")
    section_values[key] = value
    return f"{section}.{key}"


@functools.lru_cache(maxsize=4096)
def _override_value(text: str) -> Any:
    """The value of ``--set key=TEXT`` as YAML reads it (remembered: a sweep's runs repeat the same values)."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def key_choices(f: dataclasses.Field) -> list | None:
    """A key's allowed values; a registry's are asked for only here, so loading the schema imports no plug-ins."""
    choices = f.metadata["choices"]
    return choices() if callable(choices) else choices


def _check_value(name: str, value: Any, f: dataclasses.Field, source: str) -> Any:
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    where = f"{source}: {name}"
    if meta.get("auto"):
        if value == "auto":
            return value
        default = meta["min"] if meta["min"] is not None else 0  # otherwise a whole number
    choices = key_choices(f)
    if choices:
        # YAML reads `split: 1` as an int and `--set data.split=1` too; "1" from elsewhere is the same choice.
        lookup = {str(c): c for c in choices}
        if str(value) not in lookup:
            raise ActrecError(f"{where}: {value!r} is not allowed. Allowed values: {', '.join(map(str, choices))}")
        return lookup[str(value)]
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ActrecError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ActrecError(f"{where}: expected a whole number, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, str):
            # YAML 1.1 reads 1e-4 (no dot) as a string; it is still the number the user meant.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ActrecError(f"{where}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ActrecError(f"{where}: expected a finite number, got {value!r}")
    elif isinstance(default, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ActrecError(f"{where}: expected a string, got {value!r}")
        if meta["nonempty"] and not value.strip():
            raise ActrecError(f"{where}: must not be empty")
    if meta["min"] is not None and value < meta["min"]:
        raise ActrecError(f"{where}: {value!r} is below the minimum {meta['min']}")
    if meta["max"] is not None and value > meta["max"]:
        raise ActrecError(f"{where}: {value!r} is above the maximum {meta['max']}")
    return value


_PLACEHOLDER = re.compile(r"\{([a-z_]+)\.([a-z_]+)\}")


def _resolve_placeholders(cfg: Config) -> None:
    for section in SECTIONS:
        target = getattr(cfg, section)
        for f in fields(target):
            value = getattr(target, f.name)
            if isinstance(value, str) and "{" in value:
                setattr(target, f.name, _PLACEHOLDER.sub(lambda m: _lookup(cfg, m, f"{section}.{f.name}"), value))


def _lookup(cfg: Config, match: re.Match, name: str) -> str:
    section, key = match.groups()
    if section not in SECTIONS or not hasattr(getattr(cfg, section), key):
        raise ActrecError(f"{cfg.source}: {name}: placeholder {match.group(0)} names no config key")
    return str(getattr(getattr(cfg, section), key))


def stable_hash(data: Any) -> str:
    """A short hash of plain data that does not depend on dict order."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML next to an output it produced."""
    from pipeline.fileio import write_atomic

    write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
