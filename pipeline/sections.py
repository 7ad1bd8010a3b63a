"""The config's sections and their common keys; a section with a selector (``model.name``, ``data.format``,
``train.optimizer``, ...) also takes the keys of the plug-in it names (``pipeline/config.py`` composes them).

Every key is declared with ``pipeline.schema.key``: its default, bounds, one-line help and what it ``affects``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, Union

from pipeline.registry import registry
from pipeline.schema import key


class Section:
    """A config section: ``PLUGINS`` maps each selector key to the registry kind whose plug-in it names."""

    PLUGINS: ClassVar[dict] = {}


# One device/precision vocabulary for every stage (pipeline/device.py turns it into torch objects).
DEVICES = ["auto", "cpu", "cuda"]
PRECISIONS = ["auto", "bf16", "fp16", "fp32"]


@dataclass
class RuntimeConfig(Section):
    """Where and how the stages compute; a stage's own ``device``/``precision``/``threads`` override these."""

    device: str = key("auto", "'auto' picks CUDA when present", choices=DEVICES)
    precision: str = key("auto", "autocast dtype on CUDA: 'auto' = bf16 where the GPU computes it natively, else "
                         "fp16; the CPU always runs fp32", choices=PRECISIONS)
    threads: int = key(0, "torch intra-op threads on CPU (0 = torch's default; 1 is fastest for small models on "
                       "a busy machine)", min=0, max=256)


# The stages that compute with torch: each takes runtime.* unless it sets its own value.
STAGES = ("embed", "train", "eval")
INHERIT = "runtime"


def stage_runtime_keys(stage: str) -> list[tuple[str, type, object]]:
    """The ``device``, ``precision`` and ``threads`` keys of a stage section: 'runtime' = the runtime section's
    value, else one that the runtime key allows."""
    return [(f.name, Union[str, int], key(INHERIT, f"{stage}'s own {f.name}; '{INHERIT}' = runtime.{f.name}, else "
                                          f"what runtime.{f.name} allows", inherit=f))
            for f in fields(RuntimeConfig)]


@dataclass
class DataConfig(Section):
    PLUGINS: ClassVar[dict] = {"format": "format"}  # data.format picks the format whose keys join the section

    name: str = key("ucf101", "dataset name, used in default cache and run paths", nonempty=True, affects="features")
    # The format and its keys reach the cache fingerprint through the split files' signature.
    format: str = key("ucf101", "layout of data.videos and data.splits, one of pipeline/inputs/formats/: 'ucf101' "
                       "(classInd.txt, trainlistNN.txt, testlistNN.txt), 'hmdb51' (Class_test_splitN.txt) or "
                       "'folder' (a folder of videos per class)", choices=lambda: registry("format").names())
    synthetic: bool = key(False, "the dataset is the generated one: `actrec download` (and `make all`) runs "
                                  "`actrec synth` instead of downloading")
    videos: str = key("data/ucf101/UCF-101", "video root: a folder per class (UCF-101: Class/v_Class_gXX_cYY.avi)")
    frames: str = key("data/ucf101/frames", "extracted frames root: Class/v_Class_gXX_cYY/000001.jpg")
    splits: str = key("data/ucf101/ucfTrainTestlist", "folder with the split files (classInd.txt, trainlistNN.txt, "
                       "testlistNN.txt; HMDB-51: Class_test_splitN.txt)", affects="features")
    val_fraction: float = key(0.2, "share of training groups held out for validation", min=0.0, max=0.9,
                               affects="training")
    seed: int = key(0, "seed for the random splits and the validation carve-out", min=0, affects="test list")


@dataclass
class SynthConfig(Section):
    classes: int = key(8, "number of classes (at least half come in time-reversed pairs)", min=2, max=101)
    groups: int = key(25, "groups per class (UCF-101 has 25; each official split tests on 7)", min=3, max=25)
    clips_per_group: int = key(4, "clips per group", min=1, max=50)
    frames: int = key(32, "frames per clip", min=2, max=10000)
    width: int = key(64, "frame width in pixels", min=16, max=1920)
    height: int = key(48, "frame height in pixels", min=16, max=1080)
    fps: int = key(25, "frames per second written into the .avi", min=1, max=240)
    seed: int = key(0, "seed: the same seed gives the same videos", min=0)


