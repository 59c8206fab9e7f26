"""The frozen CLIP text tower Enc_T (open_clip) and per-token text features.

Per-token features are ln_final(transformer(tokens)): (L=77, width). They are computed once per
dataset (``mrdl embed-text``) and at model construction for the prompt T_P; training never runs
CLIP. Weights come, in this order, from a local open_clip checkpoint in safetensors format
(``weights``), or from an open_clip pretrained tag (``pretrained``; by default the paper's,
:data:`PAPER_WEIGHTS`: ``ViT-B-32`` ``openai``) found in the Hugging Face cache or downloaded from
the hub (its safetensors file). When neither can be had the build fails with
:class:`TextWeightsUnavailable`, naming both ways to provide them. Finding out costs at most a few
seconds: the cache is read without network, ``HF_HUB_OFFLINE`` is honoured, and otherwise a TCP
connection to the hub must open within ``connect_timeout`` seconds (a machine without network
fails that check instead of waiting for the HTTP client's retries). A randomly initialised tower
is built only when asked for (``random_init=True``; tests and demos) or for a ``custom``
architecture, which has no published weights; it is said loudly, because its features carry no
language meaning. Pickle checkpoints (.pt, .bin) are refused, never unpickled: unpickling can run
arbitrary code.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from mrdl_runtime.errors import MrdlError
from mrdl_runtime.manifest import file_sha256

from .tagged_file import shape_mismatches
from .config import TextTowerConfig

logger = logging.getLogger(__name__)

RANDOM_INIT = "random-init"
PAPER_WEIGHTS = {"ViT-B-32": "openai"}  # the text tower's weights in the MRDL paper (open_clip tag)
HUB_SAFETENSORS = "open_clip_model.safetensors"  # the safetensors file open_clip publishes beside its .bin
CONNECT_TIMEOUT_S = 3.0


class TextWeightsUnavailable(MrdlError, RuntimeError):
    """The text tower's pretrained weights are neither in a local file nor obtainable from the hub."""


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


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hugging Face hub (``HF_ENDPOINT`` or huggingface.co) opens in ``timeout`` s.

    Name resolution cannot be given a timeout, so the attempt runs in a daemon thread that is
    abandoned when the time is up: the answer comes within ``timeout`` seconds in every case.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=connect, name="mrdl-hub-check", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def unavailable_message(clip_model: str, tag: str, reason: str, repo: str | None) -> str:
    where = f" (e.g. {HUB_SAFETENSORS} from https://huggingface.co/{repo})" if repo else ""
    return (f"the text tower's pretrained weights, open_clip {clip_model} {tag!r}, are not available: {reason}. "
            f"Provide them in one of two ways: a local file, an open_clip checkpoint in safetensors format{where}, "
            f"given as --clip-weights PATH (in Python: create_model(config, clip_weights=PATH)); or the Hugging "
            f"Face hub: run once with network access and HF_HUB_OFFLINE unset (mrdl embed-text, or in Python "
            f"create_model(config, download=True)); the file is cached and found offline afterwards. To build "
            f"features without language meaning instead (tests, demos), ask for a random tower with --random-init "
            f"(in Python: create_model(config, text_tower=\"random\"))")


