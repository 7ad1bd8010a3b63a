"""A backbone's preprocessing card: how frames must be resized and normalised, as its weights' metadata says.

Each library module reads the card from its library's own metadata (torchvision ``weights.transforms()``,
timm's pretrained config, OpenCLIP's preprocess config); ``pipeline.embed.backbone`` applies it
(uint8 resize on the CPU, mean/std on the device) and the cache fingerprint records it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ActrecError

INTERPOLATIONS = ("bilinear", "bicubic")  # what torch resizes uint8 with antialias, as PIL and torchvision do


@dataclass(frozen=True)
class Card:
    """``crop_size``: the square the weights were trained on. ``resize_size``: before the centre crop, the short
    side goes to it (``keep_aspect``), or both sides do (timm and OpenCLIP's ``squash`` crop mode)."""
    crop_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    keep_aspect: bool = True
    antialias: bool = True
    source: str = ""  # whose metadata this is, e.g. 'ResNet152_Weights.IMAGENET1K_V2'

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ActrecError(f"{self.source}: its preprocessing resizes with {self.interpolation!r}; only "
                              f"{' and '.join(INTERPOLATIONS)} are implemented; pick other weights or backbone")
        if not self.antialias:
            raise ActrecError(f"{self.source}: its preprocessing resizes without antialias, which is not "
                              f"implemented; pick other weights or backbone")

    @property
    def ratio(self) -> float:
        """resize / crop: kept when ``embed.img_dim`` asks for another crop size than the weights'."""
        return self.resize_size / self.crop_size

    def summary(self) -> str:
        """One line for the backbones table, e.g. 'short 232 > crop 224 bilinear, mean/std imagenet'."""
        how = "short" if self.keep_aspect else "both sides"
        return f"{how} {self.resize_size} > crop {self.crop_size} {self.interpolation}, mean/std {self.stats_name}"

    @property
    def stats_name(self) -> str:
        return STATS_NAMES.get((_rounded(self.mean), _rounded(self.std)), f"{list(self.mean)}/{list(self.std)}")


def _rounded(values) -> tuple:
    return tuple(round(v, 3) for v in values)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATS_NAMES = {
    (_rounded(IMAGENET_MEAN), _rounded(IMAGENET_STD)): "imagenet",
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)): "0.5",
    ((0.481, 0.458, 0.408), (0.269, 0.261, 0.276)): "clip",
}
