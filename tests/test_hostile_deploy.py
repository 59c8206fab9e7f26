"""A deploy directory that cannot run the wrong model: hostile and careless edits, each refused by name.

Every case loads a copy of a real ``mrdl-export`` directory (the tiny model, exported once per
session; a second export with an INT8 variant supplies "another export" and the INT8 file) and
asserts the error's text: a corrupted, renamed, foreign, truncated, misplaced or unloadable model
file is an :class:`IntegrityError` naming the file and what was expected, and a manifest with a
value out of range or a hostile shape is a :class:`ManifestError` naming the field, before any
backend loads anything.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner


@pytest.fixture(scope="session")
def deploy(model_dir) -> Path:
    """conftest's FP32 tiny export, shared with the other runtime tests (never modified; in these
    tests ``model_dir`` names a private copy of it)."""
    return model_dir


@pytest.fixture(scope="session")
def int8_deploy(tmp_path_factory, tiny_export) -> Path:
    """A second export of the same checkpoint, with an INT8 variant (never modified)."""
    from mrdl_export import export_model

    out = tmp_path_factory.mktemp("hostile-int8") / "deploy"
    export_model(tiny_export[0], out, int8=True, max_batch=4, parity_images=2, calib_images=4)
    return out


@pytest.fixture
def copy_of(tmp_path):
    """A private copy of an export directory that a test may damage."""
    def copy(source: Path) -> Path:
        return Path(shutil.copytree(source, tmp_path / "deploy"))
    return copy


def edit_manifest(model_dir: Path, change) -> Path:
    doc = json.loads((model_dir / "model.json").read_text())
    change(doc)
    (model_dir / "model.json").write_text(json.dumps(doc))
    return model_dir


def record_file_as(model_dir: Path, key: str, *, size_only: bool = False) -> None:
    """Rewrite artifact ``key``'s record from the file now in its place, as a careless user might."""
    from mrdl_runtime.manifest import artifact_record

    def change(doc):
        entry = doc["artifacts"][key]
        fresh = artifact_record(model_dir / entry["file"], entry["precision"])
        entry.update({"bytes": fresh["bytes"]} if size_only else fresh)
    edit_manifest(model_dir, change)


def load(model_dir: Path, **options):
    from mrdl_runtime import Segmenter

    return Segmenter.load(model_dir, backend="onnxruntime-cpu", **options)


# --- the model file ---------------------------------------------------------------------------

