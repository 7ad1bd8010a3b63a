"""The ``actrec backbones`` table: the rows every library's module gives (``rows``), as aligned text."""

from __future__ import annotations

import math


def format_table(rows: list[dict], show_all: bool = False) -> str:
    """Best ImageNet top-1 first where the metadata has it (torchvision), then by name; rows without a usable
    feature (a head that cannot be removed, NaN weights) only with ``show_all``."""
    shown = [r for r in rows if show_all or r["dim"] is not None or r["source"].startswith(("timm", "open_clip"))]
    shown.sort(key=lambda r: (-(r["top1"] or -math.inf), r["name"]))
    width = max([len(r["name"]) for r in shown] + [len("embed.backbone")])
    header = (f"{'embed.backbone':<{width}} {'dim':>5} {'img_dim':<11} {'GFLOPs':>7} {'top1':>6}  "
              f"{'embed.weights':<26} preprocessing (from the weights' metadata)")
    lines = [header, "-" * len(header)]
    for r in shown:
        dim = "-" if r["dim"] is None else str(r["dim"])
        gflops = "-" if r["gflops"] is None else f"{r['gflops']:.2f}"
        top1 = "-" if r["top1"] is None or math.isnan(r["top1"]) else f"{r['top1']:.2f}"
        lines.append(f"{r['name']:<{width}} {dim:>5} {r['size']:<11} {gflops:>7} {top1:>6}  {r['weights']:<26} "
                     f"{r['preprocessing']}")
    lines.append("img_dim: the crop size the weights were trained at ('only': the model takes no other; '>=': the "
                 "smallest it takes). dim '-': no feature width computed (timm: too many "
                 "architectures listed, narrow with --filter) or no usable feature (torchvision: --all shows "
                 "them). Preprocessing: resize (short side, or both sides) > centre crop, interpolation, mean/std. "
                 "`--every-weights`: every torchvision weights of a model.")
    return "\n".join(lines)
