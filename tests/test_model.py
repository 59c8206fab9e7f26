"""The MRDL network on the tiny config: shapes, determinism, gradients, parameter budget."""

from __future__ import annotations

import pytest
import torch

from mrdl.model import count_parameters, create_model


def _batch(cfg, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = cfg.model.image_size
    image = torch.rand(batch, 3, s, s, generator=g)
    text = torch.randn(batch, cfg.model.text.context_length, cfg.model.text.width, generator=g)
    return image, text


@pytest.mark.parametrize("n_classes", [1, 3])
@pytest.mark.parametrize("fusion", ["distribution", "addition"])
def test_forward_shapes(tiny_config, tiny_prompt_features, n_classes, fusion):
    model = create_model(tiny_config, prompt_features=tiny_prompt_features, n_classes=n_classes, fusion=fusion)
    image, text = _batch(tiny_config, batch=3)
    out = model(image, text)
    assert out.logits.shape == (3, n_classes, 64, 64)
    if fusion == "distribution":
        assert out.kl.ndim == 0 and torch.isfinite(out.kl)
    else:
        assert out.kl is None


def test_eval_is_deterministic_and_ignores_text(tiny_model, tiny_config):
    image, text = _batch(tiny_config)
    tiny_model.eval()
    with torch.no_grad():
        a = tiny_model(image).logits
        b = tiny_model(image, text).logits
        c = tiny_model(image, torch.randn_like(text)).logits
    assert torch.equal(a, b) and torch.equal(a, c)


def test_train_mode_is_stochastic(tiny_model, tiny_config):
    image, text = _batch(tiny_config)
    tiny_model.train()
    a = tiny_model(image, text).logits
    b = tiny_model(image, text).logits
    assert not torch.allclose(a, b)


def test_addition_uses_text_in_eval(tiny_config, tiny_prompt_features):
    model = create_model(tiny_config, prompt_features=tiny_prompt_features, fusion="addition").eval()
    image, text = _batch(tiny_config)
    with torch.no_grad():
        assert not torch.allclose(model(image, text).logits, model(image, text * -1).logits)
    with pytest.raises(ValueError, match="addition"):
        model(image)


def test_gradients_reach_learnable_text_and_vision(tiny_model, tiny_config):
    image, text = _batch(tiny_config)
    out = tiny_model.train()(image, text)
    (out.logits.mean() + out.kl).backward()
    for name, param in [("F_L", tiny_model.learnable_features),
                        ("ConvB linear", tiny_model.text_projection.linear.weight),
                        ("ConvB token conv", tiny_model.text_projection.token_conv.weight),
                        ("vision embedding", tiny_model.vision_embedding.proj.weight)]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_learnable_features_start_near_prompt(tiny_model):
    features = tiny_model.learnable_features.detach()  # (K, N, C)
    spread = (features - features.mean(0)).std()
    assert 0.05 < spread < 0.2  # K copies of one embedding + 0.1 N(0, I)


@pytest.mark.parametrize("bad, message", [
    (torch.rand(2, 3, 32, 32), r"\(B, 3, 64, 64\)"),
    (torch.rand(2, 1, 64, 64), r"\(B, 3, 64, 64\)"),
    (torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), "float"),
])
def test_bad_image_is_refused(tiny_model, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_model.eval()(bad)


def test_bad_text_shape_is_refused(tiny_model, tiny_config):
    image, _ = _batch(tiny_config)
    with pytest.raises(ValueError, match="text features must have shape"):
        tiny_model(image, torch.randn(2, 10, 32))


def test_base_parameter_budget():
    """LViT-T has 29.7 M; less its 1.7 M BERT-side convs, plus F_L (0.4 M) and Enc_P: 28-30 M."""
    from mrdl.config import load_config
    from mrdl.model import MRDL

    cfg = load_config("base")
    model = MRDL(cfg, torch.zeros(cfg.model.text.context_length, cfg.model.text.width))
    total = count_parameters(model)
    assert 28_000_000 <= total <= 30_000_000, total
    assert model.learnable_features.numel() == 32 * 196 * 64
