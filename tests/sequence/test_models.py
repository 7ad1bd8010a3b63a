import inspect
from dataclasses import fields

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import ActrecError
from pipeline.sequence.models import MODELS, build_model
from pipeline.sequence.train import train
from tests.orderdata import order_config, write_order_dataset


def model_config(name, **model_keys):
    """A small model ``name``: the small sizes for the keys it takes, then ``model_keys``."""
    settings = MODELS.get(name).settings
    taken = {f.name for f in fields(settings)} if settings else set()
    small = {k: v for k, v in {"latent_dim": 12, "hidden_dim": 10, "dropout": 0.0}.items() if k in taken}
    return load_config(None, [f"model.name={name}"] + [f"model.{k}={v}" for k, v in {**small, **model_keys}.items()])


@pytest.mark.parametrize("name, keys", [
    ("bilstm", {}),
    ("bilstm", {"attention": "false", "layers": 2, "bidirectional": "false"}),
    ("meanpool", {}),
    ("tcn", {}),
    ("transformer", {"heads": 3, "layers": 2}),
    ("transformer", {"pooling": "mean"}),
    ("linear", {}),
])
def test_models_return_logits_of_the_right_shape(name, keys):
    torch.manual_seed(0)
    model = build_model(model_config(name, **keys), feature_dim=20, num_classes=5)
    x = torch.randn(3, 7, 20)
    logits = model(x)
    assert logits.shape == (3, 5)
    # Logits, not probabilities: rows do not sum to 1 and values leave [0, 1].
    assert not torch.allclose(logits.sum(dim=1), torch.ones(3), atol=1e-3)
    assert (logits < 0).any()
    # Gradients reach the input projection (the model trains end to end on the cached features).
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    first = next(model.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_meanpool_is_blind_to_frame_order_and_bilstm_is_not():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8)
    reversed_x = x.flip(1)
    meanpool = build_model(model_config("meanpool"), 8, 3).eval()
    bilstm = build_model(model_config("bilstm"), 8, 3).eval()
    tcn = build_model(model_config("tcn"), 8, 3).eval()
    linear = build_model(model_config("linear"), 8, 3).eval()
    torch.testing.assert_close(meanpool(x), meanpool(reversed_x))
    torch.testing.assert_close(linear(x), linear(reversed_x))
    assert not torch.allclose(bilstm(x), bilstm(reversed_x))
    assert not torch.allclose(tcn(x), tcn(reversed_x))
    for pooling in ("cls", "mean"):
        transformer = build_model(model_config("transformer", pooling=pooling), 8, 3).eval()
        assert not torch.allclose(transformer(x), transformer(reversed_x))


def test_bilstm_pools_over_all_timesteps():
    # The seed read out the last timestep only; both poolings must weigh every timestep.
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8)
    for attention in ("false", "true"):
        model = build_model(model_config("bilstm", attention=attention), 8, 3).eval()
        outputs, _ = model.lstm(model.project(x))
        pooled = model.pool(outputs)
        if attention == "false":
            torch.testing.assert_close(pooled, outputs.mean(dim=1))
        else:
            weights = torch.softmax(model.pool.score(outputs).squeeze(-1), dim=1)
            assert weights.shape == (2, 6) and (weights > 0).all()
            torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
            torch.testing.assert_close(pooled, (weights.unsqueeze(-1) * outputs).sum(dim=1))


def test_transformer_is_pre_norm_with_positions_for_the_clip_length():
    cfg = model_config("transformer", layers=2, heads=3, dropout=0.2)
    cfg.train.sequence_length = 9
    model = build_model(cfg, 8, 3)
    assert model.position.shape == (1, 10, 12) and model.cls_token.shape == (1, 1, 12)  # 9 frames + class token
    assert len(model.encoder.layers) == 2 and all(layer.norm_first for layer in model.encoder.layers)
    attention = model.encoder.layers[0].self_attn
    assert attention.num_heads == 3 and attention.dropout == pytest.approx(0.2)
    assert model.encoder.layers[0].linear1.out_features == 10  # model.hidden_dim: the feed-forward width
    mean_cfg = model_config("transformer", pooling="mean")
    mean = build_model(mean_cfg, 8, 3)
    assert mean.position.shape[1] == mean_cfg.train.sequence_length and not hasattr(mean, "cls_token")
    with pytest.raises(ActrecError, match=r"model.latent_dim=12 is not a multiple of model.heads=5"):
        model_config("transformer", heads=5)  # refused with the config, before anything is built


