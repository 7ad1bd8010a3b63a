from dataclasses import fields

import pytest
import torch

from pipeline.config import ModelConfig, load_config
from pipeline.errors import ActrecError
from pipeline.sequence.models import build_model, ignored_model_keys, model_names, used_model_keys
from pipeline.sequence.train import train
from tests.orderdata import order_config, write_order_dataset


def model_config(name, **model_keys):
    overrides = [f"model.name={name}", "model.latent_dim=12", "model.hidden_dim=10", "model.dropout=0.0"]
    return load_config(None, overrides + [f"model.{k}={v}" for k, v in model_keys.items()])


@pytest.mark.parametrize("name, keys", [
    ("bilstm", {}),
    ("bilstm", {"attention": "false", "layers": 2, "bidirectional": "false"}),
    ("meanpool", {}),
    ("tcn", {}),
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
    torch.testing.assert_close(meanpool(x), meanpool(reversed_x))
    assert not torch.allclose(bilstm(x), bilstm(reversed_x))
    assert not torch.allclose(tcn(x), tcn(reversed_x))


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


def test_layers_and_dropout_reach_the_lstm():
    model = build_model(model_config("bilstm", layers=2, dropout=0.3), 8, 3)
    assert model.lstm.num_layers == 2 and model.lstm.dropout == pytest.approx(0.3) and model.lstm.bidirectional


def other_value(f):
    """A valid value of a model.* key other than its default."""
    default, meta = f.default, f.metadata
    if meta["choices"]:
        return next(c for c in meta["choices"] if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1 if meta["max"] is None or default < meta["max"] else default - 1
    return min(default + 0.1, meta["max"])


def test_model_names_come_from_the_registry_and_each_model_declares_schema_keys():
    schema = {f.name: f for f in fields(ModelConfig)}
    assert schema["name"].metadata["choices"] == model_names()
    assert {"bilstm", "meanpool", "tcn"} <= set(model_names())
    for name in model_names():
        used = used_model_keys(name)
        assert "model.name" in used
        assert {key.split(".")[1] for key in used} <= set(schema), name


@pytest.mark.parametrize("name", model_names())
def test_a_key_the_model_does_not_declare_changes_nothing_in_it(name):
    """What a model declares is what it reads: every other model.* key set to another value builds the same
    weights and the same outputs."""
    base = model_config(name)
    changed = model_config(name)
    ignored = [f for f in fields(ModelConfig) if f"model.{f.name}" not in used_model_keys(name)]
    for f in ignored:
        setattr(changed.model, f.name, other_value(f))
    assert ignored_model_keys(changed.to_dict()) == [f"model.{f.name}" for f in ignored]
    assert ignored_model_keys(base.to_dict()) == []
    torch.manual_seed(0)
    a = build_model(base, 20, 5).eval()
    torch.manual_seed(0)
    b = build_model(changed, 20, 5).eval()
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    x = torch.randn(3, 8, 20)
    assert torch.equal(a(x), b(x))


def test_meanpool_ignores_attention_and_train_says_so_in_one_line(tmp_path, caplog):
    cfg = order_config(tmp_path, "model.name=meanpool", "model.attention=false", "model.layers=2",
                       "train.epochs=1")
    write_order_dataset(cfg)
    with caplog.at_level("WARNING", logger="pipeline"):
        train(cfg)
    lines = [r.getMessage() for r in caplog.records if "does not use" in r.getMessage()]
    assert lines == ["meanpool does not use model.layers, model.attention: set, but ignored (configs/README.md "
                     "says which model reads which key)"]


def test_an_unknown_model_is_one_clear_error():
    cfg = model_config("bilstm")
    cfg.model.name = "lstm"
    with pytest.raises(ActrecError, match="model.name: unknown model 'lstm'. Allowed: bilstm"):
        build_model(cfg, 4, 2)
    with pytest.raises(ActrecError, match="model.name: 'lstm' is not allowed"):
        load_config(None, ["model.name=lstm"])