def _pretrained_file(clip_model: str, tag: str, *, connect_timeout: float = CONNECT_TIMEOUT_S,
                     hub: bool = True) -> Path:
    """The safetensors file of an open_clip pretrained tag: from the Hugging Face cache, else downloaded
    (``hub=False``: from the cache only)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(clip_model, tag)
    if not cfg:
        raise ValueError(f"open_clip has no pretrained tag {tag!r} for {clip_model}; "
                         f"see open_clip.list_pretrained_tags_by_model({clip_model!r})")
    if "file" in cfg:
        return Path(cfg["file"])
    repo = os.path.split(cfg.get("hf_hub", ""))[0]
    if not repo:
        raise TextWeightsUnavailable(unavailable_message(
            clip_model, tag, "open_clip publishes it only as a pickle file from a URL, which mrdl never unpickles",
            None))
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, HUB_SAFETENSORS, local_files_only=True))
    except Exception:  # not cached (huggingface_hub raises several types): go to the hub
        pass
    if not hub:
        raise TextWeightsUnavailable(unavailable_message(clip_model, tag, "the file is not in the Hugging Face cache "
                                                         "and this call looks only there", repo))
    if _hub_offline():
        raise TextWeightsUnavailable(unavailable_message(clip_model, tag, "HF_HUB_OFFLINE is set and the file is "
                                                         "not in the Hugging Face cache", repo))
    if not hub_reachable(connect_timeout):
        raise TextWeightsUnavailable(unavailable_message(
            clip_model, tag, f"the file is not in the Hugging Face cache and the hub did not answer within "
                             f"{connect_timeout:g} s (no network?)", repo))
    try:
        return Path(hf_hub_download(repo, HUB_SAFETENSORS))
    except Exception as exc:  # network, authorisation or missing-file errors of huggingface_hub
        raise TextWeightsUnavailable(unavailable_message(clip_model, tag, f"the download failed ({exc})", repo)) from exc


def _activation(clip_model: str, tag: str | None):
    """QuickGELU where the weights were trained with it (OpenAI's CLIP), else GELU."""
    import open_clip
    from torch import nn

    if clip_model == "custom" or tag is None:
        return nn.GELU
    cfg = open_clip.get_pretrained_cfg(clip_model, tag) or {}
    if cfg.get("quick_gelu"):
        from open_clip.transformer import QuickGELU

        return QuickGELU
    return nn.GELU


def build_text_tower(cfg: TextTowerConfig, *, weights: str | Path | None = None, pretrained: str | None = None,
                     random_init: bool = False, connect_timeout: float = CONNECT_TIMEOUT_S,
                     hub: bool = True) -> TextTower:
    """Build the frozen tower (see the module docstring for where the weights come from).

    ``weights``: a local open_clip checkpoint (safetensors; read with the activation of the paper's
    tag for this architecture); ``pretrained``: an open_clip tag [default: :data:`PAPER_WEIGHTS`];
    ``random_init``: a random tower, on request only; ``hub=False``: look for the pretrained tag's
    file in the Hugging Face cache only, never on the network. Raises :class:`TextWeightsUnavailable`
    when pretrained weights cannot be had.
    """
    import open_clip
    from open_clip.transformer import TextTransformer

    if random_init and (weights is not None or pretrained is not None):
        raise ValueError("a random text tower takes no weights: give --random-init alone, or --clip-weights / "
                         "--pretrained without it")
    arch = _text_architecture(cfg)
    if arch["width"] != cfg.width or arch["context_length"] != cfg.context_length:
        raise ValueError(
            f"text config says width={cfg.width}, context={cfg.context_length} but open_clip's "
            f"{cfg.clip_model} has width={arch['width']}, context={arch['context_length']}")
    tag = None if random_init else (pretrained or PAPER_WEIGHTS.get(cfg.clip_model))
    random_tower = random_init or (weights is None and tag is None)
    path = None  # found before the tower is built, so a missing file is reported at once
    if not random_tower:
        path = Path(weights) if weights is not None else _pretrained_file(cfg.clip_model, tag,
                                                                          connect_timeout=connect_timeout, hub=hub)
    act_layer = _activation(cfg.clip_model, None if random_tower else tag)
    model = TextTransformer(**arch, output_dim=None, output_tokens=True, proj_type="none", act_layer=act_layer)
    tokenizer_name = "ViT-B-32" if cfg.clip_model == "custom" else cfg.clip_model
    tokenizer = open_clip.get_tokenizer(tokenizer_name)

    if path is not None:
        _load_text_state(model, read_clip_text_state(path), path, cfg.clip_model)
        provenance = file_sha256(path) if weights is not None else f"pretrained:{tag}"
    else:
        why = "asked for" if random_init else f"{cfg.clip_model} has no published weights"
        warnings.warn(
            f"CLIP text tower {cfg.clip_model} is RANDOMLY INITIALISED ({why}): "
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
            return build_text_tower(cfg, random_init=True)
