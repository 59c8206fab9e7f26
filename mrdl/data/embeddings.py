"""Precomputed CLIP per-token text features of a dataset: computed once, read by training.

The file is a tagged safetensors file (:mod:`mrdl.tagged_file`, format ``mrdl-text-embeddings/1``):
one float32 tensor (context_length, width) per description, named ``<Split>/<mask file name>``, plus
``prompt`` for the config's prompt T_P, and a digest of them (files written before it was recorded
are read without one). Its metadata records the
provenance (CLIP model, weights sha256 / pretrained tag / "random-init", tokenizer, context length,
width) and every embedded sentence, so a file built from another model or from other descriptions is
refused with the command that rebuilds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from mrdl_runtime.errors import MrdlError

from ..config import MRDLConfig
from ..tagged_file import read_tagged, write_tagged
from .dataset import SPLITS, DatasetError, TableLimits, list_samples, split_folder

FORMAT = "mrdl-text-embeddings/1"
PROMPT_KEY = "prompt"


class EmbeddingsError(MrdlError, ValueError):
    """A text-embedding file that is missing, unreadable, stale or built for another model."""


@dataclass
class TextEmbeddings:
    """Per-token text features keyed by ``<Split>/<name>`` (and ``prompt``), with their provenance."""

    features: dict[str, torch.Tensor]  # key -> (context_length, width) float32
    texts: dict[str, str]  # key -> the sentence that was embedded
    provenance: dict[str, object]
    path: Path | None = None

    @property
    def prompt(self) -> torch.Tensor:
        """CLIP features of the prompt T_P: (context_length, width)."""
        return self.features[PROMPT_KEY]

    def for_split(self, split: str, names: Iterable[str]) -> torch.Tensor:
        """Stacked features of ``names`` in ``split``: (len(names), context_length, width)."""
        return torch.stack([self.features[key(split, name)] for name in names])


def key(split: str, name: str) -> str:
    """The tensor name of one description: ``<Split>/<mask file name>``."""
    return f"{split}/{name}"


def default_embeddings_path(data_root: str | Path, config: MRDLConfig) -> Path:
    """Where ``embed-text`` writes by default: beside the data, named after the CLIP model."""
    return Path(data_root) / f"mrdl_text_{config.model.text.clip_model}_{config.model.text.width}.safetensors"


def dataset_texts(data_root: str | Path, config: MRDLConfig, *,
                  limits: TableLimits = TableLimits()) -> dict[str, str]:
    """Every description of every split present under ``data_root``, plus the prompt: {key: sentence}."""
    if not Path(data_root).is_dir():
        raise DatasetError(f"dataset root {data_root} does not exist or is not a folder")
    texts: dict[str, str] = {}
    found = False
    for split in SPLITS:
        try:
            split_folder(data_root, split)
        except DatasetError:
            continue
        found = True
        for sample in list_samples(data_root, split, require_text=True, limits=limits):
            texts[key(split, sample.name)] = sample.description  # type: ignore[assignment]
    if not found:
        raise DatasetError(f"{data_root} holds none of {[s + '_Folder' for s in SPLITS]}; expected LViT's layout")
    texts[PROMPT_KEY] = config.model.prompt
    return texts


def rebuild_hint(data_root: str | Path | None, config: MRDLConfig, path: Path | None) -> str:
    root = data_root if data_root is not None else "DATA_ROOT"
    out = f" --out {path}" if path is not None else ""
    return (f"rebuild it with: mrdl embed-text {root} --config {config.name}{out} [--clip-weights PATH] "
            f"[--recipe NAME, as for training]")


def compute_embeddings(data_root: str | Path, config: MRDLConfig, *, out: str | Path | None = None,
                       clip_weights: str | Path | None = None, pretrained: str | None = None,
                       random_init: bool = False, seed: int = 0, batch_size: int = 32,
                       limits: TableLimits = TableLimits()) -> Path:
    """Run the frozen text tower over every description and the prompt and write the embedding file.

    Weights from ``clip_weights`` (a local open_clip checkpoint) or ``pretrained`` (an open_clip tag;
    by default the paper's weights for the config's CLIP model, from the Hugging Face cache or hub,
    else :class:`mrdl.text.TextWeightsUnavailable`). ``random_init=True`` (or a ``custom`` tower,
    which has no published weights) initialises the tower randomly from ``seed`` and raises a
    :class:`mrdl.text.RandomTextTowerWarning` as a warning. The description tables are
    read within ``limits``. Returns the written path.
    """
    from tqdm import tqdm

    from ..text import build_text_tower

    texts = dataset_texts(data_root, config, limits=limits)
    out_path = Path(out) if out is not None else default_embeddings_path(data_root, config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tower = build_text_tower(config.model.text, weights=clip_weights, pretrained=pretrained,
                                 random_init=random_init)
    keys = sorted(texts)
    unique = sorted(set(texts.values()))
    encoded: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(unique), batch_size), desc="embed-text", unit="batch", leave=False):
        chunk = unique[start : start + batch_size]
        for sentence, features in zip(chunk, tower.encode(chunk)):  # (L, D) each
            encoded[sentence] = features.contiguous()
    tensors = {k: encoded[texts[k]].clone() for k in keys}
    provenance = {
        "clip_model": tower.clip_model, "weights": tower.weights, "seed": seed if tower.weights == "random-init" else None,
        "tokenizer": f"{type(tower.tokenizer).__module__}.{type(tower.tokenizer).__name__}",
        "context_length": config.model.text.context_length, "width": tower.width,
        "data_root": str(Path(data_root).resolve()),
    }
    metadata = {"mrdl.provenance": json.dumps(provenance, sort_keys=True),
                "mrdl.texts": json.dumps({k: texts[k] for k in keys}, sort_keys=True)}
    return write_tagged(out_path, tensors, file_format=FORMAT, metadata=metadata)


def load_embeddings(path: str | Path, config: MRDLConfig, *, expected_texts: dict[str, str] | None = None,
                    data_root: str | Path | None = None) -> TextEmbeddings:
    """Read an embedding file and check it against ``config``'s text tower and ``expected_texts``.

    ``expected_texts`` ({key: sentence}, e.g. from :func:`dataset_texts`) must all be present with the
    same sentence; the prompt must match the config's. Anything else raises :class:`EmbeddingsError`
    saying how to rebuild the file.
    """
    path = Path(path)
    hint = rebuild_hint(data_root, config, path)
    if not path.is_file():
        raise EmbeddingsError(f"text embedding file {path} does not exist; {hint}")
    metadata, features = read_tagged(path, file_format=FORMAT, kind="an mrdl text-embedding file",
                                     error=lambda message: EmbeddingsError(f"{message}; {hint}"), require_digest=False)
    provenance = json.loads(metadata["mrdl.provenance"])
    texts = json.loads(metadata["mrdl.texts"])
    text_cfg = config.model.text
    wanted = {"clip_model": text_cfg.clip_model, "context_length": text_cfg.context_length, "width": text_cfg.width}
    for field_name, value in wanted.items():
        if provenance.get(field_name) != value:
            raise EmbeddingsError(f"{path} was built with {field_name}={provenance.get(field_name)!r} but config "
                                  f"{config.name!r} needs {value!r}; {hint}")
    required = dict(expected_texts or {})
    required[PROMPT_KEY] = config.model.prompt
    missing = sorted(k for k in required if k not in features)
    if missing:
        raise EmbeddingsError(f"{path} lacks {len(missing)} description(s), e.g. {missing[:3]}; {hint}")
    changed = sorted(k for k, sentence in required.items() if texts.get(k) != sentence)
    if changed:
        raise EmbeddingsError(f"{path} is stale: the text of {changed[:3]} changed since it was built; {hint}")
    return TextEmbeddings(features=features, texts=texts, provenance=provenance, path=path)
