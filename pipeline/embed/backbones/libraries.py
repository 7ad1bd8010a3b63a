"""The built-in backbone libraries, registered with the prefix their backbone names carry (no torch imported)."""

from pipeline.embed.backbones import LIBRARIES

LIBRARIES.register("torchvision", None, "pipeline.embed.backbones.torchvision",
                   "torchvision's classification models: plain names (resnet152, vit_b_16)", prefix="")
LIBRARIES.register("timm", None, "pipeline.embed.backbones.timm", "timm's models: timm/<model>[.<tag>]",
                   prefix="timm/")
LIBRARIES.register("open_clip", None, "pipeline.embed.backbones.open_clip",
                   "OpenCLIP's image towers: open_clip/<architecture>[:<tag>]", prefix="open_clip/")