@dataclass
class DownloadConfig(Section):
    videos_url: str = key("", "URL of the video archive; empty: the one data.format declares (UCF101.rar, "
                               "hmdb51_org.rar)")
    splits_url: str = key("", "URL of the split archive; empty: the one data.format declares (UCF-101's zip, "
                               "HMDB-51's test_train_splits.rar)")
    dest: str = key("data/ucf101", "folder for the archives; videos unpack to data.videos")
    retries: int = key(5, "retries per file on network errors (exponential backoff)", min=0, max=100)
    timeout: float = key(60.0, "socket timeout in seconds", min=1.0, max=3600.0)


@dataclass
class ExtractConfig(Section):
    workers: int = key(2, "parallel videos (joblib processes)", min=1, max=256)
    jpeg_quality: int = key(95, "JPEG quality of extracted frames", min=1, max=100, affects="features")


@dataclass
class EmbedConfig(Section):
    source: str = key("videos", "decode the .avi files directly, or read extracted JPEG frames",
                       choices=["videos", "frames"], affects="features")
    backbone: str = key("resnet152", "a torchvision classification model (resnet152, vit_b_16, swin_t, ...), "
                         "timm/<model>[.<tag>] (timm/convnext_base.fb_in22k_ft_in1k) or open_clip/<architecture>"
                         "[:<tag>] (open_clip/ViT-B-32:laion2b_s34b_b79k); `actrec backbones` lists them",
                         nonempty=True, affects="features")
    weights: str = key("imagenet", "'imagenet': the backbone's pretrained weights (torchvision: the model's default "
                        "weights; timm: the name's tag; OpenCLIP: the tag after ':'); another of a torchvision "
                        "model's weights by name (e.g. IMAGENET1K_SWAG_E2E_V1; `actrec backbones --every-weights`); "
                        "'none' (seeded random init); or a path to a state dict (.pt/.pth/.safetensors)",
                        nonempty=True, affects="features")
    preprocess: str = key("auto", "with embed.weights none or a state dict file: whose preprocessing to follow "
                           "(resize, crop, interpolation, mean/std): 'auto' = the backbone's default (its tag's, "
                           "if the name has one), or a torchvision weights name / timm or OpenCLIP pretrained tag "
                           "of the backbone (e.g. IMAGENET1K_V1, fb_in1k, laion2b_s34b_b79k). Named weights bring "
                           "their own", nonempty=True, affects="features")
    img_dim: int = key(112, "frames are resized to img_dim x img_dim (the backbone's crop size, e.g. 224: its "
                        "own preprocessing; smaller keeps its resize/crop ratio)", min=16, max=1024,
                        affects="features")
    resize: str = key("crop", "'crop': resize and centre-crop img_dim as the backbone's "
                       "preprocessing card says (torchvision transforms, timm crop_pct/crop_mode, OpenCLIP "
                       "resize_mode); 'squash': the whole frame to img_dim x img_dim (the "
                       "seed's way: aspect distorted)", choices=["crop", "squash"], affects="features")
    batch_size: int = key(64, "frames per forward pass (batches span video boundaries; kernels may round "
                           "differently at another batch shape, so it is part of the cache fingerprint)", min=1,
                           max=8192, affects="features")
    workers: Union[int, str] = key("auto", "decode/resize worker processes running ahead of the forward pass (0 = "
                                    "decode in the main process; auto = usable cores / ranks on the machine - 1)",
                                    min=0, max=64, auto=True)
    flip: bool = key(False, "also cache features of horizontally mirrored frames", affects="features")
    splits: str = key("configured", "embed the videos of the configured split, or of all three splits",
                       choices=["configured", "all"])
    dtype: str = key("float16", "storage dtype of cached features", choices=["float16", "float32"], affects="features")

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
class CacheConfig(Section):
    path: str = key("cache/{data.name}_{embed.backbone_tag}_{embed.weights_tag}_{embed.img_dim}{embed.resize_tag}_"
                     "{embed.source}.h5",
                     "HDF5 feature cache; one file per dataset/backbone/weights/img_dim/resize/source")
    join: str = key("copy", "how an embed under torchrun joins the ranks' shards into cache.path: a copy, or an "
                     "HDF5 virtual dataset over the shards (no copy; keep the shards)", choices=["copy", "virtual"])
    load: str = key("auto", "stage two reads features into memory ('memory'), by index from disk ('disk'), "
                     "or copies the run's videos to the training device once and gathers clips there ('device'); "
                     "'auto' = 'device' on a GPU when they fit in half of its free memory, else memory when they "
                     "fit in a quarter of RAM, else disk", choices=["auto", "memory", "disk", "device"])


