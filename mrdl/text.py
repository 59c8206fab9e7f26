"""The frozen CLIP text tower Enc_T (open_clip) and per-token text features.

Per-token features are ln_final(transformer(tokens)): (L=77, width). They are computed once per
dataset (``mrdl embed-text``) and at model construction for the prompt T_P; training never runs
CLIP. Weights come from a local open_clip checkpoint in safetensors format, from an open_clip
pretrained tag when online (its safetensors file), or nowhere: then the tower is randomly
initialised and we say so loudly, because its features carry no language meaning. Pickle
checkpoints (.pt, .bin) are refused, never unpickled: unpickling can run arbitrary code.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from mrdl_runtime.manifest import file_sha256

from .checkpoint import shape_mismatches
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


def _text_tensor_names(names: Iterable[str]) -> dict[str, str]:
    """Map each text-tower tensor name (as in TextTransformer) to its name in a full CLIP state dict.

    ``text_projection`` is left out: per-token features never use the pooled projection.
    """
    plain = {name.removeprefix("module."): name for name in names}
    if "text.token_embedding.weight" in plain:  # CustomTextCLIP checkpoints keep the tower under text.
        return {k[len("text."):]: v for k, v in plain.items() if k.startswith("text.") and k != "text.text_projection"}
    prefixes = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")
    return {k: v for k, v in plain.items() if k.startswith(prefixes)}


def convert_hint(path: str | Path) -> str:
    """How to turn a trusted pickle CLIP checkpoint into the safetensors file mrdl reads."""
    out = Path(path).with_suffix(".safetensors")
    return ("convert it once, in a trusted environment, with: python -c \"import torch; "
            "from open_clip.factory import load_state_dict; from safetensors.torch import save_file; "
            f"save_file({{k: v.clone().contiguous() for k, v in load_state_dict('{path}').items()}}, '{out}')\" "
            f"and pass --clip-weights {out}")


def read_clip_text_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The text-tower tensors of a local open_clip checkpoint in safetensors format (nothing else is read)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = _text_tensor_names(handle.keys())
            return {name: handle.get_tensor(stored) for name, stored in names.items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head == b"PK" or head[:1] == b"\x80":  # torch.save's zip container or a bare pickle stream
            raise ValueError(f"{path} is a pickle checkpoint (torch.save); mrdl never unpickles files because "
                             f"that can run arbitrary code; {convert_hint(path)}") from exc
        raise ValueError(f"{path} is not a safetensors file ({exc}); --clip-weights takes an open_clip checkpoint "
                         f"in safetensors format (e.g. open_clip_model.safetensors from the Hugging Face hub); "
                         f"for a trusted pickle checkpoint, {convert_hint(path)}") from exc


def _pretrained_file(clip_model: str, tag: str) -> Path:
    """Download an open_clip pretrained tag's weights and insist on their safetensors form."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(clip_model, tag)
    if not cfg:
        raise ValueError(f"open_clip has no pretrained tag {tag!r} for {clip_model}; "
                         f"see open_clip.list_pretrained_tags_by_model({clip_model!r})")
    path = Path(open_clip.download_pretrained(cfg))
    if path.suffix != ".safetensors":
        raise ValueError(f"open_clip publishes {clip_model}/{tag} only as a pickle file ({path}); mrdl never "
                         f"unpickles files; {convert_hint(path)}")
    return path


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

    if weights is not None or pretrained is not None:
        if weights is None and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise RuntimeError(f"HF_HUB_OFFLINE=1: cannot fetch pretrained tag {pretrained!r}; pass a local file")
        path = Path(weights) if weights is not None else _pretrained_file(cfg.clip_model, pretrained)
        _load_text_state(model, read_clip_text_state(path), path, cfg.clip_model)
        provenance = file_sha256(path) if weights is not None else f"pretrained:{pretrained}"
    else:
        warnings.warn(
            f"CLIP text tower {cfg.clip_model} is RANDOMLY INITIALISED (no --clip-weights given): "
            "its text embeddings carry no language meaning", RandomTextTowerWarning, stacklevel=2)
        provenance = RANDOM_INIT
    model.eval().requires_grad_(False)
    return TextTower(model=model, tokenizer=tokenizer, clip_model=cfg.clip_model, weights=provenance)


def _load_text_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, clip_model: str) -> None:
    expected = {k: v for k, v in model.state_dict().items() if k != "attn_mask"}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{path} is not an open_clip {clip_model} checkpoint: its text tower lacks {missing[:5]}")
    wrong = shape_mismatches(expected, state)
    if wrong:
        raise ValueError(f"{path} is not an open_clip {clip_model} checkpoint: {'; '.join(wrong[:3])}")
    model.load_state_dict(state, strict=False)


def random_text_tower(cfg: TextTowerConfig, *, seed: int = 0) -> TextTower:
    """A seeded randomly initialised tower (warning suppressed): for tests and demos."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomTextTowerWarning)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return build_text_tower(cfg)
