"""The one way the project imports an optional package: ``require(module)`` or one line with the install command.

Every optional import goes through here (Optuna, MLflow, Gradio, Ray, Dask, timm, OpenCLIP, safetensors), so a
missing package always reads the same: what needs it and the ``pip install`` line of the extra that has it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.errors import ActrecError

# Top-level package -> the setup.cfg extra that installs it (None: no extra, pip install the package itself).
EXTRAS = {"optuna": "tune", "sqlalchemy": "tune", "mlflow": "mlflow", "gradio": "serve", "gradio_client": "serve",
          "ray": "cluster", "dask": "cluster", "distributed": "cluster", "timm": "timm", "open_clip": "clip",
          "sklearn": "probe", "safetensors": None}
# Distribution names where they differ from the module's.
DISTRIBUTIONS = {"open_clip": "open-clip-torch", "sklearn": "scikit-learn"}


def install_line(module: str) -> str:
    """The command that installs ``module`` (the project's extra that has it, else the package)."""
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    return f"pip install -e '.[{extra}]'" if extra else f"pip install {DISTRIBUTIONS.get(top, top)}"


def require(module: str, what: str) -> ModuleType:
    """``import module``; when it (or a package it needs) is not installed, one ActrecError line saying that
    ``what`` (e.g. '`actrec tune`') needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        raise ActrecError(f"{module.split('.')[0]} is not installed ({missing} cannot be imported), and {what} "
                          f"needs it: {install_line(module)}") from exc


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it: no slow import for a yes/no)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
