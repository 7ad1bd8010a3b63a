import pytest
import torch

from pipeline.config import load_config
from pipeline.sequence.models import build_model


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
