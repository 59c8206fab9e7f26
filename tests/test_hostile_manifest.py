"""Numbers in model.json that cost or vouch for themselves (issue 21, items 1 and 3).

* ``source_size`` outside [max(16, model side / 4), 65536] is refused at export (``--source-size``)
  and at load (runtime/VECTORS.md, "source_size range"): ``[1, 1]`` asked an 11 GiB resample,
  ``[100000, 100000]`` shrank every image to 1x1.
* The whole ``model.json`` is verified against the copy mrdl-export embedded in the verified ONNX
  file: an edited ``source_size``, threshold or any other field is refused naming the field, and a
  re-export (here :func:`reexport.rewrite_manifest`) is accepted.
"""

from __future__ import annotations

import json
import shutil

import pytest
from reexport import rewrite_manifest


@pytest.mark.parametrize(("value", "accepted"), [
    ([1, 1], False), ([100000, 100000], False), ([15, 900], False), ([16, 16], True), ([65536, 65536], True),
    ([65537, 1000], False), ([1000, 800], True)])
def test_source_size_range_at_load(model_dir, value, accepted):
    from mrdl_runtime.manifest import ManifestError, parse_manifest

    doc = {**json.loads((model_dir / "model.json").read_text()), "source_size": value}
    if accepted:
        assert parse_manifest(doc, model_dir).source_size == tuple(value)
    else:
        with pytest.raises(ManifestError, match=r"source_size is .*each side in \[16, 65536\] for a 64x64 model"):
            parse_manifest(doc, model_dir)


def test_source_size_low_bound_follows_the_model_size(model_dir):
    """A quarter of the model's side along each axis (a 224x160 model: 56 and 40)."""
    from mrdl_runtime.manifest import ManifestError, check_source_size, source_size_low

    assert source_size_low((224, 160)) == (56, 40) and source_size_low((64, 64)) == (16, 16)
    assert check_source_size([56, 40], (224, 160), "x") == (56, 40)
    with pytest.raises(ManifestError, match=r"each side in \[56, 65536\] and \[40, 65536\] for a 224x160 model"):
        check_source_size([55, 40], (224, 160), "x")


@pytest.mark.parametrize("value", ["1x1", "100000x100000", "15x1000"])
def test_source_size_option_is_refused_before_any_work(value):
    from mrdl_export.options import ExportError, ExportOptions

    with pytest.raises(ExportError, match="--source-size"):
        ExportOptions(source_size=value).validate()
    assert ExportOptions(source_size="1000x1000").validate().source_size == "1000x1000"


@pytest.mark.parametrize(("change", "named"), [
    (lambda doc: doc.update(source_size=[128, 128]), "source_size was added"),
    (lambda doc: doc["postprocessing"].update(threshold=0.25), "postprocessing.threshold is 0.25, not 0.5"),
    (lambda doc: doc.update(max_batch=1), "max_batch is 1, not"),
    (lambda doc: doc.pop("classes"), "classes was removed"),
])
def test_edited_manifest_is_refused_naming_the_field(model_dir, tmp_path, change, named):
    from mrdl_runtime import Segmenter
    from mrdl_runtime.manifest import IntegrityError

    copy = shutil.copytree(model_dir, tmp_path / "deploy")
    doc = json.loads((copy / "model.json").read_text())
    change(doc)
    (copy / "model.json").write_text(json.dumps(doc, indent=2))
    for verify in (True, False):  # the hash of model.onnx is right: only the manifest was edited
        with pytest.raises(IntegrityError) as info:
            Segmenter.load(copy, backend="onnxruntime-cpu", verify=verify)
        message = str(info.value)
        assert "model.json was edited after export" in message and named in message, message
        assert "model.onnx" in message and "re-export" in message


def test_reexported_manifest_loads_and_is_used(model_dir, tmp_path):
    """The same change made as the export makes it (the copy in every ONNX file too) is accepted."""
    import numpy as np

    from mrdl_runtime import Segmenter

    copy = rewrite_manifest(shutil.copytree(model_dir, tmp_path / "deploy"), {"source_size": [128, 128]})
    with Segmenter.load(copy, backend="onnxruntime-cpu") as segmenter:
        assert segmenter.manifest.source_size == (128, 128)
        assert segmenter.predict(np.zeros((300, 300, 3), np.uint8)).tiled


def test_export_refuses_a_source_size_below_a_quarter_of_the_model(tiny_config):
    """The model-relative bound at export: named when the manifest is built (from --source-size or the
    checkpoint's provenance), not reported as a bug of mrdl-export by the final manifest check."""
    from mrdl_export.errors import ExportError
    from mrdl_export.manifest import build_manifest

    def build(source_size):
        return build_manifest(tiny_config, checkpoint_path="ckpt.safetensors", checkpoint_sha256="0" * 64,
                              artifacts={"fp32": {"file": "model.onnx", "precision": "fp32"}}, opset=20, max_batch=4,
                              parity={}, source_size=source_size)

    assert build((16, 1000))["source_size"] == [16, 1000]
    with pytest.raises(ExportError, match=r"is \[15, 1000\]; expected .* each side in \[16, 65536\] for a 64x64 model"):
        build((15, 1000))