def test_bit_flipped_model_onnx(deploy, copy_of):
    from mrdl_runtime import IntegrityError

    model_dir = copy_of(deploy)
    data = bytearray((model_dir / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x10
    (model_dir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.onnx: sha256 [0-9a-f]{16}… differs from the [0-9a-f]{16}… "
                                             r"recorded in model\.json \(file changed or corrupt\)"):
        load(model_dir)


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_model_onnx(deploy, copy_of, verify):
    from mrdl_runtime import IntegrityError

    model_dir = copy_of(deploy)
    path = model_dir / "model.onnx"
    size = path.stat().st_size
    os.truncate(path, size // 2)
    with pytest.raises(IntegrityError, match=rf"model\.onnx: {size // 2} bytes, but model\.json records {size} "
                                             r"\(file truncated, replaced or corrupt\)"):
        load(model_dir, verify=verify)


def test_another_exports_model_onnx(deploy, int8_deploy, copy_of):
    from mrdl_runtime import IntegrityError

    model_dir = copy_of(deploy)
    foreign = int8_deploy / "model.onnx"
    assert foreign.stat().st_size != (deploy / "model.onnx").stat().st_size  # its embedded manifest lists int8 too
    shutil.copyfile(foreign, model_dir / "model.onnx")
    with pytest.raises(IntegrityError, match=r"model\.onnx: \d+ bytes, but model\.json records \d+"):
        load(model_dir)
    record_file_as(model_dir, "fp32")  # size and hash now match: the export_id still does not
    ours = json.loads((model_dir / "model.json").read_text())["export_id"]
    with pytest.raises(IntegrityError, match=rf"model\.onnx comes from export '[0-9a-f]{{32}}', but model\.json is "
                                             rf"export '{ours}': the file belongs to another export"):
        load(model_dir)


def test_int8_file_renamed_to_model_onnx(int8_deploy, copy_of):
    from mrdl_runtime import IntegrityError

    model_dir = copy_of(int8_deploy)
    os.replace(model_dir / "model.int8.onnx", model_dir / "model.onnx")
    with pytest.raises(IntegrityError, match=r"model\.onnx: \d+ bytes, but model\.json records \d+"):
        load(model_dir)


@pytest.mark.parametrize("verify", [True, False])
def test_int8_file_renamed_to_model_onnx_with_its_record_rewritten(int8_deploy, copy_of, caplog, verify):
    """Even with the record "fixed" to the renamed file (all of it, or just the size without the
    hash check), the precision the file itself carries gives it away."""
    from mrdl_runtime import IntegrityError

    model_dir = copy_of(int8_deploy)
    os.replace(model_dir / "model.int8.onnx", model_dir / "model.onnx")
    record_file_as(model_dir, "fp32", size_only=not verify)
    with caplog.at_level(logging.WARNING, logger="mrdl_runtime"), pytest.raises(
            IntegrityError, match=r"model\.onnx holds int8 weights \(its embedded manifest says so\), but "
                                  r"model\.json lists it as the fp32 artifact; was a file renamed\?"):
        load(model_dir, verify=verify)
    assert ("SHA-256 not verified" in caplog.text) is not verify


def test_unloadable_model_onnx_with_matching_size(deploy, copy_of):
    from mrdl_runtime import IntegrityError

    model_dir = copy_of(deploy)
    path = model_dir / "model.onnx"
    path.write_bytes(b"\xff garbage \x00" * (path.stat().st_size // 11) + b"!" * (path.stat().st_size % 11))
    with pytest.raises(IntegrityError, match=r"model\.onnx: ONNX Runtime [\d.]+ cannot load it \(.+\); the file is "
                                             r"corrupt or not an ONNX model: re-export it"):
        load(model_dir, verify=False)


def test_unloadable_onnx_file_given_to_the_runner_directly(tmp_path):
    from mrdl_runtime import IntegrityError
    from mrdl_runtime.onnxruntime_runner import OnnxRuntimeRunner

    path = tmp_path / "model.onnx"
    path.write_bytes(b"not an onnx model")
    runner = OnnxRuntimeRunner(path)
    with pytest.raises(IntegrityError, match=r"model\.onnx: ONNX Runtime [\d.]+ cannot load it"):
        runner.open()
    assert not runner.is_open


def test_onnx_file_without_the_embedded_manifest(deploy, copy_of):
    onnx = pytest.importorskip("onnx")
    from mrdl_runtime import IntegrityError

    model_dir = copy_of(deploy)
    model = onnx.load(str(model_dir / "model.onnx"))
    kept = [prop for prop in model.metadata_props if prop.key != "mrdl.manifest"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save_model(model, str(model_dir / "model.onnx"))
    record_file_as(model_dir, "fp32")
    with pytest.raises(IntegrityError, match=r"model\.onnx carries no 'mrdl\.manifest' metadata, so no mrdl-export "
                                             r"wrote it for this directory"):
        load(model_dir)


def test_wrong_sized_model_onnx(deploy, copy_of):
    """The manifest says 32x32, the graph was exported at 64x64: both shapes are named."""
    from mrdl_runtime import IntegrityError

    def to_32(doc):
        doc["preprocessing"]["size"] = [32, 32]
        doc["inputs"][0]["shape"] = ["batch", 3, 32, 32]
        doc["outputs"][0]["shape"] = ["batch", 1, 32, 32]
    model_dir = edit_manifest(copy_of(deploy), to_32)
    with pytest.raises(IntegrityError, match=r"model\.onnx: the graph's inputs are image float32 \[batch, 3, 64, 64\], "
                                             r"but model\.json lists image float32 \[batch, 3, 32, 32\]"):
        load(model_dir)


def test_symlink_to_a_file_outside_the_directory(deploy, copy_of):
    from mrdl_runtime import IntegrityError

    model_dir = copy_of(deploy)
    (model_dir / "model.onnx").unlink()
    (model_dir / "model.onnx").symlink_to(deploy / "model.onnx")  # the right bytes, from the wrong place
    with pytest.raises(IntegrityError, match=r"model\.onnx links to .*deploy/model\.onnx, outside the model "
                                             r"directory; an artifact must be a file inside it"):
        load(model_dir)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_model_onnx_that_is_not_a_regular_file(deploy, copy_of, kind):
    from mrdl_runtime import IntegrityError

    model_dir = copy_of(deploy)
    path = model_dir / "model.onnx"
    path.unlink()
    os.mkfifo(path) if kind == "fifo" else path.mkdir()  # a FIFO must not block the load waiting for a writer
    with pytest.raises(IntegrityError, match=r"model\.onnx is not a regular file; model\.json lists it as the "
                                             r"'fp32' artifact"):
        load(model_dir)


def test_no_verify_skips_only_the_hash_and_says_so(deploy, copy_of, caplog):
    model_dir = copy_of(deploy)
    data = (model_dir / "model.onnx").read_bytes()
    assert data.count(b"main_graph") == 1  # the graph's name (not in the manifest): a changed letter still loads
    (model_dir / "model.onnx").write_bytes(data.replace(b"main_graph", b"main_grapH"))
    with caplog.at_level(logging.WARNING, logger="mrdl_runtime"), load(model_dir, verify=False) as segmenter:
        assert segmenter.precision == "fp32"
    warnings = [r.getMessage() for r in caplog.records if "not verified" in r.getMessage()]
    assert len(warnings) == 1 and "only its name and size were checked; its embedded export_id and precision are " \
                                  "still checked" in warnings[0]


def test_segmenter_reports_the_precision_the_file_holds(int8_deploy):
    for precision in ("fp32", "int8"):
        with load(int8_deploy, precision=precision) as segmenter:
            assert segmenter.precision == precision
            assert segmenter.manifest.artifacts[precision].precision == precision


# --- the manifest ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/etc/passwd", "ABSOLUTE", "../outside/model.onnx", "sub/model.onnx", ".hidden"])
def test_artifact_paths_that_leave_the_directory(deploy, copy_of, name):
    from mrdl_runtime import ManifestError

    model_dir = copy_of(deploy)
    target = str((deploy / "model.onnx").resolve()) if name == "ABSOLUTE" else name  # a real, valid model file
    edit_manifest(model_dir, lambda doc: doc["artifacts"]["fp32"].update(file=target))
    with pytest.raises(ManifestError, match=rf"model\.json artifacts\.fp32: artifact file '{re.escape(target)}' must be a plain "
                                            r"file name inside the model directory"):
        load(model_dir)


@pytest.mark.parametrize(("value", "shown"), [(float("nan"), "nan"), (-0.5, "-0.5"), (0, "0.0"), (1, "1.0"),
                                              (float("inf"), "inf")])
def test_threshold_out_of_range(deploy, copy_of, value, shown):
    from mrdl_runtime import ManifestError

    model_dir = edit_manifest(copy_of(deploy), lambda doc: doc["postprocessing"].update(threshold=value))
    with pytest.raises(ManifestError, match=rf"model\.json postprocessing\.threshold is {shown}; expected a finite "
                                            r"number strictly between 0 and 1"):
        load(model_dir)


@pytest.mark.parametrize(("value", "shown"), [(0, "0.0"), (-1 / 255, r"-0\.0039\d+"), (float("nan"), "nan")])
def test_scale_out_of_range(deploy, copy_of, value, shown):
    from mrdl_runtime import ManifestError

    model_dir = edit_manifest(copy_of(deploy), lambda doc: doc["preprocessing"].update(scale=value))
    with pytest.raises(ManifestError, match=rf"model\.json preprocessing\.scale is {shown}; expected a finite number "
                                            r"> 0"):
        load(model_dir)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["preprocessing"].update(size=[0, 64]),
     r"preprocessing\.size is \[0, 64\]; expected \[height, width\], two integers in \[1, 8192\]"),
    (lambda d: d["preprocessing"].update(size=[9000, 9000]), r"preprocessing\.size is \[9000, 9000\]"),
    (lambda d: d.update(n_classes=0), r"n_classes is 0; expected an integer in \[1, 255\]"),
    (lambda d: d.update(n_classes=300), r"n_classes is 300; expected an integer in \[1, 255\]"),
    (lambda d: d.update(max_batch=5000), r"max_batch is 5000; expected an integer in \[1, 4096\]"),
    (lambda d: d.update(max_batch=-1), r"max_batch is -1; expected an integer in \[1, 4096\]"),
    (lambda d: d["preprocessing"].update(scale=10 ** 400), r"preprocessing\.scale is inf; expected a finite number"),
    (lambda d: d["artifacts"]["fp32"].update(bytes=-1), r"artifacts\.fp32\.bytes is -1; expected the file's size"),
    (lambda d: d["artifacts"]["fp32"].update(sha256="abc"), r"artifacts\.fp32\.sha256 is 'abc'; expected 64 lowercase"),
    (lambda d: d["artifacts"]["fp32"].update(precision="int8"),
     r"artifacts\.fp32 says model\.onnx holds int8; the 'fp32' artifact must hold fp32"),
    (lambda d: d["artifacts"]["fp32"].update(precision="bf16"), r"artifacts\.fp32\.precision is 'bf16'; expected one"),
    (lambda d: d["artifacts"].update(fp32="model.onnx"),
     r"artifacts\.fp32 must be an object \{file, bytes, sha256, precision\}, got str 'model\.onnx'"),
    (lambda d: d["artifacts"].update(onnx=d["artifacts"]["fp32"]), r"lists an artifact 'onnx'; expected keys among"),
    (lambda d: d.update(export_id="not-an-id"), r"export_id is 'not-an-id'; expected 32 lowercase hex digits"),
    (lambda d: d.pop("export_id"), r"has no 'export_id' field"),
    (lambda d: d.update(versions=[1, 2]), r"versions must be an object, got list"),
])
def test_manifest_fields_out_of_range(deploy, copy_of, change, message):
    from mrdl_runtime import ManifestError

    with pytest.raises(ManifestError, match=r"model\.json " + message):
        load(edit_manifest(copy_of(deploy), change))


def test_manifest_from_an_older_export(deploy, copy_of):
    from mrdl_runtime import ManifestError

    model_dir = edit_manifest(copy_of(deploy), lambda doc: doc.update(format="mrdl-deploy/1"))
    with pytest.raises(ManifestError, match=r"model\.json has format 'mrdl-deploy/1', written by an older mrdl-export; "
                                            r"re-export"):
        load(model_dir)


def test_deeply_nested_json(deploy, copy_of):
    from mrdl_runtime import ManifestError

    model_dir = copy_of(deploy)
    text = (model_dir / "model.json").read_text().rstrip()
    assert text.endswith("}")
    (model_dir / "model.json").write_text(text[:-1] + ', "notes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ManifestError, match=r"model\.json nests JSON more than 32 levels deep"):
        load(model_dir)


def test_brackets_and_escaped_quotes_inside_strings_are_not_nesting(deploy, copy_of):
    from reexport import rewrite_manifest  # re-exported: an edited model.json is refused (test_hostile_manifest.py)

    model_dir = rewrite_manifest(copy_of(deploy), lambda doc: doc.update(name='\\"' + "[{" * 500 + '"'))
    with load(model_dir) as segmenter:
        assert segmenter.manifest.name.endswith("[{" * 500 + '"')


def test_manifest_of_50_mib(deploy, copy_of):
    from mrdl_runtime import ManifestError

    model_dir = copy_of(deploy)
    with open(model_dir / "model.json", "r+b") as handle:
        handle.truncate(50 << 20)  # a sparse file: the check must refuse it by its size, unread
    with pytest.raises(ManifestError, match=r"model\.json is 50\.0 MiB; a model\.json is at most 1 MiB"):
        load(model_dir)


# --- the command line ---------------------------------------------------------------------------

def _predict(model_dir: Path, tmp_path: Path, *options: str):
    from PIL import Image

    from mrdl_apps.cli import main

    image = tmp_path / "tile.png"
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(image)
    return CliRunner().invoke(main, ["predict", str(model_dir), str(image), "--out", str(tmp_path / "out"),
                                     "--no-progress", *options])


def test_predict_refuses_a_corrupt_model_with_a_message(deploy, copy_of, tmp_path):
    model_dir = copy_of(deploy)
    data = bytearray((model_dir / "model.onnx").read_bytes())
    data[len(data) // 3] ^= 0x01
    (model_dir / "model.onnx").write_bytes(bytes(data))
    result = _predict(model_dir, tmp_path)
    assert result.exit_code == 1, result.output
    assert "Error: " in result.output and "model.onnx: sha256" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "masks").exists()


def test_predict_no_verify_still_checks_the_size(deploy, copy_of, tmp_path):
    model_dir = copy_of(deploy)
    os.truncate(model_dir / "model.onnx", 1000)
    result = _predict(model_dir, tmp_path, "--no-verify")
    assert result.exit_code == 1 and "model.onnx: 1000 bytes, but model.json records" in result.output


# --- the native TensorRT engine, with a stand-in tensorrt and cuda-python ---------------------

class StandInTensorRT:
    """Just enough of tensorrt + cuda-python for TensorRTRunner to open an "engine" here."""

    def __init__(self, image_shape=(-1, 3, 64, 64)):
        self.deserialized: list[bytes] = []
        shapes = {"image": image_shape, "probabilities": (-1, 1, 64, 64)}
        outer = self

        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, index):
                return list(shapes)[index]

            def get_tensor_mode(self, name):
                return "input" if name == "image" else "output"

            def get_tensor_dtype(self, name):
                return "float32"

            def get_tensor_shape(self, name):
                return shapes[name]

            def create_execution_context(self):
                return SimpleNamespace(set_input_shape=lambda *a: None, set_tensor_address=lambda *a: None,
                                       get_tensor_shape=lambda name: (4, *shapes[name][1:]))

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                outer.deserialized.append(bytes(data))
                return Engine()

        logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
        self.trt = SimpleNamespace(__version__="10.9.0.34", Logger=logger, Runtime=Runtime,
                                   TensorIOMode=SimpleNamespace(INPUT="input"), nptype=np.dtype)
        ok = (0,)
        self.cudart = SimpleNamespace(cudaGetDeviceCount=lambda: (0, 1), cudaSetDevice=lambda i: ok,
                                      cudaStreamCreate=lambda: (0, 7), cudaMalloc=lambda n: (0, 4096),
                                      cudaFree=lambda p: ok, cudaStreamDestroy=lambda s: ok)


@pytest.fixture
def engine_dir(deploy, copy_of) -> Path:
    """A deploy copy with a recorded model.engine (stand-in bytes) built by "TensorRT 10.9"."""
    from mrdl_runtime.manifest import artifact_record

    model_dir = copy_of(deploy)
    (model_dir / "model.engine").write_bytes(b"serialized engine " * 64)
    record = artifact_record(model_dir / "model.engine", "fp32")
    return edit_manifest(model_dir, lambda doc: (doc["artifacts"].update(tensorrt=record),
                                                 doc["versions"].update(tensorrt="10.9.0.34")))


def _engine_runner(model_dir: Path, monkeypatch, stand_in: StandInTensorRT, **options):
    from mrdl_runtime import LoadOptions, backends, load_manifest, tensorrt_runner

    monkeypatch.setattr(tensorrt_runner, "import_tensorrt", lambda: (stand_in.trt, stand_in.cudart))
    return backends.make_runner(load_manifest(model_dir), "tensorrt", "fp32", LoadOptions(**options))


def test_engine_verified_then_deserialized_from_the_same_bytes(engine_dir, monkeypatch):
    stand_in = StandInTensorRT()
    with _engine_runner(engine_dir, monkeypatch, stand_in) as runner:
        assert runner.input_names == ["image"] and runner.output_names == ["probabilities"]
    assert stand_in.deserialized == [(engine_dir / "model.engine").read_bytes()]


def test_bit_flipped_engine_is_never_deserialized(engine_dir, monkeypatch):
    from mrdl_runtime import IntegrityError

    data = bytearray((engine_dir / "model.engine").read_bytes())
    data[5] ^= 0x20
    (engine_dir / "model.engine").write_bytes(bytes(data))
    stand_in = StandInTensorRT()
    runner = _engine_runner(engine_dir, monkeypatch, stand_in)
    with pytest.raises(IntegrityError, match=r"model\.engine: sha256 [0-9a-f]{16}… differs from the"):
        runner.open()
    assert stand_in.deserialized == [] and not runner.is_open


def test_truncated_engine_without_the_hash_check(engine_dir, monkeypatch, caplog):
    from mrdl_runtime import IntegrityError

    os.truncate(engine_dir / "model.engine", 100)
    stand_in = StandInTensorRT()
    runner = _engine_runner(engine_dir, monkeypatch, stand_in, verify=False)
    with pytest.raises(IntegrityError, match=r"model\.engine: 100 bytes, but model\.json records 1152"):
        runner.open()
    assert stand_in.deserialized == []


def test_engine_with_other_inputs_than_the_manifest(engine_dir, monkeypatch):
    from mrdl_runtime import IntegrityError

    runner = _engine_runner(engine_dir, monkeypatch, StandInTensorRT(image_shape=(-1, 3, 32, 32)))
    with pytest.raises(IntegrityError, match=r"model\.engine: the graph's inputs are image float32 \[batch, 3, 32, 32\], "
                                             r"but model\.json lists image float32 \[batch, 3, 64, 64\]"):
        runner.open()
    assert not runner.is_open
