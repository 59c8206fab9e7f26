"""The optimized-graph cache of the onnxruntime CPU runner (mrdl_runtime.ort_cache): an entry is
written once and reused, gives the same outputs, and is never run when it does not match the
record written with it (tampered, truncated, record missing): it is rebuilt from the verified
artifact instead. An unsafe cache folder is not used; the key follows everything the graph depends on."""

from __future__ import annotations

import json
import logging
import os
import stat

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from mrdl_runtime.manifest import load_manifest  # noqa: E402
from mrdl_runtime.onnxruntime_runner import OnnxRuntimeRunner  # noqa: E402
from mrdl_runtime.ort_cache import cache_key, default_cache_dir  # noqa: E402


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)


def _run(model_dir, cache, images):
    manifest = load_manifest(model_dir)
    runner = OnnxRuntimeRunner(manifest.artifact_path("fp32"), manifest=manifest, intra_op_threads=1,
                               optimized_cache=cache)
    runner.open()
    try:
        return runner.load_mode, runner.infer({"image": images})["probabilities"]
    finally:
        runner.close()


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_first_open_writes_a_private_entry_the_next_reuses_with_equal_outputs(model_dir, tmp_path, images):
    folder = tmp_path / "cache"
    mode, plain = _run(model_dir, None, images)
    assert mode == "uncached"
    mode, first = _run(model_dir, folder, images)
    assert mode == "optimized and cached"
    names = _entries(folder)
    assert len(names) == 2 and {n.rsplit(".", 1)[1] for n in names} == {"onnx", "json"}  # no temp files left
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((folder / n).stat().st_mode) & 0o077 == 0 for n in names)
    mode, second = _run(model_dir, folder, images)
    assert mode == "cached"
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(second, plain)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "swap in another model", "drop the record"])
def test_an_entry_that_does_not_match_its_record_is_rebuilt_never_run(model_dir, tmp_path, images, caplog, damage):
    folder = tmp_path / "cache"
    _, plain = _run(model_dir, folder, images)
    model = next(folder.glob("*.onnx"))
    record = model.with_suffix(".json")
    data = bytearray(model.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(bytes(data[:-100]))
    elif damage == "swap in another model":  # a valid ONNX graph, same size, that is not the entry
        import onnx
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("Identity", ["image"], ["probabilities"])], "other",
                                  [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 64, 64])],
                                  [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                                 ["batch", 3, 64, 64])])
        model.write_bytes(onnx.helper.make_model(graph).SerializeToString())
    else:
        record.unlink()
    with caplog.at_level(logging.WARNING, logger="mrdl_runtime"):
        mode, again = _run(model_dir, folder, images)
    assert mode == "optimized and cached"  # rebuilt from the verified artifact
    np.testing.assert_array_equal(again, plain)
    if damage != "drop the record":
        assert "does not match its record" in caplog.text
    written = json.loads(record.read_text())
    import hashlib

    assert written["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert _run(model_dir, folder, images)[0] == "cached"


def test_a_folder_others_may_write_is_not_used(model_dir, tmp_path, images, caplog):
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o777)
    with caplog.at_level(logging.WARNING, logger="mrdl_runtime"):
        mode, _ = _run(model_dir, folder, images)
    assert mode == "uncached" and "not a private folder" in caplog.text and _entries(folder) == []


def test_the_key_follows_source_runtime_provider_and_options(monkeypatch):
    base = dict(ort_version="1.0", provider="CPUExecutionProvider", options={"level": "all"})
    key = cache_key("a" * 64, **base)
    assert key == cache_key("a" * 64, **base)
    assert key != cache_key("b" * 64, **base)
    assert key != cache_key("a" * 64, **{**base, "ort_version": "1.1"})
    assert key != cache_key("a" * 64, **{**base, "provider": "CUDAExecutionProvider"})
    assert key != cache_key("a" * 64, **{**base, "options": {"level": "basic"}})
    monkeypatch.setattr("mrdl_runtime.ort_cache.cpu_fingerprint", lambda: "another cpu")
    assert key != cache_key("a" * 64, **base)
    monkeypatch.setenv("MRDL_ORT_CACHE", "off")
    assert default_cache_dir() is None
    monkeypatch.setenv("MRDL_ORT_CACHE", "/somewhere")
    assert str(default_cache_dir()) == "/somewhere"
