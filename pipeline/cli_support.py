"""What every command shares: logging set up once, the config options, the option types, and the one error
boundary that turns an error into one line (exit status 2)."""

from __future__ import annotations

import errno
import functools
import logging
import math
import sys
import traceback

import click

from pipeline.errors import ActrecError


class _LogHandler(logging.Handler):
    """Log records as plain lines on stderr, written between progress bars rather than through them."""

    def emit(self, record: logging.LogRecord) -> None:
        # Imported here: tqdm reads its TQDM_* settings from the environment when first imported, after main().
        from tqdm import tqdm

        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                message = f"{record.levelname.lower()}: {message}"
            tqdm.write(message, file=sys.stderr)
        except Exception:  # a broken pipe must not turn a log line into a crash
            self.handleError(record)


def configure_logging(verbose: bool, quiet: bool) -> None:
    """The library logs under the ``pipeline`` logger; the CLI decides how much of it a user sees."""
    logger = logging.getLogger("pipeline")
    logger.handlers[:] = [_LogHandler()]
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


class FiniteFloat(click.ParamType):
    """The type of every float option: a finite number (never inf, -inf or nan), within ``min``..``max`` when
    given (those of the config key the option stands for). Config keys are checked the same way by the schema."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None):
        self.min, self.max = min, max

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value) and self._within(value):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if not self._within(number):
            self.fail(f"{value!r} is not between {self.min:g} and {self.max:g}", param, ctx)
        return number

    def _within(self, number: float) -> bool:
        return (self.min is None or number >= self.min) and (self.max is None or number <= self.max)


def config_options(func):
    """--config and --set, shared by every command that reads the config."""
    func = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                        help="Override one config key; repeatable (e.g. --set train.epochs=5).")(func)
    func = click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None,
                        show_default="built-in defaults (the real UCF-101 job)",
                        help="YAML config file (see configs/).")(func)
    return func


# The settings that decide each command's peak memory: what an out-of-memory error tells the user to lower.
MEMORY_SETTINGS = {
    "embed": "embed.batch_size or embed.workers (or embed.img_dim)",
    "train": "train.batch_size, model.hidden_dim, model.latent_dim or train.sequence_length (or set cache.load=disk)",
    "evaluate": "eval.batch_size or eval.clips (or set cache.load=disk)",
    "predict": "embed.batch_size of the run's config, or predict on a shorter video",
    "sweep": "--jobs, train.batch_size or model.hidden_dim (or set cache.load=memory)",
    "tune": "--jobs, train.batch_size or the --param ranges of model sizes (or set cache.load=memory)",
}


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower()
                                              or "can't allocate memory" in str(exc).lower())


def _os_error_line(exc: OSError) -> str:
    """A full disk or read-only folder that a writer met outside fileio's helpers reads as it does inside them."""
    from pipeline.fileio import write_error

    if exc.filename and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
        return str(write_error(exc.filename, exc))
    return str(exc)


def _fail(message: str) -> None:
    """Print ``message`` as one red line (the traceback too with --verbose) and exit with status 2."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and (ctx.find_root().obj or {}).get("verbose"):
        traceback.print_exc()
    click.secho(f"error: {' '.join(message.split())}", fg="red", err=True)
    sys.exit(2)


def reports_errors(func):
    """Turn ActrecError, OS errors, out-of-memory and Ctrl-C into one line and a non-zero exit; --verbose keeps
    the traceback."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ActrecError, OSError) as exc:
            # OSError here is the machine saying no (permissions, a full disk, a missing folder): also one line.
            _fail(_os_error_line(exc) if isinstance(exc, OSError) else str(exc))
        except (MemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            command = click.get_current_context().info_name
            _fail(f"out of memory in `actrec {command}` ({str(exc).splitlines()[0][:160]}); lower "
                  f"{MEMORY_SETTINGS.get(command, 'the batch sizes')} and run the command again")
        except KeyboardInterrupt:
            click.secho("interrupted; finished work is kept, run the command again to resume", err=True)
            sys.exit(130)
    return wrapper


class PluginName(click.ParamType):
    """The name of a registered plug-in of ``kind``: checked when the option is given, so loading the CLI
    imports no plug-in."""

    name = "name"

    def __init__(self, kind: str):
        self.kind = kind

    def convert(self, value, param, ctx):
        from pipeline.registry import registry

        names = registry(self.kind).names()
        if value not in names:
            self.fail(f"{value!r} is not a {self.kind}; one of {', '.join(names)}", param, ctx)
        return value
