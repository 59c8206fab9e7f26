"""Shared fixtures: the tiny config, a seeded tiny model and paths to the real data."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MONUSEG = ROOT.parent / "shared" / "data" / "MoNuSeg"


def _torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def tiny_config():
    from mrdl.config import load_config

    return load_config("tiny")


@pytest.fixture(scope="session")
def tiny_prompt_features(tiny_config):
    from mrdl.model import deterministic_prompt_features

    return deterministic_prompt_features(tiny_config)


@pytest.fixture
def tiny_model(tiny_config, tiny_prompt_features):
    from mrdl.model import create_model

    return create_model(tiny_config, prompt_features=tiny_prompt_features, seed=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: the CPUs are shared, and oversubscribed threads slow tiny models down badly."""
    torch = _torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def monuseg_root() -> Path:
    if not (MONUSEG / "Val_Folder" / "img").is_dir():
        pytest.skip(f"real MoNuSeg data not found at {MONUSEG} (it lives in the shared/ folder beside the repo)")
    return MONUSEG
