"""``python -m benchmarks -c CONFIG [--quick] [--only ROW] [--readme README.md]``: the ``make bench`` entry."""

from __future__ import annotations

from pathlib import Path

import click

from benchmarks.runner import ROWS
from pipeline.cli_support import config_options, configure_logging, reports_errors
from pipeline.config import load_config


@click.command()
@config_options
@click.option("--quick", is_flag=True, default=False, help="Tiny sizes, for a smoke test.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="bench",
              help="Folder for results.json and results.md.")
@click.option("--readme", type=click.Path(dir_okay=False), default=None,
              help="Also write the table into this README's performance section.")
@click.option("--only", multiple=True, type=click.Choice(ROWS),
              help="Run only these rows (repeatable)  [default: all]")
@reports_errors
def main(config_path, overrides, quick, out_dir, readme, only):
    """Measure what the two-stage design buys: ratios measured side by side in one run.

    Rows: embed efficiency (whole embed vs bare forward), embed vs the seed's loading path, a training
    epoch on the cache vs the seed's loop, disk per frame, scaling (time, peak memory, loading share),
    GPU throughput, seconds per UCF-101 epoch on device-resident features (CPU, and GPU when present) and the
    seed's own training step next to ours. Uses the embed stage's threads (runtime section) from the config.
    """
    configure_logging(False, False)
    cfg = load_config(config_path, overrides)
    from benchmarks import format_markdown, run_benchmarks

    result = run_benchmarks(cfg, quick=quick, out_dir=Path(out_dir),
                            readme=Path(readme) if readme else None, only=tuple(only))
    click.echo(format_markdown(result))


if __name__ == "__main__":
    main()
