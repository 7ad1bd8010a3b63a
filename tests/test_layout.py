"""The package's layering: each part imports only the parts below it, and stage two never loads stage one.

The rule, bottom to top (the README's Layout section states it):

    shared ground (errors, fileio, registry, schema, optional, device, distributed, plots)
    -> config (sections, config, config_doc, tracking) -> inputs -> cache -> embed | sequence (never each other)
    -> predict -> experiments -> serve -> cli, the package's API.

Checked on every import statement of the package's source, including those inside functions.
"""

import ast
import subprocess
import sys

from tests.helpers import PROJECT_ROOT
from tests.orderdata import order_config, write_order_dataset

LAYERS = [
    {"errors", "fileio", "registry", "schema", "optional", "device", "distributed", "plots"},
    {"sections", "config", "config_doc", "tracking"},
    {"inputs"},
    {"cache"},
    {"embed", "sequence", "interchange"},
    {"predict", "zeroshot"},
    {"experiments"},
    {"serve"},
    {"cli", "cli_support", "__main__", "__init__", "api"},
]
# Parts of one layer that may import each other (the others of a layer are siblings that must not).
MAY_SHARE = ({"errors", "fileio", "registry", "schema", "optional", "device", "distributed", "plots"},
             {"sections", "config", "config_doc", "tracking"}, {"cli", "cli_support", "__main__", "__init__", "api"})
STAGE_ONE = ("torchvision", "pipeline.embed", "pipeline.inputs.video", "cv2")


def part(module: str) -> str:
    """``pipeline.sequence.train`` -> ``sequence``; ``pipeline`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def level(name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def imports_of(path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline" and node.level == 0:
            found += [(f"pipeline.{alias.name}", node.lineno) for alias in node.names]  # from pipeline import x
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name == "pipeline" or name.startswith("pipeline.")]


def test_every_part_of_the_package_imports_only_the_layers_below_it():
    package = PROJECT_ROOT / "pipeline"
    parts = {part(".".join(p.relative_to(PROJECT_ROOT).with_suffix("").parts)) for p in package.rglob("*.py")}
    assert parts <= set().union(*LAYERS), f"place {parts - set().union(*LAYERS)} in a layer of this test"
    upward = []
    for path in sorted(package.rglob("*.py")):
        me = part(".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts))
        for name, line in imports_of(path):
            other = part(name)
            shared = any({me, other} <= group for group in MAY_SHARE)
            if other != me and not shared and level(other) >= level(me):
                upward.append(f"{path.relative_to(PROJECT_ROOT)}:{line} imports {name}")
    assert not upward, "imports that do not go down:\n" + "\n".join(upward)


def test_train_and_evaluate_do_not_load_stage_one(tmp_path):
    cfg = order_config(tmp_path, "train.epochs=1")
    write_order_dataset(cfg)  # a real cache, written here: the subprocess only reads it
    sets = ", ".join(repr(f"{k}={v}") for k, v in [("cache.path", cfg.cache.path), ("data.splits", cfg.data.splits),
                                                     ("run.dir", cfg.run.dir), ("train.epochs", 1)])
    code = (f"import sys\n"
            f"sys.argv = ['actrec']\n"
            f"from pipeline.config import load_config\n"
            f"from pipeline.experiments.tracked import evaluate_run, train_run\n"
            f"from tests.helpers import tiny_overrides\n"
            f"cfg = load_config({str(PROJECT_ROOT / 'configs' / 'synthetic.yaml')!r}, "
            f"tiny_overrides({str(tmp_path)!r}) + [{sets}])\n"
            f"train_run(cfg)\n"
            f"evaluate_run(cfg)\n"
            f"print(','.join(sorted(m for m in sys.modules if m.startswith({STAGE_ONE!r}))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1:] in ([], [""]), f"stage two loaded {done.stdout.strip()}"
