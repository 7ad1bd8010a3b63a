"""The ``actrec`` command line: one thin subcommand per pipeline stage.

Each command parses its options, loads the config and calls one library
function. Library modules are imported inside the commands so that
``actrec --help`` stays fast (torch is slow to import).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pipeline.cli_support import (  # noqa: F401 (FiniteFloat: every float option's type)
    FiniteFloat,
    PluginName,
    config_options,
    configure_logging,
    reports_errors,
)
from pipeline.config import load_config
from pipeline.errors import ActrecError
from pipeline.registry import BUILTINS


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--verbose", "-v", is_flag=True, default=False, help="Show debug messages and full tracebacks on errors.")
@click.option("--quiet", "-q", is_flag=True, default=False, help="Show only warnings, errors and results.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """actrec: action recognition as a two-stage feature-caching pipeline.

    Stage one (embed) runs a frozen CNN once over every frame and caches the
    features in HDF5; stage two (train, evaluate) trains a sequence model on
    the cache. Run `actrec COMMAND --help` for each command.
    """
    ctx.obj = {"verbose": verbose}  # what every subcommand's error report needs to know
    configure_logging(verbose, quiet)


@cli.command()
@config_options
@click.option("--force", is_flag=True, default=False, help="Regenerate even if the dataset exists.")
@click.option("--format", "data_format", type=PluginName("format"), default=None,
              help="Write it in this layout (same as --set data.format=...)  [default: data.format]")
@reports_errors
def synth(config_path, overrides, force, data_format):
    """Write the synthetic UCF-101-shaped dataset (videos + split files) to data.videos / data.splits."""
    overrides = overrides + ((f"data.format={data_format}",) if data_format else ())
    cfg = load_config(config_path, overrides)
    from pipeline.inputs.synthetic import generate_dataset

    generate_dataset(cfg, force=force)


@cli.command()
@config_options
@reports_errors
def download(config_path, overrides):
    """Get the dataset of data.format: UCF-101 or HMDB-51 downloaded (resumable, verified) and unpacked safely;
    the synthetic dataset (data.synthetic) generated; a folder of your videos needs nothing."""
    cfg = load_config(config_path, overrides)
    from pipeline.inputs.acquire import acquire

    acquire(cfg)


@cli.command()
@config_options
@reports_errors
def extract(config_path, overrides):
    """Decode every video of data.videos into JPEG frames under data.frames (parallel, resumable)."""
    cfg = load_config(config_path, overrides)
    from pipeline.inputs.extract import extract_frames

    extract_frames(cfg)


@cli.command()
@config_options
@reports_errors
def embed(config_path, overrides):
    """Stage one: run the frozen backbone once over every frame and write the HDF5 feature cache."""
    cfg = load_config(config_path, overrides)  # every setting checked before the stage (torch) is imported
    from pipeline.embed.run import embed as run_embed

    run_embed(cfg)


@cli.command()
@config_options
@click.option("--resume", is_flag=True, default=False, help="Continue from run.dir/checkpoints/last.pt.")
@reports_errors
def train(config_path, overrides, resume):
    """Stage two: train the sequence model on the cached features."""
    cfg = load_config(config_path, overrides)
    from pipeline.experiments.tracked import train_run

    train_run(cfg, resume=resume)


@cli.command()
@config_options
@reports_errors
def evaluate(config_path, overrides):
    """Evaluate a checkpoint on the test list of data.split: metrics.json, confusion matrix, summary."""
    cfg = load_config(config_path, overrides)
    from pipeline.experiments.tracked import evaluate_run
    from pipeline.sequence.evaluate import format_summary

    click.echo(format_summary(evaluate_run(cfg)))


@cli.command()
@config_options
@reports_errors
def probe(config_path, overrides):
    """A linear probe or kNN (probe.method) on each video's pooled cached features, chosen on validation, refit,
    scored on the test list: probe.dir gets metrics.json and predictions.csv as `actrec evaluate` writes them."""
    cfg = load_config(config_path, overrides)
    from pipeline.sequence.evaluate import format_summary
    from pipeline.sequence.probe import probe as run_probe

    click.echo(format_summary(run_probe(cfg)))


@cli.command()
@config_options
@click.option("--prompts", default=None, type=click.Path(dir_okay=False),
              help="YAML file of prompts per class (class name -> list of prompts); sets zeroshot.prompts.")
@click.option("--templates", default=None, type=click.Path(dir_okay=False),
              help="File of prompt templates, one per line with {} for the class; sets zeroshot.templates "
                   "(default: CLIP's 48 UCF-101 templates).")
@reports_errors
def zeroshot(config_path, overrides, prompts, templates):
    """Classify the test list of an OpenCLIP cache with the same model's text tower, no training: zeroshot.dir
    gets metrics.json and predictions.csv as `actrec evaluate` writes them."""
    extra = [f"zeroshot.{name}={value}" for name, value in (("prompts", prompts), ("templates", templates)) if value]
    cfg = load_config(config_path, [*overrides, *extra])
    from pipeline.sequence.evaluate import format_summary
    from pipeline.zeroshot.run import zeroshot as run_zeroshot

    click.echo(format_summary(run_zeroshot(cfg)))


@cli.command()
@click.argument("query", required=False)
@config_options
@click.option("--like", default=None, metavar="VIDEO[@SECONDS]",
              help="Search by example: a video of the cache (its name, e.g. Class/v_x_g01_c01), at a time or whole.")
@click.option("-k", "k", type=int, default=10, help="How many videos to return.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the results (videos, scores, spans) to this .json file.")
@reports_errors
def search(query, config_path, overrides, like, k, json_path):
    """The videos of the cache, and the time spans in them, that match a text QUERY (an OpenCLIP cache) or an
    example (--like VIDEO[@SECONDS], any cache): exact cosine search over every frame."""
    from pipeline.fileio import check_output, write_json

    cfg = load_config(config_path, overrides)
    if json_path:
        check_output(json_path, "--json", suffixes=(".json",))
    from pipeline.zeroshot.search import as_json, format_hits
    from pipeline.zeroshot.search import search as run_search

    hits = run_search(cfg, text=query, like=like, k=k)
    if json_path:
        write_json(json_path, as_json(hits))
    click.echo(format_hits(hits))


@cli.command()
@click.argument("video", type=click.Path())
@click.option("--checkpoint", required=True, type=click.Path(), help="A checkpoint written by `actrec train`.")
@click.option("--out", type=click.Path(), default=None,
              help="Annotated output video (.mp4 or .gif); for a folder of videos, the CSV (default: "
                   "FOLDER/predictions.csv).")
@click.option("--json", "json_path", type=click.Path(), default=None, help="Per-window predictions as JSON.")
@click.option("--hop", type=FiniteFloat(0.01, 3600.0), default=None, metavar="SECONDS",  # predict.hop's range
              help="Seconds between window starts [default: predict.hop of the run's config].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="Backbone device.")
@reports_errors
def predict(video, checkpoint, out, json_path, hop, device):
    """Label a video (or a folder of videos) with sliding windows; write an annotated video and JSON."""
    from pipeline.predict.request import check_request

    check_request(video, checkpoint, out, json_path, hop)  # before the predictor (torch, the backbone) is imported
    from pipeline.predict.predictor import format_prediction
    from pipeline.predict.predictor import predict as run_predict

    click.echo(format_prediction(run_predict(Path(video), Path(checkpoint), out=out, json_path=json_path, hop=hop,
                                             device=device)))


@cli.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR_OR_SWEEP_DIR...")
@config_options
@click.option("--host", default="127.0.0.1", help="Address to bind; anything but loopback exposes a page without "
                                                   "login to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, help="Port of the page.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="Prediction device.")
@reports_errors
def serve(folders, config_path, overrides, host, port, device):
    """A local web page over runs: predict on a video, browse the test errors, compare a sweep's runs.

    Needs Gradio (pip install -e '.[serve]'); the Errors tab reads run.dir/predictions.csv of `actrec evaluate`.
    Settings (serve.max_upload_mb, ...) come from --config/--set.
    """
    settings = load_config(config_path, overrides).serve
    from pipeline.serve.server import serve as run_server

    run_server(folders, host, port, settings, device=device)


@cli.command()
@click.argument("cache_path", type=click.Path())
@reports_errors
def info(cache_path):
    """Print a feature cache's fingerprint, counts, size on disk and failures."""
    from pipeline.cache.reader import describe_cache

    click.echo(describe_cache(Path(cache_path)))


