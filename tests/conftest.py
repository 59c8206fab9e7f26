"""Shared fixtures: the repo and real-data paths, the tiny config and model, and the tiny model's
checkpoints and exports, each made once per session (an export takes seconds of CPU).

Session-scoped files and folders are shared by every test that asks for them: tests copy them
(``shutil.copytree``) before changing anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MONUSEG = ROOT.parent / "shared" / "data" / "MoNuSeg"

# Python source that makes `import torch` (and mrdl, which needs it) fail, as on a machine that
# never installed them; put it in front of code run with `python -c`.
BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'mrdl', 'torchvision', 'open_clip'):
            raise ImportError(f'{name} is blocked for this test')
sys.meta_path.insert(0, _Block())
"""


@pytest.fixture(scope="session", autouse=True)
def _ort_cache_in_a_temporary_folder(tmp_path_factory):
    """Optimized ONNX Runtime graphs (mrdl_runtime.ort_cache) go to a per-session folder, not the
    user's ~/.cache: tests leave nothing behind and never load an entry from an earlier run.
    Subprocesses (CLI tests) inherit the variable."""
    import os

    folder = tmp_path_factory.mktemp("ort-optimized")
    folder.chmod(0o700)
    previous = os.environ.get("MRDL_ORT_CACHE")
    os.environ["MRDL_ORT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("MRDL_ORT_CACHE", None)
    else:
        os.environ["MRDL_ORT_CACHE"] = previous


def _torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def interruptible():
    """``interruptible(command)``: the command line run with SIGINT's default disposition, for Ctrl-C tests.

    A shell that starts a job in the background without job control (as CI runners may) makes it
    ignore SIGINT; the child inherits that and Python keeps ignoring SIGINT, so a test sending a
    real SIGINT must restore the default in the child before it starts. The child restores it itself
    (:mod:`mrdl_runtime.children`): a ``preexec_fn`` would fork this gRPC-loaded process, and gRPC's
    fork handlers abort such children now and then.
    """
    from mrdl_runtime import children

    return lambda command: children.command(command, default_sigint=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def block_torch() -> str:
    """:data:`BLOCK_TORCH`: prefix for ``python -c`` code that must run without torch and mrdl."""
    return BLOCK_TORCH


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


# ----------------------------------------------------------------------------- checkpoints and exports

@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_config, tiny_prompt_features) -> Path:
    """The seeded (seed 0), untrained tiny model saved once; its folder holds nothing else."""
    _torch()
    from mrdl.checkpoint import save_checkpoint
    from mrdl.model import create_model

    model = create_model(tiny_config, prompt_features=tiny_prompt_features, seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint") / "tiny.safetensors", model)


@pytest.fixture(scope="session")
def variants_export(tmp_path_factory, tiny_checkpoint):
    """``export_model``'s result for :func:`tiny_checkpoint` with its FP32, INT8 and FP16 ONNX files."""
    pytest.importorskip("onnxruntime")
    from mrdl_export import export_model

    out = tmp_path_factory.mktemp("tiny-variants") / "deploy"
    return export_model(tiny_checkpoint, out, int8=True, fp16=True, parity_images=4, calib_images=4)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_config, tiny_prompt_features) -> tuple[Path, Path]:
    """(checkpoint, model dir) of the calibrated tiny model, exported to FP32 ONNX with max_batch 4.

    A randomly initialised tiny model outputs probabilities of about 0.46 everywhere, so every mask
    would be empty and any two runtimes would "agree" trivially; the head's bias is shifted so that
    30 % of the synthetic pixels are foreground, which puts the threshold through the middle of the
    probability range.
    """
    torch = _torch()
    pytest.importorskip("onnxruntime")
    from mrdl.checkpoint import save_checkpoint
    from mrdl.data.preprocess import preprocess
    from mrdl.data.synthetic import synthetic_sample
    from mrdl.model import create_model
    from mrdl_export import export_model

    model = create_model(tiny_config, prompt_features=tiny_prompt_features, seed=0).eval()
    size = tiny_config.model.image_size
    batch = torch.from_numpy(np.stack([preprocess(synthetic_sample(i, size=size, seed=0)[0], size) for i in range(4)]))
    with torch.no_grad():
        logits = model(batch).logits  # (4, 1, S, S)
        model.decoder.head.bias -= torch.quantile(logits.flatten(), 0.7)
    base = tmp_path_factory.mktemp("tiny-calibrated")
    ckpt = save_checkpoint(base / "tiny.safetensors", model)
    export_model(ckpt, base / "deploy", max_batch=4, parity_images=2)
    return ckpt, base / "deploy"


@pytest.fixture(scope="session")
def model_dir(tiny_export) -> Path:
    """The model directory of :func:`tiny_export` (FP32 only), shared: copy it before changing it."""
    return tiny_export[1]
