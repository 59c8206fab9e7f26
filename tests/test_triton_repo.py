"""The Triton model repository writer (``mrdl triton-repo``, ``mrdl-export --triton``).

Triton's onnxruntime and TensorRT backends are not installed on these machines, so every bare
model's ``config.pbtxt`` is parsed with Triton's own ModelConfig protobuf (shipped by
``tritonclient``) and compared with ``model.json``. The front model (Python backend) is served end
to end: the ``tritonserver`` binary PyTriton ships runs the written repository directly
(:class:`mrdl_runtime.server_process.StockServer`), and its masks equal the in-process ones.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient (pip install 'mrdl[serve]') ships Triton's config schema")
from google.protobuf import text_format  # noqa: E402  (tritonclient depends on protobuf)

from mrdl_runtime import IntegrityError, load_manifest  # noqa: E402

TYPES = {"float32": model_config_pb2.TYPE_FP32}


def _parse(path: Path):
    """config.pbtxt -> ModelConfig; unknown fields or bad values raise text_format.ParseError."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def variants_dir(variants_export) -> Path:
    return variants_export.out_dir


def _check_against_manifest(repo: Path, model_dir: Path, *, max_batch: int | None = None) -> dict:
    from mrdl_export.triton import FILES

    manifest = load_manifest(model_dir)
    configs = {}
    for key, record in manifest.artifacts.items():
        folder = repo / f"mrdl_{key}"
        config = _parse(folder / "config.pbtxt")
        configs[key] = config
        engine = key == "tensorrt"
        artifact = folder / "1" / FILES["tensorrt" if engine else "onnx"]
        assert config.name == folder.name
        assert (config.platform, config.backend) == (("tensorrt_plan", "tensorrt") if engine else ("", "onnxruntime"))
        assert _sha256(artifact) == record.sha256 and artifact.stat().st_size == record.bytes
        assert config.max_batch_size == (max_batch or manifest.max_batch)
        for specs, tensors in ((manifest.inputs, config.input), (manifest.outputs, config.output)):
            assert [(t.name, t.data_type, tuple(t.dims)) for t in tensors] == \
                   [(s.name, TYPES[s.dtype], s.fixed_shape) for s in specs]
        preferred = list(config.dynamic_batching.preferred_batch_size)
        assert preferred and preferred == sorted(preferred) and max(preferred) == config.max_batch_size
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        kind = model_config_pb2.ModelInstanceGroup.KIND_GPU if engine else model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert [(g.count, g.kind) for g in config.instance_group] == [(1, kind)]
        parameters = {k: v.string_value for k, v in config.parameters.items()}
        assert parameters["mrdl.export_id"] == manifest.export_id
        assert parameters["mrdl.sha256"] == record.sha256 and parameters["mrdl.precision"] == record.precision
        assert sorted(p.name for p in folder.rglob("*")) == sorted(["1", artifact.name, "config.pbtxt"])
    assert sorted(p.name for p in repo.iterdir()) == sorted(["mrdl", *(f"mrdl_{key}" for key in manifest.artifacts)])
    front = _parse(repo / "mrdl" / "config.pbtxt")
    assert front.backend == "python" and front.version_policy.latest.num_versions == 1
    assert {k: v.string_value for k, v in front.parameters.items()}["export_id"] == manifest.export_id
    assert (repo / "mrdl" / "1" / "model.py").is_file() and (repo / "mrdl" / "1" / "model" / "model.json").is_file()
    return configs


def test_one_model_per_precision_matches_the_manifest(variants_dir, tmp_path):
    from mrdl_export.triton import write_repository

    written = write_repository(variants_dir, tmp_path / "repo")
    assert sorted(written) == ["mrdl", "mrdl_fp16", "mrdl_fp32", "mrdl_int8"]
    _check_against_manifest(tmp_path / "repo", variants_dir)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_tensorrt_engine_becomes_a_plan_on_gpu(model_dir, tmp_path):
    """An engine artifact (stand-in bytes: nothing here parses it) -> platform tensorrt_plan, model.plan, KIND_GPU."""
    copy = tmp_path / "deploy"
    shutil.copytree(model_dir, copy)
    engine = copy / "model.engine"
    engine.write_bytes(b"not a real engine, only its record is checked" * 10)
    doc = json.loads((copy / "model.json").read_text())
    doc["artifacts"]["tensorrt"] = {"file": "model.engine", "bytes": engine.stat().st_size,
                                    "sha256": _sha256(engine), "precision": "fp16"}
    (copy / "model.json").write_text(json.dumps(doc))
    from mrdl_export.triton import TritonRepoOptions, write_repository

    write_repository(copy, tmp_path / "repo", TritonRepoOptions(max_batch=2))
    configs = _check_against_manifest(tmp_path / "repo", copy, max_batch=2)
    assert list(configs["tensorrt"].dynamic_batching.preferred_batch_size) == [2]