@cli.command(name="merge-cache")
@click.argument("cache_path", type=click.Path(dir_okay=False))
@click.option("--join", "mode", type=click.Choice(["copy", "virtual"]), default="copy", show_default=True,
              help="Copy the shards' features into CACHE_PATH (then remove the shards), or write an HDF5 virtual "
                   "dataset over them (keep the shards).")
@click.option("--mixed-devices", is_flag=True, default=False,
              help="Join shards embedded on different kinds of device (GPU models, CUDA/cuDNN versions, CPU), whose "
                   "features may differ in the last bits; the cache records every device. Refused without it.")
@reports_errors
def merge_cache(cache_path, mode, mixed_devices):
    """Join the shards of CACHE_PATH (CACHE_PATH.shards/, written by `actrec embed` under torchrun) into it.

    An embed under torchrun does this itself when every rank has finished; this command does it by hand,
    e.g. after ranks on several machines finished at different times. Videos are written sorted by name.
    """
    from pipeline.cache.shards import join
    from pipeline.fileio import check_output

    cache_path = check_output(cache_path, "CACHE_PATH", replaces="a feature cache")  # never a checkpoint or config
    summary = join(cache_path, mode, mixed_devices=mixed_devices)
    click.echo(f"{summary['cache']}: {summary['videos']} videos, {summary['frames']} frames, {summary['failed']} "
               f"failed ({summary['mode']})")