@dataclass
class ModelConfig(Section):
    PLUGINS: ClassVar[dict] = {"name": "model"}  # the model's own keys join the section (pipeline/sequence/models/)
    name: str = key("bilstm", "sequence model (one module each in pipeline/sequence/models/; its keys follow)",
                    choices=lambda: registry("model").names(), affects="training")


@dataclass
class TrainConfig(Section):
    PLUGINS: ClassVar[dict] = {"sampler": "sampler", "optimizer": "optimizer", "schedule": "schedule"}

    sequence_length: int = key(40, "frames per training clip", min=2, max=10000, affects="training")
    epochs: int = key(30, "training epochs", min=1, max=100000, affects="training")
    batch_size: int = key(16, "clips per step", min=1, max=65536, affects="training")
    lr: float = key(1e-4, "learning rate", min=0.0, max=10.0, affects="training")
    optimizer: str = key("adam", "optimizer", choices=lambda: registry("optimizer").names(),
                         affects="training")
    schedule: str = key("none", "learning-rate schedule", choices=lambda: registry("schedule").names(),
                        affects="training")
    grad_clip: float = key(1.0, "max gradient norm (0 = no clipping)", min=0.0, max=1e6, affects="training")
    seed: int = key(0, "seed for sampling and initialisation (CPU runs are bit-reproducible)", min=0,
                     affects="training")
    sampler: str = key("segments", "training clips: a random frame of each of sequence_length equal segments "
                         "(one time scale with evaluation and prediction), or the seed's random stride and start",
                         choices=lambda: registry("sampler").names(), affects="training")
    flip: Union[bool, str] = key("auto", "train on mirrored features half the time; 'auto' = when the cache has "
                                  "them (embed.flip). Switch it off where left and right matter (MoveLeft vs "
                                  "MoveRight)", choices=["auto", True, False], affects="training")
    refit: bool = key(False, "after validation chooses the best epoch count, train a fresh model with the same "
                       "settings on the training + validation videos for that many epochs (checkpoints/refit.pt; "
                       "a cosine spans those epochs); evaluate scores that model", affects="training")
    workers: int = key(0, "DataLoader workers (0 = load in the main process)", min=0, max=64)


@dataclass
class EvalConfig(Section):
    clips: int = key(1, "clips spread uniformly over each test video; scores averaged per video", min=1, max=100,
                      affects="training")
    batch_size: int = key(64, "clips per evaluation batch", min=1, max=65536)
    checkpoint: str = key("best", "'best' (with train.refit: the refit model, refit.pt), 'last' or a path to a "
                           "checkpoint", nonempty=True)


@dataclass
class ProbeConfig(Section):
    # What a probe or a zero-shot run computes is its own run dir's business (its config.yaml and metrics.json say
    # it); none of these keys changes a training run, so none of them is `affects="training"`.
    PLUGINS: ClassVar[dict] = {"method": "probe"}  # the probe's own keys join the section (sequence/probe_methods.py)

    method: str = key("linear", "what `actrec probe` fits on each video's pooled features: a linear probe or kNN",
                      choices=lambda: registry("probe").names())
    pool: str = key("mean", "a video's frame features pooled into one vector: their mean or their maximum",
                    choices=["mean", "max"])
    dir: str = key("runs/{data.name}_probe-{probe.method}_split{data.split}",
                   "where `actrec probe` writes its run: config.yaml, metrics.json, predictions.csv, confusion matrix")


