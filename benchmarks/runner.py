"""Run the selected bench rows in one process, one after the other, and write their results."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from benchmarks.common import QUICK, Sizes, synthetic_dataset
from benchmarks.report import check_markers, write_results
from pipeline.config import Config
from pipeline.fileio import check_output

log = logging.getLogger(__name__)

ROWS = ("real", "embed", "seed", "train", "disk", "scaling", "gpu", "chunks", "epoch", "decoders", "startup",
        "answers")


def run_benchmarks(cfg: Config, quick: bool = False, out_dir: Path = Path("bench"), readme: Path | None = None,
                   only: tuple[str, ...] = ()) -> dict:
    """Run the rows (all, or ``only``), write results.json / results.md (and the README table); return the results.

    The markdown table is ``benchmarks.format_markdown(result)``.
    """
    import torch

    from benchmarks.gpu import device_name
    from pipeline.config import stage_runtime
    from pipeline.device import set_threads

    if readme is not None:
        check_output(readme, "--readme", (".md",))
        check_markers(readme)  # a README that cannot take the table fails before the long measurements
    for name, suffix in (("results.json", ".json"), ("results.md", ".md")):  # likewise an out folder
        check_output(Path(out_dir) / name, f"--out {out_dir}:", (suffix,))
    sizes = QUICK if quick else Sizes()
    set_threads(stage_runtime(cfg, "embed").threads)
    selected = [name for name in ROWS if not only or name in only]
    device, threads = device_name(), torch.get_num_threads()  # before the rows: some set their own thread count
    with tempfile.TemporaryDirectory(prefix="actrec-bench-") as tmp:
        rows = _measure(cfg, sizes, selected, Path(tmp), "python -m benchmarks" + (" --quick" if quick else ""))
    result = {"quick": quick, "threads": threads, "torch": torch.__version__,
              "device": device, "sizes": sizes.__dict__, "rows": rows}
    write_results(result, out_dir, readme)
    log.info("bench: results written to %s", out_dir)
    return result


def _measure(cfg: Config, sizes: Sizes, selected: list[str], work: Path, cmd: str) -> list[dict]:
    """The rows of ``selected`` in table order; datasets and the feature cache are built once and shared."""
    from benchmarks import answers, chunks, decoders, disk, embed, epoch, gpu, scaling, stage_two, startup

    wanted = set(selected)
    rows = []
    if wanted & {"embed", "seed", "train", "disk"}:
        dataset = synthetic_dataset(cfg, sizes, work / "embed", groups=sizes.videos // 2, clips=1)
    if "real" in wanted:
        rows.append(embed.bench_embed_real(cfg, sizes, work / "real", f"{cmd} --only real"))
    if wanted & {"embed", "seed"}:
        rows += embed.bench_embed(dataset, sizes, f"{cmd} --only embed", with_seed="seed" in wanted)
    if wanted & {"train", "disk", "scaling", "epoch"}:
        cache_cfg = stage_two.feature_cache(sizes, work / "train")
    if "train" in wanted:
        rows.append(stage_two.bench_training(cache_cfg, dataset, sizes, f"{cmd} --only train"))
    if "disk" in wanted:
        rows.append(disk.bench_disk(cache_cfg, dataset, f"{cmd} --only disk"))
    if "scaling" in wanted:
        rows.append(scaling.bench_scaling(cfg, sizes, work / "scaling", f"{cmd} --only scaling"))
        rows.append(stage_two.bench_loading_share(cache_cfg, sizes, f"{cmd} --only scaling"))
    if "gpu" in wanted:
        rows += gpu.bench_gpu(cfg, sizes is QUICK, work / "gpu", f"{cmd} --only gpu")
    if "chunks" in wanted:
        (work / "chunks").mkdir()
        rows.append(chunks.bench_chunks(sizes, work / "chunks", f"{cmd} --only chunks"))
    if "epoch" in wanted:
        rows += epoch.bench_epoch(cache_cfg, sizes, f"{cmd} --only epoch")
    if "decoders" in wanted:
        rows.append(decoders.bench_decoders(work / "real" / "footage", f"{cmd} --only decoders",
                                            rounds=sizes.repeats))
    if "startup" in wanted:
        rows += startup.bench_startup(cfg, sizes, work / "startup", f"{cmd} --only startup")
    if "answers" in wanted:
        rows += answers.bench_answers(sizes, work / "answers", f"{cmd} --only answers")
    return rows
