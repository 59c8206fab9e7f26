"""The frozen CLIP text tower Enc_T (open_clip) and per-token text features.

Per-token features are ln_final(transformer(tokens)): (L=77, width). They are computed once per
dataset (``mrdl embed-text``) and at model construction for the prompt T_P; training never runs
CLIP. Weights come from a local open_clip checkpoint file, from an open_clip pretrained tag when
online, or nowhere: then the tower is randomly initialised and we say so loudly, because its
features carry no language meaning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import TextTowerConfig

logger = logging.getLogger(__name__)

RANDOM_INIT = "random-init"


class RandomTextTowerWarning(UserWarning):
    """The text tower has random weights: its features carry no language meaning."""


@dataclass
class TextTower:
    """A frozen open_clip text transformer with its tokenizer and provenance."""

    model: torch.nn.Module
    tokenizer: object
    clip_model: str
    weights: str  # sha256 of the weights file, "pretrained:<tag>" or "random-init"

    @property
    def width(self) -> int:
        return int(self.model.ln_final.normalized_shape[0])

    @torch.no_grad()
    def encode(self, texts: list[str], *, batch_size: int = 64) -> torch.Tensor:
        """Per-token features of ``texts``: (len(texts), context_length, width), float32."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start : start + batch_size])
            _, token_features = self.model(tokens)  # output_tokens=True -> (pooled, tokens)
            chunks.append(token_features.float())
        return torch.cat(chunks) if chunks else torch.empty(0)


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _text_architecture(cfg: TextTowerConfig) -> dict:
    if cfg.clip_model == "custom":
        return dict(context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.width,
                    heads=cfg.heads, layers=cfg.layers)
    import open_clip

    model_cfg = open_clip.get_model_config(cfg.clip_model)
    if model_cfg is None:
        raise ValueError(f"open_clip knows no model {cfg.clip_model!r}; see open_clip.list_models()")
    text_cfg = model_cfg["text_cfg"]
    keys = ("context_length", "vocab_size", "width", "heads", "layers")
    return {key: text_cfg[key] for key in keys if key in text_cfg}


def _text_state_from_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text-tower subset of a full CLIP state dict (same names as TextTransformer's).

    ``text_projection`` is left out: per-token features never use the pooled projection.
    """
    prefixes = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")
    text_state = {k: v for k, v in state.items() if k.startswith(prefixes)}
    if "text.token_embedding.weight" in state:  # CustomTextCLIP checkpoints keep the tower under text.
        text_state = {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}
        text_state.pop("text_projection", None)
    return text_state


def build_text_tower(cfg: TextTowerConfig, *, weights: str | Path | None = None,
                     pretrained: str | None = None) -> TextTower:
    """Build the frozen tower. ``weights``: local open_clip checkpoint; ``pretrained``: a tag."""
    import open_clip
    from open_clip.transformer import TextTransformer

    arch = _text_architecture(cfg)
    if arch["width"] != cfg.width or arch["context_length"] != cfg.context_length:
        raise ValueError(
            f"text config says width={cfg.width}, context={cfg.context_length} but open_clip's "
            f"{cfg.clip_model} has width={arch['width']}, context={arch['context_length']}")
    model = TextTransformer(**arch, output_dim=None, output_tokens=True, proj_type="none")
    tokenizer_name = "ViT-B-32" if cfg.clip_model == "custom" else cfg.clip_model
    tokenizer = open_clip.get_tokenizer(tokenizer_name)

    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP weights file {path} does not exist")
        from open_clip.factory import load_state_dict

        state = _text_state_from_clip(load_state_dict(str(path)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "attn_mask"]
        if missing:
            raise ValueError(f"{path} is not an open_clip {cfg.clip_model} checkpoint: missing {missing[:5]}")
        provenance = file_sha256(path)
    elif pretrained is not None:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise RuntimeError(f"HF_HUB_OFFLINE=1: cannot fetch pretrained tag {pretrained!r}; pass a local file")
        full = open_clip.create_model(cfg.clip_model, pretrained=pretrained)
        state = _text_state_from_clip(full.state_dict())
        model.load_state_dict(state, strict=False)
        provenance = f"pretrained:{pretrained}"
    else:
        warnings.warn(
            f"CLIP text tower {cfg.clip_model} is RANDOMLY INITIALISED (no --clip-weights given): "
            "its text embeddings carry no language meaning", RandomTextTowerWarning, stacklevel=2)
        provenance = RANDOM_INIT
    model.eval().requires_grad_(False)
    return TextTower(model=model, tokenizer=tokenizer, clip_model=cfg.clip_model, weights=provenance)


def random_text_tower(cfg: TextTowerConfig, *, seed: int = 0) -> TextTower:
    """A seeded randomly initialised tower (warning suppressed): for tests and demos."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomTextTowerWarning)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return build_text_tower(cfg)