LAYOUT_HELP = ("video_features: STEM_KEY.npy (+ STEM_fps.npy, STEM_timestamps_ms.npy) per video; mmaction2: "
               "Class/NAME.pkl per video (a pickled array) + video_list.txt. Both: classes.txt.")


@cli.command(name="export")
@click.argument("cache_path", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--layout", type=click.Choice(["video_features", "mmaction2"]), default="video_features",
              help=LAYOUT_HELP)
@click.option("--key", default=None, help="video_features' feature type in the file names (default: from the "
                                          "backbone: resnet, clip, or the model's name).")
@reports_errors
def export_features(cache_path, out, layout, key):
    """Write the features of CACHE_PATH per video into the new folder OUT, in another tool's layout (the cache's
    dtype, bit for bit)."""
    from pipeline.interchange.exporting import export_cache

    summary = export_cache(cache_path, out, layout, key)
    key = f", key {summary['key']}" if summary["layout"] == "video_features" else ""
    click.echo(f"{summary['folder']}: {summary['videos']} videos ({summary['layout']}{key})")


@cli.command(name="import")
@click.argument("folder", type=click.Path(file_okay=False))
@config_options
@click.option("--layout", type=click.Choice(["video_features", "mmaction2"]), default="video_features",
              help=LAYOUT_HELP)
@click.option("--key", default=None, help="video_features' feature type (KEY of STEM_KEY.npy); found from the file "
                                          "names when there is one.")
@click.option("--made-by", default="", help="(Required) What made the features (tool, model, weights), recorded in the "
                                               "cache's fingerprint, e.g. \"video_features i3d, Kinetics-400\".")
@reports_errors
def import_features(folder, config_path, overrides, layout, key, made_by):
    """Build the cache at cache.path from per-video feature files another tool wrote, for the videos of the
    config's split lists; stage two then trains on it like on any cache."""
    cfg = load_config(config_path, overrides)
    from pipeline.interchange.importing import import_features as run_import

    summary = run_import(cfg, folder, layout, made_by, key)
    click.echo(f"{summary['cache']}: {summary['videos']} videos, {summary['frames']} frames, {summary['dim']}-d "
               f"{summary['dtype']}")


@cli.command()
@config_options
@click.option("--grid", "grids", multiple=True, metavar="SECTION.KEY=V1,V2,...",
              help="Values of one key to sweep; repeatable, the sweep runs the cross product.")
@click.option("--runs", "runs_file", type=click.Path(dir_okay=False), default=None,
              help="A file with one run per line (key=value pairs), instead of --grid.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Runs at a time [default: 1 on the CPU, one per GPU, every worker of a cluster].")
@click.option("--name", default=None, help="Sweep folder under runs/sweeps/ (letters, digits, -, _, .) "
                                           "[default: from the varied keys].")