@pytest.mark.slow
def test_transformer_tells_reversed_pairs_apart_and_the_linear_probe_cannot(tmp_path):
    """On classes that differ only in frame order, the transformer learns the order; the linear probe on the
    mean feature sees the same mean for both classes of a pair (chance within a pair is 0.5)."""
    from pipeline.sequence.evaluate import evaluate

    results = {}
    for name, keys in (("transformer", ["model.heads=2", "train.epochs=20"]), ("linear", ["train.epochs=8"])):
        cfg = order_config(tmp_path, f"model.name={name}", "train.lr=0.005", *keys, f"run.dir={tmp_path}/{name}")
        if name == "transformer":
            write_order_dataset(cfg)
        results[name] = train(cfg)["best_val_acc"], evaluate(cfg)["pair_accuracy"]
    assert results["transformer"][0] >= 0.75 and results["transformer"][1] >= 0.9
    assert results["linear"][0] <= 0.6 and results["linear"][1] <= 0.6


def test_layers_and_dropout_reach_the_lstm():
    model = build_model(model_config("bilstm", layers=2, dropout=0.3), 8, 3)
    assert model.lstm.num_layers == 2 and model.lstm.dropout == pytest.approx(0.3) and model.lstm.bidirectional


def test_model_names_come_from_the_registry_and_a_model_brings_its_own_keys():
    assert {"bilstm", "linear", "meanpool", "tcn", "transformer"} <= set(MODELS.names())
    with pytest.raises(ActrecError, match="model.name: 'lstm' is not allowed. Allowed values: bilstm, linear"):
        load_config(None, ["model.name=lstm"])
    for name in MODELS.names():
        settings = MODELS.get(name).settings
        keys = ["name"] + [f.name for f in fields(settings)] if settings else ["name"]
        assert list(load_config(None, [f"model.name={name}"]).to_dict()["model"]) == keys, name


@pytest.mark.parametrize("name", ["bilstm", "linear", "meanpool", "tcn", "transformer"])
def test_every_key_of_a_model_reaches_its_network(name):
    """A model's settings are exactly its network's arguments (besides the feature width, the class count and the
    clip length): no key is declared but unread, none read but undeclared."""
    plugin = MODELS.get(name)
    arguments = set(inspect.signature(plugin.load()).parameters) - {"self", "feature_dim", "num_classes", "length"}
    assert arguments == ({f.name for f in fields(plugin.settings)} if plugin.settings else set())


def test_a_key_the_model_does_not_take_is_refused_naming_the_keys_it_takes():
    with pytest.raises(ActrecError) as refused:
        load_config(None, ["model.name=meanpool", "model.attention=false"])
    assert str(refused.value) == (
        "--set model.attention=false: 'model.attention' is not a key of model.name=meanpool (it belongs to "
        "model.name=bilstm). Keys of 'model' now: name, latent_dim, hidden_dim, dropout")
    with pytest.raises(ActrecError, match=r"^--set model.bogus=1: unknown key 'model.bogus'. Allowed in 'model': "
                                          r"name, latent_dim, hidden_dim, layers, bidirectional, attention, dropout$"):
        load_config(None, ["model.bogus=1"])


def test_a_file_s_keys_for_its_model_give_way_to_a_model_chosen_on_the_command_line(tmp_path, caplog):
    """configs/synthetic.yaml sets the BiLSTM's keys; --set model.name=meanpool keeps the ones meanpool takes and
    drops the others (logged with -v), while the file alone with a meanpool key it lacks is refused."""
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  name: bilstm\n  latent_dim: 64\n  attention: false\n")
    with caplog.at_level("DEBUG", logger="pipeline"):
        cfg = load_config(config, ["model.name=meanpool"])
    assert cfg.to_dict()["model"] == {"name": "meanpool", "latent_dim": 64, "hidden_dim": 1024, "dropout": 0.5}
    assert any("model.attention is dropped" in r.getMessage() for r in caplog.records)
    layered = load_config(None, ["model.attention=false", "model.latent_dim=32"], ["model.name=meanpool"])
    assert layered.to_dict()["model"] == {"name": "meanpool", "latent_dim": 32, "hidden_dim": 1024, "dropout": 0.5}
    config.write_text("model:\n  name: meanpool\n  attention: false\n")
    with pytest.raises(ActrecError, match=rf"^{config}: 'model.attention' is not a key of model.name=meanpool"):
        load_config(config)


def test_an_unknown_model_is_one_clear_error():
    cfg = model_config("bilstm")
    cfg.model.name = "lstm"
    with pytest.raises(ActrecError, match="model.name: unknown model 'lstm'. Allowed: bilstm"):
        build_model(cfg, 4, 2)