def test_tampered_artifact_is_refused_and_nothing_is_written(model_dir, tmp_path):
    from mrdl_export.triton import write_repository

    copy = tmp_path / "deploy"
    shutil.copytree(model_dir, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        write_repository(copy, tmp_path / "repo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]


def test_out_is_refused_when_occupied_or_overlapping(model_dir, tmp_path):
    from mrdl_export.triton import TritonRepoError, TritonRepoOptions, write_repository

    repo = tmp_path / "repo"
    write_repository(model_dir, repo)
    with pytest.raises(TritonRepoError, match="--force"):
        write_repository(model_dir, repo)
    write_repository(model_dir, repo, TritonRepoOptions(force=True, prefix="seg"))  # a repository: replaced
    assert sorted(p.name for p in repo.iterdir()) == ["seg", "seg_fp32"]
    (repo / "notes.txt").write_text("mine")
    with pytest.raises(TritonRepoError, match="other than Triton model folders"):
        write_repository(model_dir, repo, TritonRepoOptions(force=True))
    assert (repo / "notes.txt").read_text() == "mine" and (repo / "seg_fp32" / "config.pbtxt").is_file()
    with pytest.raises(TritonRepoError, match="overlaps the model directory"):
        write_repository(model_dir, model_dir / "repo")
    with pytest.raises(TritonRepoError, match="max_batch must be in"):
        write_repository(model_dir, tmp_path / "other", TritonRepoOptions(max_batch=999))
    from mrdl_runtime import ManifestError

    with pytest.raises(ManifestError, match="no 'int8' artifact"):
        write_repository(model_dir, tmp_path / "other", TritonRepoOptions(precisions=("int8",)))
    assert not (tmp_path / "other").exists()


def test_triton_repo_command(model_dir, tmp_path):
    from mrdl_apps.cli import main

    out = tmp_path / "repo"
    result = CliRunner().invoke(main, ["triton-repo", str(model_dir), "--out", str(out), "--max-batch", "2",
                                       "--instances", "2", "--kind", "gpu", "--max-queue-delay-us", "500"])
    assert result.exit_code == 0, result.output
    config = _parse(out / "mrdl_fp32" / "config.pbtxt")
    assert config.max_batch_size == 2 and config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    again = CliRunner().invoke(main, ["triton-repo", str(model_dir), "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output


@pytest.mark.parametrize("prefix", [".", "..", "...", ".hidden", "a/b", "../x", "", "x" * 129, "caf\u00e9", "a\n"])
def test_model_names_that_are_not_one_visible_folder_are_refused(model_dir, tmp_path, prefix):
    """A model name is a folder of the repository: '.', '..' and hidden names would write outside ``--out`` (or into
    it, where Triton skips them); the CLI, the library, the front model writer and ``mrdl serve`` refuse them."""
    from mrdl_apps.cli import main
    from mrdl_export.triton import TritonRepoError, TritonRepoOptions, write_repository
    from mrdl_runtime import OptionsError
    from mrdl_runtime.front_model import write_front_model
    from mrdl_runtime.serving import ServeOptions

    parent = tmp_path / "parent"
    parent.mkdir()
    result = CliRunner().invoke(main, ["triton-repo", str(model_dir), "--out", str(parent / "repo"),
                                       "--prefix", prefix])
    assert result.exit_code == 1 and "use letters, digits" in result.output, result.output
    with pytest.raises(TritonRepoError, match="model name prefix .*: use letters, digits"):
        write_repository(model_dir, parent / "repo", TritonRepoOptions(prefix=prefix))
    assert list(parent.iterdir()) == []  # nothing written, beside --out or inside it
    with pytest.raises(OptionsError, match="model name .*: use letters, digits"):
        write_front_model(parent / "repo" / "x", prefix, load_manifest(model_dir), ServeOptions(), "model")
    with pytest.raises(OptionsError, match="--model-name: model name .*: use letters, digits"):
        ServeOptions(model_name=prefix)
    assert list(parent.iterdir()) == []


def test_visible_names_with_dots_are_kept(model_dir, tmp_path):
    from mrdl_export.triton import TritonRepoOptions, write_repository
    from mrdl_runtime.serving import ServeOptions

    written = write_repository(model_dir, tmp_path / "repo", TritonRepoOptions(prefix="seg.v1-a_b"))
    assert sorted(written) == ["seg.v1-a_b", "seg.v1-a_b_fp32"]
    assert all(folder.parent == tmp_path / "repo" and folder.is_dir() for folder in written.values())
    assert ServeOptions(model_name="v2.0").model_name == "v2.0"


def test_export_triton_step(model_dir, tmp_path):
    """``mrdl-export --triton REPO``: the option exists, a REPO inside --out is refused before any work, and the
    exporter's step writes the repository of the published directory."""
    from mrdl_apps.export import main as export_main
    from mrdl_export import ExportError, ExportOptions, Exporter

    assert "--triton" in CliRunner().invoke(export_main, ["--help"]).output
    with pytest.raises(ExportError, match="--triton .* overlaps"):
        Exporter(ExportOptions(triton=tmp_path / "out" / "repo")).run(tmp_path / "missing.safetensors",
                                                                     tmp_path / "out")
    assert not (tmp_path / "out").exists()
    job = SimpleNamespace(out_dir=model_dir, timings={})
    Exporter(ExportOptions(triton=tmp_path / "repo")).triton(job)
    _check_against_manifest(tmp_path / "repo", model_dir)
    assert job.timings["triton"] > 0


def test_stock_tritonserver_serves_the_front_model(model_dir, tmp_path):
    """tritonserver --model-repository on what mrdl triton-repo wrote: raw images in, masks at the original size
    out, identical to in-process for a whole and a tiled image over HTTP and gRPC; the export id in the config."""
    import numpy as np

    from mrdl_runtime import RemoteSegmenter, Segmenter
    from mrdl_runtime.errors import BackendUnavailableError
    from mrdl_runtime.server_process import StockServer
    from mrdl_runtime.serving import hosting_problem
    from reexport import rewrite_manifest

    if hosting_problem() is not None:
        pytest.skip(f"this Python cannot host Triton's Python backend: {hosting_problem()}")
    pytest.importorskip("pytriton", reason="the serve extra (which ships tritonserver) is missing")
    copy = tmp_path / "deploy"
    shutil.copytree(model_dir, copy)
    rewrite_manifest(copy, {"source_size": [100, 100]})
    from mrdl_export.triton import write_repository

    write_repository(copy, tmp_path / "repo")
    rng = np.random.default_rng(8)
    whole = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    large = rng.integers(0, 256, (230, 250, 3), dtype=np.uint8)
    with Segmenter.load(copy, backend="onnxruntime-cpu") as segmenter:
        expected = [segmenter.predict(whole), segmenter.predict(large, tile=True, overlap=0.5)]
    server = StockServer(tmp_path / "repo", log=tmp_path / "triton.log")
    try:
        try:
            server.start(120)
        except BackendUnavailableError as error:
            pytest.fail(f"{error}\n{server.output(4000)}")
        config = json.loads(server.get("/v2/models/mrdl/config"))
        assert config["parameters"]["export_id"]["string_value"] == load_manifest(copy).export_id
        for url in (server.http, server.grpc):
            with RemoteSegmenter(url) as remote:
                got = [remote.predict(whole), remote.predict(large, tile=True, overlap=0.5)]
            for ours, theirs in zip(got, expected):
                assert ours.mask.shape == theirs.mask.shape and np.array_equal(ours.mask, theirs.mask)
                np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=1e-5)
            assert [p.tiled for p in got] == [False, True]
    finally:
        code = server.stop()
    assert code == 0, server.output()


def test_the_client_refuses_a_model_name_no_server_could_serve():
    from mrdl_runtime.errors import OptionsError
    from mrdl_runtime.remote import ClientOptions

    for name in ("..", ".hidden", "a/b"):
        with pytest.raises(OptionsError, match="model name"):
            ClientOptions(model_name=name)
    assert ClientOptions(model_name="mrdl.v2").model_name == "mrdl.v2"