@dataclass
class ZeroshotConfig(Section):
    templates: str = key("clip-ucf101", "prompt templates of `actrec zeroshot`: 'clip-ucf101' (CLIP's 48 published "
                         "UCF-101 templates) or a file of one template per line, {} where the class name goes",
                         nonempty=True)
    prompts: str = key("", "a YAML file of prompts per class (class name -> list of prompts), used instead of the "
                       "templates; empty = the templates")
    score: str = key("mean", "a video's score: its mean normalised frame embedding against each class (the CLIP "
                     "paper's protocol), or the best frame's", choices=["mean", "max"])
    dir: str = key("runs/{data.name}_zeroshot_split{data.split}",
                   "where `actrec zeroshot` writes its run: config.yaml, metrics.json, predictions.csv, confusion "
                   "matrix")


@dataclass
class SearchConfig(Section):
    span_drop: float = key(0.05, "`actrec search`: a matching span is a run of frames whose cosine score is within "
                           "this of the video's best frame's", min=0.0, max=2.0)
    keep_index: bool = key(True, "keep the search index (every frame's unit feature, float16: the cache's size "
                           "again) beside the cache as CACHE.search/, so the next search reads it instead of "
                           "building it")


@dataclass
class PredictConfig(Section):
    hop: float = key(0.5, "seconds between the starts of consecutive windows (a window spans as long as a "
                      "training clip did on average, at the video's own frame rate)", min=0.01, max=3600.0)
    topk: int = key(3, "labels shown per window", min=1, max=20)
    gif_max_frames: int = key(150, "GIF output keeps at most this many frames (evenly spaced)", min=1,
                              max=10000)


@dataclass
class SweepConfig(Section):
    max_runs: int = key(1000, "`actrec sweep` refuses a grid or runs file of more runs than this (counted before "
                         "anything is planned)", min=1, max=10_000_000)


@dataclass
class ServeConfig(Section):
    max_upload_mb: int = key(500, "largest video `actrec serve` accepts as an upload, in MB (larger ones get an "
                              "error message in the page)", min=1, max=1_000_000)
    timeline_labels: int = key(5, "labels drawn on `actrec serve`'s timeline charts: the video's most probable "
                                "ones", min=1, max=10)
    thumbnails: int = key(6, "frames in each thumbnail strip of `actrec serve`'s Errors tab", min=1, max=32)


@dataclass
class RunConfig(Section):
    dir: str = key("runs/{data.name}_{model.name}_split{data.split}",
                    "where checkpoints, history, metrics and plots of a run go")


@dataclass
class TrackConfig(Section):
    tensorboard: bool = key(True, "write TensorBoard event files to run.dir/tb/: loss, accuracy and learning rate "
                             "per epoch, and the run's settings with its final metrics in the HParams view")
    mlflow: str = key("", "MLflow tracking URI to also log params, per-epoch metrics and artifacts to: a local "
                       "folder (e.g. mlruns) or sqlite:///mlflow.db (pip install -e '.[mlflow]'); empty = off")
    experiment: str = key("{data.name}", "MLflow experiment of the run; `actrec sweep` and `actrec tune` set it to "
                           "sweep/NAME or tune/NAME so their runs are grouped", nonempty=True)


@dataclass
class TuneConfig(Section):
    seed: int = key(0, "seed of `actrec tune`'s TPE sampler (each worker mixes in its index and the study's trial "
                        "count, so parallel workers and reruns do not repeat each other's draws)", min=0)
    startup_trials: int = key(5, "trials drawn at random before TPE models the results; the pruner stops no "
                               "trial before this many have finished", min=1, max=100000)
    warmup_epochs: int = key(2, "epochs each trial trains before the pruner may stop it", min=0, max=100000)


# The sections in the order a config lists them: each one's common keys (plug-in keys are composed in).
SECTIONS = {"data": DataConfig, "synth": SynthConfig, "download": DownloadConfig, "extract": ExtractConfig,
            "embed": EmbedConfig, "cache": CacheConfig, "model": ModelConfig, "train": TrainConfig,
            "eval": EvalConfig, "probe": ProbeConfig, "zeroshot": ZeroshotConfig, "search": SearchConfig,
            "predict": PredictConfig,
            "runtime": RuntimeConfig, "sweep": SweepConfig, "serve": ServeConfig, "run": RunConfig,
            "track": TrackConfig, "tune": TuneConfig}
