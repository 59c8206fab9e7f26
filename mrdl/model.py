"""The MRDL network and its factory.

Multimodal Representation Distribution Learning (Huang, Cai, Jiang, Wang; IJCAI 2024) on
LViT's CNN + ViT U-shape. ``forward`` reads as the paper's pipeline:

    x1..x5   = Enc_I(image)                         vision encoder (LViT's CNN branch)
    F_V      = Embedding(x1); F_T = ConvB(F'_T)     joint space H: (B, N, C)
    F, L_KL  = distribution fusion over {F_T|F_V, F_L^1..K}   (Eqs. 6-10, diagonal)
    R1..R4   = P_CM(F, x1..x4)                      cross-modality processor (ViT U-branch)
    F_pha    = Enc_P(arg DFT2(image))               frequency prompt encoder
    logits   = Dec(x1 + R1 + F_pha, x2 + R2, x3 + R3, x4 + R4, x5)

Under ``fusion="addition"`` (the paper's ablation, LViT-style) F = F_V + F_T, F_L is absent
and there is no KL term. Build models with :func:`create_model` only.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
from torch import nn

from .config import MRDLConfig, ModelConfig, load_config
from .distribution import fused_feature, representation_kl
from .layers import DownBlock, ConvBNReLU, PatchEmbedding, Reconstruct, TokenConvBN, TransformerBlock, UpBlock
from .phase import FrequencyPromptEncoder


class SegmentationOutput(NamedTuple):
    logits: torch.Tensor  # (B, n_classes, H, W)
    kl: torch.Tensor | None  # scalar L_KL, or None when no text was given / addition fusion


class VisionEncoder(nn.Module):
    """Enc_I: inc conv3x3-BN-ReLU then four down blocks; widths C, 2C, 4C, 8C, 8C."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.inc = ConvBNReLU(in_channels, width)
        self.down1 = DownBlock(width, width * 2)
        self.down2 = DownBlock(width * 2, width * 4)
        self.down3 = DownBlock(width * 4, width * 8)
        self.down4 = DownBlock(width * 8, width * 8)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x1 = self.inc(image)  # (B, C, H, W)
        x2 = self.down1(x1)  # (B, 2C, H/2, W/2)
        x3 = self.down2(x2)  # (B, 4C, H/4, W/4)
        x4 = self.down3(x3)  # (B, 8C, H/8, W/8)
        x5 = self.down4(x4)  # (B, 8C, H/16, W/16)
        return [x1, x2, x3, x4, x5]