@click.option("--backend", type=click.Choice(["local", "dask", "ray"]), default="local",
              help="Local worker processes, or a Dask or Ray cluster (pip install -e '.[cluster]').")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Dask scheduler (tcp://HOST:8786) or Ray cluster address.")
@reports_errors
def sweep(config_path, overrides, grids, runs_file, jobs, name, backend, scheduler):
    """Train and evaluate many runs on one feature cache; write and print the sweep's leaderboard.

    Each run is an ordinary run dir under runs/sweeps/NAME/ named from the keys it varies. Finished runs
    are skipped and interrupted ones resume, so running the same command again completes a sweep. Exits
    non-zero when a run failed.
    """
    from pipeline.experiments.sweep import run_sweep

    result = run_sweep(config_path, overrides, grids, runs_file, name=name, jobs=jobs, backend=backend,
                       scheduler=scheduler)
    board = Path(result["folder"]) / "leaderboard.md"
    click.echo(board.read_text(), nl=False)
    if result["failed"]:
        raise ActrecError(f"{result['failed']} of {len(result['rows'])} runs failed (their errors are in {board}); "
                          f"fix the cause and run the same command again to run them")


@cli.command()
@config_options
@click.option("--param", "params", multiple=True, metavar="SECTION.KEY=KIND:...",
              help="A searched key: int:LOW:HIGH[:log], float:LOW:HIGH[:log] or cat:A,B,...; repeatable.")
@click.option("--space", "space_file", type=click.Path(dir_okay=False), default=None,
              help="A file of --param values, one per line (# comments).")
@click.option("--trials", type=click.IntRange(min=1), default=20, help="Finished trials the study runs to.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, help="Worker processes on this machine.")
@click.option("--name", required=True, help="Study name and folder under runs/tune/ (letters, digits, - _ .).")
@click.option("--storage", default=None, metavar="URL",
              help="SQLAlchemy URL of the study's database [default: sqlite:///runs/tune/NAME/study.db].")
@click.option("--pruner", type=click.Choice(["median", "halving"]), default="median",
              help="Stop poor trials early on their validation accuracy: median or successive halving.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local",
              help="Worker processes here, or --jobs workers as tasks of a Ray cluster (pip install -e '.[cluster]').")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Ray cluster address [default: a local one].")
@reports_errors
def tune(config_path, overrides, params, space_file, trials, jobs, name, storage, pruner, backend, scheduler):
    """Search training settings with Optuna (TPE, pruning); print the leaderboard ranked by validation accuracy.

    Each trial is an ordinary run dir under runs/tune/NAME/. The study lives in a database, so the same
    command again continues it, and the same command on several machines sharing --storage and the cache
    runs one study.
    """
    from pipeline.experiments.execute import check_backend
    from pipeline.experiments.tune import parse_space, plan_tune, run_tune

    check_backend(backend, scheduler)  # Ray not installed: its install line first
    spec = plan_tune(config_path, overrides, parse_space(params, space_file), name, trials, storage, pruner)
    result = run_tune(spec, jobs=jobs, backend=backend, scheduler=scheduler)
    click.echo((Path(result["folder"]) / "leaderboard.md").read_text(), nl=False)
    best = result["best"]
    click.echo(f"best trial {best['trial']} ({best['run_dir']}): val top-1 {best['val_top1']:.4f}, test top-1 "
               f"{best['test_top1']:.4f} (test computed once for the validation pick, never used to choose)")


@cli.command()
@click.option("--library", type=PluginName("backbone"), default=None,
              help="Only this library's backbones (default: every installed one).")
@click.option("--filter", "text", default="", help="Only names containing TEXT (case-insensitive), e.g. convnext.")
@click.option("--all", "show_all", is_flag=True, default=False,
              help="Also list torchvision models and weights that give no usable feature.")
@click.option("--every-weights", is_flag=True, default=False,
              help="One row per torchvision model and weights (e.g. ViT's SWAG weights at 384), not only the default.")
@reports_errors
def backbones(library, text, show_all, every_weights):
    """List backbones: name, feature width, input size, preprocessing, ImageNet top-1 (metadata only, no download)."""
    from pipeline.embed.backbones import rows
    from pipeline.embed.backbones.table import format_table

    click.echo(format_table(rows([library] if library else None, text, every_weights), show_all=show_all))


@cli.command()
@click.argument("kind", required=False, type=click.Choice(list(BUILTINS)))
@reports_errors
def plugins(kind):
    """List the registered plug-ins (models, dataset formats, clip samplers, optimizers, schedules, backbone
    libraries; your own through entry points) with the config keys each brings."""
    from pipeline.registry import describe

    click.echo(describe([kind] if kind else None), nl=False)


@cli.command(name="config")
@config_options
@click.option("--key", default=None, metavar="SECTION.KEY", help="Print only this key's value (e.g. run.dir).")
@reports_errors
def show_config(config_path, overrides, key):
    """Print the fully resolved config (after --set and placeholders) as YAML."""
    import yaml

    resolved = load_config(config_path, overrides).to_dict()
    if key is None:
        click.echo(yaml.safe_dump(resolved, sort_keys=False), nl=False)
        return
    section, _, name = key.partition(".")
    if name not in resolved.get(section, {}):
        raise ActrecError(f"--key {key}: no such config key (see configs/README.md)")
    click.echo(resolved[section][name])


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@reports_errors
def report(run_dirs):
    """Compare the metrics.json of several runs (e.g. bilstm vs meanpool, or splits 1-3 with their mean); a
    sweep folder (runs/sweeps/NAME) prints its leaderboard."""
    from pipeline.experiments.report import report_text

    click.echo(report_text(run_dirs))


def main() -> None:
    if not sys.stderr.isatty():
        # Logs (CI, `make demo > log`) get a progress line every 30 s, not one per update.
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    cli(prog_name="actrec")


if __name__ == "__main__":
    main()
