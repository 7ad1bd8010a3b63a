"""``make bench``: what the two-stage design buys, as ratios measured side by side in one run.

Absolute times on a shared machine are noise; each row therefore compares two things measured in the
same process, one right after the other, with the same thread count. Rows, one module per family:

1. embed efficiency: whole ``embed`` frames/s over bare backbone forward frames/s (``embed``)
2. embed vs the seed's loading path: PIL per frame, bicubic, fp32 NCHW, DataLoader (``embed``, ``seed_frames``)
3. a training epoch on the cache vs the seed's loop with the frozen backbone inside, plus the FLOP ratio
   (``stage_two``)
4. disk: cache bytes per frame vs extracted-JPEG bytes per frame (``disk``)
5. scaling: embed time and peak memory for N and 4N videos (``scaling``); stage-two data loading share of a
   step (``stage_two``)
6. stage one on a GPU at 112 and 224 px: bare forward, whole embed with 2/4/8/all decode workers, efficiency,
   where the time goes, minutes for UCF-101; "no GPU" without CUDA, a CPU smoke run with ``--quick`` (``gpu``)

``runner`` runs them and ``report`` writes results.json, results.md and the README table. Importing this
package does not import torch; the row modules do, when the runner reaches them.
"""

from benchmarks.report import format_markdown, write_readme_section
from benchmarks.runner import ROWS, run_benchmarks

__all__ = ["ROWS", "format_markdown", "run_benchmarks", "write_readme_section"]
