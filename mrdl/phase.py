"""Phase spectrum of an image and the frequency prompt encoder Enc_P.

phi = arg(DFT2(I)) per channel, in (-pi, pi], no fftshift. Two implementations agree up to
float error (compare them on the unit circle, |e^{ia} - e^{ib}|, never raw):

* ``fft``: ``torch.fft.fft2`` + ``torch.angle``. The training reference. Not exportable: the
  TorchScript exporter cannot export ``torch.fft``, dynamo emits ONNX ``DFT`` (TensorRT 10
  cannot parse it) and ``torch.angle`` exports with the wrong sign at Im = 0, Re < 0.
* ``matmul``: the export path. The 2-D DFT of a real map X is C X C - S X S (real part) and
  -(S X C + C X S) (imaginary part), with C[k,n] = cos(2 pi k n / N), S[k,n] = sin(2 pi k n / N)
  precomputed exactly (structural zeros are exact zeros). Three matmuls: [C; S] X, then that
  stack times C and times S, for rows 0..N/2 only (the rest follows by Hermitian symmetry).
  The angle is atan + where with torch.angle's conventions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import ChannelLayerNorm


def dft_matrices(size: int, *, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin DFT matrices of order ``size`` with exact 0 and +-1 entries.

    The angle index k*n is reduced mod ``size`` in integers first, so entries that are exactly
    zero in theory (sin at 0 and pi, cos at pi/2 and 3pi/2) are exactly zero here.
    """
    index = torch.arange(size, dtype=torch.int64)
    m = (index[:, None] * index[None, :]) % size  # (N, N) integer angle index
    angle = m.to(torch.float64) * (2.0 * math.pi / size)
    cos, sin = torch.cos(angle), torch.sin(angle)
    quarter_turns = (4 * m) % size == 0  # the angle is a multiple of pi/2
    q = torch.div(4 * m, size, rounding_mode="floor") % 4
    exact_cos = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64)[q]
    exact_sin = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64)[q]
    cos = torch.where(quarter_turns, exact_cos, cos)
    sin = torch.where(quarter_turns, exact_sin, sin)
    return cos.to(dtype), sin.to(dtype)


def atan2_export_safe(imag: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """atan2(imag, real) from atan and two wheres, with torch.angle's conventions.

    arg = +pi when Im is +-0 and Re < 0, +-pi/2 on the imaginary axis, and 0 at the origin. Exports as
    Atan/Div/Less/Cast/Sign/Where, which every ONNX runtime and TensorRT parse. The left half-plane's turn
    of +-pi is arithmetic (a 0 or +-1 factor) rather than more wheres: ONNX Runtime's ``Where`` is a
    single-threaded loop, and six of them over the spectrum cost 5% of the INT8 model's time.
    """
    half_pi = torch.full((), math.pi / 2, dtype=real.dtype, device=real.device)
    pi = torch.full((), math.pi, dtype=real.dtype, device=real.device)
    real_is_zero = real == 0
    base = torch.atan(imag / torch.where(real_is_zero, torch.ones_like(real), real))  # in (-pi/2, pi/2)
    # Re < 0: +pi when Im >= 0 (Im = -0 counts as >= 0), -pi when Im < 0; Re > 0: no turn
    turn = (real < 0).to(real.dtype) * (1 - 2 * (imag < 0).to(real.dtype))
    return torch.where(real_is_zero, torch.sign(imag) * half_pi, base + turn * pi)


def phase_spectrum_fft(image: torch.Tensor) -> torch.Tensor:
    """Reference phase spectrum: (B,C,H,W) -> (B,C,H,W) in (-pi, pi]."""
    return torch.angle(torch.fft.fft2(image.float()))


class MatmulPhaseSpectrum(nn.Module):
    """Export-safe phase spectrum at a fixed square size (see the module docstring).

    A real image's DFT is Hermitian, X[N-k, N-l] = conj(X[k, l]), so only rows 0..N/2 are
    computed (half the matmul work and half the atan2); rows N/2+1..N-1 are the negated phase of
    rows N/2-1..1 with columns mirrored l -> (N - l) mod N, two constant-index gathers.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        cos, sin = dft_matrices(size)
        rows = size // 2 + 1  # 0..N/2
        self.size, self.rows = size, rows
        self.register_buffer("cos_sin_rows", torch.cat([cos[:rows], sin[:rows]], dim=0), persistent=False)  # (2R, N)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        mirror_rows = torch.tensor([size - k for k in range(rows, size)], dtype=torch.int64)  # N/2-1 .. 1
        mirror_cols = torch.tensor([(size - col) % size for col in range(size)], dtype=torch.int64)
        self.register_buffer("mirror_rows", mirror_rows, persistent=False)
        self.register_buffer("mirror_cols", mirror_cols, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        r = self.rows
        left = torch.matmul(self.cos_sin_rows, image)  # (B, C, 2R, N): [C X; S X], rows 0..N/2
        with_cos = torch.matmul(left, self.cos)  # [C X C; S X C]
        with_sin = torch.matmul(left, self.sin)  # [C X S; S X S]
        real = with_cos[..., :r, :] - with_sin[..., r:, :]  # C X C - S X S
        imag = -(with_cos[..., r:, :] + with_sin[..., :r, :])  # -(S X C + C X S)
        top = atan2_export_safe(imag, real)  # (B, C, R, N)
        mirrored = top.index_select(-2, self.mirror_rows).index_select(-1, self.mirror_cols)  # (B, C, N-R, N)
        return torch.cat([top, -mirrored], dim=-2)  # (B, C, N, N)


class PhaseSpectrum(nn.Module):
    """phi = arg(DFT2(image)) per channel; ``mode`` is ``fft`` or ``matmul``."""

    def __init__(self, size: int, *, mode: str = "fft") -> None:
        super().__init__()
        if mode not in ("fft", "matmul"):
            raise ValueError(f"phase mode must be 'fft' or 'matmul', got {mode!r}")
        self.mode = mode
        self.matmul = MatmulPhaseSpectrum(size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.mode == "fft":
            return phase_spectrum_fft(image)
        return self.matmul(image)


def unit_circle_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|e^{ia} - e^{ib}| = 2 |sin((a - b) / 2)|: phase error that ignores the 2 pi wrap."""
    return 2.0 * torch.sin((a - b) / 2.0).abs()


class FrequencyPromptEncoder(nn.Module):
    """Enc_P: phase spectrum -> F_pha (B, C, H, W).

    Enc_P1 = 2 x [conv3x3 stride 2 -> channel LayerNorm -> GELU] (in -> C/2 -> C, H -> H/4);
    Enc_P2 = 2 x [ConvTranspose 2x2 stride 2 -> channel LayerNorm -> GELU] (C -> C, H/4 -> H).
    """

    def __init__(self, *, in_channels: int, channels: int, image_size: int, phase: str = "fft") -> None:
        super().__init__()
        half = channels // 2
        self.phase = PhaseSpectrum(image_size, mode=phase)
        self.down = nn.Sequential(
            nn.Conv2d(in_channels, half, kernel_size=3, stride=2, padding=1),
            ChannelLayerNorm(half),
            nn.GELU(),
            nn.Conv2d(half, channels, kernel_size=3, stride=2, padding=1),
            ChannelLayerNorm(channels),
            nn.GELU(),
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
            ChannelLayerNorm(channels),
            nn.GELU(),
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
            ChannelLayerNorm(channels),
            nn.GELU(),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        phase = self.phase(image)  # (B, 3, H, W) in (-pi, pi]
        return self.up(self.down(phase))  # (B, C, H, W)
