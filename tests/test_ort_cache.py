"""The optimized-graph cache of the onnxruntime CPU runner (mrdl_runtime.ort_cache): an entry is
written once and reused, gives the same outputs, and is never run when it does not match the
record written with it (tampered, truncated, record missing): it is rebuilt from the verified
artifact instead. An unsafe cache folder is not used; the key follows everything the graph depends on.
Issue 21: the cache deletes only what it can prove is its own (a marked folder; its names and record
format), and an entry that matches its record but holds another export's graph is rebuilt on that
load instead of failing every later one."""

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
from mrdl_runtime.ort_cache import CACHE_FORMAT, MARKER, cache_key, default_cache_dir, prune  # noqa: E402


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
    assert (folder / MARKER).read_text() == CACHE_FORMAT + "\n"  # the folder is marked as the cache's
    names = [name for name in _entries(folder) if name != MARKER]
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


def test_a_folder_of_other_files_is_not_used_and_nothing_in_it_is_touched(model_dir, tmp_path, images, caplog):
    """MRDL_ORT_CACHE pointed at a folder of one's own: 40 files (json, onnx, others) stay as they were,
    however many entries a pruning would drop (it deleted every *.json there before)."""
    folder = tmp_path / "mine"
    folder.mkdir(mode=0o700)
    for i in range(40):
        (folder / f"{i:02d}.{('json', 'onnx', 'txt', 'csv')[i % 4]}").write_text(f"user file {i}")
    (folder / ("ab" * 32 + ".json")).write_text("{}")  # even a name that looks like an entry
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    with caplog.at_level(logging.WARNING, logger="mrdl_runtime"):
        mode, _ = _run(model_dir, folder, images)
    assert mode == "uncached" and "holds files that are not its own" in caplog.text and MARKER in caplog.text
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_pruning_removes_only_this_caches_records(model_dir, tmp_path, images):
    """In the cache's own (marked) folder, prune(keep=0) removes its entries, never a file it did not
    write: other names, and records of another format under an entry name."""
    folder = tmp_path / "cache"
    _run(model_dir, folder, images)
    foreign = {"notes.json": "{}", ("cd" * 32) + ".json": json.dumps({"format": "someone-else/1", "key": "cd" * 32}),
               ("cd" * 32) + ".onnx": "not ours", ("ef" * 32) + ".json": "not json"}
    for name, text in foreign.items():
        (folder / name).write_text(text)
    prune(folder, keep=0)
    assert sorted(_entries(folder)) == sorted([MARKER, *foreign])


def test_a_poisoned_entry_is_rebuilt_on_the_next_load(model_dir, tmp_path, images, caplog):
    """Another export's optimized graph under this model's key with a rewritten record (size and hash
    right): never run, and rebuilt from the verified model on that load, not blamed on model.onnx forever."""
    import hashlib
    import shutil
    import uuid

    from reexport import rewrite_manifest

    folder = tmp_path / "cache"
    _, plain = _run(model_dir, folder, images)
    ours = next(folder.glob("*.onnx"))
    other = rewrite_manifest(shutil.copytree(model_dir, tmp_path / "other"), {"export_id": uuid.uuid4().hex})
    _run(other, folder, images)
    theirs = next(path for path in folder.glob("*.onnx") if path != ours)
    poison = theirs.read_bytes()
    ours.write_bytes(poison)
    record = json.loads(ours.with_suffix(".json").read_text())
    record.update(bytes=len(poison), sha256=hashlib.sha256(poison).hexdigest())
    ours.with_suffix(".json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="mrdl_runtime"):
        mode, again = _run(model_dir, folder, images)
    assert mode == "optimized and cached" and "matched its record but not the model" in caplog.text
    np.testing.assert_array_equal(again, plain)
    assert ours.read_bytes() != poison
    assert _run(model_dir, folder, images)[0] == "cached"
