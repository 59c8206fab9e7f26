"""embed-text round trip with the tiny text tower, provenance, and refusal of stale or mismatched files."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mrdl_apps.cli import main
from mrdl.config import load_config
from mrdl.data.embeddings import (PROMPT_KEY, EmbeddingsError, compute_embeddings, dataset_texts,
                                  default_embeddings_path, load_embeddings)
from mrdl.data.synthetic import write_synthetic_dataset
from mrdl.text import RandomTextTowerWarning, random_text_tower
from mrdl_runtime.manifest import file_sha256


@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    return write_synthetic_dataset(tmp_path / "syn", n_train=2, n_val=2, size=32)


def _compute(root: Path, config, **kwargs) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomTextTowerWarning)
        return compute_embeddings(root, config, **kwargs)


def test_round_trip_with_tiny_tower(dataset_root: Path, tiny_config):
    path = _compute(dataset_root, tiny_config, seed=0)
    assert path == default_embeddings_path(dataset_root, tiny_config)
    texts = dataset_texts(dataset_root, tiny_config)
    assert sorted(texts) == sorted([PROMPT_KEY, "Train/synthetic_0000.png", "Train/synthetic_0001.png",
                                    "Val/synthetic_0002.png", "Val/synthetic_0003.png"])
    loaded = load_embeddings(path, tiny_config, expected_texts=texts)
    assert loaded.prompt.shape == (77, 32)
    assert loaded.provenance["weights"] == "random-init" and loaded.provenance["clip_model"] == "custom"
    assert loaded.provenance["width"] == 32 and loaded.provenance["context_length"] == 77
    assert "Tokenizer" in loaded.provenance["tokenizer"]
    tower = random_text_tower(tiny_config.model.text, seed=0)
    sentence = texts["Val/synthetic_0002.png"]
    assert torch.allclose(loaded.features["Val/synthetic_0002.png"], tower.encode([sentence])[0], atol=1e-6)
    assert torch.allclose(loaded.prompt, tower.encode([tiny_config.model.prompt])[0], atol=1e-6)
    batch = loaded.for_split("Train", ["synthetic_0001.png", "synthetic_0000.png"])
    assert batch.shape == (2, 77, 32)


def test_local_clip_weights_are_used_and_hashed(dataset_root: Path, tiny_config, tmp_path: Path):
    from safetensors.torch import save_file

    donor = random_text_tower(tiny_config.model.text, seed=5)
    weights = tmp_path / "clip.safetensors"
    save_file({f"module.text.{k}": v.contiguous() for k, v in donor.model.state_dict().items()}, str(weights))
    path = compute_embeddings(dataset_root, tiny_config, out=tmp_path / "e.safetensors", clip_weights=weights)
    loaded = load_embeddings(path, tiny_config)
    assert loaded.provenance["weights"] == file_sha256(weights)
    assert torch.allclose(loaded.prompt, donor.encode([tiny_config.model.prompt])[0], atol=1e-6)


def test_random_init_warns(dataset_root: Path, tiny_config, tmp_path: Path):
    with pytest.warns(RandomTextTowerWarning, match="RANDOMLY INITIALISED"):
        compute_embeddings(dataset_root, tiny_config, out=tmp_path / "e.safetensors")


def test_stale_file_is_refused(dataset_root: Path, tiny_config):
    path = _compute(dataset_root, tiny_config)
    texts = dataset_texts(dataset_root, tiny_config)
    texts["Train/synthetic_0000.png"] = "a sentence that was edited after embedding"
    with pytest.raises(EmbeddingsError, match=r"stale.*mrdl embed-text"):
        load_embeddings(path, tiny_config, expected_texts=texts, data_root=dataset_root)
    texts["Test/other.png"] = "not embedded"
    with pytest.raises(EmbeddingsError, match=r"lacks 1 description.*Test/other.png.*mrdl embed-text"):
        load_embeddings(path, tiny_config, expected_texts=texts)


def test_other_model_or_prompt_is_refused(dataset_root: Path, tiny_config):
    path = _compute(dataset_root, tiny_config)
    with pytest.raises(EmbeddingsError, match=r"clip_model='custom' but config 'small' needs 'ViT-B-32'.*--config small"):
        load_embeddings(path, load_config("small"))
    other_prompt = tiny_config.replace_model(prompt="another prompt")
    with pytest.raises(EmbeddingsError, match="stale"):
        load_embeddings(path, other_prompt)


def test_missing_or_foreign_file_is_refused(tmp_path: Path, tiny_config):
    with pytest.raises(EmbeddingsError, match="does not exist.*mrdl embed-text"):
        load_embeddings(tmp_path / "none.safetensors", tiny_config)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(EmbeddingsError, match="not a readable safetensors"):
        load_embeddings(tmp_path / "junk.safetensors", tiny_config)


def test_cli_round_trip(dataset_root: Path, tiny_config, tmp_path: Path):
    out = tmp_path / "cli.safetensors"
    result = CliRunner().invoke(main, ["embed-text", str(dataset_root), "--config", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "RANDOMLY INITIALISED" in result.output and f"wrote {out}" in result.output
    assert load_embeddings(out, tiny_config, expected_texts=dataset_texts(dataset_root, tiny_config))


def _no_cached_weights(monkeypatch) -> list[dict]:
    """Make the Hugging Face cache empty; record (and refuse) any call that would use the network."""
    import huggingface_hub

    calls: list[dict] = []

    def download(repo_id, filename, **kwargs):
        calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not in the cache")
        raise AssertionError("tried to download with no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls


def test_paper_weights_are_the_default_and_absence_fails_fast(dataset_root: Path, tmp_path: Path, monkeypatch):
    """Without options embed-text wants ViT-B-32 'openai'; with no cache and no network it fails within
    the connect timeout, naming both ways to provide the weights (and --random-init), and writes nothing."""
    from mrdl.text import PAPER_WEIGHTS, TextWeightsUnavailable, build_text_tower

    assert PAPER_WEIGHTS == {"ViT-B-32": "openai"}
    calls = _no_cached_weights(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.mrdl-test.invalid")  # a name that never resolves: no network
    tic = time.perf_counter()
    with pytest.raises(TextWeightsUnavailable) as failure:
        build_text_tower(load_config("small").model.text, connect_timeout=1.0)
    assert time.perf_counter() - tic < 5  # the weights are looked for before the tower is built
    assert [c["repo_id"] for c in calls] == ["timm/vit_base_patch32_clip_224.openai"]
    assert calls[0]["filename"] == "open_clip_model.safetensors" and calls[0]["local_files_only"]
    message = str(failure.value)
    assert "open_clip ViT-B-32 'openai'" in message and "did not answer within 1 s (no network?)" in message
    assert "--clip-weights PATH" in message and "Hugging Face hub" in message and "--random-init" in message

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "e.safetensors"
    offline = CliRunner().invoke(main, ["embed-text", str(dataset_root), "--config", "small", "--out", str(out)])
    assert offline.exit_code == 1 and not out.exists() and "Traceback" not in offline.output
    assert "HF_HUB_OFFLINE is set" in offline.output and "--clip-weights PATH" in offline.output
    assert "RANDOMLY INITIALISED" not in offline.output


def test_hub_check_is_bounded(monkeypatch):
    """A network that neither answers nor refuses (a connect or a name lookup that hangs) costs the timeout."""
    import socket

    from mrdl.text import hub_reachable

    def hanging_connect(*args, **kwargs):
        time.sleep(30)
        raise OSError("connect timed out")

    monkeypatch.setattr(socket, "create_connection", hanging_connect)
    tic = time.perf_counter()
    assert hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - tic < 1.5


def test_random_tower_only_on_request(dataset_root: Path, tmp_path: Path):
    out = tmp_path / "r.safetensors"
    asked = CliRunner().invoke(main, ["embed-text", str(dataset_root), "--config", "small", "--out", str(out),
                                      "--random-init", "--recipe", "glas"])
    assert asked.exit_code == 0, asked.output
    assert "RANDOMLY INITIALISED (asked for)" in asked.output
    loaded = load_embeddings(out, load_config("small").replace_model(prompt="a histopathology image of colon glands"))
    assert loaded.provenance["weights"] == "random-init"
    both = CliRunner().invoke(main, ["embed-text", str(dataset_root), "--random-init", "--pretrained", "openai"])
    assert both.exit_code == 2 and "--random-init takes no weights" in both.output


def test_cli_errors(dataset_root: Path, tmp_path: Path):
    runner = CliRunner()
    missing = runner.invoke(main, ["embed-text", str(tmp_path / "absent"), "--config", "tiny"])
    assert missing.exit_code != 0 and "does not exist" in missing.output
    no_weights = runner.invoke(main, ["embed-text", str(dataset_root), "--config", "tiny",
                                      "--clip-weights", str(tmp_path / "nope.pt")])
    assert no_weights.exit_code != 0 and "nope.pt does not exist" in no_weights.output
