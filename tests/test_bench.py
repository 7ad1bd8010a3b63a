import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from benchmarks import ROWS, format_markdown, run_benchmarks, write_readme_section
from benchmarks.__main__ import main
from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.errors import ActrecError
from tests.helpers import PROJECT_ROOT


@pytest.mark.slow
def test_quick_bench_has_every_row(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BENCH:START -->\nold table\n<!-- BENCH:END -->\nafter\n")
    result = CliRunner().invoke(main, ["-c", str(PROJECT_ROOT / "configs" / "synthetic.yaml"),
                                      "--set", "embed.threads=1", "--quick", "--out", str(tmp_path / "bench"),
                                      "--readme", str(readme)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bench" / "results.json").read_text())
    ids = [row["id"] for row in data["rows"]]
    gpu_ids = ["6-112", "6-224"] if torch.cuda.is_available() else ["6-32", "6-48"]  # CPU smoke: tiny sizes
    cuda_epoch = [] if data["device"].startswith("CPU") else ["8-cuda"]
    assert ids == ["1-real", "1-videos", "1-frames", "2", "3", "4", "5a", "5b", *gpu_ids, "7", "8-cpu", *cuda_epoch,
                   "9", "10", "11-refuse", "11-embed", "11-predict", "12-zeroshot", "12-search", "12-probe"]
    for row in data["rows"]:
        assert row["command"].startswith("python -m benchmarks") and row["value"]
        # no ratio: the CUDA epoch row without a GPU, or a real-footage row whose every round saw the load move
        assert (row["ratio"] is None) == (row["id"] in ("8-cuda", "12-probe") or row["value"].startswith("no valid"))
    epoch = next(row for row in data["rows"] if row["id"] == "8-cpu")
    assert epoch["details"]["seconds_per_clip"] > 0 and "s per epoch (from 8 clips; DataLoader path" in epoch["value"]
    assert all(row["ratio"] > 0 for row in data["rows"] if row["ratio"] is not None)
    if not torch.cuda.is_available():
        check_gpu_smoke_rows([row for row in data["rows"] if row["id"] in gpu_ids])
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("after\n")
    table = (tmp_path / "bench" / "results.md").read_text()
    assert table in text
    assert table in result.output  # the CLI prints the table; the library only logs
    assert len(ROWS) == 12
    refuse, embed, predict = (next(row for row in data["rows"] if row["id"] == f"11-{what}")
                              for what in ("refuse", "embed", "predict"))
    assert set(refuse["details"]["refused"]) == {"embed", "train", "predict"}
    steps = embed["details"]["runs"][0]["steps"]  # the embed's start-up, in the order it happens
    assert list(steps) == ["command", "workers_started", "stage_imported", "backbone_built", "first_features",
                           "finished", "exit"] and list(steps.values()) == sorted(steps.values())
    assert predict["details"]["predict"]["seconds"] > 0


def test_readme_section_needs_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ActrecError, match="markers"):
        write_readme_section(readme, format_markdown({"device": "x", "torch": "y", "quick": True, "rows": []}))
    assert readme.read_text() == "no markers\n"


def test_readme_without_markers_fails_before_measuring(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ActrecError, match="README.md.*markers"):
        run_benchmarks(load_config(None), quick=True, out_dir=tmp_path / "bench", readme=readme)
    assert not (tmp_path / "bench").exists()


def test_package_import_leaves_torch_out():
    code = "import sys, benchmarks; sys.exit('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr or "importing benchmarks imported torch"


def test_feature_cache_is_the_ucf101_defaults_with_the_quick_changes(tmp_path):
    from benchmarks.common import QUICK
    from benchmarks.stage_two import feature_cache
    from pipeline.cache.reader import FeatureCache

    cfg = feature_cache(QUICK, tmp_path)
    defaults = load_config(None)
    assert cfg.model.name == defaults.model.name and cfg.model.attention == defaults.model.attention
    assert (cfg.model.hidden_dim, cfg.train.sequence_length, cfg.train.workers) == (32, 8, 0)
    cache = FeatureCache(cfg.cache.path)
    assert (cache.dim, len(cache.names), len(cache.class_names)) == (2048, QUICK.cache_videos, 101)


def test_seed_training_step_trains_the_model_not_the_backbone(tiny_config):
    from benchmarks.stage_two import seed_training_step
    from pipeline.embed.backbones import resolve_backbone
    from pipeline.sequence.models import build_model

    backbone = resolve_backbone("resnet18", "none").build(torch.device("cpu")).to(memory_format=torch.contiguous_format)
    torch.manual_seed(0)
    model = build_model(tiny_config, 512, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before_model = [p.detach().clone() for p in model.parameters()]
    before_backbone = [p.detach().clone() for p in backbone.parameters()]
    loss = seed_training_step(backbone, model, optimizer, torch.nn.CrossEntropyLoss(),
                              torch.randn(4, 3, 32, 32), torch.tensor([1]))
    assert loss > 0
    assert any(not torch.equal(a, b) for a, b in zip(before_model, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before_backbone, backbone.parameters()))


def test_seed_step_takes_a_batch_of_clips_with_the_backbone_batchnorm_in_train_mode(tiny_config):
    from benchmarks.epoch import seed_step_seconds
    from benchmarks.stage_two import seed_training_step
    from pipeline.embed.backbones import resolve_backbone
    from pipeline.sequence.models import build_model

    backbone = resolve_backbone("resnet18", "none").build(torch.device("cpu")).train()
    torch.manual_seed(0)
    model = build_model(tiny_config, 512, 4)
    running_mean = backbone.bn1.running_mean.clone()
    frames = torch.randn(3 * 5, 3, 32, 32)  # 3 clips of 5 frames
    loss = seed_training_step(backbone, model, torch.optim.Adam(model.parameters()), torch.nn.CrossEntropyLoss(),
                              frames, torch.tensor([0, 1, 2]))
    assert loss > 0 and not torch.equal(running_mean, backbone.bn1.running_mean)  # batch statistics, as the seed
    assert seed_step_seconds(tiny_config, "resnet18", torch.device("cpu"), steps=1) > 0


@pytest.mark.slow
def test_failed_scaling_embed_is_one_line(tmp_path):
    from benchmarks.scaling import embed_in_subprocess

    cfg = load_config(PROJECT_ROOT / "configs" / "synthetic.yaml",
                      [f"data.videos={tmp_path}/missing", f"data.splits={tmp_path}/missing-splits",
                       f"cache.path={tmp_path}/c.h5", "embed.weights=none"])
    with pytest.raises(ActrecError, match="scaling embed .* failed: ") as caught:
        embed_in_subprocess(cfg)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without a GPU")
def test_gpu_rows_say_no_gpu_in_the_real_run(tmp_path):
    from benchmarks.gpu import bench_gpu

    cfg = load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", ["embed.threads=1"])
    real = bench_gpu(cfg, quick=False, work=tmp_path / "real", command="python -m benchmarks --only gpu")
    assert [r["value"] for r in real] == ["no GPU", "no GPU"] and [r["id"] for r in real] == ["6-112", "6-224"]
    assert not (tmp_path / "real").exists()  # nothing measured, nothing generated


def check_gpu_smoke_rows(rows: list[dict]) -> None:
    """Row 6 as ``--quick`` runs it without a GPU: the same code on the CPU, every worker count measured."""
    for r in rows:
        assert r["value"].startswith("no GPU; CPU smoke run: bare ") and r["ratio"] > 0
        assert set(r["details"]["embed"]) == {"0", "1"}
        timing = r["details"]["where_the_time_went"]
        assert set(timing) == {"decode_wait", "pack", "submit", "wait", "write"} and timing["submit"] > 0


def test_the_package_ships_no_benchmarks():
    import setuptools

    assert "bench" not in cli.commands
    assert not [name for name in setuptools.find_packages(str(PROJECT_ROOT), include=["pipeline*"])
                if "bench" in name]
