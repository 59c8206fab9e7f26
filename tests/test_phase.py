"""The export-safe ``matmul`` phase spectrum against the ``fft`` reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrdl.phase import MatmulPhaseSpectrum, atan2_export_safe, dft_matrices, phase_spectrum_fft, unit_circle_distance


def _compare(image: torch.Tensor) -> torch.Tensor:
    reference = phase_spectrum_fft(image)
    ours = MatmulPhaseSpectrum(image.shape[-1])(image)
    magnitude = torch.fft.fft2(image.double()).abs()
    well_defined = magnitude > 1e-3 * magnitude.amax()  # phase of a near-zero bin is noise
    return unit_circle_distance(ours, reference)[well_defined]


def test_dft_matrices_have_exact_structural_zeros():
    cos, sin = dft_matrices(224)
    assert torch.all(sin[0] == 0) and torch.all(sin[:, 0] == 0) and torch.all(sin[112] == 0)
    assert cos[56, 1] == 0 and cos[1, 56] == 0 and cos[168, 1] == 0
    reference = torch.fft.fft(torch.eye(224, dtype=torch.float64))
    assert torch.allclose(cos.double(), reference.real, atol=1e-6)
    assert torch.allclose(sin.double(), -reference.imag, atol=1e-6)


@pytest.mark.parametrize("size", [63, 64, 224])
def test_matmul_phase_matches_fft_on_random_images(size):
    image = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    error = _compare(image)
    assert error.max() < 2e-3 and error.mean() < 1e-5


def test_matmul_phase_matches_fft_on_a_real_image(monuseg_root):
    from PIL import Image

    path = sorted((monuseg_root / "Val_Folder" / "img").iterdir())[0]
    rgb = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255
    error = _compare(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    assert error.max() < 2e-3 and error.mean() < 1e-5


def test_atan2_conventions_match_torch_angle():
    pi = math.pi
    real = torch.tensor([1.0, -1.0, -1.0, 0.0, 0.0, 0.0, -2.0, 3.0, -0.0])
    imag = torch.tensor([0.0, 0.0, -0.0, 1.0, -1.0, 0.0, 1.0, -3.0, 0.0])
    ours = atan2_export_safe(imag, real)
    expected = torch.tensor([0.0, pi, pi, pi / 2, -pi / 2, 0.0, math.atan2(1, -2), math.atan2(-3, 3), 0.0])
    assert torch.allclose(ours, expected, atol=1e-6)
    # Im = +-0 with Re < 0 is +pi (never -pi), and the origin is 0, as torch.angle of a real FFT gives.
    assert ours[1] == ours[2] == torch.tensor(pi, dtype=torch.float32)


def test_atan2_matches_torch_atan2_in_every_quadrant():
    generator = torch.Generator().manual_seed(5)
    imag, real = torch.randn(2, 20000, generator=generator)
    torch.testing.assert_close(atan2_export_safe(imag, real), torch.atan2(imag, real), atol=1e-6, rtol=0)


def test_self_conjugate_bins_are_exactly_real_with_torch_angle_sign():
    """Bins (0|N/2, 0|N/2) of a real image have Im = 0 exactly; their phase is 0 or +pi in both paths."""
    image = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(3)) - 0.5  # Re < 0 occurs
    ours = MatmulPhaseSpectrum(64)(image)
    reference = phase_spectrum_fft(image)
    for row in (0, 32):
        for col in (0, 32):
            assert set(ours[..., row, col].unique().tolist()) <= {0.0, float(torch.tensor(math.pi))}
            assert torch.equal(ours[..., row, col], reference[..., row, col])
