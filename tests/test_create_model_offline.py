"""`mrdl.create_model` without the CLIP weights: it fails at once, in Python terms, and never waits for
the hub; `text_tower="random"` builds a model (and an untrained checkpoint) without any weights."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from mrdl.checkpoint import load_checkpoint, save_checkpoint
from mrdl.model import create_model, deterministic_prompt_features
from mrdl.text import TextWeightsUnavailable


def _no_weights_no_network(monkeypatch) -> list[dict]:
    """An empty Hugging Face cache; any attempt to reach the hub fails the test."""
    import huggingface_hub

    import mrdl.text

    calls: list[dict] = []

    def download(repo_id, filename, **kwargs):
        calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not in the cache")
        raise AssertionError("create_model tried to download")

    def reachable(*args, **kwargs):
        raise AssertionError("create_model asked whether the hub answers")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(mrdl.text, "hub_reachable", reachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.mrdl-test.invalid")
    return calls


def test_missing_weights_fail_fast_with_a_python_hint(monkeypatch):
    calls = _no_weights_no_network(monkeypatch)
    tic = time.perf_counter()
    with pytest.raises(TextWeightsUnavailable) as failure:
        create_model("base")
    assert time.perf_counter() - tic < 30  # loose: the cache lookup only, no hub wait
    assert len(calls) == 1 and calls[0]["local_files_only"]
    message = str(failure.value)
    assert "not in the Hugging Face cache" in message
    assert 'create_model(config, text_tower="random")' in message
    assert "create_model(config, clip_weights=PATH)" in message and "create_model(config, download=True)" in message


def test_random_text_tower_builds_a_reproducible_model_and_checkpoint(monkeypatch, tmp_path: Path):
    _no_weights_no_network(monkeypatch)
    model = create_model("tiny", text_tower="random", seed=3)
    again = create_model("tiny", text_tower="random", seed=3)
    assert torch.equal(model.prompt_features, deterministic_prompt_features(model.config, seed=3))
    state, state_again = model.state_dict(), again.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)

    path = save_checkpoint(tmp_path / "untrained.safetensors", model)
    loaded, _ = load_checkpoint(path, expected_config="tiny")
    assert all(torch.equal(loaded.state_dict()[k], state[k]) for k in state)


@pytest.mark.parametrize("kwargs, expected", [
    ({"text_tower": "none"}, "text_tower must be one of"),
    ({"text_tower": "random", "clip_weights": "w.safetensors"}, "takes no clip_weights"),
])
def test_bad_text_tower_arguments(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        create_model("tiny", **kwargs)
