"""Diagonal-Gaussian KL and the fused feature (paper Eqs. 6-10)."""

from __future__ import annotations

import torch

from mrdl.distribution import DiagonalGaussian, fused_feature, kl_divergence, representation_kl


def test_kl_is_zero_for_identical_inputs():
    learnable = torch.randn(4, 16, 8)
    modality = torch.randn(2, 16, 8)
    assert representation_kl(modality, modality, learnable).abs() < 1e-7


def test_kl_matches_float64_closed_form():
    g = torch.Generator().manual_seed(0)
    mu_p, mu_q = torch.randn(100, generator=g, dtype=torch.float64), torch.randn(100, generator=g, dtype=torch.float64)
    var_p = torch.rand(100, generator=g, dtype=torch.float64) + 0.1
    var_q = torch.rand(100, generator=g, dtype=torch.float64) + 0.1
    ours = kl_divergence(DiagonalGaussian(mu_p.float(), var_p.float()), DiagonalGaussian(mu_q.float(), var_q.float()))
    p = torch.distributions.Normal(mu_p, var_p.sqrt())
    q = torch.distributions.Normal(mu_q, var_q.sqrt())
    reference = torch.distributions.kl_divergence(p, q)
    # and written out by hand: log(sq/sp) + (sp^2 + (mp-mq)^2) / (2 sq^2) - 1/2
    by_hand = torch.log(var_q.sqrt() / var_p.sqrt()) + (var_p + (mu_p - mu_q) ** 2) / (2 * var_q) - 0.5
    assert torch.allclose(reference, by_hand)
    assert torch.allclose(ours.double(), reference, rtol=1e-5, atol=1e-6)


def test_kl_is_non_negative_and_asymmetric():
    g = torch.Generator().manual_seed(1)
    learnable = torch.randn(4, 16, 8, generator=g)
    text, vision = torch.randn(3, 16, 8, generator=g), 3 * torch.randn(3, 16, 8, generator=g)
    forward, backward = representation_kl(text, vision, learnable), representation_kl(vision, text, learnable)
    assert forward > 0 and backward > 0 and not torch.isclose(forward, backward)


def test_fused_feature_mean_in_eval_and_samples_in_training():
    learnable = torch.randn(8, 16, 4)
    mean = fused_feature(learnable, batch=3, sample=False)
    assert mean.shape == (3, 16, 4) and torch.allclose(mean[0], learnable.mean(0))
    torch.manual_seed(0)
    draws = torch.stack([fused_feature(learnable, batch=1, sample=True)[0] for _ in range(2000)])
    assert torch.allclose(draws.mean(0), learnable.mean(0), atol=0.15)
    assert torch.allclose(draws.std(0), learnable.std(0, unbiased=False), rtol=0.1, atol=0.02)