class TextProjection(nn.Module):
    """ConvB: per-token CLIP features (B, L, D) -> (B, N, C).

    Linear D -> C on the feature axis, then Conv1d over the token axis (L tokens as channels
    -> N, k=3, p=1), BatchNorm1d, ReLU.
    """

    def __init__(self, *, text_width: int, context_length: int, channels: int, num_tokens: int) -> None:
        super().__init__()
        self.linear = nn.Linear(text_width, channels)
        self.token_conv = nn.Conv1d(context_length, num_tokens, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm1d(num_tokens)

    def forward(self, text_features: torch.Tensor) -> torch.Tensor:
        x = self.linear(text_features)  # (B, L, C)
        return torch.relu(self.norm(self.token_conv(x)))  # (B, N, C)


class CrossModalityProcessor(nn.Module):
    """P_CM: LViT's ViT U-branch, one pre-LN block per level and direction.

    Down: y1 = Block(F); y_k = concat[TokenConvBN(Block(emb(x_k))) -> C_k/2, y_{k-1}].
    Up:   y4' = Block(y4); y_k' = Block(y_k) + TokenConvBN(y_{k+1}').
    Then Reconstruct_k maps y_k' back to the resolution of x_k.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, n = cfg.base_width, cfg.num_tokens
        widths = [c, 2 * c, 4 * c, 8 * c]
        patches = [16, 8, 4, 2]

        def block(dim: int) -> TransformerBlock:
            return TransformerBlock(dim, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio)

        self.embed = nn.ModuleList(PatchEmbedding(channels=w, patch_size=p, num_tokens=n)
                                   for w, p in zip(widths[1:], patches[1:]))
        self.down_blocks = nn.ModuleList(block(w) for w in widths)
        self.down_reduce = nn.ModuleList(TokenConvBN(w, w // 2) for w in widths[1:])
        self.up_blocks = nn.ModuleList(block(w) for w in widths)
        self.up_reduce = nn.ModuleList(TokenConvBN(2 * w, w) for w in widths[:-1])
        self.reconstruct = nn.ModuleList(Reconstruct(w, scale=p) for w, p in zip(widths, patches))

    def first_level(self, fused: torch.Tensor) -> torch.Tensor:
        """y1 = Block(F); a constant in eval mode under distribution fusion."""
        return self.down_blocks[0](fused)

    def forward(self, y1: torch.Tensor, features: list[torch.Tensor],
                y1_up: torch.Tensor | None = None) -> list[torch.Tensor]:
        """y1: (B, N, C); features: x1..x4. ``y1_up`` = Block_up1(y1) when precomputed."""
        down = [y1]
        for level in range(1, 4):
            tokens = self.down_blocks[level](self.embed[level - 1](features[level]))  # (B, N, C_k)
            down.append(torch.cat([self.down_reduce[level - 1](tokens), down[-1]], dim=2))  # (B, N, C_k)
        up = [self.up_blocks[3](down[3])]
        for level in (2, 1, 0):
            lifted = self.up_reduce[level](up[0])
            own = y1_up if (level == 0 and y1_up is not None) else self.up_blocks[level](down[level])
            up.insert(0, own + lifted)
        return [reconstruct(tokens) for reconstruct, tokens in zip(self.reconstruct, up)]  # R1..R4


class Decoder(nn.Module):
    """Dec: four LViT up blocks with pixel-level attention on the skips, then a 1x1 head."""

    def __init__(self, width: int, n_classes: int) -> None:
        super().__init__()
        c = width
        self.up4 = UpBlock(16 * c, 4 * c)
        self.up3 = UpBlock(8 * c, 2 * c)
        self.up2 = UpBlock(4 * c, c)
        self.up1 = UpBlock(2 * c, c)
        self.head = nn.Conv2d(c, n_classes, kernel_size=1)

    def forward(self, skips: list[torch.Tensor], bottom: torch.Tensor) -> torch.Tensor:
        s1, s2, s3, s4 = skips
        x = self.up4(bottom, s4)  # (B, 4C, H/8, W/8)
        x = self.up3(x, s3)  # (B, 2C, H/4, W/4)
        x = self.up2(x, s2)  # (B, C, H/2, W/2)
        x = self.up1(x, s1)  # (B, C, H, W)
        return self.head(x)  # (B, n_classes, H, W)


class SegmentationPath:
    """The one path from encoder features to logits, shared by :class:`MRDL` and the deploy module.

    Mixed into an ``nn.Module`` that holds ``cross_modality``, ``frequency_prompt`` and ``decoder``
    under those names (the exported graph's name scopes).
    """

    cross_modality: CrossModalityProcessor
    frequency_prompt: FrequencyPromptEncoder
    decoder: Decoder

    def segment(self, image: torch.Tensor, features: list[torch.Tensor], y1: torch.Tensor,
                y1_up: torch.Tensor | None = None) -> torch.Tensor:
        """From the encoder's x1..x5 and y1 = Block(F) to logits (B, n_classes, H, W).

        ``y1_up`` = P_CM's first up block applied to y1, when the caller has it precomputed (the
        deploy module folds it into a constant).
        """
        reconstructed = self.cross_modality(y1, features[:4], y1_up=y1_up)  # R1..R4
        phase_features = self.frequency_prompt(image)  # F_pha: (B, C, H, W)
        skips = [x + r for x, r in zip(features[:4], reconstructed)]
        skips[0] = skips[0] + phase_features
        return self.decoder(skips, features[4])


class MRDL(SegmentationPath, nn.Module):
    """Multimodal Representation Distribution Learning segmentation network."""

    def __init__(self, config: MRDLConfig, prompt_features: torch.Tensor) -> None:
        super().__init__()
        cfg = config.model
        cfg.validate()
        expected = (cfg.text.context_length, cfg.text.width)
        if tuple(prompt_features.shape) != expected:
            raise ValueError(f"prompt features must have shape {expected}, got {tuple(prompt_features.shape)}")
        self.config = config  # the full config (model, loss, train), saved with checkpoints; .model: the architecture
        c, n = cfg.base_width, cfg.num_tokens
        self.vision_encoder = VisionEncoder(cfg.in_channels, c)
        self.vision_embedding = PatchEmbedding(channels=c, patch_size=16, num_tokens=n)
        self.text_projection = TextProjection(text_width=cfg.text.width, context_length=cfg.text.context_length,
                                              channels=c, num_tokens=n)
        # T_P's CLIP features live in the checkpoint so loading never needs CLIP.
        self.register_buffer("prompt_features", prompt_features.detach().float().clone())
        if cfg.fusion == "distribution":
            self.learnable_features = nn.Parameter(self._init_learnable_features())  # F_L: (K, N, C)
        self.cross_modality = CrossModalityProcessor(cfg)
        self.frequency_prompt = FrequencyPromptEncoder(in_channels=cfg.in_channels, channels=c,
                                                       image_size=cfg.image_size, phase=cfg.phase)
        self.decoder = Decoder(c, cfg.n_classes)

    @torch.no_grad()
    def _init_learnable_features(self) -> torch.Tensor:
        """F_L = K copies of ConvB(T_P) + 0.1 * N(0, I)."""
        was_training = self.text_projection.training
        self.text_projection.eval()  # BatchNorm at its initial running stats: no batch statistics
        prompt = self.text_projection(self.prompt_features.unsqueeze(0))[0]  # (N, C)
        self.text_projection.train(was_training)
        k = self.config.model.num_learnable
        return prompt.expand(k, -1, -1) + self.config.model.learnable_init_noise * torch.randn(k, *prompt.shape)

    def check_inputs(self, image: torch.Tensor, text_features: torch.Tensor | None) -> None:
        cfg = self.config.model
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if image.ndim != 4 or tuple(image.shape[1:]) != expected:
            raise ValueError(f"image must have shape (B, {', '.join(map(str, expected))}), got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise TypeError(f"image must be a float tensor scaled to [0, 1], got dtype {image.dtype}")
        if text_features is not None:
            text_shape = (image.shape[0], cfg.text.context_length, cfg.text.width)
            if tuple(text_features.shape) != text_shape:
                raise ValueError(f"text features must have shape {text_shape}, got {tuple(text_features.shape)}")
        elif cfg.fusion == "addition":
            raise ValueError("fusion='addition' needs text features (B, L, D) in training and inference")

    def fuse(self, x1: torch.Tensor, text_features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fused feature F (B, N, C) and L_KL (None without text or under addition)."""
        batch = x1.shape[0]
        vision = self.vision_embedding(x1)  # F_V: (B, N, C)
        text = self.text_projection(text_features) if text_features is not None else None  # F_T: (B, N, C)
        if self.config.model.fusion == "addition":
            return vision + text, None
        eps = self.config.model.variance_eps
        kl = representation_kl(text, vision, self.learnable_features, eps=eps) if text is not None else None
        fused = fused_feature(self.learnable_features, batch=batch, sample=self.training, eps=eps)
        return fused, kl

    def forward(self, image: torch.Tensor, text_features: torch.Tensor | None = None) -> SegmentationOutput:
        self.check_inputs(image, text_features)
        features = self.vision_encoder(image)  # x1..x5
        fused, kl = self.fuse(features[0], text_features)  # F: (B, N, C)
        y1 = self.cross_modality.first_level(fused)
        return SegmentationOutput(self.segment(image, features, y1), kl)

    def set_phase(self, mode: str) -> None:
        """Compute the phase spectrum with ``mode`` (``fft`` or ``matmul``); the config says the same."""
        self.config = self.config.replace_model(phase=mode)
        self.frequency_prompt.phase.mode = mode

    @contextmanager
    def phase_mode(self, mode: str) -> Iterator["MRDL"]:
        """Run a block with the phase spectrum computed by ``mode``, then switch back."""
        previous = self.config.model.phase
        self.set_phase(mode)
        try:
            yield self
        finally:
            self.set_phase(previous)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


TEXT_TOWERS = ("pretrained", "random")


def create_model(config: str | MRDLConfig = "base", *, prompt_features: torch.Tensor | None = None,
                 clip_weights: str | None = None, text_tower: str = "pretrained", download: bool = False,
                 seed: int | None = None, **overrides) -> MRDL:
    """Build an MRDL model from a named config (``tiny``, ``small``, ``base``) or a config object.

    The prompt's CLIP per-token features (L, D) come from, in this order: ``prompt_features`` when
    given; ``text_tower="random"``: a seeded random tower (``seed``, else 0; reproducible features
    without language meaning, for tests, demos and untrained checkpoints); else the pretrained
    tower: weights from ``clip_weights`` (an open_clip safetensors file), else the paper's weights
    from the Hugging Face cache, looked up without network unless ``download=True`` (see
    :func:`mrdl.text.build_text_tower`). When they cannot be had it raises
    ``TextWeightsUnavailable`` at once, saying how to provide them. A ``custom`` tower (``tiny``)
    has no published weights and is always random. ``overrides`` change model fields, e.g.
    ``phase="matmul"``.
    """
    if text_tower not in TEXT_TOWERS:
        raise ValueError(f"text_tower must be one of {TEXT_TOWERS}, got {text_tower!r}")
    if text_tower == "random" and (clip_weights is not None or prompt_features is not None):
        raise ValueError('text_tower="random" takes no clip_weights or prompt_features')
    cfg = load_config(config) if isinstance(config, str) else config
    if overrides:
        cfg = cfg.replace_model(**overrides)
    if seed is not None:
        torch.manual_seed(seed)
    if prompt_features is None and text_tower == "random":
        prompt_features = deterministic_prompt_features(cfg, seed=0 if seed is None else seed)
    elif prompt_features is None:
        from .text import build_text_tower

        tower = build_text_tower(cfg.model.text, weights=clip_weights, hub=download)
        prompt_features = tower.encode([cfg.model.prompt])[0]
    return MRDL(cfg, prompt_features)


def deterministic_prompt_features(cfg: MRDLConfig, *, seed: int = 0) -> torch.Tensor:
    """Prompt features from a seeded random tower: reproducible, meaningless. Tests and demos."""
    from .text import random_text_tower

    return random_text_tower(cfg.model.text, seed=seed).encode([cfg.model.prompt])[0]
