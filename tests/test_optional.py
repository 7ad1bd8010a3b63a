"""Each optional package hidden in turn (a real import blocker in a fresh process): the command that needs it
ends in one line with the install command of its extra, never a ModuleNotFoundError."""

import subprocess
import sys
import textwrap

import pytest

from pipeline.errors import ActrecError
from pipeline.optional import EXTRAS, install_line, require
from tests.helpers import PROJECT_ROOT

# Run in a fresh interpreter: a meta-path finder that refuses the hidden top-level packages, as when they are not
# installed, then the actrec command line.
HIDE = textwrap.dedent("""
    import importlib.abc, sys
    hidden = set(sys.argv[1].split(","))
    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in hidden:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Hide())
    sys.argv = ["actrec"] + sys.argv[2:]
    if sys.argv[1] == "--python":
        exec(sys.argv[2])
    else:
        from pipeline.cli import main
        main()
""")


def run_hidden(hidden: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE, hidden, *args], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
                          timeout=120)


def fake_run(folder):
    """A run dir as `actrec serve` finds it (config.yaml and checkpoints/best.pt), enough to reach the page."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "best.pt").write_bytes(b"")
    (folder / "config.yaml").write_text("run:\n  dir: " + str(folder) + "\n")
    return str(folder)


SAFETENSORS = ("from pathlib import Path; from pipeline.embed.backbones.weightfile import read_state_dict\n"
               "from pipeline.errors import ActrecError\n"
               "try:\n    read_state_dict(Path('w.safetensors'))\n"
               "except ActrecError as exc:\n    print('error:', exc, file=sys.stderr); sys.exit(2)")

CASES = {  # hidden packages -> (the command that needs them, the install line it must print)
    "optuna": (["tune", "--name", "s", "--param", "train.lr=float:1e-3:1e-2"], "pip install -e '.[tune]'"),
    "sqlalchemy": (["tune", "--name", "s", "--param", "train.lr=float:1e-3:1e-2"], "pip install -e '.[tune]'"),
    "mlflow": (["train", "--set", "track.mlflow=mlruns"], "pip install -e '.[mlflow]'"),
    "mlflow-evaluate": (["evaluate", "--set", "track.mlflow=mlruns"], "pip install -e '.[mlflow]'"),
    "gradio": (["serve", "RUN"], "pip install -e '.[serve]'"),
    "ray": (["sweep", "--backend", "ray", "--grid", "train.lr=1e-3,1e-2"], "pip install -e '.[cluster]'"),
    "ray-tune": (["tune", "--name", "s", "--param", "train.lr=float:1e-3:1e-2", "--backend", "ray"],
                 "pip install -e '.[cluster]'"),
    "dask": (["sweep", "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9", "--grid", "train.lr=1e-3,1e-2"],
             "pip install -e '.[cluster]'"),
    "timm": (["backbones", "--library", "timm"], "pip install -e '.[timm]'"),
    "open_clip": (["backbones", "--library", "open_clip"], "pip install -e '.[clip]'"),
    "safetensors": (["--python", SAFETENSORS], "pip install safetensors"),
    "sklearn": (["probe"], "pip install -e '.[probe]'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("hidden", sorted(CASES))
def test_each_optional_package_missing_gives_its_install_line(tmp_path, hidden):
    args, line = CASES[hidden]
    (tmp_path / "w.safetensors").write_bytes(b"")
    args = [fake_run(tmp_path / "run") if arg == "RUN" else arg for arg in args]
    done = run_hidden(hidden.split("-")[0], args, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and line in last and hidden.split("-")[0] in last, done.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_require_imports_or_names_the_extra():
    assert require("json", "x").dumps([]) == "[]"
    with pytest.raises(ActrecError, match=r"no_such_pkg is not installed .*`actrec x` needs it: pip install no_such"):
        require("no_such_pkg.sub", "`actrec x`")
    assert install_line("ray") == "pip install -e '.[cluster]'" and install_line("open_clip.transform").endswith(
        "'.[clip]'")


def test_every_extra_named_in_the_table_is_an_extra_of_setup_cfg():
    import configparser

    parser = configparser.ConfigParser()
    parser.read(PROJECT_ROOT / "setup.cfg")
    extras = set(parser["options.extras_require"])
    assert {extra for extra in EXTRAS.values() if extra} <= extras


def test_no_optional_package_is_imported_except_through_require():
    """Every optional import goes through pipeline.optional.require: a plain import of one fails this test."""
    import re

    plain = re.compile(r"^\s*(?:import|from)\s+(" + "|".join(EXTRAS) + r")\b", re.M)
    found = [f"{path.relative_to(PROJECT_ROOT)}: {m.group(0).strip()}" for path in (PROJECT_ROOT / "pipeline").rglob(
        "*.py") for m in plain.finditer(path.read_text())]
    assert not found, found
