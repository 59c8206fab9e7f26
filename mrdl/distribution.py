"""Representation distributions of the paper (Eqs. 6-10), taken diagonal.

Each distribution is a diagonal Gaussian over the joint space H (N tokens x C channels),
estimated per sample from a small set of "samples" of that space:

* p from {F_T, F_L^1..K} (text + learnable features), q from {F_V, F_L^1..K} (vision + F_L);
* r from {F_L^1..K} alone; the fused feature is F = mu_r + omega * sigma_r, omega ~ N(0, I)
  in training, and F = mu_r in eval mode (deterministic, and what the export folds).

The paper writes full covariances; in N*C (12,544 at 224x224, C=64) dimensions with K+1 = 33
samples a full covariance is neither estimable nor cheap, so the diagonal is used. Its Eq. 10
has sigma_p^2 in the last denominator, a typo: KL(p || q) below is the standard formula.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class DiagonalGaussian(NamedTuple):
    mean: torch.Tensor
    var: torch.Tensor


def fit_diagonal_gaussian(samples: torch.Tensor, *, dim: int, eps: float = 1e-6) -> DiagonalGaussian:
    """Mean and population variance (+eps) of ``samples`` along ``dim``."""
    mean = samples.mean(dim=dim)
    var = (samples - mean.unsqueeze(dim)).pow(2).mean(dim=dim) + eps
    return DiagonalGaussian(mean, var)


def kl_divergence(p: DiagonalGaussian, q: DiagonalGaussian) -> torch.Tensor:
    """KL(p || q) elementwise: log(sigma_q/sigma_p) + (sigma_p^2 + (mu_p - mu_q)^2) / (2 sigma_q^2) - 1/2."""
    return 0.5 * (q.var.log() - p.var.log()) + (p.var + (p.mean - q.mean).pow(2)) / (2.0 * q.var) - 0.5


def joint_distribution(
    modality: torch.Tensor, learnable: torch.Tensor, *, eps: float = 1e-6
) -> DiagonalGaussian:
    """Distribution over {modality, F_L^1..K} per sample.

    modality: (B, N, C); learnable: (K, N, C). Returns mean and var of shape (B, N, C).
    """
    batch = modality.shape[0]
    shared = learnable.unsqueeze(0).expand(batch, -1, -1, -1)  # (B, K, N, C)
    samples = torch.cat([modality.unsqueeze(1), shared], dim=1)  # (B, K+1, N, C)
    return fit_diagonal_gaussian(samples, dim=1, eps=eps)


def representation_kl(
    text: torch.Tensor, vision: torch.Tensor, learnable: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    """L_KL = KL(p || q) averaged over elements and batch (a scalar)."""
    p = joint_distribution(text, learnable, eps=eps)
    q = joint_distribution(vision, learnable, eps=eps)
    return kl_divergence(p, q).mean()


def fused_feature(learnable: torch.Tensor, *, batch: int, sample: bool, eps: float = 1e-6) -> torch.Tensor:
    """F drawn from r = N(mu_r, sigma_r^2) over F_L: (K, N, C) -> (B, N, C).

    ``sample=True`` (training) reparameterises F = mu_r + omega * sigma_r with omega ~ N(0, I),
    one draw per sample; ``sample=False`` (eval, export) returns the mean mu_r.
    """
    r = fit_diagonal_gaussian(learnable, dim=0, eps=eps)  # (N, C) each
    mean = r.mean.unsqueeze(0).expand(batch, -1, -1)
    if not sample:
        return mean
    omega = torch.randn_like(mean)
    return mean + omega * r.var.sqrt()
